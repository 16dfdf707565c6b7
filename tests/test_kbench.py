"""tools/kbench.c, the kernel micro-benchmark behind `make kbench`: it builds with the C core's
sources, takes types and a row length (k=N), and answers a wrong argument with a one-line error
and exit status 2 instead of ignoring it. Its figures are timings, not checked here."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kbench():
    """build/kbench through the Makefile's own rule (rebuilt where a source is newer)"""
    if not shutil.which("make") or not (os.environ.get("CC") or shutil.which("cc")):
        pytest.skip("no make or C compiler")
    subprocess.run(["make", "-s", "-C", str(ROOT), "build/kbench"], check=True)
    return ROOT / "build" / "kbench"


def _run(exe, *args):
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_row_length_and_types(kbench):
    r = _run(kbench, "0.05", "Q4_0", "k=2048")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("Q4_0 ")]
    assert lines and all(re.search(r"\d+\.\d+ GB/s", ln) for ln in lines)
    assert any(" scalar " in ln for ln in lines)
    assert "rows: one-row" in r.stdout and "plain read" in r.stdout
    # the yardstick also as the 2048-value Q4_0 rows (1152 bytes) read 1, 2 and 4 side by side
    assert re.search(r"rows of 1152 bytes side by side:  1: +\d+\.\d+ GB/s  2: +\d+\.\d+ GB/s  4: +\d+\.\d+ GB/s",
                     r.stdout), r.stdout
    assert not re.search(r"^Q4_1 |^act ", r.stdout, re.M)   # only the type asked for, no quantizers


def test_row_length_that_does_not_fit_the_blocks_is_said(kbench):
    r = _run(kbench, "0.05", "Q4_K", "k=1000")
    assert r.returncode == 0
    assert "k=1000 is not a multiple of its 256-value blocks: skipped" in r.stdout


@pytest.mark.parametrize("args,msg", [(("x",), "MiB must be a positive number"),
                                      (("1", "Q9"), "unknown type Q9"),
                                      (("1", "k=5"), "row length of 256 to 1048576")])
def test_bad_arguments_are_errors(kbench, args, msg):
    r = _run(kbench, *args)
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1

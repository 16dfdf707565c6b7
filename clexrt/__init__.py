"""clexrt: a CPU inference runtime for LLaMA-family GGUF models, built around CLEX.

Heavy modules (the compiled core, the tokenizer, the API) are imported on first use, so
``import clexrt`` stays cheap and pure-Python parts work without the native build.
"""
from .errors import ClexError, ContextFullError, ConvertError, GGUFError, ModelError, NativeError

__version__ = "0.1.0"

_LAZY = {
    "Model": ("clexrt.engine.model", "Model"),
    "Llama": ("clexrt.api", "Llama"),
    "Tokenizer": ("clexrt.text.tokenizer", "Tokenizer"),
    "GGUFFile": ("clexrt.gguf.reader", "GGUFFile"),
}

__all__ = ["ClexError", "ContextFullError", "ConvertError", "GGUFError", "ModelError",
           "NativeError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clexrt' has no attribute {name!r}")

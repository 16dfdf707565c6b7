"""One exception hierarchy for the whole package."""


class ClexError(Exception):
    """Base class of every error clexrt raises on purpose."""


class GGUFError(ClexError, ValueError):
    """A GGUF file is malformed, hostile or not something we can run."""


class ModelError(ClexError, ValueError):
    """Hyper-parameters or tensors disagree, or a tensor type is unsupported."""


class ContextFullError(ClexError, ValueError):
    """The tokens do not fit in the context (prompt too long, or generation reached n_ctx)."""


class ConvertError(ClexError, ValueError):
    """A Hugging Face checkpoint cannot be converted."""


class NativeError(ClexError, RuntimeError):
    """The C core returned an error code."""

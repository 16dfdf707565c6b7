"""`Llama`, llama-cpp-python's interface (llama.py), with its options (options.py), the OpenAI
result shapes it shares with the server (shapes.py) and embeddings (embeddings.py)."""
from .llama import LLAMA_DEFAULT_SEED, Llama

__all__ = ["Llama", "LLAMA_DEFAULT_SEED"]

"""Hugging Face checkpoints to GGUF, CLEX tables included (installed as clexrt.convert)."""

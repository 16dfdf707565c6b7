"""The engine: the checked cffi wrappers over the C core (native.py), Model (a GGUF mapped and
run by the core, with its rope schedule and KV policy) and Session (the model's token history,
evaluated in interruptible chunks)."""

"""Llama's constructor and call options: which llama-cpp-python arguments work, which fail at
which values (none is silently ignored), and the small adapters they need."""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["check_neutral", "check_neutral_init", "kv_type_of", "KeepLogits", "metadata_str",
           "NEUTRAL_INIT"]

_GPU = "clexrt runs on the CPU only: it is not built with CUDA (issue 19)"
# llama-cpp-python constructor arguments clexrt has no use for: fine at the values listed (those
# that mean nothing on a CPU runtime), an error at any other, so nothing is silently ignored.
NEUTRAL_INIT = {
    "n_gpu_layers": ((0,), _GPU), "split_mode": ((0, 1), _GPU), "main_gpu": ((0,), _GPU),
    "tensor_split": ((None,), _GPU), "offload_kqv": ((True, False), ""),
    "embedding": ((True, False), ""),              # embeddings always work
    "use_mmap": ((True,), "clexrt always maps the GGUF file"),
    "use_mlock": ((False,), "clexrt cannot lock the mapping in memory"),
    "flash_attn": ((False, None), "clexrt has one attention kernel, not llama.cpp's flash attention"),
    "numa": ((False, 0), "NUMA placement is not supported"),
    "n_ubatch": ((512,), "the C core evaluates n_batch tokens at once: set n_batch"),
    "chat_handler": ((None,), "chat handlers (images) are not supported: use chat_format"),
    "lora_path": ((None,), "LoRA adapters are not supported yet"),
    "lora_base": ((None,), "LoRA adapters are not supported yet"),
    "lora_scale": ((1.0,), "LoRA adapters are not supported yet"),
    "rpc_servers": ((None,), "RPC offload is not supported"),
    "spm_infill": ((False,), "infill is not supported"),
}
# llama-cpp-python passes ggml type ids (GGML_TYPE_F32 = 0, F16 = 1, Q8_0 = 8); names work too
_KV_NAMES = {0: "f32", 1: "f16", 8: "q8_0", "f32": "f32", "f16": "f16", "q8_0": "q8_0"}


def check_neutral(**kw) -> None:
    """Options llama-cpp-python has and we do not: fine at their neutral value, else an error."""
    neutral = {"suffix": None, "typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0,
               "stopping_criteria": None, "logits_processor": None}
    for k, v in kw.items():
        if v != neutral[k] and not (v is None and neutral[k] is None):
            raise ValueError(f"clexrt does not support {k}={v!r}")


def check_neutral_init(kw: Mapping) -> None:
    for k, v in kw.items():
        ok, why = NEUTRAL_INIT[k]
        if v not in ok:
            raise ValueError(f"Llama({k}={v!r}): {why}")


def kv_type_of(type_k, type_v, kv_type: str) -> str:
    """The one KV element type of type_k / type_v / kv_type. clexrt's cache has one type for keys
    and values, so they must agree (llama.cpp's different -ctk and -ctv are an error here)."""
    names = set()
    for arg, v in (("type_k", type_k), ("type_v", type_v)):
        if v is None:
            continue
        name = _KV_NAMES.get(v.lower() if isinstance(v, str) else v)
        if name is None:
            raise ValueError(f"Llama({arg}={v!r}): the KV cache is f32 (0), f16 (1) or q8_0 (8)")
        names.add(name)
    if kv_type != "f32":
        names.add(kv_type)
    if len(names) > 1:
        raise ValueError(f"type_k, type_v and kv_type disagree ({', '.join(sorted(names))}): "
                         f"clexrt's KV cache has one element type for keys and values")
    return names.pop() if names else kv_type


class KeepLogits:
    """A model seen through logits_all=True: each eval keeps every position's logits (`scores`)."""

    def __init__(self, model):
        self._m = model
        self.scores = np.zeros((0, model.n_vocab), dtype=np.float32)

    def __getattr__(self, name):
        return getattr(self._m, name)

    def eval(self, tokens, all_logits: bool = False):
        rows = self._m.eval(tokens, all_logits=True)
        start = max(0, self._m.n_past - len(rows))
        self.scores = np.concatenate([self.scores[:start], rows])
        return rows if all_logits else rows[-1]


def metadata_str(v) -> str | None:
    """A GGUF value as llama.cpp prints it (floats with %f, bools lower-case); arrays -> None."""
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):f}"
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return None

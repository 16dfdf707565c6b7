"""An F32 copy of a GGUF: every metadata key kept (tokenizer, chat template, ...), every tensor
dequantized by gguf-py, general.file_type set to ALL_F32. Used to compare greedy decoding with
llama.cpp on the same weights without 8-bit activation quantization (see
tests/data/llamacpp_greedy_f32.json, which records the file's sha256).

    python tests/f32copy.py IN.gguf OUT.gguf
"""
from __future__ import annotations

import sys

import numpy as np


def f32_copy(src: str, dst: str) -> None:
    import gguf
    from gguf import GGUFValueType

    from clexrt.convert.gguf_clexify import clexify_plan
    from clexrt.convert.gguf_out import open_gguf
    from clexrt.convert.gguf_out import TensorPlan, write_plan

    g = open_gguf(src)
    try:
        plan = clexify_plan(g, 1)            # every key copied with its type, tensors byte for byte
        plan.kv = {k: v for k, v in plan.kv.items() if not k.startswith("clex.")}
        plan.kv["general.file_type"] = (0, GGUFValueType.UINT32, None)
        plan.kv.pop("general.quantization_version", None)
        tensors = []
        for tp in plan.tensors:
            ti = g.tensors[tp.name]

            def load(ti=ti, name=tp.name):
                raw = np.frombuffer(g.tensor_bytes(name), np.uint8)
                if ti.ggml_type == 0:
                    return raw.view(np.float32).reshape(tuple(ti.shape[::-1]))
                rows = raw.reshape(-1, raw.size // int(np.prod(ti.shape[1:], dtype=np.int64)))
                return gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(ti.ggml_type)).astype(np.float32)

            tensors.append(TensorPlan(tp.name, tuple(ti.shape[::-1]), 0, load, source="dequantized"))
        plan.tensors = tensors
        write_plan(plan, dst, progress=False)
    finally:
        g.close()


if __name__ == "__main__":
    f32_copy(sys.argv[1], sys.argv[2])


def tensor_data_sha256(path: str) -> str:
    """sha256 of every tensor's bytes in file order (independent of how the writer lays out
    the metadata)."""
    import hashlib

    from clexrt.gguf.reader import GGUFFile
    h = hashlib.sha256()
    with GGUFFile(path) as g:
        for name in g.tensors:
            h.update(name.encode())
            h.update(g.tensor_bytes(name))
    return h.hexdigest()

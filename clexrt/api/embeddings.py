"""Embeddings as llama.cpp makes them: the hidden states after the output norm
(engine.batch.hidden_states), pooled by the GGUF's pooling type (mean where it names none) and
normalized with llama.cpp's common_embd_normalize rule."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["POOLING", "LLAMA_POOLING_TYPE_UNSPECIFIED", "pooling_of", "pool", "embd_normalize",
           "embed_ids"]

# llama.cpp's enum llama_pooling_type (RANK, 4, is a reranker's: not here)
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}
LLAMA_POOLING_TYPE_UNSPECIFIED = -1
def pooling_of(md: Mapping, pooling_type: int | None = LLAMA_POOLING_TYPE_UNSPECIFIED) -> str:
    """How embeddings are pooled: `pooling_type` when given, else the GGUF's
    {arch}.pooling_type, else mean."""
    if pooling_type is None or pooling_type == LLAMA_POOLING_TYPE_UNSPECIFIED:
        pooling_type = md.get(f"{md.get('general.architecture', 'llama')}.pooling_type", 1)
    if int(pooling_type) not in POOLING:
        raise ValueError(f"pooling_type {pooling_type} is not one of {POOLING} (rank is not "
                         f"supported)")
    return POOLING[int(pooling_type)]


def pool(hidden: np.ndarray, kind: str) -> np.ndarray:
    """[n, n_embd] hidden states -> one vector (mean / cls: the first / last), or all for none."""
    if kind == "mean":
        return hidden.astype(np.float64).mean(axis=0).astype(np.float32)
    if kind == "cls":
        return hidden[0]
    if kind == "last":
        return hidden[-1]
    return hidden


def embd_normalize(v: np.ndarray, norm: int = 2) -> np.ndarray:
    """llama.cpp's common_embd_normalize: -1 none, 0 max-abs to the int16 range, 1 taxicab, 2
    euclidean, p > 2 the p-norm."""
    x = np.asarray(v, dtype=np.float32)
    if norm == -1:
        s = 1.0
    elif norm == 0:
        s = float(np.abs(x).max(initial=0.0)) / 32760.0
    elif norm == 2:
        s = float(np.sqrt(np.sum(x.astype(np.float64) ** 2)))
    else:
        a = np.abs(x.astype(np.float64))
        m = float(a.max(initial=0.0))          # scaled by the largest, so |x|^p cannot overflow
        s = m * float(np.sum((a / m) ** norm) ** (1.0 / norm)) if m > 0 else 0.0
    return (x * np.float32(1.0 / s if s > 0 else 0.0)).astype(np.float32)


def embed_ids(model, ids: Sequence[int], pooling: str, normalize: int | None = None):
    """One input's embedding: a vector (pooled) or, for pooling "none", one per token; with
    `normalize`, scaled by embd_normalize (llama.cpp normalizes only pooled vectors)."""
    from ..engine.batch import hidden_states

    h = np.asarray(hidden_states(model, list(ids)), dtype=np.float32)
    v = pool(h, pooling)
    if normalize is not None and pooling != "none":
        v = embd_normalize(v, normalize)
    return v

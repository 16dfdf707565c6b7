"""Model: a LLaMA-family GGUF, memory-mapped and run by the C core.

    m = Model("SmolLM2-135M-Instruct.Q4_1.gguf")
    last = m.eval([1, 504, 3458])      # appends to the KV cache, returns float32 [n_vocab]
    allpos = m.logits(ids)             # one full forward from an empty cache: [len(ids), n_vocab]

Weights stay in the file mapping: the C core gets pointers into it and neither copies nor
dequantizes them.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import rope as rope_mod
from ._lib import check, ffi, lib, physical_cores
from .errors import ClexError, ContextFullError, ModelError
from .gguf_file import GGUFFile

_LAYER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
          "ffn_up", "ffn_down")
_FIELDS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down")


@dataclass(frozen=True)
class HParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    n_ff: int
    rms_eps: float
    n_ctx_train: int
    rope_freq_base: float


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Model:
    """A GGUF model with one KV cache. Not re-entrant: calls from several threads are serialized
    by an internal lock."""

    def __init__(self, path, n_ctx: int = 0, n_threads: int | None = None, rope: str = "auto",
                 clex_mode: str | None = None, kv_policy: str | None = None, n_batch: int = 512):
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._ctx = self._model = None
        self.gguf = GGUFFile(self.path)
        try:
            self._build(n_ctx, n_threads, n_batch)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ loading
    def _build(self, n_ctx, n_threads, n_batch):
        g = self.gguf
        v = g.validate_llama()
        md = g.metadata
        self.metadata = md
        eps = v.rms_norm_eps if v.rms_norm_eps is not None else 1e-5
        base = v.rope_freq_base if v.rope_freq_base is not None else 10000.0
        self.hparams = HParams(n_vocab=v.n_vocab, n_embd=v.n_embd, n_layer=v.n_layer, n_head=v.n_head,
                               n_head_kv=v.n_head_kv, head_dim=v.head_dim, n_rot=v.n_rot, n_ff=v.n_ff,
                               rms_eps=eps, n_ctx_train=v.n_ctx_train or 2048, rope_freq_base=base)
        for name, t in g.tensors.items():
            if name.endswith(".weight") and not lib.clex_type_supported(t.ggml_type) and name != "rope_freqs.weight":
                raise ModelError(f"{self.path}: tensor '{name}' has type {t.type_name}, which clexrt does not "
                                 f"run (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
        self._base = ffi.from_buffer("char[]", g.buffer)
        self._keep = []

        def tensor(name):
            t = g.tensors[name]
            ct = ffi.new("clex_tensor *")
            ct.type = t.ggml_type
            ct.n_dims = len(t.shape)
            for i, d in enumerate(t.shape):
                ct.ne[i] = d
            ct.data = self._base + t.offset
            ct.nbytes = t.nbytes
            cname = ffi.new("char[]", name.encode())
            self._keep.append(cname)
            ct.name = cname
            return ct

        hp = self.hparams
        chp = ffi.new("clex_hparams *", dict(n_vocab=hp.n_vocab, n_embd=hp.n_embd, n_layer=hp.n_layer,
                                             n_head=hp.n_head, n_head_kv=hp.n_head_kv, head_dim=hp.head_dim,
                                             n_rot=hp.n_rot, n_ff=hp.n_ff, rms_eps=hp.rms_eps))
        layers = ffi.new("clex_layer[]", hp.n_layer)
        for i in range(hp.n_layer):
            for short, field in zip(_LAYER, _FIELDS):
                setattr(layers[i], field, tensor(f"blk.{i}.{short}.weight")[0])
        # tied embeddings: no output.weight, the C core projects with token_embd.weight
        out = tensor("output.weight") if "output.weight" in g.tensors else ffi.NULL
        pm = ffi.new("clex_model **")
        check(lib.clex_model_create(chp, tensor("token_embd.weight"), tensor("output_norm.weight"),
                                    out, layers, pm), where=self.path)
        self._model = ffi.gc(pm[0], lib.clex_model_free)
        self.n_params = int(lib.clex_model_n_params(self._model))

        # the rope table GGUF asks for (base frequencies, rope_freqs.weight, linear scaling)
        factors = None
        if "rope_freqs.weight" in g.tensors:
            factors = np.array(g.tensor_array("rope_freqs.weight"), dtype=np.float32)
        self.base_inv_freq = rope_mod.gguf_inv_freq(base, hp.n_rot, freq_factors=factors,
                                                    scaling_type=v.rope_scaling_type,
                                                    scaling_factor=v.rope_scaling_factor)

        n_ctx = int(n_ctx or 0)
        if n_ctx < 0:
            raise ModelError(f"n_ctx must be >= 0 (0 = the model's context length), got {n_ctx}")
        if n_ctx == 0:
            n_ctx = hp.n_ctx_train
        if n_threads is None or n_threads <= 0:
            n_threads = physical_cores()
        kv_bytes = 2 * 4 * hp.n_layer * hp.n_head_kv * hp.head_dim * n_ctx
        avail = _mem_available()
        if n_ctx > (1 << 24) or (avail is not None and kv_bytes > avail):
            have = f"; {avail / 2**30:.1f} GiB is available" if avail is not None else ""
            raise ModelError(f"n_ctx {n_ctx} needs a {kv_bytes / 2**30:.1f} GiB KV cache{have}: "
                             f"choose a smaller n_ctx")
        pc = ffi.new("clex_ctx **")
        check(lib.clex_ctx_create(self._model, n_ctx, max(1, int(n_batch)), int(n_threads), pc), where=self.path)
        self._ctx = ffi.gc(pc[0], lib.clex_ctx_free)
        self.n_ctx = n_ctx
        self.n_threads = int(lib.clex_ctx_n_threads(self._ctx))
        self.n_vocab = hp.n_vocab
        self.n_past = 0
        self._set_table(self.base_inv_freq)

    # ------------------------------------------------------------------ rope table
    def _set_table(self, inv: np.ndarray) -> None:
        inv = np.ascontiguousarray(inv, dtype=np.float32)
        check(lib.clex_ctx_set_rope(self._ctx, ffi.cast("float *", inv.ctypes.data), inv.size))
        self._table = inv

    @property
    def rope_table(self) -> np.ndarray:
        """The inverse frequencies new tokens are rotated with (a copy)."""
        return self._table.copy()

    # ------------------------------------------------------------------ evaluation
    def _tokens(self, tokens: Sequence[int]) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ModelError(f"tokens must be a flat sequence of ids, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ModelError(f"token ids must be integers, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise ModelError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return np.ascontiguousarray(arr, dtype=np.int32)

    def _run(self, toks: np.ndarray, all_logits: bool) -> np.ndarray:
        n = toks.size
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"{n} tokens after {self.n_past} cached ones exceed the context of "
                                   f"{self.n_ctx} tokens")
        out = np.empty((n, self.n_vocab) if all_logits else (self.n_vocab,), dtype=np.float32)
        rc = lib.clex_eval(self._ctx, ffi.cast("int32_t *", toks.ctypes.data), n, self.n_past,
                           ffi.cast("float *", out.ctypes.data), 1 if all_logits else 0)
        check(rc, "eval")
        self.n_past += n
        return out

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the KV cache; returns the last token's logits, float32 [n_vocab]."""
        toks = self._tokens(tokens)
        if toks.size == 0:
            raise ModelError("eval needs at least one token")
        with self._lock:
            self._check_open()
            return self._run(toks, all_logits=False)

    def eval_all(self, tokens: Sequence[int]) -> np.ndarray:
        """Like eval, but returns the logits of every appended token: [len(tokens), n_vocab]."""
        toks = self._tokens(tokens)
        if toks.size == 0:
            raise ModelError("eval needs at least one token")
        with self._lock:
            self._check_open()
            return self._run(toks, all_logits=True)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """One full-sequence forward from an empty cache: float32 [len(ids), n_vocab]. The cache
        then holds ids (n_past == len(ids))."""
        toks = self._tokens(ids)
        if toks.size == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        with self._lock:
            self._check_open()
            self.n_past = 0
            return self._run(toks, all_logits=True)

    def reset(self) -> None:
        """Forget the cached tokens."""
        with self._lock:
            self.n_past = 0

    def truncate(self, n: int) -> None:
        """Keep only the first n cached tokens."""
        with self._lock:
            if not 0 <= n <= self.n_past:
                raise ModelError(f"cannot truncate the cache to {n} tokens (it holds {self.n_past})")
            self.n_past = int(n)

    # ------------------------------------------------------------------ lifetime
    def _check_open(self):
        if self._ctx is None:
            raise ClexError(f"{self.path}: model is closed")

    def close(self) -> None:
        """Free the KV cache and the weights' mapping (also done by the garbage collector)."""
        with self._lock:
            if self._ctx is not None:
                ffi.release(self._ctx)          # runs clex_ctx_free now
                self._ctx = None
            if self._model is not None:
                ffi.release(self._model)
                self._model = None
            self._base = None
            self._keep = []
            if getattr(self, "gguf", None) is not None:
                self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        hp = self.hparams
        return (f"Model({self.path!r}, n_ctx={self.n_ctx}, layers={hp.n_layer}, embd={hp.n_embd}, "
                f"vocab={hp.n_vocab}, threads={self.n_threads})")

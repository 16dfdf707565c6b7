"""Model: a GGUF model (an architecture of clexrt.gguf.archs), memory-mapped and run by the C core.

    m = Model("SmolLM2-135M-Instruct.Q4_1.gguf")
    last = m.eval([1, 504, 3458])      # appends to the KV cache, returns float32 [n_vocab]
    allpos = m.logits(ids)             # one full forward from an empty cache: [len(ids), n_vocab]

Weights stay in the file mapping: the C core gets pointers into it and neither copies nor
dequantizes them.

RoPE scaling (docs/clex.md): before tokens that take the sequence to N tokens are evaluated, the
schedule (clexrt.rope.RopeSchedule) picks the table for N. When it differs from the table the
cached keys carry, the kv_policy brings the cache to the new table: "rerotate" turns every cached
key in C (what the official CLEX code effectively does: values and the hidden states of earlier
tokens keep the old table), "recompute" evaluates the cached tokens again (exactly a full forward
at the new table). log_scale: q *= log(n_kv)/log(L) (docs/clex.md), in the C core's kq scale.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Sequence

import numpy as np

from .. import rope as rope_mod
from ..errors import ClexError, ContextFullError, ModelError
from ..gguf import GGUFFile, HParams, validate_model
from .native import KV_TYPES, check, default_batch, ffi, lib, physical_cores, supported_weight_types
from .profile import Profiling
from .weights import NativeWeights

ROPES = ("auto",) + rope_mod.METHODS
KV_POLICIES = ("rerotate", "recompute")
# Defaults (docs/clex.md): the schedule mode, chosen by measured perplexity: on the trained
# tiny-clex continuous is 3.3-4.4% below ceil at 1.5L/2.5L/3.5L and equal at multiples of L
# (docs/tiny_clex.md), as on clexified SmolLM2 (docs/clex.md); the KV policy is the official
# behaviour.
DEFAULT_MODE = "continuous"
DEFAULT_KV_POLICY = "rerotate"


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def unsupported_weight(g: GGUFFile) -> str | None:
    """The first weight tensor whose type the C core does not run, as a message; None if all run."""
    for name, t in g.tensors.items():
        if name.endswith(".weight") and not lib.clex_type_supported(t.ggml_type) and name != "rope_freqs.weight":
            return (f"tensor '{name}' has type {t.type_name}, which clexrt does not run "
                    f"(supported: {supported_weight_types()})")
    return None


def log_scale_choice(hp: HParams, want: bool | None = None) -> tuple[bool, str]:
    """Model(log_scale=want): (on, why). None: the file's clex.log_scale where the official code
    applies it: its LLaMA's flash attention, not its Phi-2 or Mixtral, nor clexify's zero network."""
    if want is not None:
        if not isinstance(want, (bool, np.bool_)):
            raise ModelError(f"log_scale must be True, False or None, got {want!r}")
        return bool(want), "asked for"
    c = hp.clex
    why = ("no CLEX tables" if c is None else "the file's clex.log_scale is false" if not c.log_scale
           else "zero-network (ntk) tables" if c.init != "ode" else "the official Mixtral and Phi-2 "
           "never apply it" if hp.arch != "llama" or hp.n_expert else "")
    return not why, why or "the file's clex.log_scale, as the official LLaMA applies it"


class Model(Profiling):
    """A GGUF model with one KV cache. Not re-entrant: calls from several threads are serialized by an internal lock.

    rope: auto | none | linear | ntk | yarn | clex (auto: clex for a GGUF with clex.* tables, otherwise the table
    the GGUF asks for). clex_mode: ceil (the official CLEX inference) | continuous (None: continuous, the better by
    measured perplexity). kv_policy: rerotate | recompute (None: rerotate). n_ctx = 0: L * max_factor for a CLEX
    GGUF, the training length otherwise. context_shift: past the context (or past L * max_factor for CLEX), drop the
    older half of the tokens after the first n_keep instead of raising ContextFullError. rope_steps: continuous mode
    moves t in steps of 1/rope_steps (None: rope.default_steps(L), 16 where L >= 4096; 0: t = N/L exactly, a new
    table every token). kv_type: f32 (the default: exact) | f16 (half the KV cache's memory, keys and values rounded
    to half when stored, as llama.cpp's default cache is) | q8_0 (34/128 of f32's memory: keys and values quantized
    to Q8_0 blocks when stored, attention scores against the query quantized to Q8_0, as llama.cpp's -ctk/-ctv q8_0;
    head_dim must be a multiple of 32). log_scale: the official flash path's q *= log(n_kv)/log(L) (None: the file's
    clex.log_scale where the official code applies it). n_batch: tokens a step (None: engine.native.default_batch)."""

    def __init__(self, path, n_ctx: int = 0, n_threads: int | None = None, rope: str = "auto",
                 clex_mode: str | None = None, kv_policy: str | None = None, n_batch: int | None = None,
                 context_shift: bool = False, n_keep: int = 1, rope_steps: int | None = None,
                 kv_type: str = "f32", check_tensors: bool = False, log_scale: bool | None = None):
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._ctx = self._model = None
        self.gguf = GGUFFile(self.path)
        try:
            self._build(n_ctx, n_threads, n_batch, rope, clex_mode, kv_policy, rope_steps, kv_type, log_scale)
            if check_tensors:
                bad = self._nonfinite_weight()
                if bad:
                    raise ModelError(bad)
        except BaseException:
            self.close()
            raise
        self.context_shift = bool(context_shift)
        self.n_keep = max(0, int(n_keep))

    # ------------------------------------------------------------------ loading
    def _build(self, n_ctx, n_threads, n_batch, rope, clex_mode, kv_policy, rope_steps, kv_type, log_scale):
        g = self.gguf
        self.hparams = hp = validate_model(g)
        self.metadata = g.metadata
        self.clex = hp.clex
        problem = unsupported_weight(g)
        if problem:
            raise ModelError(f"{self.path}: {problem}")
        self._model = self._create_model(hp)
        self.n_params = int(lib.clex_model_n_params(self._model))
        # the scaling the GGUF declares (rope.scaling.*, rope_freqs / rope_factors_*) as llama.cpp
        # applies it at this context size: the static table of rope "auto" (rope.declared_rope)
        self.declared = rope_mod.declared_rope(hp, g, max(0, int(n_ctx or 0)))
        self.base_inv_freq = self.declared.inv_freq
        self.schedule = self._schedule(rope, clex_mode, rope_steps)
        if kv_policy is None:
            kv_policy = DEFAULT_KV_POLICY
        if kv_policy not in KV_POLICIES:
            raise ModelError(f"unknown kv_policy {kv_policy!r} (choose from {', '.join(KV_POLICIES)})")
        self.kv_policy = kv_policy
        self._create_context(hp, n_ctx, n_threads, n_batch, kv_type)
        self.n_vocab = hp.n_vocab
        self.n_past = 0
        self._hist = np.zeros(self.n_ctx, dtype=np.int32)     # the cached token ids: the one history
        self.table_changes = 0
        self._choice = self.schedule(0)
        self._synced = True
        self._target = 0
        self.log_scale, self._n_kv, self._kq = log_scale_choice(hp, log_scale)[0], 0, None
        self._set_table(self._choice.table)
        self._set_attn_factor(self._choice.attn_factor)
        if hp.n_rope_sets > 1:
            # the sliding-window layers' own table: their base, no scaling; never rescheduled
            # (they never see a distance past their window)
            self.local_inv_freq = rope_mod.gguf_inv_freq(hp.local_rope_base, hp.n_rot).astype(np.float32)
            check(lib.clex_ctx_set_rope_set(self._ctx, 1, ffi.cast("float *", self.local_inv_freq.ctypes.data),
                                            self.local_inv_freq.size))

    def log_factor(self, n_kv: int) -> float:
        """log_scale's factor on q for n_kv keys; 1 when off (and for one key: weight 1 at any scale)."""
        L = self.schedule.train_length
        return math.log(n_kv) / math.log(L) if self.log_scale and n_kv > 1 and L > 1 else 1.0

    def _create_model(self, hp: HParams):
        self._weights = NativeWeights(self.gguf)
        return self._weights.create_model(hp, where=self.path)

    def _create_context(self, hp: HParams, n_ctx, n_threads, n_batch, kv_type) -> None:
        n_ctx = int(n_ctx or 0)
        if n_ctx < 0:
            raise ModelError(f"n_ctx must be >= 0 (0 = the model's context length), got {n_ctx}")
        if n_ctx == 0:
            n_ctx = self.clex.max_context if self.clex is not None else hp.ctx_train
        if n_threads is None or n_threads <= 0:
            n_threads = physical_cores()
        if kv_type not in KV_TYPES:
            raise ModelError(f"unknown kv_type {kv_type!r} (choose from {', '.join(KV_TYPES)})")
        self.kv_type = kv_type
        type_id, blck, nbytes = KV_TYPES[kv_type]   # a head_dim not of whole blocks: the core says so
        kv_bytes = 2 * hp.n_layer * hp.n_head_kv * n_ctx * (hp.head_dim // blck) * nbytes
        avail = _mem_available()
        if n_ctx > (1 << 24) or (avail is not None and kv_bytes > avail):
            have = f"; {avail / 2**30:.1f} GiB is available" if avail is not None else ""
            raise ModelError(f"n_ctx {n_ctx} needs a {kv_bytes / 2**30:.1f} GiB KV cache{have}: "
                             f"choose a smaller n_ctx")
        if n_batch is None:
            n_batch = default_batch(self._model, n_threads)
        pc = ffi.new("clex_ctx **")
        check(lib.clex_ctx_create(self._model, n_ctx, max(1, int(n_batch)), int(n_threads),
                                     type_id, pc), where=self.path)
        self._ctx = ffi.gc(pc[0], lib.clex_ctx_free)
        self.n_ctx = n_ctx
        self.n_threads = int(lib.clex_ctx_n_threads(self._ctx))
        self.n_batch = int(lib.clex_ctx_n_batch(self._ctx))

    def _schedule(self, rope, clex_mode, steps) -> rope_mod.RopeSchedule:
        if rope not in ROPES:
            raise ModelError(f"unknown rope method {rope!r} (choose from {', '.join(ROPES)})")
        c = self.clex
        auto = rope == "auto"
        if auto:
            rope = "clex" if c is not None else "none"
        if clex_mode is None:
            clex_mode = DEFAULT_MODE
        attn = 1.0
        if c is not None:
            # a CLEX model's own frequencies and length, whichever method runs it
            base, L, M = c.inv_freq, c.train_length, c.max_factor
        elif auto:
            # as the file says: its declared table, static, with its attention factor
            base, L, M, attn = self.base_inv_freq, self.hparams.ctx_train, None, self.declared.attn_factor
        else:
            # an explicit method replaces the declared scaling: from the unscaled table and length
            base, L, M = self.declared.unscaled, self.declared.train_length, None
        if base.size != self.hparams.n_rot // 2:
            raise ModelError(f"the rope table has {base.size} entries, the model rotates "
                             f"{self.hparams.n_rot // 2} pairs")
        return rope_mod.RopeSchedule(rope, base, L, mode=clex_mode, steps=steps,
                                     max_factor=M if rope == "clex" else None, clex=c,
                                     attn_factor=attn)

    # ------------------------------------------------------------------ rope table
    def _set_table(self, inv: np.ndarray) -> None:
        inv = np.ascontiguousarray(inv, dtype=np.float32)
        check(lib.clex_ctx_set_rope(self._ctx, ffi.cast("float *", inv.ctypes.data), inv.size))
        self._table = inv

    def _set_attn_factor(self, f: float) -> None:
        """YaRN's temperature: q and k each scaled by f, so q.k by f^2 (the C core's attention
        scale); with log_scale also by log_factor(n_kv) of the coming evaluation."""
        s = float(f) * float(f) * self.log_factor(self._n_kv)
        if s != self._kq:
            check(lib.clex_ctx_set_attn_scale(self._ctx, s))
            self._kq = s

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache as allocated (keys and values, every layer, n_ctx positions)."""
        return int(lib.clex_ctx_kv_bytes(self._ctx))

    @property
    def rope_table(self) -> np.ndarray:
        """The inverse frequencies new tokens are rotated with (a copy)."""
        return self._table.copy()

    @property
    def rope_state(self) -> dict:
        """The RoPE scaling in force: method, t, mode, KV policy, table changes, next change's length (None: never)."""
        s, c = self.schedule, self._choice
        st = {"method": s.method, "t": c.t, "mode": s.mode, "kv_policy": self.kv_policy,
              "table_changes": self.table_changes, "train_length": s.train_length,
              "max_factor": s.max_factor, "n_past": self.n_past,
              "next_change": s.next_change(max(self.n_past, 1)) if s.method != "none" else None}
        if s.mode == "continuous" and s.method != "none":
            st["steps"] = s.steps
        if c.attn_factor != 1.0:
            st["attn_factor"] = c.attn_factor     # the C core scales q.k by its square
        st["log_scale"] = self.log_scale
        if self.log_scale:
            st["log_factor"] = self.log_factor(self._n_kv)   # of the last evaluation
        return st

    @property
    def tokens(self) -> np.ndarray:
        """The token ids in the KV cache (a copy)."""
        return self._hist[:self.n_past].copy()

    def reserve(self, n_total: int) -> None:
        """Say that the coming evals take the sequence to n_total tokens: they all use the table
        for n_total (until reset, truncate or logits). A prompt fed in chunks then gets exactly
        the one-forward prompt of the official code instead of a table change between chunks.
        Lengths past the model's limit count as the limit."""
        with self._lock:
            self._target = max(0, int(n_total))

    def _prepare(self, n_new: int) -> None:
        """Make room for n_new tokens and bring the cache to the table of the new length."""
        N = self.n_past + n_new
        limit = self.n_ctx
        ml = self.schedule.max_length
        if ml is not None and ml < limit:
            limit = ml
        if N > limit:
            if not self.context_shift:
                what = (f"the CLEX range L x max_factor = {ml} tokens" if ml is not None and ml <= self.n_ctx
                        else f"the context of {self.n_ctx} tokens")
                raise ContextFullError(f"{n_new} tokens after {self.n_past} cached ones exceed {what}"
                                       f"{'' if ml is None else ' (context_shift=True drops older tokens instead)'}")
            self._shift(N - limit)
            N = self.n_past + n_new
        self._n_kv = max(N, min(self._target, limit))
        choice = self.schedule(self._n_kv)
        if choice is self._choice and self._synced:
            self._set_attn_factor(choice.attn_factor)
            return
        self._switch(choice)

    def _switch(self, choice: rope_mod.RopeChoice) -> None:
        """Make `choice` the table in force and bring the cached keys to it (kv_policy)."""
        old = self._choice
        try:
            self._set_table(choice.table)
            self._set_attn_factor(choice.attn_factor)      # before a recompute: its n_kv too
            if self.n_past:
                if self.kv_policy == "rerotate":
                    check(lib.clex_ctx_rerotate(self._ctx, ffi.cast("float *", old.table.ctypes.data),
                                                self.n_past), "rerotate")
                else:
                    hist = np.ascontiguousarray(self._hist[:self.n_past])
                    check(lib.clex_eval(self._ctx, ffi.cast("int32_t *", hist.ctypes.data), self.n_past, 0,
                                        ffi.NULL, 0), "recompute")
                self.table_changes += 1
            self._choice = choice
        except BaseException:
            # the cache may be half-way between tables: forget it rather than keep it wrong, and
            # set the table again on the next call
            self.n_past = 0
            self._synced = False
            raise
        self._synced = True

    def measure_table_change(self, reps: int = 3) -> dict | None:
        """The one-off cost of a table change with the cache as it is: the cached keys are brought
        to the schedule's next table (the one the length next_change uses) under kv_policy and
        back again, `reps` times; the cache ends as it started. Returns {"policy", "n_past",
        "from_t", "to_t", "seconds": [one per change]}, or None when the table never changes."""
        with self._lock:
            self._check_open()
            s, here = self.schedule, self._choice
            nxt = s.next_change(max(self.n_past, 1))
            if nxt is None or not self._synced:
                return None
            there = s(nxt)
            changes = self.table_changes
            secs = []
            try:
                for _ in range(max(1, int(reps))):
                    for target in (there, here):
                        t0 = time.perf_counter()
                        self._switch(target)
                        secs.append(time.perf_counter() - t0)
            finally:
                self.table_changes = changes
            return {"policy": self.kv_policy, "n_past": self.n_past, "from_t": here.t, "to_t": there.t,
                    "seconds": secs}

    def _shift(self, need: int) -> None:
        """Context shift: drop max(need, half of the tokens after the first n_keep) and move the
        rest down (keys rotated to their new positions, current table)."""
        keep = min(self.n_keep, self.n_past)
        discard = max(need, (self.n_past - keep) // 2)
        if discard > self.n_past - keep:
            raise ContextFullError(f"context shift cannot make room for the tokens: {self.n_past} cached, "
                                   f"{keep} kept, {need} more needed")
        check(lib.clex_ctx_shift(self._ctx, self.n_past, keep, discard), "context shift")
        h = self._hist
        h[keep:self.n_past - discard] = h[keep + discard:self.n_past].copy()
        self.n_past -= discard

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
        if n > self.n_ctx:
            raise ContextFullError(f"{n} tokens exceed the context of {self.n_ctx} tokens")
        self._prepare(n)
        return self._eval_raw(toks, all_logits)

    def _eval_raw(self, toks: np.ndarray, all_logits: bool | None) -> np.ndarray | None:
        """Evaluate at n_past with the table in force (None: no logits)."""
        n = toks.size
        out = None
        if all_logits is not None:
            out = np.empty((n, self.n_vocab) if all_logits else (self.n_vocab,), dtype=np.float32)
        rc = lib.clex_eval(self._ctx, ffi.cast("int32_t *", toks.ctypes.data), n, self.n_past,
                           ffi.NULL if out is None else ffi.cast("float *", out.ctypes.data),
                           1 if all_logits else 0)
        check(rc, "eval")
        if out is not None and not np.isfinite(out).all():
            raise self._nonfinite_error()
        self._hist[self.n_past:self.n_past + n] = toks
        self.n_past += n
        return out

    def _nonfinite_weight(self) -> str | None:
        """The first weight holding a NaN/Inf (a block scale or value), found by dequantizing
        every tensor (it reads the whole file), as a message; None if all are finite."""
        for name, t in self.gguf.tensors.items():
            if not lib.clex_type_supported(t.ggml_type) or name == "rope_freqs.weight":
                continue
            r = int(lib.clex_tensor_nonfinite_row(self._weights.tensor(name)))
            if r >= 0:
                return (f"{self.path}: tensor '{name}' row {r} holds NaN or infinite values "
                        f"(a block scale or weight): the file is corrupt")
        return None

    def _nonfinite_error(self) -> ModelError:
        """Non-finite logits: the weight behind them, or an overflow with finite weights. (A NaN
        in a quantized weight usually does not get this far: the 8-bit activations round it
        to 0. check_tensors=True finds those at load.)"""
        return ModelError(self._nonfinite_weight() or
                          f"{self.path}: the logits are not finite, with every weight finite: an "
                          f"overflow (extreme block scales or activations)")

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens to the KV cache; returns the last token's logits, float32 [n_vocab], or
        with all_logits those of every appended token, [len(tokens), n_vocab]."""
        toks = self._tokens(tokens)
        if toks.size == 0:
            raise ModelError("eval needs at least one token")
        with self._lock:
            self._check_open()
            return self._run(toks, all_logits=bool(all_logits))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """One full-sequence forward from an empty cache: float32 [len(ids), n_vocab], every
        position rotated with the table for N = len(ids) (the official full forward). The cache
        then holds ids (n_past == len(ids))."""
        toks = self._tokens(ids)
        if toks.size == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        with self._lock:
            self._check_open()
            self.n_past = 0
            self._target = 0
            return self._run(toks, all_logits=True)

    def logits_blocks(self, ids: Sequence[int], start: int = 0, block: int = 512):
        """The rows [start, len(ids)) of logits(ids), `block` rows at a time: yields
        (position of the first row, float32 [rows, n_vocab]). The whole sequence uses the table
        for N = len(ids), as in logits(); the tokens before `start` are evaluated without logits,
        so a long context needs memory for one block of logits only (perplexity)."""
        toks = self._tokens(ids)
        n = toks.size
        if not 0 <= start < n:
            raise ModelError(f"start {start} must be inside the {n} tokens")
        with self._lock:
            self._check_open()
            self.n_past = 0
            self._target = 0
            if n > self.n_ctx:
                raise ContextFullError(f"{n} tokens exceed the context of {self.n_ctx} tokens")
            self._prepare(n)
            if start:
                self._eval_raw(toks[:start], None)
            want = self._choice
        for pos in range(start, n, max(1, int(block))):
            with self._lock:
                self._check_open()
                if self.n_past != pos or self._choice is not want:
                    raise ModelError("the model was used by someone else during logits_blocks")
                rows = self._eval_raw(toks[pos:pos + block], True)
            yield pos, rows

    def reset(self) -> None:
        """Forget the cached tokens (and a reserve())."""
        with self._lock:
            self.n_past = 0
            self._target = 0

    def truncate(self, n: int) -> None:
        """Keep only the first n cached tokens (and forget a reserve(): call it after this)."""
        with self._lock:
            if not 0 <= n <= self.n_past:
                raise ModelError(f"cannot truncate the cache to {n} tokens (it holds {self.n_past})")
            self.n_past = int(n)
            self._target = 0

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

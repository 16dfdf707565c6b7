"""Parallel sequences in one model, the final hidden states, and saved state.

    pool = SlotPool(path, n_slots=4, n_ctx=2048)
    Session(pool.slots[0]).prefill(ids_a); Session(pool.slots[1]).prefill(ids_b)
    la, lb = pool.step([(pool.slots[0], tok_a), (pool.slots[1], tok_b)])   # one C call

A SlotPool's slots share one clex_model (the weights, mapped once by slot 0, which owns them);
each slot is a Model of its own (`Slot`, a subclass: its own clex_ctx with its KV cache, thread
pool, rope tables and attention scale, its own rope schedule, t and token history), so a Session
drives it for prefill and prompt-cache reuse exactly as it drives a Model. `step` decodes one
token for each of several slots in one clex_eval_batch call: every slot first brings its cache to
the table of its new length (Model._prepare: the schedule's table change, rerotate or recompute,
a context shift), then the one pass runs the matrix products over all the tokens together (each
weight read once per step) and the rope, the KV write and attention of each token with its
slot's own context. The batch runs on the thread pool and scratch of the slot with the lowest
index in it (the C core runs a batch on its first context); the other slots' pools run only
their own prefills and table changes.

hidden_states(model, ids): the rows the LM head would read (after the output norm), for
embeddings. get_state / set_state: a model's KV cache rows (as stored: f32, f16 or Q8_0 blocks), its token
history and rope state, with the model's identity checked on load.
"""
from __future__ import annotations

import hashlib
import json
import struct
from contextlib import ExitStack
from typing import Sequence

import numpy as np

from ..errors import ClexError, ContextFullError, ModelError
from ..gguf import HParams
from .model import Model
from .native import MIN_BATCH, check, ffi, lib

__all__ = ["Slot", "SlotPool", "hidden_states", "get_state", "set_state", "model_identity"]


class Slot(Model):
    """A Model over another Model's weights (owner: a Slot or Model of the same file, which must
    stay open while this one is used); owner None: it maps and owns the weights itself."""

    def __init__(self, path, owner: Model | None = None, **model_kwargs):
        self._owner = owner
        super().__init__(path, **model_kwargs)

    def _create_model(self, hp: HParams):
        o = self._owner
        if o is None:
            return super()._create_model(hp)
        if o._model is None:
            raise ClexError(f"{self.path}: the model whose weights this slot shares is closed")
        if _same_model(model_identity(o)) != _same_model(model_identity(self)):
            raise ModelError(f"{self.path}: a slot needs the same model as its owner {o.path}")
        self._weights = o._weights
        return o._model

    def close(self) -> None:
        with self._lock:
            if self._owner is not None:
                self._model = None          # the owner's: it frees it
            super().close()


class SlotPool:
    """n_slots sequences over one model (docs/architecture.md): `slots` (each a Slot with its own
    KV cache of n_ctx tokens and its own CLEX schedule), `model` (slot 0, which owns the weights:
    its metadata, hparams and vocabulary are everyone's), and `step` (one batched decode).
    exact (True): each step's logits are bit for bit each slot's own slot.eval([token]) (the
    products in groups of tokens the kernels treat as a lone token, the weights still read once
    per step); False: the multi-token kernels over the batch (faster where a type's tile or
    four-row kernels round otherwise than its one-row kernel; equal up to that)."""

    exact = True

    def __init__(self, path, n_slots: int, n_ctx: int, n_threads: int | None = None, **model_kwargs):
        if int(n_slots) < 1:
            raise ModelError(f"n_slots must be at least 1, got {n_slots}")
        # any slot may run a batch of every slot: its scratch must hold n_slots tokens
        # (None: the model's own choice, which is at least MIN_BATCH tokens)
        n_batch = model_kwargs.get("n_batch")
        if n_batch is not None or int(n_slots) > MIN_BATCH:
            model_kwargs["n_batch"] = max(int(n_batch or 0), int(n_slots))
        kw = dict(model_kwargs, n_ctx=n_ctx, n_threads=n_threads)
        self.slots: list[Slot] = []
        try:
            self.slots.append(Slot(path, **kw))
            kw.pop("check_tensors", None)            # slot 0 scanned the weights they share
            for _ in range(1, int(n_slots)):
                self.slots.append(Slot(path, owner=self.slots[0], **kw))
        except BaseException:
            self.close()
            raise
        self.model = self.slots[0]
        self._index = {id(s): i for i, s in enumerate(self.slots)}

    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    def _slot_index(self, slot) -> int:
        i = self._index.get(id(slot))
        if i is None:
            raise ModelError("step: a slot that is not one of this pool's")
        return i

    def step(self, batch: Sequence[tuple[Slot, int]]) -> list[np.ndarray]:
        """Decode one token for each (slot, token id) of `batch` (distinct slots) in one C call;
        returns each one's logits, float32 [n_vocab], in the batch's order. Each slot's cache and
        history grow by its token, as slot.eval([token]) would have made them."""
        items = [(self._slot_index(s), s, int(t)) for s, t in batch]
        if not items:
            return []
        if len({i for i, _, _ in items}) != len(items):
            raise ModelError("step: a slot appears twice in the batch")
        order = sorted(range(len(items)), key=lambda k: items[k][0])   # the lowest index runs it
        slots = [items[k][1] for k in order]
        toks = np.array([items[k][2] for k in order], dtype=np.int32)
        with ExitStack() as stack:
            for s in slots:
                stack.enter_context(s._lock)
            for s, t in zip(slots, toks):
                s._check_open()
                s._tokens([int(t)])               # in the vocabulary, or a one-line error
                try:
                    s._prepare(1)                 # its table for the new length, a shift
                except ContextFullError as e:
                    raise ContextFullError(f"slot {self._slot_index(s)}: {e}") from None
            logits = _eval_batch(slots, toks, self.exact)
            bad = None
            for s, t, row in zip(slots, toks, logits):
                if not np.isfinite(row).all():     # as Model.eval: that slot keeps its cache
                    bad = bad or s
                    continue
                s._hist[s.n_past] = t
                s.n_past += 1
            if bad is not None:
                raise bad._nonfinite_error()
        out: list = [None] * len(items)
        for pos, k in enumerate(order):
            out[k] = logits[pos]
        return out

    def close(self) -> None:
        """Free every slot's cache, then the weights (slot 0's)."""
        for s in reversed(self.slots):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _eval_batch(slots: Sequence[Model], toks: np.ndarray, exact: bool) -> np.ndarray:
    ctxs = ffi.new("clex_ctx *[]", [s._ctx for s in slots])
    pos = np.array([s.n_past for s in slots], dtype=np.int32)
    out = np.empty((len(slots), slots[0].n_vocab), dtype=np.float32)
    check(lib.clex_eval_batch(ctxs, ffi.cast("int32_t *", toks.ctypes.data), ffi.cast("int32_t *", pos.ctypes.data),
                              len(slots), ffi.cast("float *", out.ctypes.data), int(exact)), "batched decode")
    return out


# ---------------------------------------------------------------------------- hidden states

def hidden_states(model: Model, ids: Sequence[int]) -> np.ndarray:
    """The final hidden state of every token of ids after the output norm (what the LM head
    reads): float32 [len(ids), n_embd]. Like model.logits(ids), one forward from an empty cache
    with the table for N = len(ids); the cache then holds ids."""
    toks = model._tokens(ids)
    E = model.hparams.n_embd
    if toks.size == 0:
        return np.empty((0, E), dtype=np.float32)
    with model._lock:
        model._check_open()
        if toks.size > model.n_ctx:
            raise ContextFullError(f"{toks.size} tokens exceed the context of {model.n_ctx} tokens")
        model.n_past = 0
        model._target = 0
        model._prepare(int(toks.size))
        out = np.empty((toks.size, E), dtype=np.float32)
        check(lib.clex_eval_hidden(model._ctx, ffi.cast("int32_t *", toks.ctypes.data), toks.size, 0,
                                   ffi.cast("float *", out.ctypes.data)), "hidden states")
        model._hist[:toks.size] = toks
        model.n_past = int(toks.size)
    if not np.isfinite(out).all():
        raise model._nonfinite_error()
    return out


# ---------------------------------------------------------------------------- saved state

MAGIC = b"CLEXSTATE\x01"


def model_identity(model: Model) -> dict:
    """What a saved state must be loaded into: the file's size, a hash of its header (every key
    and the tensor directory) and a hash of 64 samples of its tensor data."""
    g = model.gguf
    size, start = int(g.file_size), int(g.data_offset)
    data = hashlib.sha256()
    with memoryview(g.buffer) as buf:        # released before the map may be closed
        header = hashlib.sha256(buf[:start]).hexdigest()
        for k in range(64):
            at = start + (size - start) * k // 64
            data.update(buf[at:at + 4096])
    return {"file": model.path, "size": size, "header_sha256": header, "data_sample_sha256": data.hexdigest()}


def _same_model(ident: dict) -> dict:
    return {k: v for k, v in ident.items() if k != "file"}


def _rope_config(model: Model) -> dict:
    s = model.schedule
    return {"method": s.method, "mode": s.mode, "steps": s.steps, "train_length": s.train_length,
            "max_factor": s.max_factor, "log_scale": bool(model.log_scale)}


def get_state(model: Model) -> bytes:
    """The model's sequence as bytes: its identity, the cached token ids, the rope state (t, the
    table the cached keys carry, the schedule) and the KV cache rows of those tokens as stored."""
    with model._lock:
        model._check_open()
        if not model._synced:
            raise ClexError(f"{model.path}: the cache is between two rope tables; nothing to save")
        n = int(model.n_past)
        nbytes = int(lib.clex_ctx_kv_state_bytes(model._ctx, n))
        kv = ffi.new("char[]", max(1, nbytes))
        check(lib.clex_ctx_kv_read(model._ctx, n, kv, nbytes), "save state")
        c = model._choice
        head = {"identity": model_identity(model), "n_past": n, "kv_type": model.kv_type, "kv_bytes": nbytes,
                "rope": _rope_config(model), "t": c.t, "table": [float(x) for x in c.table],
                "attn_factor": c.attn_factor, "n_kv": int(model._n_kv), "target": int(model._target),
                "table_changes": int(model.table_changes)}
        hj = json.dumps(head).encode()
        toks = np.ascontiguousarray(model._hist[:n], dtype="<i4").tobytes()
        return MAGIC + struct.pack("<Q", len(hj)) + hj + toks + bytes(ffi.buffer(kv, nbytes))


def _parse_state(data: bytes) -> tuple[dict, bytes, bytes]:
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ClexError("not a clexrt saved state (bad magic)")
    (hl,) = struct.unpack_from("<Q", data, len(MAGIC))
    at = len(MAGIC) + 8
    try:
        head = json.loads(data[at:at + hl].decode())
        n, nkv = int(head["n_past"]), int(head["kv_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ClexError(f"saved state: its header is damaged ({e})") from None
    at += hl
    if n < 0 or nkv < 0 or len(data) != at + 4 * n + nkv:
        raise ClexError(f"saved state: {len(data)} bytes, its header describes {at + 4 * n + nkv}")
    return head, data[at:at + 4 * n], data[at + 4 * n:]


def _check_loadable(model: Model, head: dict) -> None:
    ident, saved = model_identity(model), head.get("identity", {})
    if _same_model(ident) != {k: saved.get(k) for k in _same_model(ident)}:
        raise ClexError(f"saved state is of another model ({saved.get('file')}), not {model.path}")
    if head.get("kv_type") != model.kv_type:
        raise ClexError(f"saved state has a {head.get('kv_type')} KV cache, this model's is {model.kv_type}")
    if head.get("rope") != _rope_config(model):
        raise ClexError(f"saved state was made with rope {head.get('rope')}, this model runs {_rope_config(model)}")
    n = int(head["n_past"])
    if n > model.n_ctx:
        raise ClexError(f"saved state holds {n} tokens, more than the context of {model.n_ctx}")
    if int(head["kv_bytes"]) != int(lib.clex_ctx_kv_state_bytes(model._ctx, n)):
        raise ClexError(f"saved state: {head['kv_bytes']} bytes of KV cache for {n} tokens, this model "
                        f"stores {int(lib.clex_ctx_kv_state_bytes(model._ctx, n))}")


def set_state(model: Model, data: bytes) -> None:
    """Restore what get_state saved (a ClexError, the model untouched, when it is of another
    model, KV type or rope schedule, or damaged); evaluating on then gives the logits it would
    have given had the state never been saved."""
    head, toks, kv = _parse_state(data)
    with model._lock:
        model._check_open()
        _check_loadable(model, head)
        choice = model.schedule.table_for(float(head["t"]))
        if (not np.array_equal(choice.table, np.asarray(head["table"], np.float32))
                or choice.attn_factor != head["attn_factor"]):
            raise ClexError("saved state: its rope table is not the one this model's schedule gives for "
                            f"t = {head['t']}")
        n = int(head["n_past"])
        ids = np.frombuffer(toks, dtype="<i4").astype(np.int32)
        if n and (ids.min() < 0 or ids.max() >= model.n_vocab):
            raise ClexError("saved state: a token id outside the vocabulary")
        model._synced = False                         # until everything below is in place
        model.n_past = 0
        if n:
            check(lib.clex_ctx_kv_write(model._ctx, n, ffi.from_buffer(kv), len(kv)), "load state")
        model._set_table(choice.table)
        model._choice = choice
        model._n_kv, model._target = int(head["n_kv"]), int(head["target"])
        model._kq = None
        model._set_attn_factor(choice.attn_factor)
        model._hist[:n] = ids
        model.n_past = n
        model.table_changes = int(head["table_changes"])
        model._synced = True

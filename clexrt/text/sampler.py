"""Logits -> one token id.

The chain runs in llama.cpp's default order, so that the same settings mean the same thing here
and there:

    logit bias -> penalties (repeat, frequency, presence over the last n tokens)
      -> top-k -> top-p -> min-p -> temperature -> draw

`temperature <= 0` is greedy: the argmax after bias and penalties (top-k/p and min-p cannot
change the argmax, so they are skipped). A step whose setting is neutral (top_k <= 0,
top_p >= 1, min_p <= 0, repeat_penalty == 1, ...) is skipped entirely.

Two shortcuts keep a 49k vocabulary well under a millisecond, without changing the result:
- top-k selects with np.argpartition, never a full sort;
- top-p and min-p both keep a prefix of the candidates sorted by probability (min-p's cutoff is
  relative to the largest probability, which top-p always keeps, and is unchanged by top-p's
  renormalisation), so their order does not matter: min-p's cheap threshold runs first and only
  the survivors are sorted, while top-p's mass is still measured against all the candidates
  top-k left.

The draw uses a numpy Generator: the same seed gives the same tokens for the same logits.

A `constraint` (text.constrain.Constraint: a grammar) is the one hook: its mask sets the ids the
grammar forbids to -inf right after the logit bias, so every later step (and greedy argmax) only
sees allowed ids; `accept` tells it the id that was chosen and `done` whether it takes no more.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Sampler", "SamplingParams", "apply_penalties", "top_k_ids", "log_softmax"]


@dataclass
class SamplingParams:
    """Sampling settings; the names and defaults are llama.cpp's."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64          # window for the three penalties; 0 disables, -1 = all
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None           # None: a fresh random seed

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p for every token (float64 for stable logprobs)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def apply_penalties(logits: np.ndarray, history: Sequence[int], last_n: int = 64,
                    repeat: float = 1.0, frequency: float = 0.0, presence: float = 0.0) -> None:
    """In place, llama.cpp's rule for each distinct token among the last `last_n` of `history`
    (count = its occurrences there): a positive logit is divided by `repeat`, a negative one
    multiplied by it, then count * frequency + presence is subtracted."""
    if last_n == 0 or len(history) == 0:
        return
    if repeat == 1.0 and frequency == 0.0 and presence == 0.0:
        return
    window = history if last_n < 0 else history[-last_n:]
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    ok = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[ok], counts[ok]
    v = logits[ids]
    if repeat != 1.0:
        with np.errstate(divide="ignore", over="ignore"):   # extreme penalties: +-inf, mapped later
            v = np.where(v <= 0, v * repeat, v / repeat)
    logits[ids] = v - (counts * frequency + presence)


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, in no particular order (all ids when k <= 0 or k >= n)."""
    n = logits.shape[0]
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.argpartition(logits, n - k)[n - k:]


class Sampler:
    """Picks tokens from logits with one fixed set of SamplingParams and its own random stream.

    >>> s = Sampler(temperature=0.7, top_k=40, seed=1)
    >>> tok = s.sample(logits, history=tokens_so_far)
    """

    def __init__(self, params: SamplingParams | None = None, constraint=None, **kw):
        if params is None:
            params = SamplingParams(**kw)
        elif kw:
            raise TypeError("pass either a SamplingParams or keyword settings, not both")
        self.params = params
        bias = params.logit_bias or {}
        self._bias_ids = np.fromiter((int(k) for k in bias), dtype=np.int64, count=len(bias))
        self._bias_vals = np.fromiter((float(v) for v in bias.values()), dtype=np.float32,
                                      count=len(bias))
        self.rng = np.random.default_rng(params.seed)
        self.constraint = constraint      # .mask(logits) in place, .accept(id), .done

    def accept(self, token: int) -> None:
        """The id that was chosen (and will be evaluated): the constraint moves past it."""
        if self.constraint is not None:
            self.constraint.accept(token)

    @property
    def done(self) -> bool:
        """The constraint takes no further token."""
        return self.constraint is not None and self.constraint.done

    def reseed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def adjusted(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """A copy of the logits after logit bias, the constraint's mask and penalties (float32)."""
        p = self.params
        x = np.array(logits, dtype=np.float32, copy=True)
        if self._bias_ids.size:
            ok = (self._bias_ids >= 0) & (self._bias_ids < x.shape[0])
            np.add.at(x, self._bias_ids[ok], self._bias_vals[ok])
        if self.constraint is not None:
            self.constraint.mask(x)
        apply_penalties(x, history, p.penalty_last_n, p.repeat_penalty,
                        p.frequency_penalty, p.presence_penalty)
        if not np.isfinite(x).all():
            # extreme biases or penalties: +inf is the largest float, NaN is never drawn, and
            # -inf (what the constraint forbids) stays
            np.nan_to_num(x, copy=False, nan=-np.inf, posinf=np.finfo(np.float32).max,
                          neginf=-np.inf)
        return x

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The final distribution the draw uses: (ids, probabilities), most likely first (unless
        more than 1024 tokens survive with top-p off: then in no particular order)."""
        p = self.params
        x = self.adjusted(logits, history)
        if p.greedy:
            return np.array([int(np.argmax(x))]), np.ones(1)
        ids = top_k_ids(x, p.top_k)
        vals = x[ids].astype(np.float64)
        # `e` is the softmax numerator against the candidates' max logit, so min-p is `e >= min_p`
        # and top-p's normaliser is e.sum() over everything top-k kept.
        e = np.exp(vals - vals.max())
        z = e.sum()
        if p.min_p > 0:
            keep = e >= p.min_p
            ids, vals, e = ids[keep], vals[keep], e[keep]
        if p.top_p < 1.0:
            ids, vals = _top_p_prefix(ids, vals, e, z, p.top_p)
        elif ids.size <= 1024:
            order = np.argsort(-vals, kind="stable")
            ids, vals = ids[order], vals[order]
        w = np.exp((vals - vals.max()) / p.temperature)
        return ids, w / w.sum()

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """One token id. `history` is every token in the context so far (prompt included), as
        llama.cpp feeds its penalty window."""
        ids, probs = self.candidates(logits, history)
        if ids.size == 1:
            return int(ids[0])
        cum = np.cumsum(probs)
        i = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])


def _top_p_prefix(ids, vals, e, z, top_p):
    """The smallest most-likely-first prefix whose mass (e / z) reaches top_p, found among the
    top m candidates for growing m, so a 49k vocabulary is rarely sorted in full."""
    n = ids.size
    m = min(n, 256)
    while True:
        part = np.argpartition(-vals, m - 1)[:m] if m < n else np.arange(n)
        part = part[np.argsort(-vals[part], kind="stable")]
        cum = np.cumsum(e[part]) / z
        cut = int(np.searchsorted(cum, top_p, side="left")) + 1
        if cut <= m or m == n:
            part = part[:min(cut, m)]
            return ids[part], vals[part]
        m = min(n, m * 8)

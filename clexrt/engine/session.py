"""Session: a model and the token ids in its KV cache, evaluated in Ctrl-C-sized chunks.

The model keeps the only history (``model.tokens``, ``model.n_past`` long): the session reads it
and never holds a copy, so nothing can drift when someone drives the model directly.

It evaluates in chunks (64 tokens per ``model.eval``) so that Ctrl-C lands between chunks even in
a long prompt, and when anything interrupts an evaluation (KeyboardInterrupt, ContextFullError,
...) it cuts the cache back to the last chunk that completed, so the next call starts from a
consistent state. A new prompt that shares a prefix with the cache only evaluates the rest.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..errors import ContextFullError

__all__ = ["LanguageModel", "Session", "common_prefix", "PROMPT_CHUNK"]

# Tokens per model.eval call while reading a prompt: small enough that Ctrl-C answers quickly,
# large enough that the batched forward pass stays efficient.
PROMPT_CHUNK = 64


class LanguageModel(Protocol):
    """What a Session (and so generation, chat and the Llama API) needs of a model; Model is one."""

    n_ctx: int
    n_vocab: int
    context_shift: bool      # True: a full context drops older tokens instead of raising

    @property
    def n_past(self) -> int: ...

    @property
    def tokens(self) -> np.ndarray: ...          # the cached ids, n_past of them

    def eval(self, tokens: Sequence[int]) -> np.ndarray: ...     # logits of the last id

    def logits(self, ids: Sequence[int]) -> np.ndarray: ...      # full forward, every row

    def reserve(self, n_total: int) -> None: ...

    def truncate(self, n: int) -> None: ...

    def reset(self) -> None: ...


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.nonzero(x != y)[0]
    return int(diff[0]) if diff.size else n


class Session:
    """A model and the token ids its KV cache holds (``tokens``: the model's own history)."""

    def __init__(self, model: LanguageModel, chunk: int = PROMPT_CHUNK):
        self.model = model
        self.chunk = max(1, int(chunk))
        self.n_prefill_eval = 0          # tokens the last prefill evaluated (the rest was cached)

    @property
    def tokens(self) -> list[int]:
        return [int(t) for t in self.model.tokens]

    @property
    def n_ctx(self) -> int:
        return int(self.model.n_ctx)

    @property
    def n_past(self) -> int:
        return int(self.model.n_past)

    @property
    def shifts(self) -> bool:
        """Whether the model makes room itself when the context is full (Model(context_shift=True)):
        then evals never fail for length, and the cache drops older tokens after the first n_keep."""
        return bool(self.model.context_shift)

    def reset(self) -> None:
        self.model.reset()

    def truncate(self, n: int) -> None:
        self.model.truncate(max(0, min(int(n), self.n_past)))

    def _recover(self, n: int) -> None:
        """Back to the first n cached tokens after an interrupted eval."""
        try:
            if self.n_past >= n:
                self.model.truncate(n)
                return
        except Exception:
            pass
        self.model.reset()

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens to the cache, `chunk` at a time; returns the last token's logits.
        Raises ContextFullError (cache untouched) when they do not fit."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("eval needs at least one token")
        if not self.shifts and self.n_past + len(tokens) > self.n_ctx:
            raise ContextFullError(
                f"{self.n_past} cached + {len(tokens)} new tokens exceed the context "
                f"of {self.n_ctx} tokens")
        logits = None
        for i in range(0, len(tokens), self.chunk):
            before = self.n_past
            try:
                logits = self.model.eval(tokens[i:i + self.chunk])
            except BaseException:
                self._recover(before)
                raise
        return logits

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """Makes the cache hold exactly `prompt` and returns the logits after its last token,
        re-using the longest prefix already cached in whole chunks (at least one token is
        evaluated, for the logits). Whole chunks, as the server's slots do: the rest is then
        evaluated in the chunks a fresh prefill uses, so the logits do not depend on what the
        cache held (prefill and one-token decoding round differently: a regenerated reply, or a
        reply after /clear, is the first one's)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if len(prompt) > self.n_ctx:
            raise ContextFullError(
                f"the prompt is {len(prompt)} tokens, longer than the context of {self.n_ctx} "
                f"tokens (raise n_ctx or shorten the prompt)")
        keep = min(common_prefix(self.model.tokens, prompt), len(prompt) - 1) // self.chunk * self.chunk
        if keep < self.n_past:
            self.truncate(keep)
        self.n_prefill_eval = len(prompt) - keep
        # the whole prompt is one forward at one rope table (the official semantics), even
        # though it is evaluated a chunk at a time so Ctrl-C lands quickly
        self.model.reserve(len(prompt))
        return self.eval(prompt[keep:])

"""Prompt ids -> a stream of text pieces, with the stop conditions.

Two objects:

- :class:`Session` is a model plus the ids in its KV cache. It evaluates in chunks (64 tokens
  per ``model.eval``) so that Ctrl-C lands between chunks even in a long prompt, and when
  anything interrupts an evaluation (KeyboardInterrupt, ContextFullError, ...) it cuts the cache
  back to the last chunk that completed, so the next call starts from a consistent state. A new
  prompt that shares a prefix with the cache only evaluates the rest.
- :class:`Generation` samples tokens and yields :class:`Piece` s of text. Text is decoded with
  the tokenizer's stream decoder (no broken UTF-8), and any tail that could be the start of a
  stop string is held back until it is known not to be one, so a stop string is never emitted,
  even when it is split across tokens. It stops on an end-of-generation id (EOS/EOT, never
  emitted), a stop string, `max_tokens`, or a full context (finish_reason "length").

The model contract: ``n_ctx``, ``n_past``, ``eval(ids) -> logits of the last id``,
``truncate(n)``, ``reset()``; ``logits(ids)`` for prompt logprobs.
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from .errors import ContextFullError
from .sampler import Sampler, log_softmax

__all__ = ["Session", "Generation", "Piece", "TokenInfo", "stream_decoder", "common_prefix",
           "PROMPT_CHUNK"]

# Tokens per model.eval call while reading a prompt: small enough that Ctrl-C answers quickly,
# large enough that the batched forward pass stays efficient.
PROMPT_CHUNK = 64


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.nonzero(x != y)[0]
    return int(diff[0]) if diff.size else n


class Session:
    """A model and the token ids its KV cache holds (``tokens``, always ``model.n_past`` long)."""

    def __init__(self, model, chunk: int = PROMPT_CHUNK):
        self.model = model
        self.chunk = max(1, int(chunk))
        self.tokens: list[int] = []
        self.n_prefill_eval = 0          # tokens the last prefill evaluated (the rest was cached)

    @property
    def n_ctx(self) -> int:
        return int(self.model.n_ctx)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def shifts(self) -> bool:
        """Whether the model makes room itself when the context is full (Model(context_shift=True)):
        then evals never fail for length, and the cache drops older tokens after the first n_keep."""
        return bool(getattr(self.model, "context_shift", False))

    def reset(self) -> None:
        self.tokens.clear()
        self.model.reset()

    def truncate(self, n: int) -> None:
        n = max(0, min(int(n), len(self.tokens)))
        del self.tokens[n:]
        self.model.truncate(n)

    def _sync(self) -> None:
        # Someone may have driven the model directly: trust only what both sides agree on.
        n_past = int(self.model.n_past)
        if n_past != len(self.tokens):
            keep = min(n_past, len(self.tokens))
            del self.tokens[keep:]
            self.model.truncate(keep)

    def _recover(self, n: int) -> None:
        """Back to the first n cached tokens after an interrupted eval."""
        try:
            if int(self.model.n_past) >= n:
                del self.tokens[n:]
                self.model.truncate(n)
                return
        except Exception:
            pass
        self.tokens.clear()
        self.model.reset()

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens to the cache, `chunk` at a time; returns the last token's logits.
        Raises ContextFullError (cache untouched) when they do not fit."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("eval needs at least one token")
        self._sync()
        if not self.shifts and len(self.tokens) + len(tokens) > self.n_ctx:
            raise ContextFullError(
                f"{len(self.tokens)} cached + {len(tokens)} new tokens exceed the context "
                f"of {self.n_ctx} tokens")
        logits = None
        for i in range(0, len(tokens), self.chunk):
            part = tokens[i:i + self.chunk]
            before = len(self.tokens)
            try:
                logits = self.model.eval(part)
                if self.shifts and int(self.model.n_past) != before + len(part):
                    self.tokens[:] = [int(t) for t in self.model.tokens]     # it shifted
                else:
                    self.tokens.extend(part)
            except BaseException:
                self._recover(before)
                raise
        return logits

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """Makes the cache hold exactly `prompt` and returns the logits after its last token,
        re-using the longest prefix already cached (at least one token is evaluated, for the
        logits)."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if len(prompt) > self.n_ctx:
            raise ContextFullError(
                f"the prompt is {len(prompt)} tokens, longer than the context of {self.n_ctx} "
                f"tokens (raise n_ctx or shorten the prompt)")
        self._sync()
        keep = min(common_prefix(self.tokens, prompt), len(prompt) - 1)
        if keep < len(self.tokens):
            self.truncate(keep)
        self.n_prefill_eval = len(prompt) - keep
        # the whole prompt is one forward at one rope table (the official semantics), even
        # though it is evaluated a chunk at a time so Ctrl-C lands quickly
        reserve = getattr(self.model, "reserve", None)
        if reserve is not None:
            reserve(len(prompt))
        return self.eval(prompt[keep:])


class _Utf8StreamDecoder:
    """Fallback stream decoder from token bytes: holds an incomplete UTF-8 sequence back."""

    def __init__(self, tokenizer):
        self._bytes = tokenizer.token_to_bytes
        self._control = getattr(tokenizer, "is_control", lambda t: False)
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return "" if self._control(token) else self._dec.decode(self._bytes(token))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def stream_decoder(tokenizer):
    """An object with ``feed(token_id) -> str`` and ``flush() -> str``: the tokenizer's own
    StreamDecoder when it has one, else a UTF-8 decoder over ``token_to_bytes``."""
    make = getattr(tokenizer, "stream_decoder", None) or getattr(tokenizer, "StreamDecoder", None)
    if make is not None:
        try:
            return make()
        except TypeError:
            return make(tokenizer)
    return _Utf8StreamDecoder(tokenizer)


@dataclass
class TokenInfo:
    """One generated token. `text` is what the stream decoder gave for it ('' while it ends
    inside a UTF-8 character); `offset` is where that text starts in the completion."""
    id: int
    text: str = ""
    offset: int = 0
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None      # the n most likely ids and their logprobs


@dataclass
class Piece:
    """A run of text ready to show, and the tokens whose text starts in it."""
    text: str
    tokens: list[TokenInfo] = field(default_factory=list)


def _hold_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _find_stop(text: str, stops: Sequence[str]) -> int:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


class Generation:
    """Iterate to get :class:`Piece` s; afterwards `finish_reason` is "stop" or "length" and
    `tokens` holds the generated ids (EOS/EOT excluded, tokens past a stop string included).

    max_tokens <= 0 or None means "until the context is full". `logprobs=n` attaches to every
    token its logprob and the n most likely alternatives (from the raw model distribution).
    """

    def __init__(self, session: Session, tokenizer, prompt: Sequence[int], sampler: Sampler,
                 max_tokens: int | None = 16, stop: str | Iterable[str] | None = None,
                 logprobs: int | None = None, eog_ids: Iterable[int] | None = None):
        self.session = session
        self.tokenizer = tokenizer
        self.prompt = [int(t) for t in prompt]
        self.sampler = sampler
        self.max_tokens = max_tokens if max_tokens is not None and max_tokens > 0 else None
        if isinstance(stop, str):
            stop = [stop]
        self.stop = [s for s in (stop or []) if s]
        self.n_logprobs = logprobs
        if eog_ids is None:
            eog_ids = getattr(tokenizer, "eog_ids", None) or {
                getattr(tokenizer, "eos_id", None), getattr(tokenizer, "eot_id", None)}
        self.eog_ids = {int(t) for t in eog_ids if t is not None and t >= 0}
        self.finish_reason: str | None = None
        self.tokens: list[int] = []
        self.text = ""                   # everything emitted so far
        self.n_prompt_eval = 0           # prompt tokens actually evaluated (after cache reuse)
        self.t_prompt = 0.0              # seconds
        self.t_gen = 0.0
        self.n_gen_eval = 0
        self._started = False

    # -- bookkeeping for the text not yet emitted ---------------------------------------------
    def _take(self, pending: str, held: list[tuple[TokenInfo, int]], n: int, final: bool):
        """Emits pending[:n] with the tokens whose text starts in it (all of them when
        `final`); returns (piece, rest of pending, tokens still held)."""
        out, rest = [], []
        base = len(self.text)
        for t, start in held:
            if final or start < n:
                t.offset = base + min(start, n)
                out.append(t)
            else:
                rest.append((t, start - n))
        text = pending[:n]
        self.text += text
        return Piece(text, out), pending[n:], rest

    def _logprob_info(self, logits: np.ndarray, tok: int) -> tuple[float, list[tuple[int, float]]]:
        lp = log_softmax(logits)
        n = int(self.n_logprobs)
        top: list[tuple[int, float]] = []
        if n > 0:
            k = min(n, lp.shape[0])
            idx = np.argpartition(-lp, k - 1)[:k]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            top = [(int(i), float(lp[i])) for i in idx]
        return float(lp[tok]), top

    def __iter__(self) -> Iterator[Piece]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once")
        self._started = True
        session, sampler = self.session, self.sampler
        t0 = time.perf_counter()
        logits = session.prefill(self.prompt)
        self.n_prompt_eval = session.n_prefill_eval
        self.t_prompt = time.perf_counter() - t0
        t0 = time.perf_counter()
        history = list(self.prompt)
        decoder = stream_decoder(self.tokenizer)
        pending = ""
        held: list[tuple[TokenInfo, int]] = []
        try:
            while True:
                if self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
                    self.finish_reason = "length"
                    break
                tok = sampler.sample(logits, history)
                if tok in self.eog_ids:
                    self.finish_reason = "stop"
                    break
                self.tokens.append(tok)
                history.append(tok)
                info = TokenInfo(tok)
                if self.n_logprobs is not None:
                    info.logprob, info.top = self._logprob_info(logits, tok)
                info.text = decoder.feed(tok)
                held.append((info, len(pending)))
                pending += info.text
                if self.stop:
                    cut = _find_stop(pending, self.stop)
                    if cut >= 0:
                        piece, pending, held = self._take(pending, held, cut, final=False)
                        if piece.text or piece.tokens:
                            yield piece
                        pending, held = "", []
                        self.finish_reason = "stop"
                        return
                    n_emit = len(pending) - _hold_back(pending, self.stop)
                else:
                    n_emit = len(pending)
                if n_emit > 0:
                    piece, pending, held = self._take(pending, held, n_emit, final=False)
                    yield piece
                if self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
                    self.finish_reason = "length"
                    break
                if session.n_past >= session.n_ctx and not session.shifts:
                    self.finish_reason = "length"
                    break
                logits = session.eval([tok])
                self.n_gen_eval += 1
            # The end: whatever the decoder still holds, and the held-back tail, go out now
            # (cut at a stop string that the last bytes may complete).
            pending += decoder.flush()
            cut = _find_stop(pending, self.stop) if self.stop else -1
            if cut >= 0:
                self.finish_reason = "stop"
                piece, pending, held = self._take(pending, held, cut, final=False)
            else:
                piece, pending, held = self._take(pending, held, len(pending), final=True)
            if piece.text or piece.tokens:
                yield piece
        finally:
            self.t_gen = time.perf_counter() - t0

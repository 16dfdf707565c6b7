"""Prompt ids -> a stream of text pieces, with the stop conditions.

:class:`Generation` runs over an engine Session (clexrt.engine.session: the model and its
cached ids, evaluated in Ctrl-C-sized chunks). It samples tokens and yields :class:`Piece` s of
text. Text is decoded with the tokenizer's stream decoder (no broken UTF-8), and any tail that
could be the start of a stop string is held back until it is known not to be one, so a stop
string is never emitted, even when it is split across tokens. It stops on an end-of-generation id
(EOS/EOT, never emitted), a stop string, `max_tokens`, or a full context (finish_reason
"length").

The model contract is engine.session.LanguageModel; the tokenizer's is TextTokenizer below.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from ..engine.session import Session
from .sampler import Sampler, log_softmax

__all__ = ["Generation", "Piece", "TokenInfo", "TextTokenizer", "StreamDecoder"]


class StreamDecoder(Protocol):
    def feed(self, token_id: int) -> str: ...       # the text this token completes

    def flush(self) -> str: ...                      # what is still held back, at the end


class TextTokenizer(Protocol):
    """What generation needs of a tokenizer; text.tokenizer.Tokenizer is one."""

    eog_ids: frozenset[int]                          # ids that end a generation (EOS, EOT, ...)

    def stream_decoder(self) -> StreamDecoder: ...   # no broken UTF-8 between tokens


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

    def __init__(self, session: Session, tokenizer: TextTokenizer, prompt: Sequence[int], sampler: Sampler,
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
            eog_ids = tokenizer.eog_ids
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
        session = self.session
        t0 = time.perf_counter()
        logits = session.prefill(self.prompt)
        self.n_prompt_eval = session.n_prefill_eval
        self.t_prompt = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            while True:
                room = session.shifts or session.n_past < session.n_ctx
                pieces, tok = self.step(logits, room=room)
                yield from pieces
                if tok is None:
                    return
                logits = session.eval([tok])
                self.n_gen_eval += 1
        finally:
            self.t_gen = time.perf_counter() - t0

    # -- one token at a time (the server's slots drive this directly) ---------------------------
    def start(self) -> None:
        """Before the first step: the prompt is in the model and its logits are at hand."""
        if self._started:
            raise RuntimeError("a Generation can be iterated only once")
        self._started = True
        self._history = list(self.prompt)
        self._decoder = self.tokenizer.stream_decoder()
        self._pending = ""
        self._held: list[tuple[TokenInfo, int]] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def step(self, logits: np.ndarray, room: bool = True) -> tuple[list[Piece], int | None]:
        """One token from `logits` (those after the prompt or after the last id returned). Returns
        the pieces ready to show and the id to evaluate next, or None when the generation is over
        (finish_reason set, the held-back tail emitted). `room`: whether the model can take one
        more token (False: the context is full, finish_reason "length" after this token)."""
        if not self._started:
            self.start()
        if self.finish_reason is not None:
            return [], None
        out: list[Piece] = []
        if self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
            return self._end("length", out), None
        sampler = self.sampler
        tok = sampler.sample(logits, self._history)
        if tok in self.eog_ids:
            return self._end("stop", out), None
        sampler.accept(tok)
        self.tokens.append(tok)
        self._history.append(tok)
        info = TokenInfo(tok)
        if self.n_logprobs is not None:
            info.logprob, info.top = self._logprob_info(logits, tok)
        info.text = self._decoder.feed(tok)
        self._held.append((info, len(self._pending)))
        self._pending += info.text
        if self.stop:
            cut = _find_stop(self._pending, self.stop)
            if cut >= 0:
                piece, _, _ = self._take(self._pending, self._held, cut, final=False)
                if piece.text or piece.tokens:
                    out.append(piece)
                self._pending, self._held = "", []
                self.finish_reason = "stop"
                return out, None
            n_emit = len(self._pending) - _hold_back(self._pending, self.stop)
        else:
            n_emit = len(self._pending)
        if n_emit > 0:
            piece, self._pending, self._held = self._take(self._pending, self._held, n_emit,
                                                          final=False)
            out.append(piece)
        if sampler.done:                   # the grammar is complete and takes nothing more
            return self._end("stop", out), None
        if (self.max_tokens is not None and len(self.tokens) >= self.max_tokens) or not room:
            return self._end("length", out), None
        return out, tok

    def _end(self, reason: str, out: list[Piece]) -> list[Piece]:
        """Whatever the decoder still holds, and the held-back tail, go out now (cut at a stop
        string that the last bytes may complete)."""
        self.finish_reason = reason
        pending = self._pending + self._decoder.flush()
        cut = _find_stop(pending, self.stop) if self.stop else -1
        if cut >= 0:
            self.finish_reason = "stop"
            piece, _, _ = self._take(pending, self._held, cut, final=False)
        else:
            piece, _, _ = self._take(pending, self._held, len(pending), final=True)
        self._pending, self._held = "", []
        if piece.text or piece.tokens:
            out.append(piece)
        return out

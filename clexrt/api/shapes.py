"""OpenAI's result and stream-chunk dicts (completion, chat completion, embeddings), as
llama-cpp-python and llama-server give them; `Llama` and the server both build them here.

A run is the stream of events a generation gives: ("piece", (text, logprobs dict or None)) and
finally ("done", Generation)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..text.sampler import log_softmax

__all__ = ["usage", "chat_logprobs", "completion_result", "completion_stream", "chat_result",
           "chat_stream", "embeddings_result", "CompletionStream", "ChatStream",
           "CompletionResult", "ChatResult"]


def top_dict(token_str, lp: float, tok: int, top) -> dict[str, float]:
    d = {token_str(i): v for i, v in top}
    d[token_str(tok)] = lp
    return d


def logprobs_obj(token_str, tokens, offsets, lps, tops) -> dict:
    return {"tokens": [token_str(t) for t in tokens], "text_offset": list(offsets),
            "token_logprobs": list(lps), "top_logprobs": list(tops)}


def echo_logprobs(rows, prompt_tokens, n_top, decoder, token_str) -> tuple[str, dict]:
    """Prompt text and logprobs for echo=True from the prompt's logits `rows` (the first token
    has none, as in OpenAI)."""
    text, offsets, lps, tops = "", [], [None], [None]
    for i, t in enumerate(prompt_tokens):
        offsets.append(len(text))
        text += decoder.feed(t)
        if i:
            lp = log_softmax(rows[i - 1])
            k = min(max(n_top, 0), lp.shape[0])
            idx = np.argsort(-lp, kind="stable")[:k]
            lps.append(float(lp[t]))
            tops.append(top_dict(token_str, float(lp[t]), t, [(int(j), float(lp[j])) for j in idx]))
    text += decoder.flush()
    return text, logprobs_obj(token_str, prompt_tokens, offsets, lps, tops)


def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion}


def gen_usage(gen) -> dict:
    return usage(len(gen.prompt), len(gen.tokens))


def _add_logprobs(a: dict | None, b: dict | None) -> dict | None:
    if b is None:
        return a
    return b if a is None else {k: a[k] + b[k] for k in a}


def chat_logprobs(lp: dict) -> list[dict]:
    """A completion-style logprobs dict as chat's list of {token, logprob, top_logprobs}."""
    out = []
    for tok, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        out.append({"token": tok, "logprob": v, "bytes": list(tok.encode("utf-8")),
                    "top_logprobs": [{"token": t, "logprob": x, "bytes": list(t.encode("utf-8"))}
                                     for t, x in (top or {}).items()]})
    return out


class CompletionStream:
    """Completion chunks, pushed one event at a time (the server feeds events as they come)."""

    def __init__(self, head: dict, with_usage: bool = False):
        self.head, self.with_usage = head, with_usage

    def start(self) -> list[dict]:
        return []

    def feed(self, kind: str, payload) -> list[dict]:
        if kind == "piece":
            return [dict(self.head, choices=[{"text": payload[0], "index": 0,
                                              "logprobs": payload[1], "finish_reason": None}])]
        last = dict(self.head, choices=[{"text": "", "index": 0, "logprobs": None,
                                         "finish_reason": payload.finish_reason}])
        if self.with_usage:
            last["usage"] = gen_usage(payload)
        return [last]


class ChatStream:
    """Chat chunks: the role, the content deltas, and a last chunk with the finish_reason (and
    the usage when `with_usage`). With tools in force the reply is held until it is complete,
    then sent as one delta: content, or tool_calls (each with its index). `plan`:
    text.tools.ChatPlan (it parses tool calls out of the reply)."""

    def __init__(self, head: dict, plan, with_usage: bool = False):
        self.head = dict(head, object="chat.completion.chunk")
        self.plan, self.with_usage, self.held = plan, with_usage, ""

    def _chunk(self, delta, reason=None, lp=None):
        return dict(self.head, choices=[{"index": 0, "delta": delta, "logprobs": lp,
                                         "finish_reason": reason}])

    def start(self) -> list[dict]:
        return [self._chunk({"role": "assistant"})]

    def feed(self, kind: str, payload) -> list[dict]:
        if kind == "piece":
            if self.plan.tools:
                self.held += payload[0]
                return []
            if not (payload[0] or payload[1]):
                return []
            lp = ({"content": chat_logprobs(payload[1]), "refusal": None}
                  if payload[1] is not None else None)
            return [self._chunk({"content": payload[0]}, lp=lp)]
        out, reason = [], None
        if self.plan.tools:
            message, reason = self.plan.message(self.held)
            if message.get("tool_calls"):
                out.append(self._chunk({"tool_calls": [dict(c, index=i) for i, c in
                                                       enumerate(message["tool_calls"])]}))
            elif self.held:
                out.append(self._chunk({"content": self.held}))
        last = self._chunk({}, reason or payload.finish_reason)
        if self.with_usage:
            last["usage"] = gen_usage(payload)
        return out + [last]


class CompletionResult:
    """One completion dict from the events (feed them all, then `result`)."""

    def __init__(self, head: dict):
        self.head, self.text, self.lp, self.gen = head, "", None, None

    def feed(self, kind: str, payload) -> None:
        if kind == "piece":
            self.text += payload[0]
            self.lp = _add_logprobs(self.lp, payload[1])
        else:
            self.gen = payload

    def result(self) -> dict:
        return dict(self.head, choices=[{"text": self.text, "index": 0, "logprobs": self.lp,
                                         "finish_reason": self.gen.finish_reason}],
                    usage=gen_usage(self.gen))


class ChatResult(CompletionResult):
    def __init__(self, head: dict, plan, want_logprobs: bool = False):
        super().__init__(head)
        self.plan, self.want_logprobs, self.content_lp = plan, want_logprobs, []

    def feed(self, kind: str, payload) -> None:
        if kind == "piece" and payload[1] is not None:
            self.content_lp += chat_logprobs(payload[1])
        super().feed(kind, payload)

    def result(self) -> dict:
        message, reason = self.plan.message(self.text)
        return dict(self.head, object="chat.completion",
                    choices=[{"index": 0, "message": message,
                              "logprobs": {"content": self.content_lp, "refusal": None}
                              if self.want_logprobs else None,
                              "finish_reason": reason or self.gen.finish_reason}],
                    usage=gen_usage(self.gen))


def _drain(shaper, run: Iterable) -> Iterator[dict]:
    yield from shaper.start()
    for kind, payload in run:
        yield from shaper.feed(kind, payload)


def _collect(shaper, run: Iterable) -> dict:
    for kind, payload in run:
        shaper.feed(kind, payload)
    return shaper.result()


def completion_stream(head: dict, run: Iterable, with_usage: bool = False) -> Iterator[dict]:
    return _drain(CompletionStream(head, with_usage), run)


def chat_stream(head: dict, run: Iterable, plan, with_usage: bool = False) -> Iterator[dict]:
    return _drain(ChatStream(head, plan, with_usage), run)


def completion_result(head: dict, run: Iterable) -> dict:
    return _collect(CompletionResult(head), run)


def chat_result(head: dict, run: Iterable, plan, want_logprobs: bool) -> dict:
    return _collect(ChatResult(head, plan, want_logprobs), run)


def embeddings_result(model: str, vectors: list, n_tokens: int) -> dict:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "embedding": [float(x) for x in v] if getattr(v, "ndim", 1) == 1
                      else [[float(x) for x in row] for row in v], "index": i}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

"""Request bodies -> jobs for the scheduler: prompt ids, the sampler (with its grammar), the
Generation a slot runs. Runs in a worker thread (tokenizing, rendering a chat template and
building a grammar can take milliseconds to a second), never on the event loop or the model
thread."""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from ..api import shapes
from ..errors import ContextFullError
from ..text.generate import Generation
from ..text.sampler import Sampler, SamplingParams
from .errors import ApiError

__all__ = ["Served", "Prepared", "prepare_completion", "prepare_chat", "check_model", "fits",
           "piece_event"]


@dataclass
class Served:
    """What the routes need of the loaded model."""
    model_id: str
    path: str
    tokenizer: object
    template: object
    metadata: dict
    n_ctx: int                     # per slot
    n_vocab: int
    pooling: str
    created: int
    penalty_last_n: int = 64

    def aliases(self) -> set[str]:
        return {self.model_id, self.path, os.path.basename(self.path)}


@dataclass
class Prepared:
    """A request ready to submit: its Generation (run by a slot), the response's head, how to
    shape events (a shapes.*Stream / *Result factory) and the echoed prompt text, if any."""
    gen: Generation
    head: dict
    stream: object
    result: object
    echo: str | None = None
    include_usage: bool = False


def check_model(served: Served, name: str | None) -> None:
    if name is not None and name not in served.aliases():
        raise ApiError(404, f"the model {name!r} does not exist: this server runs "
                       f"{served.model_id!r}", "model_not_found", "model")


def fits(served: Served, ids: list[int]) -> None:
    if not ids:
        raise ApiError(400, "the prompt has no tokens", "invalid_request", "prompt")
    bad = [t for t in ids if not 0 <= int(t) < served.n_vocab]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary "
                       f"(0..{served.n_vocab - 1})", "invalid_request", "prompt")
    if len(ids) > served.n_ctx:
        raise ContextFullError(f"the prompt is {len(ids)} tokens, longer than the context of "
                               f"{served.n_ctx} tokens per slot")


def _sampler(served: Served, req, grammar: str | None, end_ids=()) -> Sampler:
    constraint = None
    if grammar:
        from ..text.constrain import Constraint

        constraint = Constraint(served.tokenizer, grammar, end_ids)
    try:
        bias = {int(k): float(v) for k, v in (req.logit_bias or {}).items()}
    except ValueError:
        raise ApiError(400, "logit_bias keys must be token ids", "invalid_request",
                       "logit_bias") from None
    if any(not -100.0 <= v <= 100.0 for v in bias.values()):      # OpenAI's range
        raise ApiError(400, "logit_bias values must be between -100 and 100", "invalid_request",
                       "logit_bias")
    p = SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                       min_p=req.min_p, repeat_penalty=req.repeat_penalty,
                       frequency_penalty=req.frequency_penalty,
                       presence_penalty=req.presence_penalty, penalty_last_n=served.penalty_last_n,
                       logit_bias=bias, seed=req.seed)
    return Sampler(p, constraint=constraint)


def _head(served: Served, kind: str, prefix: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4()}", "object": kind, "created": int(time.time()),
            "model": served.model_id}


def _stops(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _usage_opt(req) -> bool:
    return bool((req.stream_options or {}).get("include_usage"))


def prepare_completion(served: Served, req) -> Prepared:
    from ..text.constrain import grammar_for

    check_model(served, req.model)
    tok = served.tokenizer
    if isinstance(req.prompt, str):
        if req.prompt == "":
            ids = [tok.bos_id] if tok.bos_id is not None and tok.bos_id >= 0 else []
        else:
            ids = list(tok.encode(req.prompt, add_bos=bool(getattr(tok, "add_bos", False)),
                                  special=True))
    else:
        ids = [int(t) for t in req.prompt]
    fits(served, ids)
    if req.echo and req.logprobs is not None:
        raise ApiError(400, "echo with logprobs is not supported by the server", "invalid_request",
                       "echo")
    sampler = _sampler(served, req, grammar_for(req.response_format, req.grammar))
    gen = Generation(None, tok, ids, sampler, max_tokens=req.max_tokens, stop=_stops(req.stop),
                     logprobs=req.logprobs)
    head = _head(served, "text_completion", "cmpl")
    echo = None
    if req.echo:
        echo = req.prompt if isinstance(req.prompt, str) else tok.decode(ids)
    use = _usage_opt(req)
    return Prepared(gen, head, lambda: shapes.CompletionStream(head, with_usage=True),
                    lambda: shapes.CompletionResult(head), echo, use)


def prepare_chat(served: Served, req) -> Prepared:
    from ..text.tools import plan_chat

    check_model(served, req.model)
    tok = served.tokenizer
    plan = plan_chat(served.template, tok, req.messages, req.tools, req.tool_choice,
                     req.response_format, req.grammar)
    fits(served, plan.prompt)
    sampler = _sampler(served, req, plan.grammar, plan.end_ids)
    n_lp = (req.top_logprobs or 0) if req.logprobs else None
    eog = set(getattr(tok, "eog_ids", ())) | set(plan.end_ids)
    gen = Generation(None, tok, plan.prompt, sampler,
                     max_tokens=req.max_completion_tokens or req.max_tokens,
                     stop=_stops(req.stop) + plan.stop, logprobs=n_lp, eog_ids=eog)
    head = _head(served, "chat.completion", "chatcmpl")
    return Prepared(gen, head, lambda: shapes.ChatStream(head, plan, with_usage=True),
                    lambda: shapes.ChatResult(head, plan, bool(req.logprobs)),
                    None, _usage_opt(req))


def piece_event(served: Served, gen: Generation, piece) -> tuple[str, dict | None]:
    """A generated Piece as the ("piece", payload) payload: (text, logprobs dict or None)."""
    if gen.n_logprobs is None:
        return piece.text, None

    def token_str(t):
        return served.tokenizer.token_to_bytes(int(t), False).decode("utf-8", errors="ignore")

    ts = piece.tokens
    return piece.text, shapes.logprobs_obj(
        token_str, [t.id for t in ts], [t.offset for t in ts], [t.logprob for t in ts],
        [shapes.top_dict(token_str, t.logprob, t.id, t.top) for t in ts])

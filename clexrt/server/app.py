"""The FastAPI application: OpenAI's /v1 routes and llama-server's /health, /tokenize and
/detokenize, over one Scheduler (scheduler.py).

Handlers are async and never wait on the model: a request is prepared in a worker thread
(requests.py), submitted, and its events are awaited on an asyncio.Queue the model thread
fills. A streamed reply is server-sent events (``data: {chunk}``, then ``data: [DONE]``); when
the client goes away, the stream's generator is closed and its job cancelled, so its slot is
free before the next token.
"""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..api import shapes
from ..api.embeddings import embed_ids
from .errors import ApiError, Guard, as_api_error, error_body, install_handlers
from .requests import Served, check_model, fits, prepare_chat, prepare_completion
from .scheduler import Job, Scheduler
from .schemas import (ChatRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      TokenizeRequest)

__all__ = ["create_app"]


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _prepare(fn, served, req):
    try:
        return await run_in_threadpool(fn, served, req)
    except Exception as e:
        raise as_api_error(e) from None


def _submit(scheduler: Scheduler, job: Job) -> Job:
    try:
        return scheduler.submit(job)
    except Exception as e:
        raise as_api_error(e) from None


async def _whole(job: Job, shaper, echo: str | None):
    """Every event of a job into a result shaper; the job is cancelled if this is."""
    try:
        if echo is not None:
            shaper.feed("piece", (echo, None))
        while True:
            kind, payload = await job.events.get()
            if kind == "error":
                raise as_api_error(payload)
            shaper.feed(kind, payload)
            if kind == "done":
                return shaper.result()
    finally:
        job.cancel()


async def _stream(job: Job, shaper, echo: str | None, include_usage: bool):
    try:
        for c in shaper.start():
            yield _sse(c)
        if echo is not None:
            for c in shaper.feed("piece", (echo, None)):
                yield _sse(c)
        while True:
            kind, payload = await job.events.get()
            if kind == "error":
                e = as_api_error(payload)
                yield _sse(error_body(e.status, e.message, e.code, e.param))
                break
            for c in shaper.feed(kind, payload):
                if "usage" in c and include_usage:
                    usage = c.pop("usage")
                    yield _sse(c)
                    c = dict(c, choices=[], usage=usage)
                yield _sse(c)
            if kind == "done":
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()                # a client gone mid-stream frees its slot at the next token


async def _watch_disconnect(request: Request, job: Job, every: float = 0.2) -> None:
    """A client that leaves before its (unstreamed) reply cancels the job."""
    while not job.cancelled:
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(every)


def create_app(served: Served, scheduler: Scheduler, *, api_key: str | None = None,
               max_body: int = 8 << 20) -> FastAPI:
    """The application over a loaded model (`served`) and its scheduler."""
    app = FastAPI(title="clexrt", version="0.1.0",
                  description="OpenAI-compatible server for clexrt (docs/server.md)")
    install_handlers(app)
    app.state.served, app.state.scheduler = served, scheduler

    async def run_generation(prepare, req, request: Request):
        p = await _prepare(prepare, served, req)
        loop = asyncio.get_running_loop()
        job = _submit(scheduler, Job(list(p.gen.prompt), lambda slot, g=p.gen: g, loop))
        if req.stream:
            return StreamingResponse(_stream(job, p.stream(), p.echo, p.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        watch = asyncio.ensure_future(_watch_disconnect(request, job))
        try:
            return JSONResponse(await _whole(job, p.result(), p.echo))
        finally:
            watch.cancel()

    @app.post("/v1/completions", tags=["openai"])
    async def completions(req: CompletionRequest, request: Request):
        """Text completion (OpenAI); `stream` gives server-sent events."""
        return await run_generation(prepare_completion, req, request)

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(req: ChatRequest, request: Request):
        """Chat completion through the model's chat template, with tools and response_format."""
        return await run_generation(prepare_chat, req, request)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(req: EmbeddingRequest):
        """Pooled, normalized embeddings (llama-server's rules)."""
        inputs = await _prepare(_embedding_inputs, served, req)
        loop = asyncio.get_running_loop()
        norm = req.embd_normalize

        def work(slot):
            return [embed_ids(slot, ids, served.pooling, norm) for ids in inputs]

        job = _submit(scheduler, Job(inputs[-1], None, loop, work=work))
        try:
            kind, vectors = await job.events.get()
        finally:
            job.cancel()
        if kind == "error":
            raise as_api_error(vectors)
        n = sum(len(i) for i in inputs)
        out = shapes.embeddings_result(served.model_id, vectors, n)
        if req.encoding_format == "base64":
            for d, v in zip(out["data"], vectors):
                d["embedding"] = base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
                d["encoding_format"] = "base64"
        return JSONResponse(out)

    @app.get("/v1/models", tags=["openai"])
    @app.get("/models", include_in_schema=False)
    async def models():
        md = served.metadata
        arch = md.get("general.architecture", "llama")
        meta = {"n_ctx": served.n_ctx, "n_vocab": served.n_vocab,
                "n_ctx_train": int(md.get(f"{arch}.context_length", 0) or 0),
                "n_embd": int(md.get(f"{arch}.embedding_length", 0) or 0),
                "slots": len(scheduler.slots)}
        return {"object": "list", "data": [{"id": served.model_id, "object": "model",
                                            "created": served.created, "owned_by": "clexrt",
                                            "meta": meta}]}

    @app.get("/health", tags=["llama-server"])
    @app.get("/v1/health", include_in_schema=False)
    async def health():
        st = scheduler.state()
        return {"status": "ok", "slots_idle": st["slots"] - st["busy"],
                "slots_processing": st["busy"], "requests_waiting": st["waiting"]}

    @app.post("/tokenize", tags=["llama-server"])
    async def tokenize(req: TokenizeRequest):
        """llama-server's: {"tokens": [ids]} or, with_pieces, [{"id", "piece"}]."""
        return await _prepare(_tokenize, served, req)

    @app.post("/detokenize", tags=["llama-server"])
    async def detokenize(req: DetokenizeRequest):
        """llama-server's: {"content": text} (control tokens as their text)."""
        return await _prepare(_detokenize, served, req)

    app.add_middleware(Guard, api_key=api_key, max_body=max_body)
    return app


def _embedding_inputs(served: Served, req) -> list[list[int]]:
    check_model(served, req.model)
    if served.pooling == "none":
        raise ApiError(400, "pooling type 'none' is not OpenAI-compatible (the GGUF's "
                       "pooling_type)", "invalid_request")
    raw = req.input
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise ApiError(400, '"input" must not be empty', "invalid_request", "input")
    tok = served.tokenizer
    out = []
    for item in raw:
        ids = (list(tok.encode(item, add_bos=bool(getattr(tok, "add_bos", False)), special=True))
               if isinstance(item, str) else [int(t) for t in item])
        if not ids:
            raise ApiError(400, "input content cannot be empty", "invalid_request", "input")
        fits(served, ids)
        out.append(ids)
    return out


def _tokenize(served: Served, req: TokenizeRequest) -> dict:
    tok = served.tokenizer
    ids = list(tok.encode(req.content, add_bos=bool(req.add_special and getattr(tok, "add_bos", False)),
                          special=req.parse_special))
    if not req.with_pieces:
        return {"tokens": ids}
    out = []
    for t in ids:
        b = tok.token_to_bytes(t, True)
        try:
            piece = b.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(b)
        out.append({"id": t, "piece": piece})
    return {"tokens": out}


def _detokenize(served: Served, req: DetokenizeRequest) -> dict:
    bad = [t for t in req.tokens if not 0 <= t < served.n_vocab]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary", "invalid_request",
                       "tokens")
    tok = served.tokenizer
    return {"content": b"".join(tok.token_to_bytes(t, True) for t in req.tokens)
            .decode("utf-8", errors="replace")}

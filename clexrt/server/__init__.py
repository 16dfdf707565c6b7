"""`clexrt serve`: an OpenAI-compatible HTTP server (docs/server.md).

    server = load("SmolLM2-135M-Instruct.Q4_1.gguf", parallel=4, n_ctx=4096)
    uvicorn.run(server.app, host="127.0.0.1", port=8080)

Modules: scheduler.py (the model thread: slots, the FIFO queue, one batched decode per token),
requests.py (request bodies -> Generations), app.py (the routes), schemas.py (the request
models, hence the OpenAPI schema), errors.py (OpenAI-shaped errors, the API key and body guard).
FastAPI and uvicorn are imported only here, so the rest of clexrt runs without them.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

from ..errors import ClexError

__all__ = ["load", "LoadedServer", "serve", "run_in_thread", "running"]


@dataclass
class LoadedServer:
    app: object
    scheduler: object
    pool: object
    served: object

    def close(self) -> None:
        self.scheduler.close()
        self.pool.close()


def load(model_path: str, *, parallel: int = 1, n_ctx: int = 4096, n_threads: int | None = None,
         api_key: str | None = None, max_queue: int = 16, model_id: str | None = None,
         max_body: int = 8 << 20, chat_format: str | None = None, exact: bool = True,
         **model_kwargs) -> LoadedServer:
    """A SlotPool of `parallel` slots of n_ctx tokens each, its scheduler and the app.
    `exact` (SlotPool.exact): every batched decode row bit for bit the slot's own one-token
    decode, so a reply never depends on the requests it shared steps with; False: the
    multi-token kernels (faster, equal up to rounding)."""
    try:
        from ..engine.batch import SlotPool
    except ImportError as e:                    # pragma: no cover - part of the package
        raise ClexError(f"the server needs clexrt.engine.batch: {e}") from None
    from ..api.embeddings import pooling_of
    from ..text.chat_template import ChatTemplate
    from ..text.tokenizer import Tokenizer
    from .app import create_app
    from .requests import Served, piece_event
    from .scheduler import Scheduler

    if int(parallel) < 1:
        raise ClexError(f"--parallel must be at least 1, got {parallel}")
    pool = SlotPool(model_path, int(parallel), int(n_ctx), n_threads, **model_kwargs)
    pool.exact = bool(exact)
    try:
        md = pool.model.metadata
        tok = Tokenizer.from_metadata(md)
        served = Served(model_id=model_id or os.path.basename(str(model_path)),
                        path=str(model_path), tokenizer=tok,
                        template=ChatTemplate.from_metadata(md, chat_format), metadata=md,
                        n_ctx=int(pool.model.n_ctx), n_vocab=int(tok.n_vocab),
                        pooling=pooling_of(md), created=int(time.time()))
        scheduler = Scheduler(pool, lambda gen, piece: piece_event(served, gen, piece),
                              max_queue=max_queue)
    except BaseException:
        pool.close()
        raise
    app = create_app(served, scheduler, api_key=api_key, max_body=max_body)
    return LoadedServer(app, scheduler, pool, served)


def _config(app, host: str, port: int, log_level: str):
    import uvicorn

    return uvicorn.Config(app, host=host, port=int(port), log_level=log_level,
                          timeout_graceful_shutdown=2, access_log=log_level == "debug")


def serve(server: LoadedServer, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info") -> None:
    """Runs until interrupted."""
    import uvicorn

    try:
        uvicorn.Server(_config(server.app, host, port, log_level)).run()
    finally:
        server.close()


class _Running:
    def __init__(self, server, thread):
        self._server, self._thread = server, thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def run_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Starts uvicorn in a daemon thread (tests, notebooks); returns (handle with .stop(), port)."""
    import socket

    import uvicorn

    if not port:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(_config(app, host, port, log_level))
    server.install_signal_handlers = lambda: None      # noqa: E731  (not the main thread)
    t = threading.Thread(target=server.run, name="clexrt-uvicorn", daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            raise ClexError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    return _Running(server, t), port


@contextlib.contextmanager
def running(path, **kw):
    """load(path, **kw) served by run_in_thread on a free loopback port (tests, notebooks):
    yields (server, port); stops the server and closes the model on leaving."""
    srv = load(path, **kw)
    try:
        handle, port = run_in_thread(srv.app)
        try:
            yield srv, port
        finally:
            handle.stop()
    finally:
        srv.close()

"""`clexrt serve`: the OpenAI-compatible HTTP server (clexrt/server, docs/server.md)."""
from __future__ import annotations

import ipaddress

import click

from ..errors import ClexError
from .options import log_scale_option, rope_options
from .registry import resolve_model

__all__ = ["cmd"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_name", required=True, metavar="MODEL",
              help="GGUF file, or an alias: smollm2 (default model), or a name under models/.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback exposes the model to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("-np", "--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Slots: requests decoded together, each with its own KV cache.")
@click.option("-c", "--ctx", "--ctx-size", "n_ctx", type=click.IntRange(min=16), default=4096,
              show_default=True, help="Context of each slot, in tokens.")
@click.option("-t", "--threads", type=click.IntRange(1, 512), default=None,
              help="Threads per slot (default: physical cores).")
@click.option("--api-key", default=None, envvar="CLEXRT_API_KEY",
              help="Require `Authorization: Bearer KEY` (or env CLEXRT_API_KEY).")
@click.option("--max-queue", type=click.IntRange(0, 10000), default=16, show_default=True,
              help="Requests that may wait for a slot; past that: 503 with Retry-After.")
@click.option("--alias", "model_id", default=None, help="The model id clients name (default: the file name).")
@click.option("--chat-format", default=None, help="A built-in chat format instead of the GGUF's template.")
@click.option("--fast-batch", is_flag=True,
              help="Batched decode with the multi-token kernels: more tokens/s with several "
                   "slots, but a reply may differ at a near-tie from the same request alone.")
@click.option("--max-body", type=click.IntRange(1024), default=8 << 20, show_default=True,
              help="Largest request body, in bytes (413 past it).")
@rope_options
@log_scale_option
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def cmd(model_name, host, port, parallel, n_ctx, threads, api_key, max_queue, model_id,
        chat_format, fast_batch, max_body, rope, clex_mode, kv_policy, kv_type, clex_log_scale, log_level):
    """Serve MODEL over OpenAI's HTTP API (/v1/chat/completions, /v1/completions,
    /v1/embeddings, /v1/models) and llama-server's /health, /tokenize, /detokenize."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ClexError(f"clexrt serve needs {e.name}: run `make install` (or pip install "
                        f"fastapi uvicorn)") from None
    from ..server import load, serve

    path = resolve_model(model_name)
    if not _loopback(host) and not api_key:
        click.echo(f"clexrt serve: warning: listening on {host} without --api-key: anyone who "
                   f"can reach it can use the model", err=True)
    kw = {"rope": rope, "clex_mode": clex_mode, "kv_policy": kv_policy, "kv_type": kv_type}
    if clex_log_scale is not None:
        kw["log_scale"] = clex_log_scale
    server = load(path, parallel=parallel, n_ctx=n_ctx, n_threads=threads, api_key=api_key,
                  max_queue=max_queue, model_id=model_id, max_body=max_body,
                  chat_format=chat_format, exact=not fast_batch, **kw)
    click.echo(f"clexrt serve: {server.served.model_id} on http://{host}:{port}/v1 "
               f"({parallel} slot{'s' if parallel > 1 else ''} of {server.served.n_ctx} tokens)",
               err=True)
    serve(server, host, port, log_level)

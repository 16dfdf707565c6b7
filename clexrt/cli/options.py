"""Command-line options that several `clexrt` commands share, declared once so that their
names, choices and help read the same everywhere."""
from __future__ import annotations

import click

# The choices, as clexrt.engine.model and clexrt.rope define them (tests/test_cli_generate.py checks
# they agree); not imported from there so that --help needs neither numpy nor the C core.
ROPES = ("auto", "none", "linear", "ntk", "yarn", "clex")
MODES = ("ceil", "continuous")
KV_POLICIES = ("rerotate", "recompute")
KV_TYPES = ("f32", "f16", "q8_0")
LOG_SCALE = {"on": True, "off": False}


def _stack(*options):
    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return apply


kv_type_option = click.option(
    "--kv-type", type=click.Choice(KV_TYPES), default="f32", show_default=True,
    help="KV cache element type; f16 halves its memory, q8_0 takes 34/128 of f32's (keys and values in "
         "Q8_0 blocks, head_dim a multiple of 32).")

# --rope, --clex-mode, --kv-policy, --kv-type: the RoPE scaling choices of a Model
rope_options = _stack(
    click.option("--rope", type=click.Choice(ROPES), default="auto", show_default=True,
                 help="RoPE scaling method; auto: clex for a GGUF with CLEX tables, else as the GGUF says."),
    click.option("--clex-mode", type=click.Choice(MODES), default=None,
                 help="Schedule mode (default: continuous: t = N/L in steps of 1/S, lower perplexity than ceil "
                      "between multiples of L on a trained CLEX model; docs/tiny_clex.md)."),
    click.option("--kv-policy", type=click.Choice(KV_POLICIES), default=None,
                 help="What a RoPE table change does to the cached keys (default: rerotate)."),
    kv_type_option)

# --clex-log-scale on|off -> clex_log_scale True | False | None (Model(log_scale=...))
log_scale_option = click.option(
    "--clex-log-scale", "clex_log_scale", type=click.Choice(tuple(LOG_SCALE)), default=None,
    callback=lambda ctx, param, value: None if value is None else LOG_SCALE[value],
    help="CLEX's log_scale, q *= log(n_kv)/log(L) as the official flash attention (default: the "
         "file's clex.log_scale where the official code applies it; docs/clex.md).")

# -c/--ctx and -t/--threads of the commands that hold one conversation
ctx_threads_options = _stack(
    click.option("-c", "--ctx", "--ctx-size", "n_ctx", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Context size; 0: the model's (L x max_factor for a CLEX model)."),
    click.option("-t", "--threads", type=click.IntRange(1, 512), default=None,
                 help="Threads (default: physical cores)."))

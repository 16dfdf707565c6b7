"""`clexrt quantize IN.gguf OUT.gguf --type Q4_K_M`: llama-quantize's file types, same bytes."""
from __future__ import annotations

import os
import time

import click

# The file types (convert/mixture.py's FILE_TYPES), spelled out so that --help needs no import;
# tests/test_quantize_cli.py checks the two lists agree.
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
         "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]


@click.command("quantize", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("in_gguf", type=click.Path(dir_okay=False))
@click.argument("out_gguf", type=click.Path(dir_okay=False), required=False)
@click.option("--type", "-t", "file_type", required=True, metavar="TYPE",
              help=f"One of {', '.join(TYPES)} (any case).")
@click.option("--imatrix", type=click.Path(dir_okay=False), default=None,
              help="llama.cpp importance matrix (llama-imatrix's GGUF, or the legacy .dat).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Threads for quantizing (default: physical cores).")
@click.option("--pure", is_flag=True,
              help="Every quantizable tensor in the type's base type, no mixture (llama-quantize --pure); "
                   "a tensor whose rows do not fit the type is an error instead of a fallback.")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensor types); write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
def cmd(in_gguf, out_gguf, file_type, imatrix, threads, pure, dry_run, no_progress):
    """Quantize a model GGUF to one of llama.cpp's file types, as llama-quantize does: the same
    tensor types and, from the same F32 input, the same bytes."""
    from ..convert.requantize import quantize_gguf, resolve_file_type

    file_type = resolve_file_type(file_type)
    if out_gguf is None and not dry_run:
        raise click.UsageError("missing OUT_GGUF")
    t0 = time.monotonic()
    plan = quantize_gguf(in_gguf, out_gguf, file_type, imatrix=imatrix, n_threads=threads, pure=pure,
                         dry_run=dry_run, progress=not no_progress)
    if dry_run:
        click.echo(plan.describe())
        click.echo("dry run: nothing written", err=True)
        return
    for n in plan.notes:
        click.echo(f"note: {n}", err=True)
    size = os.path.getsize(out_gguf)
    click.echo(f"wrote {out_gguf} ({file_type}, {size / 2**20:.1f} MiB, {len(plan.tensors)} tensors) in "
               f"{time.monotonic() - t0:.1f} s", err=True)

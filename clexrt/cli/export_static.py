"""`clexrt export-static`: a CLEX GGUF with the table for one context baked in as llama.cpp's
rope_freqs.weight, for engines without CLEX (convert/export_static.py; docs/clex.md, "Static
export")."""
from __future__ import annotations

import time

import click


@click.command("export-static")
@click.argument("model", metavar="MODEL")
@click.option("-c", "--ctx", "n_ctx", type=int, required=True,
              help="The context N the table is for: t(N) = min(ceil(N / L), max_factor), as "
                   "--clex-mode ceil picks it.")
@click.option("-o", "--outfile", "out", type=click.Path(dir_okay=False), required=False,
              help="Output GGUF (required unless --dry-run).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
def cmd(model, n_ctx, out, dry_run, no_progress):
    """Write a copy of a CLEX MODEL that llama.cpp runs with CLEX's table for a context of N tokens
    (rope_freqs.weight = base table / CLEX table at t(N)). The table is static: the file runs it at
    every length, where clexrt's schedule follows the length."""
    from ..convert.export_static import export_static
    from .convert import _report
    from .registry import resolve_model

    if out is None and not dry_run:
        raise click.UsageError("missing -o/--outfile")
    t0 = time.monotonic()
    plan = export_static(resolve_model(model), out, n_ctx, dry_run=dry_run, progress=not no_progress)
    _report(plan, out, t0, dry_run)

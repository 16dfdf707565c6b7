"""Hugging Face checkpoints to GGUF, CLEX tables included (installed as clexrt.convert).

    convert_hf(HF_DIR, OUT, outtype="f16")     plain or CLEX LLaMA -> GGUF
    clexify(IN_GGUF, OUT, max_factor=M)         add zero-network CLEX tables to a GGUF

Both return the Plan they carried out (with dry_run=True: the plan only, nothing written).
The clex.* key schema is described in docs/convert.md and read back by clexrt.rope.tables.
"""
from __future__ import annotations

__all__ = ["convert_hf", "clexify"]


def convert_hf(src, out=None, outtype: str = "f16", dry_run: bool = False, vocab_only: bool = False,
               clex_init: str | None = None, clex_max_factor: int | None = None, progress: bool = True):
    from .gguf_out import write_plan
    from .hf import HFCheckpoint
    from .plan import build_plan

    plan = build_plan(HFCheckpoint(src), outtype=outtype, vocab_only=vocab_only,
                      clex_init=clex_init, clex_max_factor=clex_max_factor)
    if not dry_run:
        if out is None:
            raise ValueError("an output path is needed unless dry_run")
        write_plan(plan, out, progress=progress)
    return plan


def clexify(src, out=None, max_factor: int = 8, train_length: int | None = None, dry_run: bool = False,
            progress: bool = True):
    from .gguf_clexify import clexify_plan
    from .gguf_out import rewrite_gguf

    return rewrite_gguf(src, out, lambda g: clexify_plan(g, max_factor, train_length), dry_run, progress)

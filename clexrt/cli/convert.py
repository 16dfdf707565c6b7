"""`clexrt convert` (Hugging Face checkpoint -> GGUF) and `clexrt clexify` (GGUF + CLEX tables)."""
from __future__ import annotations

import os
import time

import click

OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]
# llama.cpp's other file types (the per-tensor mixture of llama-quantize); the list is
# convert/gguf_out.py's MIX_OUTTYPES, spelled out here so that --help needs no import
MIX_OUTTYPES = ["q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
                "q5_k_m", "q6_k", "iq4_nl", "iq4_xs"]


def _report(plan, out, t0, dry_run):
    if dry_run:
        click.echo(plan.describe())
        click.echo("dry run: nothing written", err=True)
        return
    for n in plan.notes:
        click.echo(f"note: {n}", err=True)
    size = os.path.getsize(out)
    click.echo(f"wrote {out} ({size / 2**20:.1f} MiB, {len(plan.tensors)} tensors) in "
               f"{time.monotonic() - t0:.1f} s", err=True)


@click.command("convert")
@click.argument("hf_dir", type=click.Path(file_okay=False))
@click.option("-o", "--outfile", "out", type=click.Path(dir_okay=False),
              help="Output GGUF (default: HF_DIR/<name>-<outtype>.gguf).")
@click.option("--outtype", type=click.Choice(OUTTYPES + MIX_OUTTYPES, case_sensitive=False), default="f16",
              show_default=True,
              help="f32 f16 bf16 q8_0 q4_0 q4_1: the type of every 2-D weight (norms stay f32; block "
                   "types fall back to f16 for rows not a multiple of 32). The others are llama.cpp's "
                   "file types, each tensor typed as llama-quantize would (as `clexrt quantize`).")
@click.option("--dry-run", is_flag=True, help="Print the plan (metadata, tensors, types); write nothing.")
@click.option("--vocab-only", is_flag=True, help="Write the tokenizer and hyper-parameters only.")
@click.option("--clex-init", type=click.Choice(["ode", "ntk"]), default=None,
              help="CLEX tables: 'ode' solves a CLEX checkpoint's ODE (the default for one); 'ntk' "
                   "bakes the zero-network solution for any RoPE model.")
@click.option("--clex-max-factor", type=click.IntRange(1, 1024), default=None,
              help="Largest scaling factor t to bake tables for (needed with --clex-init ntk).")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
def convert(hf_dir, out, outtype, dry_run, vocab_only, clex_init, clex_max_factor, no_progress):
    """Convert a Hugging Face checkpoint (plain or CLEX) to GGUF: LlamaForCausalLM (Llama 1-3.x),
    MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM (Qwen2, Qwen2.5), Gemma3ForCausalLM
    (text), PhiForCausalLM (Phi-2), GPTNeoXForCausalLM (Pythia), and the official CLEX code's
    CLEXLlamaForCausalLM, CLEXMixtralForCausalLM and CLEXPhiForCausalLM."""
    from ..convert import convert_hf

    if out is None and not dry_run:
        name = os.path.basename(os.path.abspath(hf_dir)) or "model"
        out = os.path.join(hf_dir, f"{name}-{'vocab' if vocab_only else outtype}.gguf")
    t0 = time.monotonic()
    plan = convert_hf(hf_dir, out, outtype=outtype, dry_run=dry_run, vocab_only=vocab_only,
                      clex_init=clex_init, clex_max_factor=clex_max_factor, progress=not no_progress)
    _report(plan, out, t0, dry_run)


@click.command("clexify")
@click.argument("in_gguf", type=click.Path(dir_okay=False))
@click.option("-o", "--outfile", "out", type=click.Path(dir_okay=False), required=False,
              help="Output GGUF (required unless --dry-run).")
@click.option("--max-factor", type=click.IntRange(1, 1024), required=True,
              help="Largest scaling factor t: tables cover contexts up to train-length x max-factor.")
@click.option("--train-length", type=click.IntRange(1), default=None,
              help="L, the length t = 1 stands for (default: llama.context_length).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr.")
def clexify(in_gguf, out, max_factor, train_length, dry_run, no_progress):
    """Copy a LLaMA GGUF, adding zero-network CLEX tables (NTK-aware scaling, base b*(2t-1)^(d/(d-2)))."""
    from ..convert import clexify as run

    if out is None and not dry_run:
        raise click.UsageError("missing -o/--outfile")
    t0 = time.monotonic()
    plan = run(in_gguf, out, max_factor=max_factor, train_length=train_length, dry_run=dry_run,
               progress=not no_progress)
    _report(plan, out, t0, dry_run)

"""`clexrt export-static`: a CLEX GGUF as a static file for engines that know nothing of CLEX.

For a context of N tokens the official CLEX inference rotates with the table of
t(N) = min(ceil(N / L), M) (the `ceil` schedule). llama.cpp can rotate with any fixed table through
`rope_freqs.weight`: its per-pair frequency factors, by which it divides base^(-2i/n_rot). So the
exported file holds

    rope_freqs.weight[i] = base_inv_freq[i] / clex_table(t(N))[i]      (F32, n_rot/2 values)

and llama.cpp (llama-cli, llama-server, its RPC backend, anything built on it) runs the CLEX table
of t(N) at every length. What else changes, and why (docs/clex.md, "Static export"):

- every clex.* key goes: a runtime that reads them (clexrt) would run its own schedule from them
  instead of the static table; without them clexrt's `--rope auto` reads rope_freqs.weight as
  llama.cpp does and runs the same table;
- {arch}.rope.scaling.* keys go too: a CLEX table is the whole scaling (clexrt ignores them on a
  CLEX file), and llama.cpp would apply them on top of rope_freqs;
- {arch}.context_length becomes N when N is longer: the length the table is for, which
  llama-server then takes as its default context;
- clexrt.static.* keys record what was exported (ctx, t, train_length, max_factor);
- an existing rope_freqs.weight (a Llama 3 model) is replaced in place: CLEX tables already hold
  its factors.

Every other key and tensor is copied as it is (tensors byte for byte, streamed from the input's
mapping) and the file is written atomically (gguf_out.write_plan).

llama.cpp reads rope_freqs.weight only for some architectures (src/models/<arch>.cpp creates it
and passes it to ggml_rope_ext); of those clexrt runs, only `llama`. Elsewhere it would refuse
the file (an unexpected tensor). For those the table is exported as a new rope.freq_base when it
is one (the zero-network tables of `clexrt clexify` are NTK-aware scaling: base * (2t-1)^(d/(d-2)));
a trained ODE's table is not, and is a ConvertError naming the architecture.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGUFValueType

from clexrt.errors import ConvertError, GGUFError
from clexrt.gguf.schema import validate_model
from clexrt.rope import RopeSchedule, base_inv_freq, phase_error

from .gguf_out import Plan, TensorPlan, rewrite_gguf
from .requantize import _copy_metadata, _tensor_plan

FREQS = "rope_freqs.weight"
STATIC = "clexrt.static."
# clexrt's architectures whose llama.cpp graph divides by rope_freqs.weight (src/models/llama.cpp
# creates LLM_TENSOR_ROPE_FREQS and passes model.get_rope_factors to ggml_rope_ext; qwen2.cpp,
# gemma3.cpp, phi2.cpp and gptneox.cpp pass no factors)
ROPE_FREQS_ARCHS = ("llama",)
# a table exported as a rope base must be that base's table to within this many radians at the
# last position (float32 rounding of a table is ~1e-7 relative: far below)
BASE_FIT_RAD = 1e-3


def static_table(clex, n_ctx: int) -> tuple[float, np.ndarray]:
    """(t, float32 inverse frequencies) that clexrt's ceil schedule runs for a context of n_ctx:
    the runtime's own RopeSchedule, so the export and `clexrt --clex-mode ceil` cannot differ."""
    sched = RopeSchedule("clex", clex.inv_freq, clex.train_length, mode="ceil", clex=clex)
    choice = sched(int(n_ctx))
    return choice.t, np.asarray(choice.table, np.float32)


def freq_factors(freq_base: float, table: np.ndarray) -> np.ndarray:
    """llama.cpp's rope_freqs.weight for a table: base^(-2i/n_rot) / table, float32. Of that
    quotient and its float32 neighbours (two ulps either side), each factor is the one for which
    base / factor comes back nearest the table (as clexrt's --rope auto divides: in float64,
    rounded once): the exact table for most pairs, one ulp off for the few whose factor lies in a
    coarser binade than the table value. (One ulp is visible: it can flip the rounding of a
    q8_0-quantized activation.)"""
    base = base_inv_freq(freq_base, 2 * table.size).astype(np.float64)
    want = np.asarray(table, np.float32)
    ff = (base / want.astype(np.float64)).astype(np.float32)
    if not (np.all(np.isfinite(ff)) and np.all(ff > 0)):
        raise ConvertError("the CLEX table gives non-finite or non-positive frequency factors")
    cands, lo, hi = [ff], ff, ff
    for _ in range(2):
        lo, hi = np.nextafter(lo, np.float32(0)), np.nextafter(hi, np.float32(np.inf))
        cands += [lo, hi]
    cands = np.stack(cands)
    back = (base[None, :] / cands.astype(np.float64)).astype(np.float32)
    best = np.argmin(np.abs(back.astype(np.float64) - want[None, :]), axis=0)    # ties: ff itself
    return cands[best, np.arange(want.size)].astype(np.float32)


def fitted_base(table: np.ndarray) -> float:
    """The rope base whose table base^(-2i/d) is nearest the given one in log space (least
    squares through the first pair, which every base turns by 1 rad per token)."""
    h = table.size
    e = 2.0 * np.arange(h, dtype=np.float64) / (2 * h)
    y = np.log(np.asarray(table, np.float64))
    y = y - y[0]
    return float(math.exp(-np.dot(e, y) / max(np.dot(e, e), 1e-300)))


def _check_ctx(clex, n_ctx) -> int:
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)):
        raise ConvertError(f"--ctx must be a whole number of tokens, got {n_ctx!r}")
    n = int(n_ctx)
    if n <= 0:
        raise ConvertError(f"--ctx must be positive, got {n}")
    if n > clex.max_context:
        raise ConvertError(f"--ctx {n} is past the CLEX range of this file: L x max_factor = "
                           f"{clex.train_length} x {clex.max_factor} = {clex.max_context} tokens")
    return n


def _metadata(g, plan: Plan) -> list[str]:
    """Every key of g with its stored type (requantize's copy) but clex.*, rope.scaling.* and an
    earlier export's clexrt.static.*; returns the names dropped."""
    _copy_metadata(g, plan)
    scaling = f"{g.metadata.get('general.architecture')}.rope.scaling."
    dropped = [k for k in plan.kv if k.startswith(("clex.", scaling, STATIC))]
    for k in dropped:
        del plan.kv[k]
    return dropped


def _as_base(hp, table: np.ndarray, n: int, t: float) -> float:
    """The rope base that gives `table` on an architecture llama.cpp runs without rope_freqs;
    ConvertError when the table is not a base's."""
    b = fitted_base(table)
    err = phase_error(base_inv_freq(b, hp.n_rot), table, n)
    if not (math.isfinite(b) and b > 1 and err <= BASE_FIT_RAD):
        raise ConvertError(
            f"llama.cpp applies rope_freqs.weight only to the {', '.join(ROPE_FREQS_ARCHS)} architecture; "
            f"this file is {hp.arch!r}, and its CLEX table at t = {t:g} is no plain rope base (the "
            f"nearest, {b:.6g}, is {err:.3g} rad off at position {n}): it cannot be exported statically")
    return b


def export_plan(g, n_ctx: int) -> Plan:
    """The plan for the static export of GGUFFile g (a CLEX model) at a context of n_ctx."""
    try:
        hp = validate_model(g)
    except GGUFError as e:
        raise ConvertError(f"not a model GGUF clexrt can export: {e}") from None
    clex = hp.clex
    if clex is None:
        raise ConvertError(f"{getattr(g, 'path', 'the file')} has no CLEX tables (clex.* keys): add them "
                           f"first with `clexrt clexify IN.gguf -o OUT.gguf --max-factor M`, or convert a "
                           f"CLEX checkpoint with `clexrt convert`")
    n = _check_ctx(clex, n_ctx)
    t, table = static_table(clex, n)
    plan = Plan()
    dropped = _metadata(g, plan)
    arch = hp.arch
    if arch in ROPE_FREQS_ARCHS:
        ff = freq_factors(hp.freq_base, table)
        how = f"rope_freqs.weight = base {hp.freq_base:g} table / CLEX table at t = {t:g}"
    else:
        ff = None
        b = _as_base(hp, table, n, t)
        plan.add(f"{arch}.rope.freq_base", b, GGUFValueType.FLOAT32)
        how = f"{arch}.rope.freq_base {hp.freq_base:g} -> {b:.6g} (the CLEX table at t = {t:g})"
    ctx_key = f"{arch}.context_length"
    if n > int(g.metadata.get(ctx_key, 0) or 0):
        plan.add(ctx_key, n, GGUFValueType(int(g.metadata_types[ctx_key][0]))
                 if ctx_key in g.metadata_types else GGUFValueType.UINT32)
    plan.add(STATIC + "ctx", n, GGUFValueType.UINT32)
    plan.add(STATIC + "t", float(t), GGUFValueType.FLOAT32)
    plan.add(STATIC + "train_length", clex.train_length, GGUFValueType.UINT32)
    plan.add(STATIC + "max_factor", clex.max_factor, GGUFValueType.UINT32)

    freqs = None
    if ff is not None:
        freqs = TensorPlan(FREQS, (ff.size,), 0, lambda: ff, source=f"CLEX t = {t:g}")
    for name, ti in g.tensors.items():
        if name == FREQS:
            if freqs is not None:
                plan.tensors.append(freqs)
                freqs = None
            continue           # on another architecture: folded into the CLEX table, then the base
        plan.tensors.append(_tensor_plan(g, name, ti, ti.ggml_type, None, None))   # a byte copy
    if freqs is not None:
        plan.tensors.insert(0, freqs)
    plan.notes.append(f"static CLEX table for ctx {n}: {how}; it is used at every length")
    plan.notes.append(f"removed {sum(k.startswith('clex.') for k in dropped)} clex.* keys"
                      + "".join(f", {k}" for k in dropped if not k.startswith("clex.")))
    from clexrt.engine.model import log_scale_choice
    if log_scale_choice(hp)[0]:
        plan.notes.append("clex.log_scale is not exported: llama.cpp has no such query scale for "
                          f"{arch}; the file runs as clexrt does with --clex-log-scale off")
    return plan


def export_static(src, out, n_ctx: int, dry_run: bool = False, progress: bool = True) -> Plan:
    """clexrt export-static: src (a CLEX GGUF) -> out, the static table of context n_ctx."""
    return rewrite_gguf(src, out, lambda g: export_plan(g, n_ctx), dry_run, progress)

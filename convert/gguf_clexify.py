"""`clexrt clexify`: an existing GGUF of any architecture clexrt runs plus zero-network CLEX
tables, tensors copied byte for byte (streamed, any GGML type), every other key kept with its
type. The tables replace the model's global rope table; an architecture whose sliding-window
layers have a rope base of their own (Gemma 3) keeps it for them: those layers never attend
past their window, so no distance they see is longer than in training."""
from __future__ import annotations

import numpy as np
from gguf import GGUFValueType

from clexrt.errors import ConvertError

from clexrt.rope.ode import ClexODE
from clexrt.rope.tables import bake_clex

from .gguf_out import Plan, TensorPlan


def _inv_freq(g, d: int, base: float) -> tuple[np.ndarray, str]:
    """The model's effective inverse frequencies: base^(-2j/d), divided by rope_freqs.weight
    (llama.cpp's per-pair frequency factors) when the file has it."""
    e = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)
    inv = (np.float32(1) / (np.float64(base) ** e.astype(np.float64)).astype(np.float32)).astype(np.float32)
    if "rope_freqs.weight" not in g.tensors:
        return inv, f"inv_freq from rope.freq_base {base:g}"
    t = g.tensors["rope_freqs.weight"]
    if t.type_name != "F32" or t.n_elements != d // 2:
        raise ConvertError(f"rope_freqs.weight must be F32 with {d // 2} values, got {t.type_name} {list(t.shape)}")
    ff = np.asarray(g.tensor_array("rope_freqs.weight"), np.float32).reshape(-1)
    if not np.all(np.isfinite(ff)) or np.any(ff <= 0):
        raise ConvertError("rope_freqs.weight has non-positive or non-finite factors")
    return (inv / ff).astype(np.float32), f"inv_freq from rope.freq_base {base:g} / rope_freqs.weight"


def clexify_plan(g, max_factor: int, train_length: int | None = None) -> Plan:
    """The plan for copying GGUFFile g with zero-network CLEX tables added."""
    md, types = g.metadata, g.metadata_types
    from clexrt.gguf.archs import ARCHS, SUPPORTED_ARCHS
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ConvertError(f"clexify runs on the architectures clexrt runs ({', '.join(SUPPORTED_ARCHS)}); "
                           f"this file is {arch!r}")
    k = f"{arch}."
    scaling = md.get(k + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise ConvertError(f"the file already uses rope scaling {scaling!r}; CLEX tables would conflict with it")
    try:
        n_embd, n_head = int(md[k + "embedding_length"]), int(md[k + "attention.head_count"])
        n_ctx = int(md[k + "context_length"])
    except KeyError as e:
        raise ConvertError(f"missing key {e.args[0]}") from None
    d = int(md.get(k + "rope.dimension_count", md.get(k + "attention.key_length", n_embd // max(n_head, 1))))
    if d < 4 or d % 2:
        raise ConvertError(f"rope dimension {d} must be even and at least 4")
    base = float(md.get(k + "rope.freq_base", 10000.0))
    if not (np.isfinite(base) and base > 1):
        raise ConvertError(f"rope.freq_base {base} is not a usable base")
    L = int(train_length) if train_length else n_ctx
    if L < 1:
        raise ConvertError(f"train length must be positive, got {L}")
    if not 1 <= int(max_factor) <= 1024:
        raise ConvertError(f"max factor must be in 1..1024, got {max_factor}")
    inv, how = _inv_freq(g, d, base)

    plan = Plan()
    alignment = None
    for key, value in md.items():
        if key.startswith("clex."):
            continue
        t = types[key]
        vtype = GGUFValueType(int(t[0]))
        sub = None
        if vtype == GGUFValueType.ARRAY:
            if len(t) < 2 or t[1] == GGUFValueType.ARRAY:
                raise ConvertError(f"key {key}: nested arrays are not supported by clexify")
            sub = GGUFValueType(int(t[1]))
            value = np.asarray(value) if sub != GGUFValueType.STRING else list(value)
        elif key == "general.alignment":
            alignment = int(value)
        plan.kv[key] = (value, vtype, sub)
    if any(key.startswith("clex.") for key in md):
        plan.notes.append("existing clex.* keys replaced")
    ode = ClexODE(inv)
    for key, value in bake_clex(ode, L, int(max_factor), "ntk", log_scale=False).items():
        plan.add(key, value)
    plan.notes.append(f"CLEX (ntk): {how}, d = {d}, L = {L}, t in 1..{max_factor}")
    if ARCHS[arch].local_rope_base is not None and md.get(k + "attention.sliding_window"):
        plan.notes.append("the tables drive the global layers' rope; the sliding-window layers keep "
                          "their own base (they never see a distance past their window)")
    for name, ti in g.tensors.items():
        plan.tensors.append(TensorPlan(
            name, tuple(ti.shape[::-1]), ti.ggml_type,
            (lambda name=name: np.frombuffer(g.tensor_bytes(name), np.uint8)),
            source="copied", raw=True, size=ti.nbytes))
    plan.alignment = alignment
    return plan

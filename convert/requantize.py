"""`clexrt quantize`: a model GGUF re-typed to one of llama.cpp's file types (Q4_K_M, ...).

Each tensor gets the type llama-quantize would give it (convert/mixture.py's choose_types, plus
the few rules that change when an importance matrix is given, below), is dequantized from what
it is stored as and quantized with llama-quantize's own quantizers (clex_quantize_rows: the same
bytes as ggml_quantize_chunk), one tensor at a time from the input's mapping, and written
atomically by gguf_out.write_plan. Every key is kept with its type (the clex.* tables too);
general.file_type and general.quantization_version are set as llama-quantize sets them; tensor
order and alignment are the input's. A tensor whose type does not change is copied byte for byte.
"""
from __future__ import annotations

import re

import numpy as np
from gguf import GGUFValueType

from clexrt.engine.native import supported_weight_types
from clexrt.errors import ConvertError, GGUFError
from clexrt.gguf.constants import GGML_TYPES
from clexrt.gguf.schema import validate_model

from . import mixture as M
from . import native_rows as R
from .gguf_out import Plan, TensorPlan
from .imatrix import ImportanceMatrix, load_imatrix

GGML_QNT_VERSION = 2          # general.quantization_version, ggml's current block layouts
_LAYER_RE = re.compile(r"blk\.(\d+)\.")


def type_name(t: int) -> str:
    return GGML_TYPES[t][0] if t in GGML_TYPES else f"type{t}"


def resolve_file_type(name: str) -> str:
    """The canonical file type name (Q4_K_M) for a name in any case; ConvertError listing the
    valid ones otherwise."""
    if isinstance(name, str) and name.upper() in M.FILE_TYPES:
        return name.upper()
    raise ConvertError(f"unknown type {name!r}; choose one of {', '.join(M.FILE_TYPES)}")


def base_type(file_type: str) -> int:
    """The recipe's base tensor type: what it gives a matrix that no rule singles out (an FFN
    gate in a one-layer model)."""
    probe = [("blk.0.ffn_gate.weight", (M.block_size(M.Q6_K), 1 << 10), 0)]
    return M.choose_types(probe, file_type, "llama", 1, 1, 1)["blk.0.ffn_gate.weight"]


def _imatrix_rules(types: dict[str, int], shapes: dict[str, tuple], file_type: str, n_layer: int) -> None:
    """llama-quantize's rules that depend on having an importance matrix, for these file types
    (src/llama-quant.cpp, the ffn_down branch): the first eighth of the ffn_down matrices, which
    IQ4_NL/IQ4_XS give Q5_K without one, stay in the base type with one; Q4_0 and Q5_0 make them
    Q4_1 / Q5_1 ("craziness in the first few ffn_down layers" even with an imatrix)."""
    lift = {"Q4_0": M.Q4_1, "Q5_0": M.Q5_1}
    if file_type not in lift and file_type not in ("IQ4_NL", "IQ4_XS"):
        return
    for name, shape in shapes.items():
        if M.tensor_role(name) != M.FFN_DOWN or not M.is_quantizable(name, shape):
            continue
        m = _LAYER_RE.match(name)
        if m and int(m.group(1)) < n_layer // 8:
            t = lift.get(file_type, base_type(file_type))
            types[name] = M.narrow_fallback(shape[0], t)


def _pure_types(g, file_type: str) -> dict[str, int]:
    """--pure: every quantizable tensor in the base type; a row that is not a whole number of
    its blocks is an error (the mixture would have fallen back to a narrower type)."""
    t = base_type(file_type)
    out = {}
    for name, ti in g.tensors.items():
        if not M.is_quantizable(name, ti.shape):
            out[name] = ti.ggml_type
            continue
        if ti.shape[0] % M.block_size(t):
            raise ConvertError(f"tensor {name!r}: rows of {ti.shape[0]} values are not a multiple of "
                               f"{type_name(t)}'s {M.block_size(t)}; without --pure the mixture falls "
                               f"back to {type_name(M.narrow_fallback(ti.shape[0], t))} for it")
        out[name] = t
    return out


def choose(g, hp, file_type: str, has_imatrix: bool = False, pure: bool = False) -> dict[str, int]:
    """Tensor name -> ggml type id for quantizing GGUFFile g (hyper-parameters hp) to file_type."""
    if pure:
        return _pure_types(g, file_type)
    tensors = [(name, ti.shape, ti.ggml_type) for name, ti in g.tensors.items()]
    types = M.choose_types(tensors, file_type, hp.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert)
    if has_imatrix:
        _imatrix_rules(types, {n: ti.shape for n, ti in g.tensors.items()}, file_type, hp.n_layer)
    return types


def _copy_metadata(g, plan: Plan) -> None:
    """Every key with its stored type, in file order."""
    for key, value in g.metadata.items():
        t = g.metadata_types[key]
        vtype, sub = GGUFValueType(int(t[0])), None
        if vtype == GGUFValueType.ARRAY:
            if len(t) < 2 or t[1] == GGUFValueType.ARRAY:
                raise ConvertError(f"key {key}: arrays of arrays are not supported")
            sub = GGUFValueType(int(t[1]))
            value = np.asarray(value) if sub != GGUFValueType.STRING else list(value)
        elif key == "general.alignment":
            plan.alignment = int(value)
        plan.kv[key] = (value, vtype, sub)


def _tensor_imatrix(im: ImportanceMatrix | None, name: str, ti, new: int):
    """The importances a tensor is quantized with (None: none), checked against the tensor."""
    if im is None or not R.uses_imatrix(new):
        return None
    n_mat = ti.shape[2] if len(ti.shape) > 2 else 1
    role = M.tensor_role(name)
    # llama-imatrix never sees the token embedding (a lookup, not a product) and sees the output
    # head only with --process-output; llama-quantize goes on without them (and ignores a
    # token_embd entry of the wrong length), so do we.
    if role in (M.TOKEN_EMBD, M.OUTPUT) and name not in im.entries:
        return None
    if role == M.TOKEN_EMBD and im.entries[name].size != ti.shape[0] * n_mat:
        return None
    return im.for_tensor(name, ti.shape[0], n_mat)


def quantize_plan(g, file_type: str, im: ImportanceMatrix | None = None, n_threads: int | None = None,
                  pure: bool = False) -> Plan:
    """The plan for re-typing GGUFFile g (a validated model) to file_type."""
    file_type = resolve_file_type(file_type)
    try:
        hp = validate_model(g)
    except GGUFError as e:
        raise ConvertError(f"not a model GGUF clexrt can quantize: {e}") from None
    types = choose(g, hp, file_type, has_imatrix=im is not None, pure=pure)
    plan = Plan()
    _copy_metadata(g, plan)
    plan.add("general.quantization_version", GGML_QNT_VERSION, GGUFValueType.UINT32)
    plan.add("general.file_type", M.file_type_id(file_type), GGUFValueType.UINT32)
    if im is not None:
        extra = set(im.entries) - set(g.tensors)
        if extra:
            raise im.err(f"importances for tensor {sorted(extra)[0]!r}, which the model does not have "
                         f"({len(extra)} such): the importance matrix does not match the model")
        plan.add("quantize.imatrix.file", im.path, GGUFValueType.STRING)
        if im.datasets:
            plan.add("quantize.imatrix.dataset", im.datasets[0], GGUFValueType.STRING)
        plan.add("quantize.imatrix.entries_count", len(im.entries), GGUFValueType.UINT32)
        if im.chunk_count > 0:
            plan.add("quantize.imatrix.chunks_count", im.chunk_count, GGUFValueType.UINT32)
        plan.notes.append(im.describe())
    requantized = set()
    for name, ti in g.tensors.items():
        new = types[name]
        plan.tensors.append(_tensor_plan(g, name, ti, new, _tensor_imatrix(im, name, ti, new), n_threads))
        if new != ti.ggml_type and M.block_size(ti.ggml_type) > 1:
            requantized.add(ti.type_name)
    if requantized:
        plan.notes.append(f"requantized from {', '.join(sorted(requantized))}: the result is worse than "
                          f"quantizing an F32/F16/BF16 file")
    return plan


def _tensor_plan(g, name: str, ti, new: int, imp, n_threads) -> TensorPlan:
    shape = tuple(ti.shape[::-1])
    if new == ti.ggml_type:
        return TensorPlan(name, shape, new, lambda: np.frombuffer(g.tensor_bytes(name), np.uint8),
                          source="copied", raw=True, size=ti.nbytes)
    if not R.can_dequantize(ti.ggml_type):
        raise ConvertError(f"tensor {name!r} is {ti.type_name}, which clexrt cannot dequantize yet "
                           f"(it reads {supported_weight_types()})")
    if not R.can_quantize(new):
        raise ConvertError(f"tensor {name!r}: clexrt has no quantizer for {type_name(new)}")
    rows = ti.n_elements // ti.shape[0]

    def load():
        return R.convert_tensor(g.tensor_bytes(name), ti.ggml_type, ti.shape, new, imp, n_threads, name)

    return TensorPlan(name, shape, new, load, source=f"{ti.type_name}{' + imatrix' if imp is not None else ''}",
                      raw=True, size=rows * R.row_bytes(new, ti.shape[0]))


def quantize_gguf(src, out, file_type: str, imatrix=None, n_threads: int | None = None, pure: bool = False,
                  dry_run: bool = False, progress: bool = True) -> Plan:
    """clexrt quantize: src (a model GGUF) -> out in file_type. imatrix: a path or None."""
    from .gguf_out import rewrite_gguf

    file_type = resolve_file_type(file_type)
    im = load_imatrix(imatrix) if imatrix is not None else None
    return rewrite_gguf(src, out, lambda g: quantize_plan(g, file_type, im, n_threads=n_threads, pure=pure),
                        dry_run, progress)

"""Which ggml type each tensor gets when a whole model is quantized to one llama.cpp file type.

A llama.cpp "file type" (Q4_K_M, Q3_K_S, ...) is a recipe, not a single tensor type: most weight
matrices get the recipe's base type, and a few that hurt most when squeezed get more bits. This
module reproduces the choice llama-quantize makes when it runs without an importance matrix, so
that `clexrt quantize --type T` writes the same mixture a llama.cpp user would get. The rules
below were read from llama.cpp's src/llama-quant.cpp (the version recorded in
tests/data/llamacpp_mixtures.json) and are checked against that program's real output by
tests/test_mixture.py; the words and the code are ours.

The entry point is choose_types(). It only decides types: packing the bytes is someone else's
job. Type ids are ggml's (clexrt.gguf.constants.GGML_TYPES), file type ids general.file_type's.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from clexrt.errors import ConvertError
from clexrt.gguf.constants import FILE_TYPES as _FILE_TYPE_NAMES
from clexrt.gguf.constants import GGML_TYPES

# ggml type ids by name, from the one table in clexrt.gguf.constants
_TYPE_ID: dict[str, int] = {name: tid for tid, (name, _blck, _nbytes) in GGML_TYPES.items()}
F16 = _TYPE_ID["F16"]
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (_TYPE_ID[n] for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (_TYPE_ID[n] for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))
IQ4_NL, IQ4_XS = _TYPE_ID["IQ4_NL"], _TYPE_ID["IQ4_XS"]

# The file types `clexrt quantize` offers, with the base tensor type each recipe starts from.
# K-quant recipes named _S/_M/_L share a base type and differ only in the "more bits" rules.
_BASE_TYPE: dict[str, int] = {
    "Q4_0": Q4_0, "Q4_1": Q4_1, "Q5_0": Q5_0, "Q5_1": Q5_1, "Q8_0": Q8_0,
    "Q2_K": Q2_K, "Q3_K_S": Q3_K, "Q3_K_M": Q3_K, "Q3_K_L": Q3_K,
    "Q4_K_S": Q4_K, "Q4_K_M": Q4_K, "Q5_K_S": Q5_K, "Q5_K_M": Q5_K, "Q6_K": Q6_K,
    "IQ4_NL": IQ4_NL, "IQ4_XS": IQ4_XS,
}

# general.file_type ids come from clexrt.gguf.constants.FILE_TYPES (llama.h's llama_ftype)
_FILE_TYPE_ID = {name: fid for fid, name in _FILE_TYPE_NAMES.items()}

#: file type name -> general.file_type id, for the file types choose_types() knows
FILE_TYPES: dict[str, int] = {name: _FILE_TYPE_ID[name] for name in _BASE_TYPE}

# Architectures with llama.cpp's Falcon quirks (its mixture differs for attn_output/ffn_down)
_FALCON = "falcon"

# llama.cpp's loader labels some layer counts as a "70B" model, and for those bumps attn_v. The
# label comes from each architecture's hyper-parameter loader: (arch -> layer count), plus for
# llama the condition that attention is grouped (n_head != n_head_kv) and the model is not an
# 8-expert MoE (those get MoE labels instead).
_SEVENTY_B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}

# Substrings of names that are never quantized even though they are 2-D "weight" matrices:
# expert routers (tiny, and routing is sensitive), Gemma-3n's small altup/laurel blocks and
# per-layer projection, state-space conv kernels, MiniMax indexer projections, RWKV's small
# time-mix matrices, T5's relative position bias, and multimodal position/patch tensors and
# audio codebooks.
_NEVER_QUANTIZED_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
    "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
# whole names kept as they are: learned absolute positions and BERT's token-type table
_NEVER_QUANTIZED_NAMES = frozenset({"position_embd.weight", "token_types.weight"})

# What a 256-wide (or any) type turns into when a row is not a whole number of its blocks:
# the nearest type with 32-value blocks. A 32-block type keeps itself here; if the row is not a
# multiple of 32 either, the tensor is stored as F16.
_NARROW_FALLBACK = {Q2_K: Q4_0, Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0, IQ4_XS: IQ4_NL}

_LAYER_RE = re.compile(r"blk\.\s*([+-]?\d+)")


def block_size(type_id: int) -> int:
    """Values per block of a ggml type."""
    return GGML_TYPES[type_id][1]


def file_type_id(file_type: str) -> int:
    """general.file_type id of a file type name (case-insensitive)."""
    return FILE_TYPES[_resolve_file_type(file_type)]


def _resolve_file_type(file_type) -> str:
    if isinstance(file_type, str) and file_type.upper() in _BASE_TYPE:
        return file_type.upper()
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        for name, fid in FILE_TYPES.items():
            if fid == file_type:
                return name
    raise ConvertError(f"unknown quantization file type {file_type!r}; "
                       f"choose one of {', '.join(FILE_TYPES)}")


def _n_dims(shape: Sequence[int]) -> int:
    """ggml's dimension count: trailing sizes of 1 do not count, and a scalar is 1-D."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def is_quantizable(name: str, shape: Sequence[int]) -> bool:
    """Whether llama-quantize re-types this tensor at all.

    Only matrices (2-D, or 3-D stacks of expert matrices) whose name ends in "weight" are
    candidates: vectors (norm gains, biases, rope_freqs and other 1-D tensors) are small and
    sensitive, and are copied as they are. Norm weights and the tensors in
    _NEVER_QUANTIZED_PARTS / _NEVER_QUANTIZED_NAMES are kept too, whatever their shape.
    """
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in _NEVER_QUANTIZED_NAMES:
        return False
    return not any(part in name for part in _NEVER_QUANTIZED_PARTS)


# Broad roles of a tensor, found from its name (first match wins, in this order)
OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT = range(8)
FFN_UP, FFN_GATE, FFN_DOWN, OTHER = range(8, 12)
_ROLE_PARTS = ((ATTN_QKV, "attn_qkv.weight"), (ATTN_KV_B, "attn_kv_b.weight"),
               (ATTN_V, "attn_v.weight"), (ATTN_K, "attn_k.weight"), (ATTN_Q, "attn_q.weight"),
               (ATTN_OUTPUT, "attn_output.weight"), (FFN_UP, "ffn_up"), (FFN_GATE, "ffn_gate"),
               (FFN_DOWN, "ffn_down"))
# Value-like tensors: llama.cpp treats a fused QKV and MLA's kv_b like attn_v, since each holds
# the value projection (the tensor whose error most directly reaches the attention output).
_VALUE_LIKE = (ATTN_V, ATTN_QKV, ATTN_KV_B)


def tensor_role(name: str) -> int:
    """The role llama-quantize's rules key on: output head, token embedding, one of the
    attention projections, one of the FFN matrices (expert stacks included), or OTHER."""
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for role, part in _ROLE_PARTS:
        if part in name:
            return role
    return OTHER


def _layer_of(name: str) -> int:
    """Block index from a "blk.N." name, or -1 for tensors outside the blocks."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


def _processing_order(names: Iterable[str]) -> list[str]:
    """The order llama-quantize visits tensors in: by block index (tensors outside the blocks
    first), then by name as bytes. Position-based rules ("the first two attn_v") depend on it."""
    return sorted(names, key=lambda n: (_layer_of(n), n.encode("utf-8")))


def more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers a _M recipe favours: the first and last eighth of the model, and every third
    layer in between. Errors in the first and last layers spread the furthest / reach the
    logits most directly, so they get the extra bits."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def narrow_fallback(ncols: int, type_id: int) -> int:
    """The type actually stored when a row of ncols values is not a whole number of type_id's
    blocks: 256-value K/IQ types step down to a 32-value type of similar precision, and when
    even that does not divide the row (ncols not a multiple of 32) the tensor is kept as F16."""
    if ncols % block_size(type_id) == 0:
        return type_id
    if type_id in _NARROW_FALLBACK:
        type_id = _NARROW_FALLBACK[type_id]
    elif block_size(type_id) > 32:
        raise ConvertError(f"no narrower type to fall back to from {GGML_TYPES[type_id][0]}")
    return type_id if ncols % block_size(type_id) == 0 else F16


class _Mixture:
    """The per-model state the rules need: the recipe, head and expert counts, whether the
    output head is tied to the token embedding, and the running counters of value-like tensors
    and FFN matrices seen so far (several rules depend on a tensor's position, not its name)."""

    def __init__(self, recipe: str, arch: str, n_layer: int, n_head: int, n_head_kv: int,
                 n_expert: int, names: Sequence[str]):
        self.recipe = recipe
        self.base = _BASE_TYPE[recipe]
        self.falcon = arch == _FALCON
        self.n_layer = n_layer
        self.n_expert = n_expert
        # heads per KV head; 0 when there are no KV heads (as llama.cpp's n_gqa)
        self.gqa = n_head // n_head_kv if n_head_kv else 0
        self.seventy_b = _SEVENTY_B_LAYERS.get(arch) == n_layer and (
            arch != "llama" or (n_head != n_head_kv and n_expert != 8))
        # no output.weight means the output head reuses token_embd, which then follows the
        # output head's rule (it is the tensor the logits are computed with)
        self.tied = "output.weight" not in names
        self.n_value = sum(1 for n in names if tensor_role(n) in _VALUE_LIKE)
        self.i_value = 0
        self.i_ffn = {FFN_DOWN: 0, FFN_GATE: 0, FFN_UP: 0}

    def _ffn_layer(self, role: int, name: str) -> int:
        """Layer index of an FFN matrix. Dense models count FFN matrices of the role in visiting
        order; MoE models read it from the name, since expert tensors need not be one per
        layer in order."""
        i = self.i_ffn[role]
        self.i_ffn[role] += 1
        if max(1, self.n_expert) > 1:
            m = _LAYER_RE.match(name)
            if not m:
                raise ConvertError(f"cannot tell the layer of tensor {name!r}")
            i = int(m.group(1))
            if not 0 <= i < self.n_layer:
                raise ConvertError(f"tensor {name!r} is in layer {i}, outside [0, {self.n_layer})")
        return i

    def pick(self, name: str, ncols: int) -> int:
        """Type for one quantizable tensor, before the narrow-row fallback."""
        role, r, t = tensor_role(name), self.recipe, self.base
        if role == OUTPUT or (role == TOKEN_EMBD and self.tied):
            return self._output_head(ncols, t)
        if role == TOKEN_EMBD:
            return t                                  # untied embedding: the base type
        if role in _VALUE_LIKE:
            return self._value(r, t)
        if role == ATTN_K:
            return Q8_0 if self.n_expert == 8 else t
        if role == FFN_DOWN:
            return self._ffn_down(r, t, self._ffn_layer(FFN_DOWN, name))
        if role == ATTN_OUTPUT:
            return self._attn_output(r, t)
        if role in (FFN_GATE, FFN_UP):
            self._ffn_layer(role, name)               # counted (and, for MoE, checked) only
        return t

    def _output_head(self, ncols: int, t: int) -> int:
        """The output head is the most sensitive matrix: Q6_K unless the recipe is already Q8_0.
        Falcon, and rows the base type cannot block evenly, get Q8_0 instead (which the
        narrow-row fallback may still turn into F16)."""
        if self.falcon or ncols % block_size(t) != 0:
            return Q8_0
        return t if t == Q8_0 else Q6_K

    def _value(self, r: str, t: int) -> int:
        """attn_v (and fused QKV / kv_b). It is small under grouped-query attention (n_head_kv
        heads, not n_head), so extra bits cost little; the recipes differ in how many value
        tensors they favour: Q2_K all (Q4_K if 4+ heads share a KV head, else Q3_K), Q3_K_M the
        first two Q5_K and the rest Q4_K, Q3_K_L all Q5_K, IQ4 recipes Q5_K when 4+ heads share a
        KV head, Q4_K_M/Q5_K_M Q6_K in the more_bits() positions, Q4_K_S the first four Q5_K.
        A "70B" model lifts a Q3_K/Q4_K value tensor to Q5_K, an 8-expert MoE makes it Q8_0."""
        pos, n = self.i_value, self.n_value
        self.i_value += 1
        if r == "Q2_K":
            t = Q4_K if self.gqa >= 4 else Q3_K
        elif r == "Q3_K_M":
            t = Q5_K if pos < 2 else Q4_K
        elif r == "Q3_K_L":
            t = Q5_K
        elif r in ("IQ4_NL", "IQ4_XS") and self.gqa >= 4:
            t = Q5_K
        elif r in ("Q4_K_M", "Q5_K_M") and more_bits(pos, n):
            t = Q6_K
        elif r == "Q4_K_S" and pos < 4:
            t = Q5_K
        if self.seventy_b and t in (Q3_K, Q4_K):
            t = Q5_K
        if self.n_expert == 8:
            t = Q8_0
        return t

    def _ffn_down(self, r: str, t: int, i: int) -> int:
        """ffn_down, the FFN's output projection, whose errors go straight into the residual
        stream. By layer i of n: Q2_K all Q3_K; Q3_K_M the first sixteenth Q5_K, the rest Q4_K
        (Falcon: Q4_K only in more_bits() layers, else Q3_K); Q3_K_L all Q5_K (Falcon Q4_K);
        Q4_K_M Q6_K in more_bits() layers (Falcon: Q6_K first sixteenth, Q5_K more_bits(),
        else Q4_K); IQ4 recipes the first eighth Q5_K; Q5_K_M Q6_K in more_bits() layers;
        Q4_K_S the first eighth Q5_K (not Falcon)."""
        n = self.n_layer
        if r == "Q2_K":
            return Q3_K
        if r == "Q3_K_M":
            if i < n // 16:
                return Q5_K
            return Q4_K if not self.falcon or more_bits(i, n) else Q3_K
        if r == "Q3_K_L":
            return Q4_K if self.falcon else Q5_K
        if r == "Q4_K_M":
            if self.falcon:
                return Q6_K if i < n // 16 else Q5_K if more_bits(i, n) else Q4_K
            return Q6_K if more_bits(i, n) else t
        if r in ("IQ4_NL", "IQ4_XS") and i < n // 8:
            return Q5_K
        if r == "Q5_K_M" and more_bits(i, n):
            return Q6_K
        if r == "Q4_K_S" and not self.falcon and i < n // 8:
            return Q5_K
        return t

    def _attn_output(self, r: str, t: int) -> int:
        """attn_output: the low-bit recipes lift it one step (Q2_K -> Q3_K, Q3_K_M -> Q4_K,
        Q3_K_L -> Q5_K). In an 8-expert MoE the attention is a small share of the model, so
        most recipes up to Q4_K_M make it Q5_K. Falcon: only Q3_K_L, to Q4_K."""
        if self.falcon:
            return Q4_K if r == "Q3_K_L" else t
        if self.n_expert == 8:
            moe_lift = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS")
            return Q5_K if r in moe_lift else t
        return {"Q2_K": Q3_K, "Q3_K_M": Q4_K, "Q3_K_L": Q5_K}.get(r, t)


def choose_types(tensors: Sequence[tuple[str, Sequence[int], int]], file_type: str, arch: str,
                 n_layer: int, n_head: int, n_head_kv: int, n_expert: int = 0) -> dict[str, int]:
    """The ggml type id of every tensor after quantizing to file_type, as llama-quantize
    (no importance matrix, default options) would store it.

    tensors: (name, shape with ne0 first as in GGUF, current ggml type id) for every tensor of
    the model, the whole list at once: some rules depend on which tensors exist (a missing
    output.weight means tied embeddings) and on a tensor's position among its kind.
    file_type: a name from FILE_TYPES (case-insensitive), or its general.file_type id.
    arch: general.architecture; n_layer, n_head, n_head_kv, n_expert: the model's
    hyper-parameters ({arch}.block_count, .attention.head_count, .attention.head_count_kv,
    .expert_count; 0 for a dense model). Where head counts are per-layer arrays, pass layer 0's:
    llama.cpp's grouped-query test looks at layer 0 only.

    Tensors that are not quantized keep their current type. Raises ConvertError for an unknown
    file type, bad hyper-parameters, malformed tensor entries, or an MoE tensor whose layer
    cannot be read from its name.
    """
    recipe = _resolve_file_type(file_type)
    for label, v, lo in (("n_layer", n_layer, 1), ("n_head", n_head, 0),
                         ("n_head_kv", n_head_kv, 0), ("n_expert", n_expert, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConvertError(f"{label} must be an integer >= {lo}, got {v!r}")
    if not isinstance(arch, str):
        raise ConvertError(f"arch must be a string, got {arch!r}")
    info: dict[str, tuple[tuple[int, ...], int]] = {}
    for entry in tensors:
        try:
            name, shape, cur = entry
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConvertError(f"a tensor entry must be (name, shape, ggml type id), got {entry!r}") from None
        if not isinstance(name, str) or not shape or any(d < 1 for d in shape):
            raise ConvertError(f"bad tensor entry {entry!r}")
        if cur not in GGML_TYPES:
            raise ConvertError(f"tensor {name!r} has unknown ggml type id {cur!r}")
        if name in info:
            raise ConvertError(f"tensor {name!r} is listed twice")
        info[name] = (shape, cur)

    mix = _Mixture(recipe, arch, n_layer, n_head, n_head_kv, n_expert, list(info))
    out: dict[str, int] = {}
    for name in _processing_order(info):
        shape, cur = info[name]
        if not is_quantizable(name, shape):
            out[name] = cur
        else:
            out[name] = narrow_fallback(shape[0], mix.pick(name, shape[0]))
    return {name: out[name] for name in info}

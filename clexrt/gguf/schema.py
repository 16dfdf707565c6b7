"""Model-level checks of a GGUF: which architecture it is, its hyper-parameters, the tensors they
imply (names, shapes, F32 norms), the tokenizer arrays and the clex.* tables. The format itself
(bounds, types, geometry) is reader.py's job; this file trusts the reader and checks the model.

    spec = validate_model(GGUFFile(path))     # HParams, or a one-line GGUFError
    spec.n_layer, spec.eps, spec.clex         # clex: the checked ClexTables, or None
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import GGUFError
from ..rope.tables import ClexTables, read_clex
from .archs import ARCHS, SUPPORTED_ARCHS, arch_spec, layer_tensors
from .constants import _FLOAT_TYPES, _INT_TYPES, TYPE_F32, ValueType
from .reader import GGUFFile, _one_line, _q, _value_type_name

__all__ = ["HParams", "validate_model", "hparams_metadata", "SUPPORTED_ARCHS"]

# What llama.cpp assumes when a file leaves these out.
DEFAULT_EPS = 1e-5
DEFAULT_FREQ_BASE = 10000.0
DEFAULT_CTX_TRAIN = 2048


@dataclass(frozen=True)
class HParams:
    """Everything the runtime needs to know about a model, from its GGUF: the one description
    that Model turns into the C core's clex_hparams. Optional keys stay None as the file has
    them (info shows that); the properties give the value in force."""
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    n_rot: int
    n_ctx_train: int | None
    rope_freq_base: float | None
    rms_norm_eps: float | None
    rope_scaling_type: str | None
    rope_scaling_factor: float | None
    tied_embeddings: bool        # no output.weight: logits come from token_embd.weight
    arch: str = "llama"
    # The architecture as data, which the one forward pass of the C core reads (clex_hparams):
    norm: str = "rms"                # rms | layer
    rope_layout: str = "adjacent"    # adjacent (GGUF llama pairs 2i, 2i+1) | neox (i, i + n_rot/2)
    ffn: str = "swiglu"              # swiglu | geglu | gelu
    parallel_residual: bool = False  # attention and FFN both read the block's input
    n_expert: int = 0                # 0: dense FFN
    n_expert_used: int = 0
    embd_scale: float = 0.0          # embeddings are multiplied by it; 0: 1
    attn_scale: float = 0.0          # attention logits q.k * attn_scale; 0: 1/sqrt(head_dim)
    attn_softcap: float = 0.0        # > 0: logits become c tanh(logit / c)
    final_softcap: float = 0.0
    n_swa: int = 0                   # sliding window of the layers in swa_layers (0: none)
    swa_layers: tuple = ()           # per layer: True where it attends through the window
    local_rope_base: float | None = None   # the sliding-window layers' own rope base, if any
    clex: ClexTables | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        # one form for the per-layer flags, whatever built it (a JSON round trip gives a list)
        object.__setattr__(self, "swa_layers", tuple(bool(x) for x in self.swa_layers))

    @classmethod
    def llama(cls, *, n_vocab: int, n_embd: int, n_layer: int, n_head: int, n_ff: int,
              n_ctx_train: int, n_head_kv: int | None = None, head_dim: int | None = None,
              rope_freq_base: float = DEFAULT_FREQ_BASE, rms_norm_eps: float = DEFAULT_EPS,
              tied_embeddings: bool = False, **arch) -> "HParams":
        """A LLaMA-shaped description with the usual derived values filled in (a head is
        n_embd / n_head wide and fully rotated; no rope scaling): what tests and tools that
        build models of their own start from."""
        head_dim = head_dim or n_embd // n_head
        return cls(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                   n_head_kv=n_head_kv or n_head, n_ff=n_ff, head_dim=head_dim, n_rot=head_dim,
                   n_ctx_train=n_ctx_train, rope_freq_base=rope_freq_base, rms_norm_eps=rms_norm_eps,
                   rope_scaling_type=None, rope_scaling_factor=None, tied_embeddings=tied_embeddings,
                   **arch)

    @property
    def eps(self) -> float:
        return DEFAULT_EPS if self.rms_norm_eps is None else self.rms_norm_eps

    @property
    def freq_base(self) -> float:
        return DEFAULT_FREQ_BASE if self.rope_freq_base is None else self.rope_freq_base

    @property
    def ctx_train(self) -> int:
        return self.n_ctx_train or DEFAULT_CTX_TRAIN

    def layer_swa(self, i: int) -> bool:
        return bool(self.n_swa) and i < len(self.swa_layers) and bool(self.swa_layers[i])

    def layer_rope_set(self, i: int) -> int:
        """0: the global table (the one rope scaling and CLEX drive); 1: the local layers' own."""
        return 1 if self.local_rope_base is not None and self.layer_swa(i) else 0

    @property
    def n_rope_sets(self) -> int:
        return 1 + any(self.layer_rope_set(i) for i in range(self.n_layer))


_TOKENIZER_ARRAYS = {
    "tokenizer.ggml.tokens": ValueType.STRING,
    "tokenizer.ggml.scores": ValueType.FLOAT32,
    "tokenizer.ggml.token_type": ValueType.INT32,
    "tokenizer.ggml.merges": ValueType.STRING,
}


class _ModelChecker:
    def __init__(self, g: GGUFFile):
        self.g = g
        self.md = g.metadata
        self.types = g.metadata_types
        self.arch = "llama"

    def err(self, msg: str) -> GGUFError:
        return GGUFError(_one_line(f"{self.g.path}: {msg}"))

    def int_key(self, key: str, required: bool, minimum: int = 1):
        if key not in self.md:
            if required:
                raise self.err(f"key {_q(key)}: missing (required for {self.arch})")
            return None
        t = self.types[key]
        if len(t) != 1 or t[0] not in _INT_TYPES:
            raise self.err(f"key {_q(key)}: type {_type_tuple_name(t)}, expected an integer")
        v = int(self.md[key])
        if v < minimum:
            raise self.err(f"key {_q(key)}: {v} is below {minimum}")
        return v

    def float_key(self, key: str, positive: bool = True):
        if key not in self.md:
            return None
        t = self.types[key]
        if len(t) != 1 or t[0] not in _FLOAT_TYPES:
            raise self.err(f"key {_q(key)}: type {_type_tuple_name(t)}, expected a float")
        v = float(self.md[key])
        if not math.isfinite(v) or (positive and v <= 0):
            raise self.err(f"key {_q(key)}: {v} is not a finite positive number")
        return v

    def str_key(self, key: str):
        if key not in self.md:
            return None
        if self.types[key] != (ValueType.STRING,):
            raise self.err(f"key {_q(key)}: type {_type_tuple_name(self.types[key])}, expected STRING")
        return self.md[key]

    def tensor(self, name: str, shape: tuple[int, ...], required: bool = True, f32: bool = False,
               hint: str = ""):
        t = self.g.tensors.get(name)
        if t is None:
            if required:
                raise self.err(f"tensor {_q(name)}: missing (required for {self.arch}{hint})")
            return None
        if t.shape != shape:
            raise self.err(f"tensor {_q(name)}: shape {list(t.shape)}, expected {list(shape)}{hint}")
        if f32 and t.ggml_type != TYPE_F32:
            raise self.err(f"tensor {_q(name)}: type {t.type_name}, expected F32")
        return t

    def head_dim(self, n_embd: int, n_head: int) -> int:
        """attention.key_length when the file gives it (a head need not be n_embd / n_head wide),
        else n_embd / n_head. Values must be as wide as keys."""
        a = self.arch
        k_len = self.int_key(f"{a}.attention.key_length", False)
        v_len = self.int_key(f"{a}.attention.value_length", False)
        if k_len is None and v_len is not None:
            raise self.err(f"key '{a}.attention.value_length': given without '{a}.attention.key_length'")
        if k_len is None:
            if n_embd % n_head:
                raise self.err(f"key '{a}.attention.head_count': {n_head} does not divide "
                               f"'{a}.embedding_length' {n_embd}")
            k_len = n_embd // n_head
        if v_len is not None and v_len != k_len:
            raise self.err(f"key '{a}.attention.value_length': {v_len} differs from the key length "
                           f"{k_len} (clexrt runs heads with equal key and value widths)")
        if k_len % 2:
            raise self.err(f"key '{a}.attention.head_count': head dimension {k_len} is odd")
        return k_len

    def run(self) -> HParams:
        arch = self.str_key("general.architecture")
        if arch is None:
            raise self.err("key 'general.architecture': missing")
        if arch not in SUPPORTED_ARCHS:
            raise self.err(f"key 'general.architecture': {_q(arch)} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        a = self.arch = arch
        n_layer = self.int_key(f"{a}.block_count", True)
        n_embd = self.int_key(f"{a}.embedding_length", True)
        n_ff = self.int_key(f"{a}.feed_forward_length", True)
        n_head = self.int_key(f"{a}.attention.head_count", True)
        n_head_kv = self.int_key(f"{a}.attention.head_count_kv", False)
        n_head_kv = n_head if n_head_kv is None else n_head_kv
        if n_head % n_head_kv:
            raise self.err(f"key '{a}.attention.head_count_kv': {n_head_kv} does not divide "
                           f"'{a}.attention.head_count' {n_head}")
        head_dim = self.head_dim(n_embd, n_head)
        n_rot = self.int_key(f"{a}.rope.dimension_count", False)
        n_rot = head_dim if n_rot is None else n_rot
        if n_rot % 2 or n_rot > head_dim:
            raise self.err(f"key '{a}.rope.dimension_count': {n_rot} must be even and at most "
                           f"the head dimension {head_dim}")
        n_ctx = self.int_key(f"{a}.context_length", False)
        freq_base = self.float_key(f"{a}.rope.freq_base")
        spec = arch_spec(arch)
        eps_key = "layer_norm_rms_epsilon" if spec.norm == "rms" else "layer_norm_epsilon"
        eps = self.float_key(f"{a}.attention.{eps_key}")
        scaling_type = self.str_key(f"{a}.rope.scaling.type")
        scaling_factor = self.float_key(f"{a}.rope.scaling.factor")

        # Tensors. Count first so a huge block_count cannot make us loop for long.
        n_expert, n_expert_used = self.experts(spec)
        layer = self.layer_tensors(spec, n_expert)
        n_req = sum(t.required for t in layer)
        if len(self.g.tensors) < 2 + n_req * n_layer:
            raise self.err(f"key '{a}.block_count': {n_layer} layers need at least "
                           f"{2 + n_req * n_layer} tensors, the file has "
                           f"{len(self.g.tensors)}")
        emb = self.g.tensors.get("token_embd.weight")
        if emb is None:
            raise self.err(f"tensor 'token_embd.weight': missing (required for {self.arch})")
        if len(emb.shape) != 2 or emb.shape[0] != n_embd:
            raise self.err(f"tensor 'token_embd.weight': shape {list(emb.shape)}, expected "
                           f"[{n_embd}, n_vocab]")
        n_vocab = emb.shape[1]
        self.tensor("output_norm.weight", (n_embd,), f32=True)
        self.tensor("output_norm.bias", (n_embd,), required=False, f32=True)
        out = self.tensor("output.weight", (n_embd, n_vocab), required=False)
        self.tensor("output.bias", (n_vocab,), required=False, f32=True)
        dims = {"E": n_embd, "Q": n_head * head_dim, "KV": n_head_kv * head_dim, "F": n_ff, "D": head_dim,
                "QKV": (n_head + 2 * n_head_kv) * head_dim, "X": n_expert}
        for i in range(n_layer):
            for lt in layer:
                hint = f" ({a}.expert_count = {n_expert})" if "X" in lt.shape else ""
                self.tensor(f"blk.{i}.{lt.name}", tuple(dims[d] for d in lt.shape), required=lt.required,
                            f32=lt.f32, hint=hint)
        self.tensor("rope_freqs.weight", (n_rot // 2,), required=False, f32=True)

        vocab_key = self.int_key(f"{a}.vocab_size", False)
        if vocab_key is not None and vocab_key != n_vocab:
            raise self.err(f"key '{a}.vocab_size': {vocab_key} differs from the {n_vocab} rows of "
                           f"'token_embd.weight'")
        self.tokenizer(n_vocab)
        _validate_clex(self.md, self.types, self.err)
        clex = _check_clex_tables(self.md, n_rot, self.err)
        return HParams(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                       n_head_kv=n_head_kv, n_ff=n_ff, head_dim=head_dim, n_rot=n_rot,
                       n_ctx_train=n_ctx, rope_freq_base=freq_base, rms_norm_eps=eps,
                       rope_scaling_type=scaling_type, rope_scaling_factor=scaling_factor,
                       tied_embeddings=out is None, arch=arch, clex=clex,
                       norm=spec.norm, rope_layout=spec.rope_layout, ffn=spec.ffn,
                       parallel_residual=self.parallel_residual(spec), n_expert=n_expert,
                       n_expert_used=n_expert_used, **self.arch_keys(spec, n_layer, n_embd, n_head))

    def experts(self, spec) -> tuple[int, int]:
        """{arch}.expert_count and expert_used_count: (0, 0) for a dense FFN."""
        a = self.arch
        n = self.int_key(f"{a}.expert_count", False, minimum=0) or 0
        used = self.int_key(f"{a}.expert_used_count", False, minimum=0) or 0
        if not n:
            return 0, 0
        if not spec.has_experts:
            raise self.err(f"key '{a}.expert_count': {n} experts, but clexrt runs experts only for "
                           f"{', '.join(k for k, v in ARCHS.items() if v.has_experts)}")
        if not 1 <= used <= n or n > 1024:
            raise self.err(f"key '{a}.expert_used_count': {used} of {n} experts (need 1 <= used <= "
                           f"count <= 1024)")
        return n, used

    def layer_tensors(self, spec, n_expert: int) -> tuple:
        """The arch's layer tensors of the groups this file uses (dense or experts; separate or
        fused q/k/v, by whether layer 0 has attn_qkv.weight)."""
        return layer_tensors(spec, n_expert, "blk.0.attn_qkv.weight" in self.g.tensors)

    def parallel_residual(self, spec) -> bool:
        key = f"{self.arch}.use_parallel_residual"
        if key not in self.md:
            return spec.parallel_residual
        if self.types[key] != (ValueType.BOOL,):
            raise self.err(f"key {_q(key)}: type {_type_tuple_name(self.types[key])}, expected BOOL")
        return bool(self.md[key])

    def arch_keys(self, spec, n_layer: int, n_embd: int, n_head: int) -> dict:
        """The architecture's own keys and rules: embedding scale, attention scale and soft-caps,
        the sliding window and which layers use it, the local layers' rope base."""
        a = self.arch
        attn_scale = self.float_key(f"{a}.attention.scale")
        kw = {"embd_scale": math.sqrt(n_embd) if spec.embd_scale_sqrt else 0.0,
              "attn_scale": attn_scale if attn_scale is not None else spec.attn_scale(n_layer, n_embd, n_head),
              "attn_softcap": self.float_key(f"{a}.attn_logit_softcapping") or 0.0,
              "final_softcap": self.float_key(f"{a}.final_logit_softcapping") or 0.0}
        n_swa = self.int_key(f"{a}.attention.sliding_window", False, minimum=0) if spec.swa != "none" else None
        if not n_swa:
            return kw
        if spec.swa == "all":
            layers = (True,) * n_layer
        else:
            layers = self.swa_pattern(spec, n_layer)
        kw.update(n_swa=n_swa, swa_layers=layers)
        if spec.local_rope_base is not None:
            kw["local_rope_base"] = self.float_key(f"{a}.rope.freq_base_swa") or spec.local_rope_base
        return kw

    def swa_pattern(self, spec, n_layer: int) -> tuple:
        """llama.cpp's rule: {arch}.attention.sliding_window_pattern is an array of per-layer
        flags, or a period n (layer i is local unless i % n == n - 1); else the arch's period."""
        key = f"{self.arch}.attention.sliding_window_pattern"
        v = self.md.get(key)
        if v is not None and self.types[key][0] == ValueType.ARRAY:
            if len(v) != n_layer:
                raise self.err(f"key {_q(key)}: {len(v)} flags for {n_layer} layers")
            return tuple(bool(x) for x in v)
        return spec.default_swa_layers(n_layer, self.int_key(key, False, minimum=0))

    def tokenizer(self, n_vocab: int) -> None:
        for key, et in _TOKENIZER_ARRAYS.items():
            if key in self.md and self.types[key] != (ValueType.ARRAY, et):
                raise self.err(f"key {_q(key)}: type {_type_tuple_name(self.types[key])}, "
                               f"expected ARRAY of {et.name}")
        self.str_key("tokenizer.ggml.model")
        tokens = self.md.get("tokenizer.ggml.tokens")
        if tokens is not None and len(tokens) != n_vocab:
            raise self.err(f"key 'tokenizer.ggml.tokens': {len(tokens)} tokens, but "
                           f"'token_embd.weight' has {n_vocab} rows")
        for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            if key in self.md and len(self.md[key]) != n_vocab:
                raise self.err(f"key {_q(key)}: length {len(self.md[key])}, expected {n_vocab} "
                               f"(the vocabulary size)")
        # Special token ids (bos, eos, unknown, padding, eot, fim_* ...) must index the vocabulary.
        for key in [k for k in self.md if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")]:
            v = self.int_key(key, False, minimum=0)
            if v >= n_vocab:
                raise self.err(f"key {_q(key)}: token id {v} is outside the vocabulary "
                               f"(size {n_vocab})")


def _type_tuple_name(t: tuple) -> str:
    return " of ".join(_value_type_name(x) for x in t)


def _validate_clex(metadata: dict, types: dict, err=None) -> None:
    """Checks every float value under `clex.` (scalar, array or array of arrays) is finite.
    The tables' schema and shapes are _check_clex_tables' job."""
    if err is None:
        def err(msg):
            return GGUFError(_one_line(msg))

    def finite(v) -> bool:
        if isinstance(v, np.ndarray):
            return v.dtype.kind != "f" or bool(np.isfinite(v).all())
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return True

    for key, v in metadata.items():
        if key.startswith("clex.") and not finite(v):
            raise err(f"key {_q(key)}: holds a NaN or infinite value")


def _check_clex_tables(metadata: dict, n_rot: int, err) -> ClexTables | None:
    """The clex.* keys against their schema (docs/convert.md) through rope.tables.read_clex:
    types, grid, table shapes [n_grid, d/2] and ODE weight shapes, with d the rope dimension."""
    try:
        return read_clex(metadata, n_rot)
    except GGUFError as e:
        raise err(str(e)) from None
    except (ValueError, TypeError, OverflowError, IndexError) as e:   # shapes numpy refuses
        raise err(f"clex metadata: malformed ({type(e).__name__}: {e})") from None


def validate_model(g: GGUFFile) -> HParams:
    """Model-level checks of a GGUF: hyper-parameter keys and types, their consistency,
    every required tensor with the shape they imply, F32 norms, the vocabulary size across
    embeddings / llama.vocab_size / tokenizer arrays, tokenizer array types and lengths, special
    token ids in range, finite clex.* floats and clex.* tables of the right shapes. Returns the
    hyper-parameters with the checked CLEX tables; raises GGUFError."""
    return _ModelChecker(g).run()


def hparams_metadata(hp: HParams) -> dict[str, object]:
    """The `{arch}.*` keys that validate_model reads back into hp: what a converter writes."""
    a = hp.arch
    md: dict[str, object] = {f"{a}.vocab_size": hp.n_vocab}
    if hp.n_ctx_train is not None:
        md[f"{a}.context_length"] = hp.n_ctx_train
    md.update({f"{a}.embedding_length": hp.n_embd, f"{a}.block_count": hp.n_layer,
               f"{a}.feed_forward_length": hp.n_ff, f"{a}.rope.dimension_count": hp.n_rot,
               f"{a}.attention.head_count": hp.n_head, f"{a}.attention.head_count_kv": hp.n_head_kv})
    spec = arch_spec(a)
    if hp.rms_norm_eps is not None:
        eps_key = "layer_norm_rms_epsilon" if spec.norm == "rms" else "layer_norm_epsilon"
        md[f"{a}.attention.{eps_key}"] = hp.rms_norm_eps
    if hp.n_expert:
        md[f"{a}.expert_count"] = hp.n_expert
        md[f"{a}.expert_used_count"] = hp.n_expert_used
    if hp.parallel_residual != spec.parallel_residual or a == "gptneox":
        md[f"{a}.use_parallel_residual"] = bool(hp.parallel_residual)
    if hp.rope_freq_base is not None:
        md[f"{a}.rope.freq_base"] = hp.rope_freq_base
    if hp.head_dim * hp.n_head != hp.n_embd:
        md[f"{a}.attention.key_length"] = hp.head_dim
        md[f"{a}.attention.value_length"] = hp.head_dim
    if hp.rope_scaling_type is not None:
        md[f"{a}.rope.scaling.type"] = hp.rope_scaling_type
        md[f"{a}.rope.scaling.factor"] = hp.rope_scaling_factor
    if hp.n_swa:
        md[f"{a}.attention.sliding_window"] = hp.n_swa
        if spec.swa == "pattern" and hp.swa_layers != spec.default_swa_layers(hp.n_layer):
            md[f"{a}.attention.sliding_window_pattern"] = [bool(x) for x in hp.swa_layers]
        if hp.local_rope_base is not None and hp.local_rope_base != spec.local_rope_base:
            md[f"{a}.rope.freq_base_swa"] = hp.local_rope_base
    if hp.attn_scale and hp.attn_scale != spec.attn_scale(hp.n_layer, hp.n_embd, hp.n_head):
        md[f"{a}.attention.scale"] = hp.attn_scale
    if hp.attn_softcap:
        md[f"{a}.attn_logit_softcapping"] = hp.attn_softcap
    if hp.final_softcap:
        md[f"{a}.final_logit_softcapping"] = hp.final_softcap
    return md

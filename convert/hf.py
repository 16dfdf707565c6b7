"""Reading a Hugging Face checkpoint folder (any architecture of convert/arch.py): config,
weights (lazily), tokenizer files.

Weights come from model.safetensors, sharded safetensors (model.safetensors.index.json), or
pytorch_model.bin(.index.json) when torch is importable. Nothing is read until asked for, and
then one tensor at a time, as float32.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from clexrt.errors import ConvertError
from clexrt.gguf.schema import HParams

from .arch import SUPPORTED_ARCHITECTURES, ArchSpec, arch_for, shape
from .arch_keys import expert_counts, rotary_dim
from .safetensors import Entry, SafetensorsFile, read_entry

__all__ = ["HFConfig", "HFCheckpoint", "ClexConfig", "Llama3Rope", "SUPPORTED_ARCHITECTURES"]

CLEX_KEYS = ("max_factor", "param_factor", "act", "time_dt")
# rope_scaling type -> the fields it may have besides type/rope_type (clex's factor: the
# official training writes factor 1, which nothing reads)
ROPE_FIELDS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "clex": CLEX_KEYS + ("factor",),
}
# buffers some checkpoints carry that are recomputed at load time (rotary tables; GPT-NeoX's
# causal masks), skipped by llama.cpp's converter too
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")
_EXPERT = re.compile(r".*\.experts\.(\d+)\.")


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{os.path.basename(path)}: not valid JSON ({e.__class__.__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _pos_int(cfg: dict, key: str, default=None, where: str = "config.json") -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ConvertError(f"{where}: missing {key!r}")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConvertError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


def _pos_float(cfg: dict, key: str, default=None, where: str = "config.json") -> float:
    v = cfg.get(key, default)
    if v is None:
        raise ConvertError(f"{where}: missing {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConvertError(f"{where}: {key!r} must be a positive number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ClexConfig:
    max_factor: int
    param_factor: int
    act: str
    time_dt: float
    log_scale: bool
    defaulted: tuple[str, ...] = ()     # fields config.json lacks, given the early official values


@dataclass(frozen=True)
class Llama3Rope:
    """rope_scaling type llama3 (Llama 3.1 / 3.2 / 3.3): baked as rope_freqs.weight."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class HFConfig:
    """config.json, checked: the model's hyper-parameters as the runtime describes them (the
    HParams that clexrt.gguf.schema reads back from the GGUF we write), plus what only the
    converter needs. `cfg` is config.json with transformers' defaults for the keys it omits."""
    hparams: HParams
    arch: ArchSpec
    clex: ClexConfig | None = None
    llama3: Llama3Rope | None = None
    name: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    cfg: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict, name: str = "") -> "HFConfig":
        if not isinstance(raw, dict):
            raise ConvertError("config.json: not a JSON object")
        spec = arch_for(raw)
        cfg = {**spec.defaults, **raw}
        act = cfg.get(spec.act_key, spec.acts[0])
        if act not in spec.acts:
            raise ConvertError(f"config.json: {spec.act_key} {act!r} is not supported "
                               f"({spec.name} uses {' or '.join(map(repr, spec.acts))})")
        for key in spec.refused_flags:
            if cfg.get(key):
                raise ConvertError(f"config.json: {key} true is not supported for {spec.name}")
        if spec.check:
            spec.check(cfg)
        n_embd = _pos_int(cfg, "hidden_size")
        n_head = _pos_int(cfg, "num_attention_heads")
        n_head_kv = _pos_int(cfg, "num_key_value_heads", n_head)
        if n_head % n_head_kv:
            raise ConvertError(f"config.json: num_attention_heads {n_head} is not a multiple of "
                               f"num_key_value_heads {n_head_kv}")
        kind, clex, linear, llama3 = _rope_scaling(cfg, spec)
        # the official CLEX code ignores a head_dim key (d = hidden_size / heads); transformers
        # honours it
        if (clex and spec.official_clex) or cfg.get("head_dim") is None:
            if n_embd % n_head:
                raise ConvertError(f"config.json: hidden_size {n_embd} is not a multiple of "
                                   f"num_attention_heads {n_head}")
            head_dim = n_embd // n_head
        else:
            head_dim = _pos_int(cfg, "head_dim")
        if head_dim % 2:
            raise ConvertError(f"config.json: head dimension {head_dim} is odd")
        rot_keys = ("rotary_dim",) + spec.rotary_keys if spec.rotary_keys else ()
        n_rot = rotary_dim(_first_present(raw, spec.defaults, rot_keys), rot_keys, head_dim)
        n_expert, n_used = expert_counts(cfg) if spec.experts else (0, 0)
        theta = _first_present(raw, spec.defaults, spec.theta_keys)
        hp = HParams(
            n_vocab=_pos_int(cfg, "vocab_size"), n_embd=n_embd, n_layer=_pos_int(cfg, "num_hidden_layers"),
            n_head=n_head, n_head_kv=n_head_kv, n_ff=_pos_int(cfg, "intermediate_size"), head_dim=head_dim,
            n_rot=n_rot, n_ctx_train=_pos_int(cfg, "max_position_embeddings"),
            rope_freq_base=_pos_float(theta, next(iter(theta), "rope_theta"), 10000.0),
            rms_norm_eps=_pos_float(cfg, spec.eps_key, 1e-6),
            rope_scaling_type=None if linear is None else "linear", rope_scaling_factor=linear,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), arch=spec.gguf_arch,
            rope_layout="adjacent" if spec.permute_qk else "neox", ffn=spec.ffn, norm=spec.norm,
            parallel_residual=bool(cfg.get(spec.parallel_key, spec.parallel_default))
            if spec.parallel_key else spec.parallel_default,
            n_expert=n_expert, n_expert_used=n_used)
        return cls(hparams=hp, arch=spec, clex=clex, llama3=llama3, name=name, raw=raw, cfg=cfg)

    def layer_names(self, i: int):
        """(HF names, GGUF name, shape kind) of layer i: one HF name, or one per expert."""
        hp, spec = self.hparams, self.arch
        for hf, gg, kind in spec.layer:
            full = spec.prefix.format(i=i) + hf
            names = [full.replace("{e}", str(e)) for e in range(hp.n_expert)] if "{e}" in hf else [full]
            yield names, f"blk.{i}.{gg}", kind

    def model_tensors(self) -> tuple:
        """(HF, GGUF, kind) of the model-level tensors: embedding, output norm(s), output(s)."""
        spec = self.arch
        return spec.globals + (() if self.hparams.tied_embeddings else spec.outputs)

    def clex_names(self) -> dict[str, str]:
        p = self.arch.clex_prefix
        return {"inv": p + "inv_freq", "up": p + "proj_func.ode_up_proj", "down": p + "proj_func.ode_down_proj"}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape (torch order: [out, in])."""
        hp = self.hparams
        shapes = {hf: shape(kind, hp) for hf, _, kind in self.model_tensors()}
        for i in range(hp.n_layer):
            for names, _, kind in self.layer_names(i):
                shapes.update((n, shape(kind, hp)) for n in names)
        if self.clex:
            h, pd = hp.n_rot // 2, self.clex.param_factor * hp.n_rot
            c = self.clex_names()
            shapes.update({c["inv"]: (h,), c["up"]: (h, pd), c["down"]: (pd, h)})
        return shapes


def _first_present(raw: dict, defaults: dict, keys: tuple[str, ...]) -> dict:
    """The first of keys config.json has (else the first transformers defaults), as {key: value}."""
    for src in (raw, defaults):
        for k in keys:
            if src.get(k) is not None:
                return {k: src[k]}
    return {}


def _rope_scaling(cfg: dict, spec: ArchSpec):
    """(type, ClexConfig | None, linear factor | None, Llama3Rope | None) from rope_scaling."""
    rs = cfg.get("rope_scaling")
    if rs is None:
        return None, None, None, None
    if not isinstance(rs, dict):
        raise ConvertError(f"config.json: rope_scaling must be an object, got {rs!r}")
    kind = rs.get("rope_type", rs.get("type"))
    if "type" in rs and "rope_type" in rs and rs["type"] != rs["rope_type"]:
        raise ConvertError(f"config.json: rope_scaling type {rs['type']!r} and rope_type "
                           f"{rs['rope_type']!r} differ")
    kind = "default" if kind is None else kind
    allowed = ("default",) + spec.rope_types
    if kind not in allowed:
        raise ConvertError(f"config.json: rope_scaling type {kind!r} is not supported for "
                           f"{spec.name}; supported: {', '.join(allowed[1:])}")
    unknown = [k for k in rs if k not in ("type", "rope_type") + ROPE_FIELDS[kind]]
    if unknown:
        raise ConvertError(f"config.json: rope_scaling field {unknown[0]!r} is not understood for "
                           f"type {kind!r} (known: {', '.join(ROPE_FIELDS[kind]) or 'none'})")
    where = "config.json rope_scaling"
    if kind == "clex":
        return kind, _clex_config(rs, cfg), None, None
    if kind == "linear":
        return kind, None, _pos_float(rs, "factor", where=where), None
    if kind == "llama3":
        r = Llama3Rope(*(_pos_float(rs, k, where=where) for k in ROPE_FIELDS["llama3"][:3]),
                       _pos_int(rs, "original_max_position_embeddings", where=where))
        if r.low_freq_factor >= r.high_freq_factor:
            raise ConvertError(f"{where}: low_freq_factor {r.low_freq_factor} must be below "
                               f"high_freq_factor {r.high_freq_factor}")
        return kind, None, None, r
    return kind, None, None, None


# what the official layer used before its config carried them (CLEX/clex_layer.py up to the
# refactoring that added "act" and "time_dt": SiLU and a step of 0.01): early configs lack them
CLEX_EARLY_DEFAULTS = {"act": "silu", "time_dt": 0.01}


def _clex_config(rs: dict, cfg: dict) -> ClexConfig:
    missing = [k for k in CLEX_KEYS if k not in rs and k not in CLEX_EARLY_DEFAULTS]
    if missing:
        raise ConvertError(f"config.json: rope_scaling of type 'clex' lacks {', '.join(missing)} "
                           f"(needs {', '.join(CLEX_KEYS)})")
    defaulted = tuple(k for k in CLEX_EARLY_DEFAULTS if k not in rs)
    rs = {**CLEX_EARLY_DEFAULTS, **rs}
    act = rs["act"]
    if act not in ("tanh", "silu"):
        raise ConvertError(f"config.json: rope_scaling act {act!r} is not one of tanh, silu")
    return ClexConfig(max_factor=_pos_int(rs, "max_factor"), param_factor=_pos_int(rs, "param_factor"),
                      act=act, time_dt=_pos_float(rs, "time_dt"), log_scale=bool(cfg.get("log_scale", True)),
                      defaulted=defaulted)


class HFCheckpoint:
    """A checkpoint folder. `config` is the checked HFConfig; `names()` the tensors the weight
    files hold; `load(name)` one of them as float32."""

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ConvertError(f"not a checkpoint folder: {path}")
        self.path = path
        self.config_dict = _read_json(self._p("config.json"), "config.json")
        self.config = HFConfig.from_dict(self.config_dict, name=os.path.basename(os.path.abspath(path)))
        self._entries: dict[str, Entry] | None = None
        self._torch_state = None
        self.weights_format = self._find_weights()

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def has(self, name: str) -> bool:
        return os.path.isfile(self._p(name))

    # -- weights -----------------------------------------------------------------------------
    def _find_weights(self) -> str:
        if self.has("model.safetensors.index.json"):
            return "safetensors-sharded"
        if self.has("model.safetensors"):
            return "safetensors"
        if self.has("pytorch_model.bin") or self.has("pytorch_model.bin.index.json"):
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ConvertError("the weights are in pytorch_model.bin and torch is not installed: "
                                   "convert them to safetensors first (or install torch)") from None
            return "pytorch"
        raise ConvertError(f"no weights in {self.path}: expected model.safetensors, "
                           f"model.safetensors.index.json or pytorch_model.bin")

    def _shard_files(self, index_name: str) -> dict[str, list[str]]:
        index = _read_json(self._p(index_name), index_name)
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise ConvertError(f"{index_name}: no weight_map")
        files: dict[str, list[str]] = {}
        for name, fn in wm.items():
            if not isinstance(fn, str) or os.path.basename(fn) != fn or fn in ("", ".", ".."):
                raise ConvertError(f"{index_name}: invalid file name {fn!r} for {name!r}")
            if not self.has(fn):
                raise ConvertError(f"{index_name}: shard {fn} is missing")
            files.setdefault(fn, []).append(name)
        return files

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = self._read_headers()
        return self._entries

    def _read_headers(self) -> dict[str, Entry]:
        if self.weights_format == "pytorch":
            return self._torch_entries()
        if self.weights_format == "safetensors":
            return dict(SafetensorsFile(self._p("model.safetensors")).entries)
        out: dict[str, Entry] = {}
        for fn, names in self._shard_files("model.safetensors.index.json").items():
            st = SafetensorsFile(self._p(fn))
            for n in names:
                if n not in st.entries:
                    raise ConvertError(f"{fn}: tensor {n!r} listed in the index is not in the shard")
            for n, e in st.entries.items():
                if n in out:
                    raise ConvertError(f"{fn}: tensor {n!r} is in two shards")
                out[n] = e
        return out

    def _torch_entries(self) -> dict[str, Entry]:
        import torch

        files = (list(self._shard_files("pytorch_model.bin.index.json"))
                 if self.has("pytorch_model.bin.index.json") else ["pytorch_model.bin"])
        self._torch_state = {}
        out = {}
        for fn in files:
            try:
                try:        # mmap keeps the file out of memory; the legacy (pre-zip) format cannot
                    sd = torch.load(self._p(fn), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:
                    sd = torch.load(self._p(fn), map_location="cpu", weights_only=True)
            except Exception as e:      # torch raises many kinds for a bad file
                raise ConvertError(f"{fn}: cannot load: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}") from None
            for n, t in sd.items():
                dt = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}.get(t.dtype, str(t.dtype))
                out[n] = Entry(n, dt, tuple(t.shape), 0, 0, self._p(fn))
                self._torch_state[n] = t
        return out

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> str:
        return self.entries[name].dtype

    def load(self, name: str) -> np.ndarray:
        """The tensor as float32, checked finite."""
        e = self.entries[name]
        if self._torch_state is not None:
            if e.dtype not in ("F32", "F16", "BF16"):
                raise ConvertError(f"tensor {name!r} has dtype {e.dtype}; supported: F32, F16, BF16")
            a = self._torch_state[name].float().numpy().copy()
        else:
            a = read_entry(e)
        if not np.isfinite(a).all():
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise ConvertError(f"tensor {name!r} has {bad} NaN/Inf values")
        return a

    def check_tensors(self) -> list[str]:
        """Every tensor config.json implies is present with its shape and a float dtype; returns
        the names of the tensors that will be ignored. Raises ConvertError otherwise."""
        want = self.config.expected_shapes()
        have = self.entries
        missing = [n for n in want if n not in have]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConvertError(f"missing tensor {missing[0]!r}{self._hint(missing[0])}{more}")
        for n, shape in want.items():
            if have[n].dtype not in ("F32", "F16", "BF16"):
                raise ConvertError(f"tensor {n!r} has dtype {have[n].dtype}; supported: F32, F16, BF16")
            if have[n].shape != shape:
                raise ConvertError(f"tensor {n!r} has shape {list(have[n].shape)}, config.json implies "
                                   f"{list(shape)}{self._hint(n)}")
        ignored = []
        for n in have:
            if n in want:
                continue
            if n.endswith(IGNORED_SUFFIXES) or (n == "lm_head.weight" and self.config.hparams.tied_embeddings):
                ignored.append(n)
            elif (m := _EXPERT.match(n)) and self.config.arch.experts:
                raise ConvertError(f"tensor {n!r} is expert {m.group(1)}, but num_local_experts is "
                                   f"{self.config.hparams.n_expert}")
            else:
                raise ConvertError(f"unexpected tensor {n!r} for {self.config.arch.name}")
        return ignored

    def _hint(self, name: str) -> str:
        """What config.json says about a tensor's shape, for the error naming it."""
        c, hp = self.config, self.config.hparams
        if c.clex and name in c.clex_names().values():
            return (f" (the CLEX layer covers the rotary dimension {hp.n_rot} of the {hp.head_dim}-wide "
                    f"head, param_factor {c.clex.param_factor})")
        if name.endswith("block_sparse_moe.gate.weight"):
            return f" (the router of num_local_experts = {hp.n_expert})"
        if _EXPERT.match(name):
            return f" (num_local_experts = {hp.n_expert})"
        return ""

    # -- tokenizer files ---------------------------------------------------------------------
    def json_file(self, name: str) -> dict | None:
        return _read_json(self._p(name), name) if self.has(name) else None

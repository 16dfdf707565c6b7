"""Reading a Hugging Face LLaMA checkpoint folder: config, weights (lazily), tokenizer files.

Weights come from model.safetensors, sharded safetensors (model.safetensors.index.json), or
pytorch_model.bin(.index.json) when torch is importable. Nothing is read until asked for, and
then one tensor at a time, as float32.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from clexrt.errors import ConvertError
from clexrt.gguf.schema import HParams

from .safetensors import Entry, SafetensorsFile, read_entry

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "CLEXLlamaForCausalLM")
CLEX_KEYS = ("max_factor", "param_factor", "act", "time_dt")
# buffers some checkpoints carry that are recomputed at load time
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{os.path.basename(path)}: not valid JSON ({e.__class__.__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _pos_int(cfg: dict, key: str, default=None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ConvertError(f"config.json: missing {key!r}")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConvertError(f"config.json: {key!r} must be a positive integer, got {v!r}")
    return v


def _pos_float(cfg: dict, key: str, default=None) -> float:
    v = cfg.get(key, default)
    if v is None:
        raise ConvertError(f"config.json: missing {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConvertError(f"config.json: {key!r} must be a positive number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class ClexConfig:
    max_factor: int
    param_factor: int
    act: str
    time_dt: float
    log_scale: bool


@dataclass(frozen=True)
class HFConfig:
    """config.json, checked: the model's hyper-parameters as the runtime describes them (the
    HParams that clexrt.gguf.schema reads back from the GGUF we write), plus what only the
    converter needs."""
    hparams: HParams
    clex: ClexConfig | None = None
    name: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, cfg: dict, name: str = "") -> "HFConfig":
        if not isinstance(cfg, dict):
            raise ConvertError("config.json: not a JSON object")
        archs = cfg.get("architectures")
        if archs is not None:
            if not isinstance(archs, list) or not archs:
                raise ConvertError(f"config.json: 'architectures' must be a list, got {archs!r}")
            if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
                raise ConvertError(f"unsupported architecture {', '.join(map(str, archs))}; "
                                   f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        elif cfg.get("model_type") != "llama":
            raise ConvertError(f"unsupported model_type {cfg.get('model_type')!r} (no 'architectures'); "
                               f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConvertError(f"config.json: hidden_act {act!r} is not supported (LLaMA uses 'silu')")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConvertError("config.json: attention/MLP biases are not supported")
        n_embd = _pos_int(cfg, "hidden_size")
        n_head = _pos_int(cfg, "num_attention_heads")
        n_head_kv = _pos_int(cfg, "num_key_value_heads", n_head)
        if n_head % n_head_kv:
            raise ConvertError(f"config.json: num_attention_heads {n_head} is not a multiple of "
                               f"num_key_value_heads {n_head_kv}")
        rs = cfg.get("rope_scaling")
        clex, linear = None, None
        if rs is not None:
            if not isinstance(rs, dict):
                raise ConvertError(f"config.json: rope_scaling must be an object, got {rs!r}")
            kind = rs.get("type", rs.get("rope_type"))
            if kind == "clex":
                clex = _clex_config(rs, cfg)
            elif kind == "linear":
                linear = _pos_float(rs, "factor")
            elif kind not in (None, "default"):
                raise ConvertError(f"config.json: rope_scaling type {kind!r} is not supported; "
                                   f"supported: clex, linear")
        # the official CLEX code ignores a head_dim key (d = hidden_size / heads); transformers honours it
        if clex or cfg.get("head_dim") is None:
            if n_embd % n_head:
                raise ConvertError(f"config.json: hidden_size {n_embd} is not a multiple of "
                                   f"num_attention_heads {n_head}")
            head_dim = n_embd // n_head
        else:
            head_dim = _pos_int(cfg, "head_dim")
        if head_dim % 2:
            raise ConvertError(f"config.json: head dimension {head_dim} is odd")
        hp = HParams(
            n_vocab=_pos_int(cfg, "vocab_size"), n_embd=n_embd, n_layer=_pos_int(cfg, "num_hidden_layers"),
            n_head=n_head, n_head_kv=n_head_kv, n_ff=_pos_int(cfg, "intermediate_size"), head_dim=head_dim,
            n_rot=head_dim, n_ctx_train=_pos_int(cfg, "max_position_embeddings"),
            rope_freq_base=_pos_float(cfg, "rope_theta", 10000.0),
            rms_norm_eps=_pos_float(cfg, "rms_norm_eps", 1e-6),
            rope_scaling_type=None if linear is None else "linear", rope_scaling_factor=linear,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
        return cls(hparams=hp, clex=clex, name=name, raw=cfg)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape (torch order: [out, in])."""
        hp = self.hparams
        e, hd = hp.n_embd, hp.head_dim
        shapes = {"model.embed_tokens.weight": (hp.n_vocab, e), "model.norm.weight": (e,)}
        if not hp.tied_embeddings:
            shapes["lm_head.weight"] = (hp.n_vocab, e)
        for i in range(hp.n_layer):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
                p + "self_attn.q_proj.weight": (hp.n_head * hd, e),
                p + "self_attn.k_proj.weight": (hp.n_head_kv * hd, e),
                p + "self_attn.v_proj.weight": (hp.n_head_kv * hd, e),
                p + "self_attn.o_proj.weight": (e, hp.n_head * hd),
                p + "mlp.gate_proj.weight": (hp.n_ff, e), p + "mlp.up_proj.weight": (hp.n_ff, e),
                p + "mlp.down_proj.weight": (e, hp.n_ff),
            })
        if self.clex:
            h, pd = hd // 2, self.clex.param_factor * hd
            shapes.update({"model.clex_layer.inv_freq": (h,),
                           "model.clex_layer.proj_func.ode_up_proj": (h, pd),
                           "model.clex_layer.proj_func.ode_down_proj": (pd, h)})
        return shapes


def _clex_config(rs: dict, cfg: dict) -> ClexConfig:
    missing = [k for k in CLEX_KEYS if k not in rs]
    if missing:
        raise ConvertError(f"config.json: rope_scaling of type 'clex' lacks {', '.join(missing)} "
                           f"(needs {', '.join(CLEX_KEYS)})")
    act = rs["act"]
    if act not in ("tanh", "silu"):
        raise ConvertError(f"config.json: rope_scaling act {act!r} is not one of tanh, silu")
    return ClexConfig(max_factor=_pos_int(rs, "max_factor"), param_factor=_pos_int(rs, "param_factor"),
                      act=act, time_dt=_pos_float(rs, "time_dt"), log_scale=bool(cfg.get("log_scale", True)))


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
            raise ConvertError(f"missing tensor {missing[0]!r}{more}")
        for n, shape in want.items():
            if have[n].dtype not in ("F32", "F16", "BF16"):
                raise ConvertError(f"tensor {n!r} has dtype {have[n].dtype}; supported: F32, F16, BF16")
            if have[n].shape != shape:
                raise ConvertError(f"tensor {n!r} has shape {list(have[n].shape)}, config.json implies {list(shape)}")
        ignored = []
        for n in have:
            if n in want:
                continue
            if n.endswith(IGNORED_SUFFIXES) or (n == "lm_head.weight" and self.config.hparams.tied_embeddings):
                ignored.append(n)
            else:
                raise ConvertError(f"unexpected tensor {n!r} for {SUPPORTED_ARCHITECTURES[0]}")
        return ignored

    # -- tokenizer files ---------------------------------------------------------------------
    def json_file(self, name: str) -> dict | None:
        return _read_json(self._p(name), name) if self.has(name) else None

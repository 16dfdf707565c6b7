"""A small LLaMA (RMSNorm, SwiGLU, rotate_half RoPE, no biases) and the CLEX rotary layer, in PyTorch.

Our own code, written from ../shared/CLEX.md and a reading of DAMO-NLP-SG/CLEX
(`CLEX/clex_layer.py`): the state of the ODE is y(t) = log inverse frequencies, y(1) = log of the
stored inv_freq, and dy/dt = act((y + log n(t)) @ up) @ down + n'(t)/n(t) with n(t) the NTK
frequencies of base 10000 * (2t-1)^(d/(d-2)) (10000 hard-coded, as there). It is solved with
torchdiffeq's fixed-step "rk4" (the 3/8 rule) in float32, step `time_dt`.
Parameter and buffer names are the Hugging Face ones, so export is a rename-free state_dict.
The hyper-parameters are clexrt's HParams (Config.hparams: the runtime's one model description);
the base table and the NTK base are clexrt.rope's.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from clexrt.gguf.schema import HParams
from clexrt.rope import CLEX_NTK_BASE
from clexrt.rope import base_inv_freq as _base_inv_freq

# The trained models' shape (HParams.llama's arguments); L = n_ctx_train, the training length.
DEFAULT_SHAPE = {"n_vocab": 4096, "n_embd": 256, "n_layer": 4, "n_head": 4, "n_ff": 704, "n_ctx_train": 128}
_LLAMA_ARGS = tuple(n for n, p in inspect.signature(HParams.llama).parameters.items()
                    if p.kind == p.KEYWORD_ONLY)


@dataclass(frozen=True)
class Config:
    """The model's hyper-parameters as the runtime's one description (clexrt HParams) and what
    only training needs: the CLEX fine-tune's ODE (max_factor, param_factor, act, time_dt)."""
    hparams: HParams = field(default_factory=lambda: HParams.llama(**DEFAULT_SHAPE))
    max_factor: int = 8
    param_factor: int = 1
    act: str = "tanh"
    time_dt: float = 0.01

    def __post_init__(self):
        hp = self.hparams
        if (hp.n_head_kv != hp.n_head or hp.head_dim * hp.n_head != hp.n_embd or hp.n_rot != hp.head_dim
                or hp.tied_embeddings or hp.rope_scaling_type is not None
                or (hp.arch, hp.norm, hp.ffn, hp.parallel_residual, hp.n_expert)
                != ("llama", "rms", "swiglu", False, 0)):
            raise ValueError(f"TinyLlama is a plain LLaMA (untied, no GQA, n_embd / n_head wide heads, "
                             f"fully rotated): {hp}")

    @classmethod
    def make(cls, **kw) -> "Config":
        """From flat keywords: HParams.llama's arguments over DEFAULT_SHAPE, and the CLEX ones
        (what train.py --config takes)."""
        shape = {k: kw.pop(k) for k in _LLAMA_ARGS if k in kw}
        return cls(HParams.llama(**{**DEFAULT_SHAPE, **shape}), **kw)

    def to_dict(self) -> dict:
        """What a checkpoint stores as "config": {"hparams": every HParams field but the GGUF's
        clex tables, and the CLEX keys}."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hparams"}
        d["hparams"] = {f.name: getattr(self.hparams, f.name) for f in fields(HParams)
                        if f.name != "clex"}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        return cls(HParams(**d.pop("hparams")), **d)


def base_inv_freq(d: int, theta: float) -> torch.Tensor:
    """1 / theta^(2j/d) in float32 as transformers computes it (clexrt.rope's "hf" table)."""
    return torch.from_numpy(_base_inv_freq(theta, d, convention="hf"))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [N, d] for (possibly fractional) positions; pair j and j + d/2 share a frequency."""
    f = torch.outer(positions.float(), inv_freq.float())
    e = torch.cat((f, f), dim=-1)
    return e.cos(), e.sin()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        hp = c.hparams
        self.nh, self.hd = hp.n_head, hp.head_dim
        self.q_proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)
        self.k_proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)
        self.v_proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)
        self.o_proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)

    def forward(self, x, cos, sin, attn_scale: float = 1.0):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, self.nh, self.hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if attn_scale != 1.0:              # YaRN's temperature: q.k multiplied by attn_scale
            q = q * attn_scale
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        hp = c.hparams
        self.gate_proj = nn.Linear(hp.n_embd, hp.n_ff, bias=False)
        self.up_proj = nn.Linear(hp.n_embd, hp.n_ff, bias=False)
        self.down_proj = nn.Linear(hp.n_ff, hp.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hparams.n_embd, c.hparams.eps)
        self.post_attention_layernorm = RMSNorm(c.hparams.n_embd, c.hparams.eps)

    def forward(self, x, cos, sin, attn_scale=1.0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_scale)
        return x + self.mlp(self.post_attention_layernorm(x))


class ODEFunc(nn.Module):
    """f(t, y) of the CLEX ODE; weights `ode_up_proj` [d/2, P*d] and `ode_down_proj` [P*d, d/2]
    (up: Kaiming-uniform, down: zero, so training starts from exact NTK-aware scaling)."""

    def __init__(self, d: int, param_factor: int, act: str):
        super().__init__()
        self.d = d
        self.ode_up_proj = nn.Parameter(torch.empty(d // 2, param_factor * d))
        self.ode_down_proj = nn.Parameter(torch.zeros(param_factor * d, d // 2))
        nn.init.kaiming_uniform_(self.ode_up_proj, a=math.sqrt(5))
        if act not in ("tanh", "silu"):
            raise ValueError(f"act must be tanh or silu, not {act!r}")
        self.act = torch.tanh if act == "tanh" else F.silu

    def time_embedding(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log n(t), n'(t)/n(t)) in float32; n(t) = NTK frequencies with base 10000*(2t-1)^(d/(d-2))."""
        d = self.d
        a = 2 * t - 1 if t >= 1 else torch.ones_like(t)
        idx = torch.arange(0, d, 2, dtype=torch.float32, device=t.device)
        ntk = 1.0 / ((CLEX_NTK_BASE * a ** (d / (d - 2))) ** (idx / d))
        dntk = -2 * idx / (d - 2) * 1 / (CLEX_NTK_BASE ** (idx / d) * (a ** (idx / (d - 2) + 1)))
        return torch.log(ntk), dntk / ntk

    def forward(self, t, y):
        log_n, rate = self.time_embedding(t)
        return self.act((y + log_n) @ self.ode_up_proj.float()) @ self.ode_down_proj.float() + rate


class ClexLayer(nn.Module):
    """model.clex_layer: the stored inv_freq and the ODE network (`proj_func`)."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.register_buffer("inv_freq", base_inv_freq(c.hparams.head_dim, c.hparams.freq_base))
        self.proj_func = ODEFunc(c.hparams.head_dim, c.param_factor, c.act)

    def solve(self, times: list[float]) -> torch.Tensor:
        """exp(y(t)) for each t in `times` (increasing, starting at 1.0): [len(times), d/2]."""
        from torchdiffeq import odeint
        grid = torch.tensor(times, dtype=torch.float32, device=self.inv_freq.device)
        y = odeint(self.proj_func, torch.log(self.inv_freq.float()), grid, method="rk4",
                   options={"step_size": self.c.time_dt})
        return torch.exp(y)

    def table(self, t: int) -> torch.Tensor:
        """The official inference table for an integer t: t = 1 is the stored inv_freq; otherwise
        row t-1 of one solve over the grid 1, 2, ..., max_factor."""
        if t == 1:
            return self.inv_freq
        return self.solve([float(i) for i in range(1, self.c.max_factor + 1)])[t - 1]

    def train_draw(self, n: int, gen: torch.Generator) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The official training draw for a sequence of n tokens at training length n = L:
        t uniform in 1..M; positions 0, N-2 sorted distinct integers from [1, n*t - 2], n*t - 1;
        inverse frequencies exp(y(t)) from a solve on [1, t] (differentiable)."""
        t = int(torch.randint(1, self.c.max_factor + 1, (1,), generator=gen))
        if t == 1:
            return 1, torch.arange(n, dtype=torch.float32), self.inv_freq
        mid = torch.randperm(n * t - 2, generator=gen)[:n - 2].sort().values + 1
        pos = torch.cat([torch.tensor([0]), mid, torch.tensor([n * t - 1])]).float()
        return t, pos, self.solve([1.0, float(t)])[1]


class TinyLlama(nn.Module):
    def __init__(self, c: Config, clex: bool = False):
        super().__init__()
        self.c = c
        hp = c.hparams
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(hp.n_vocab, hp.n_embd)
        self.model.layers = nn.ModuleList(Layer(c) for _ in range(hp.n_layer))
        self.model.norm = RMSNorm(hp.n_embd, hp.eps)
        if clex:
            self.model.clex_layer = ClexLayer(c)
        self.lm_head = nn.Linear(hp.n_embd, hp.n_vocab, bias=False)
        self.register_buffer("rope_inv_freq", base_inv_freq(hp.head_dim, hp.freq_base), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def is_clex(self) -> bool:
        return hasattr(self.model, "clex_layer")

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                inv_freq: torch.Tensor | None = None, attn_scale: float = 1.0,
                cos_sin_scale: float = 1.0) -> torch.Tensor:
        n, dev = ids.shape[1], ids.device
        positions = torch.arange(n, dtype=torch.float32, device=dev) if positions is None else positions.to(dev)
        inv_freq = self.rope_inv_freq if inv_freq is None else inv_freq
        with torch.autocast(dev.type, enabled=False):    # RoPE angles stay float32
            cos, sin = rope_cos_sin(positions, inv_freq)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn_scale)
        return self.lm_head(self.model.norm(x))

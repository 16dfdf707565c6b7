"""Every RoPE scaling method as a pure function that returns a table of inverse frequencies.

A table has n_rot/2 entries: pair i of a head at position p turns by p * inv_freq[i]. The C core
rotates with whatever table it is given and knows nothing of the methods below.

    none     the base table (the GGUF's, or a CLEX model's stored inv_freq), whatever N is
    linear   position interpolation: inv / s
    ntk      NTK-aware: base' = base * s^(d/(d-2)), i.e. inv_j * s^(-2j/(d-2))
    yarn     YaRN: per-pair ramp between interpolated (inv/s) and original frequencies by how many
             turns the pair makes in L, plus an attention temperature (yarn_attn_factor)
    clex     the CLEX ODE's solution y(t) (ode.py, baked into tables.py, between grid points
             spline.py)

The NTK factor s^(-2j/(d-2)) appears in three of them (ntk; CLEX's time embedding, where
s = 2t-1; the zero-network CLEX solution): ntk_log_factor is its one implementation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError

# The official CLEX time embedding hard-codes this base, whatever rope_theta is.
CLEX_NTK_BASE = 10000.0


def base_inv_freq(freq_base: float, n_rot: int, convention: str = "gguf") -> np.ndarray:
    """The unscaled table, float32 [n_rot/2].

    gguf: base^(-2i/n_rot) in float64, rounded once to float32 (the table a GGUF's freq_base
          gives the runtime);
    hf:   1 / base ** (arange(0, d, 2, float32) / d) as transformers computes it in float32 (the
          stored inv_freq of a checkpoint, which a converted CLEX ODE starts from)."""
    if convention == "gguf":
        i = np.arange(n_rot // 2, dtype=np.float64)
        return (float(freq_base) ** (-2.0 * i / n_rot)).astype(np.float32)
    if convention == "hf":
        e = np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot)
        return (np.float32(1) / (np.float64(freq_base) ** e.astype(np.float64)).astype(np.float32))
    raise ValueError(f"unknown convention {convention!r} (gguf or hf)")


def gguf_inv_freq(freq_base: float, n_rot: int, *, freq_factors=None, scaling_type=None,
                  scaling_factor=None) -> np.ndarray:
    """The table a GGUF asks for, as llama.cpp reads it: `rope_freqs.weight` divides each
    frequency, and `rope.scaling.type = linear` divides all of them by the factor (position
    interpolation)."""
    inv = base_inv_freq(freq_base, n_rot).astype(np.float64)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)
    if scaling_type == "linear" and scaling_factor and scaling_factor > 0:
        inv = inv / float(scaling_factor)
    return inv.astype(np.float32)


def ntk_log_factor(s, h: int) -> np.ndarray:
    """log of NTK-aware scaling's factor on each of h frequencies: -(2j/(d-2)) log s with d = 2h,
    for every s (s < 1 counts as 1), float64 [len(s), h]. The first pair keeps its frequency
    and the last is divided by exactly s."""
    s = np.atleast_1d(np.asarray(s, np.float64))
    expo = np.arange(h, dtype=np.float64) / max(h - 1, 1)            # 2j/(d-2) = j/(h-1)
    return -np.log(np.maximum(s, 1.0))[:, None] * expo[None, :]


def clex_ntk_bend(t, h: int) -> np.ndarray:
    """The part of CLEX's log n(t) that depends on t: NTK scaling by 2t-1, float64 [len(t), h]."""
    return ntk_log_factor(2 * np.asarray(t, np.float64) - 1, h)


def clex_log_ntk(t, h: int) -> np.ndarray:
    """log n(t), the official time embedding's NTK inverse frequencies (base 10000 hard-coded),
    float64 [len(t), h]."""
    j2d = np.arange(h, dtype=np.float64) / h                           # 2j/d
    return -j2d[None, :] * math.log(CLEX_NTK_BASE) + clex_ntk_bend(t, h)


def linear_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """Position interpolation (Chen et al. 2023): every frequency divided by s."""
    return (np.asarray(base, np.float64) / max(float(s), 1.0)).astype(np.float32)


def ntk_inv_freq(base: np.ndarray, s: float) -> np.ndarray:
    """NTK-aware scaling: the rope base multiplied by s^(d/(d-2)). Written as a factor on each
    entry of the base table, so freq factors and stored (rounded) tables carry over."""
    base = np.asarray(base, np.float64)
    if base.size < 2:
        return base.astype(np.float32)
    return (base * np.exp(ntk_log_factor(s, base.size)[0])).astype(np.float32)


def yarn_inv_freq(base: np.ndarray, s: float, train_length: int, beta_fast: float = 32.0,
                  beta_slow: float = 1.0) -> np.ndarray:
    """YaRN (Peng et al. 2023, "NTK-by-parts"): a pair that turns r = L * inv / (2 pi) times
    within the training length L keeps its frequency when r > beta_fast, is interpolated (inv/s)
    when r < beta_slow, and is blended linearly in r in between."""
    base = np.asarray(base, np.float64)
    s = max(float(s), 1.0)
    r = float(train_length) * base / (2 * math.pi)
    gamma = np.clip((r - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
    return ((1.0 - gamma) * base / s + gamma * base).astype(np.float32)


def yarn_attn_factor(s: float) -> float:
    """YaRN's sqrt(1/temperature): q and k are both scaled by it, so q.k by its square."""
    return 1.0 if s <= 1 else 0.1 * math.log(s) + 1.0


def phase_error(table: np.ndarray, reference: np.ndarray, position: float) -> float:
    """max over pairs of |position * (table - reference)|: radians of rotation a table is off by
    at that position."""
    return float(np.max(np.abs(float(position) * (np.asarray(table, np.float64)
                                                 - np.asarray(reference, np.float64)))))


# ---------------------------------------------------------------------------------------------
# The scaling a GGUF declares, as llama.cpp applies it (llama-model.cpp load_hparams and
# get_rope_factors, llama-context.cpp's cparams, ggml-cpu/ops.cpp rope_yarn). It is static: one
# table for every length, chosen once for the context size (longrope's long or short factors).
SCALING_TYPES = ("none", "linear", "yarn", "longrope")       # llama.cpp's LLAMA_ROPE_SCALING_TYPES
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0                   # llama_hparams defaults
LLAMA_CTX_PAD = 256                                          # llama_context pads n_ctx to it
FACTOR_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


@dataclass(frozen=True, eq=False)
class DeclaredRope:
    """What a GGUF's rope keys ask for at a context of n_ctx tokens.

    inv_freq:    float32 [n_rot/2], the table llama.cpp rotates with (angle = pos * inv_freq[i]);
    attn_factor: ggml's mscale, cos and sin multiplied by it: q.k by its square;
    unscaled:    the model's own frequencies before any length scaling (base / rope_freqs, or
                 base / the short factors for longrope): where the explicit methods start;
    train_length: the context the unscaled table was trained at (original_context_length);
    fields:      the keys as read, defaults filled in (info shows them)."""

    scaling: str
    inv_freq: np.ndarray
    attn_factor: float
    unscaled: np.ndarray
    train_length: int
    fields: dict
    description: str


def ggml_yarn_corr_dims(n_rot: int, n_ctx_orig: int, freq_base: float, beta_fast: float,
                        beta_slow: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims (ggml.c), in float32 as ggml computes it: the pair indices where
    the blend starts and ends, the pairs that turn beta_fast and beta_slow times in n_ctx_orig."""
    f = np.float32

    def dim(beta):
        return f(n_rot) * np.log(f(n_ctx_orig) / (f(beta) * f(2) * f(math.pi))) / (f(2) * np.log(f(freq_base)))

    lo, hi = np.floor(dim(beta_fast)), np.ceil(dim(beta_slow))
    return float(max(f(0), lo)), float(min(f(n_rot - 1), hi))


def ggml_yarn_ramp(lo: float, hi: float, h: int) -> np.ndarray:
    """rope_yarn_ramp (ggml-cpu/ops.cpp) for pairs 0..h-1, float32: 1 up to lo, 0 from hi."""
    f = np.float32
    y = (np.arange(h, dtype=f) - f(lo)) / max(f(0.001), f(hi) - f(lo))
    return (f(1) - np.minimum(f(1), np.maximum(f(0), y))).astype(f)


def declared_rope(hp, g, n_ctx: int = 0) -> DeclaredRope:
    """The rope table and attention factor the GGUF g (metadata, tensors, tensor_array) declares
    for a context of n_ctx tokens (0: its context length), as llama.cpp reads and applies them.
    hp: its HParams. Missing or inconsistent fields are a ModelError naming the key."""
    md, a = g.metadata, f"{hp.arch}.rope."
    where = getattr(g, "path", "the file")

    def bad(key, why):
        return ModelError(f"{where}: key '{a}{key}': {why}")

    def num(key, default, *, positive=False, minimum=None):
        if a + key not in md:
            return default
        v = md[a + key]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)):
            raise bad(key, f"{v!r} is not a finite number")
        if (positive and v <= 0) or (minimum is not None and v < minimum):
            raise bad(key, f"{v!r} must be {'positive' if positive else f'at least {minimum}'}")
        return v

    kind = md.get(a + "scaling.type", "linear")           # llama.cpp's default when absent
    if kind not in SCALING_TYPES:
        raise bad("scaling.type", f"unknown rope scaling {kind!r} (llama.cpp knows {', '.join(SCALING_TYPES)})")
    if kind == "yarn":
        for key in ("scaling.factor", "scaling.original_context_length"):
            if a + key not in md:
                raise bad(key, "missing (required with rope.scaling.type = yarn)")
    # rope.scale_linear: the older name llama.cpp still reads when rope.scaling.factor is absent
    factor = float(num("scaling.factor" if a + "scaling.factor" in md else "scale_linear", 0.0, minimum=0))
    if kind == "yarn" and factor == 0:
        raise bad("scaling.factor", "0 (no scaling) with rope.scaling.type = yarn")
    freq_scale = 1.0 if kind == "none" or factor == 0 else 1.0 / factor
    n_train = hp.ctx_train
    n_orig = int(num("scaling.original_context_length", n_train, positive=True))
    fields = {"type": kind, "factor": 1.0 / freq_scale, "original_context_length": n_orig,
              "attn_factor": float(num("scaling.attn_factor", 1.0, positive=True))}

    h = hp.n_rot // 2
    factors = {name: _factor_tensor(g, name, h, where) for name in FACTOR_TENSORS if name in g.tensors}
    base = base_inv_freq(hp.freq_base, hp.n_rot).astype(np.float64)
    if "rope_freqs.weight" in factors:
        base = base / factors["rope_freqs.weight"]
    long_short = [n for n in FACTOR_TENSORS[1:] if n in factors]
    if kind == "longrope":
        if "rope_freqs.weight" in factors or len(long_short) != 2:
            raise ModelError(f"{where}: rope.scaling.type = longrope needs rope_factors_long.weight and "
                             f"rope_factors_short.weight (and no rope_freqs.weight); the file has "
                             f"{', '.join(sorted(factors)) or 'none of them'}")
        # llama_model::get_rope_factors compares the context per sequence with n_ctx_orig, after
        # llama_context has padded it to a multiple of 256 (llama-context.cpp)
        n_ctx = int(n_ctx or n_train)
        n_seq = -(-n_ctx // LLAMA_CTX_PAD) * LLAMA_CTX_PAD
        chosen = "long" if n_seq > n_orig else "short"
        fields["factors"] = (f"rope_factors_{chosen} (n_ctx {n_ctx}{f' padded to {n_seq}' if n_seq != n_ctx else ''}"
                             f" {'>' if chosen == 'long' else '<='} {n_orig})")
        unscaled = base / factors["rope_factors_short.weight"]
        base = base / factors[f"rope_factors_{chosen}.weight"]
    else:
        if long_short:
            raise ModelError(f"{where}: tensor '{long_short[0]}' is only read with rope.scaling.type = "
                             f"longrope; key '{a}scaling.type' is {kind!r}")
        unscaled = base

    # llama-context.cpp: ext_factor < 0 means not set (1 for yarn), the attention factor follows.
    ext = float(num("scaling.yarn_ext_factor", -1.0))
    ext = (1.0 if kind == "yarn" else 0.0) if ext < 0 else ext
    inv, mscale = base * freq_scale, float(num("scaling.yarn_attn_factor", 1.0, positive=True))
    if ext != 0:
        fast = float(num("scaling.yarn_beta_fast", YARN_BETA_FAST, positive=True))
        slow = float(num("scaling.yarn_beta_slow", YARN_BETA_SLOW, positive=True))
        if fast <= slow:
            raise bad("scaling.yarn_beta_fast", f"{fast:g} must be above yarn_beta_slow {slow:g}")
        log_mul = float(num("scaling.yarn_log_multiplier", 0.0, minimum=0))
        lo, hi = ggml_yarn_corr_dims(hp.n_rot, n_orig, hp.freq_base, fast, slow)
        mix = ggml_yarn_ramp(lo, hi, h).astype(np.float64) * ext
        inv = inv * (1 - mix) + base * mix                   # rope_yarn: theta blended per pair
        s = 1.0 / freq_scale
        mscale = _get_mscale(s, 1.0) / (_get_mscale(s, log_mul) if log_mul else 1.0)
        fields.update(yarn_ext_factor=ext, yarn_beta_fast=fast, yarn_beta_slow=slow, corr_dims=[lo, hi])
        if log_mul:
            fields["yarn_log_multiplier"] = log_mul
    mscale *= fields["attn_factor"]
    if mscale != 1.0 and hp.n_rot != hp.head_dim:
        raise ModelError(f"{where}: an attention factor of {mscale:.4g} ({kind} scaling) on a partly rotated "
                         f"head ({hp.n_rot} of {hp.head_dim} dims): llama.cpp scales only the rotated "
                         f"dims, which clexrt's one q.k scale cannot do")
    if ext != 0 and freq_scale != 1.0 and getattr(hp, "n_rope_sets", 1) > 1:
        raise ModelError(f"{where}: yarn on {hp.arch}, whose sliding-window layers keep their own rope: "
                         f"llama.cpp gives those layers another attention factor than the others, "
                         f"which clexrt's one q.k scale cannot do")
    fields["mscale"] = mscale
    return DeclaredRope(kind, inv.astype(np.float32), mscale, unscaled.astype(np.float32),
                        n_orig if kind in ("yarn", "longrope") else n_train, fields,
                        describe_declared(fields))


def _get_mscale(s: float, m: float) -> float:
    """llama-context.cpp's get_mscale, YaRN's magnitude correction, in float32 as it is there."""
    f = np.float32
    return 1.0 if s <= 1 else float(f(0.1) * f(m) * np.log(f(s)) + f(1))


def _factor_tensor(g, name: str, h: int, where) -> np.ndarray:
    t = g.tensors[name]
    if t.type_name != "F32" or t.n_elements != h:
        raise ModelError(f"{where}: tensor '{name}' must be F32 with {h} values (n_rot/2), "
                         f"got {t.type_name} {list(t.shape)}")
    ff = np.asarray(g.tensor_array(name), np.float64).reshape(-1)
    if not np.all(np.isfinite(ff)) or np.any(ff <= 0):
        raise ModelError(f"{where}: tensor '{name}' has non-positive or non-finite factors")
    return ff


def describe_declared(f: dict) -> str:
    """One line for the declared scaling: "yarn x4 from 512 (beta 32/1, ext 1), q and k x1.139"."""
    kind = f["type"]
    if kind == "none" or (kind == "linear" and f["factor"] == 1 and f["mscale"] == 1):
        return "none"
    s = f"{kind} x{f['factor']:g}" if f["factor"] != 1 or kind == "linear" else kind
    if kind in ("yarn", "longrope"):
        s += f" from {f['original_context_length']}"
    if "yarn_beta_fast" in f:
        s += f" (beta {f['yarn_beta_fast']:g}/{f['yarn_beta_slow']:g}, ext {f['yarn_ext_factor']:g})"
    if "factors" in f:
        s += f", {f['factors']}"
    if f["mscale"] != 1:
        s += f", q and k x{f['mscale']:.4g}"
    return s

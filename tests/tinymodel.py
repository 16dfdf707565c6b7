"""Tiny LLaMA GGUFs generated with fixed seeds, and an independent numpy forward pass.

The files are written with gguf-py's GGUFWriter and quantized with gguf-py's numpy quantizers;
the reference reads them back with gguf-py's GGUFReader and dequantizer and runs textbook math
in float64. None of it goes through clexrt's own reader or C code; the shape is clexrt's HParams
(a plain dataclass, the runtime's one model description).
"""
from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from clexrt.gguf.schema import HParams

WTYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0,
          "q4_1": QT.Q4_1}


# Types gguf-py cannot quantize (the K-quants, IQ4_*) and the 5-bit ones: their tiny weights are
# random blocks (random_blocks), scaled like the float weights they stand for (scaled_blocks).
BLOCK_WTYPES = {"q5_0": QT.Q5_0, "q5_1": QT.Q5_1, "iq4_nl": QT.IQ4_NL, "q2_k": QT.Q2_K, "q3_k": QT.Q3_K,
                "q4_k": QT.Q4_K, "q5_k": QT.Q5_K, "q6_k": QT.Q6_K, "iq4_xs": QT.IQ4_XS}

# Byte offsets of the fp16 fields of each block type: the scale d, then the minimum (dmin, or
# Q5_1's m) where the type has one. Everything else in a block is codes and sub-block scales,
# any bytes of which are valid.
FP16_FIELDS = {QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.IQ4_NL: (0,), QT.Q2_K: (80, 82), QT.Q3_K: (108,),
               QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,), QT.IQ4_XS: (0,)}

# 256 for the K-quants' super-blocks: a model of them needs every row length a multiple of it
TINY_K = {"n_vocab": 260, "n_embd": 256, "n_layer": 2, "n_head": 4, "n_head_kv": 2, "n_ff": 512,
          "n_ctx_train": 256}


def random_halves(rng, n: int) -> np.ndarray:
    """n random finite IEEE halves (as uint16): every sign, exponent and mantissa but Inf/NaN."""
    h = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    return np.where((h & 0x7C00) == 0x7C00, h & np.uint16(0x83FF), h).astype(np.uint16)


def random_blocks(qtype: QT, n_blocks: int, rng, halves=None) -> np.ndarray:
    """[n_blocks, block bytes] of valid random blocks: random codes and sub-block scales, the fp16
    fields from `halves` ([n_blocks, n fields] uint16) or random finite halves."""
    from gguf.constants import GGML_QUANT_SIZES
    nbytes = GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    offs = FP16_FIELDS[qtype]
    if halves is None:
        halves = random_halves(rng, n_blocks * len(offs)).reshape(n_blocks, len(offs))
    for i, o in enumerate(offs):
        b[:, o:o + 2] = np.ascontiguousarray(halves[:, i]).astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    return b


def _set_halves(b: np.ndarray, qtype: QT, *values) -> None:
    """every block's fp16 fields (d, then the minimum) = values"""
    for o, v in zip(FP16_FIELDS[qtype], values):
        b[:, o:o + 2] = np.full(len(b), v, np.float16).view(np.uint8).reshape(-1, 2)


def scaled_blocks(qtype: QT, rows: int, cols: int, rng, std: float) -> np.ndarray:
    """[rows, bytes per row] random blocks whose values have mean ~0 and standard deviation ~std:
    one d (and minimum) for the whole tensor, chosen from what the random codes give."""
    from gguf.constants import GGML_QUANT_SIZES
    b = random_blocks(qtype, rows * cols // GGML_QUANT_SIZES[qtype][0], rng)
    _set_halves(b, qtype, 1.0, 0.0)
    a = gguf.quants.dequantize(b, qtype).astype(np.float64)          # the values for d = 1
    m, ratio = 0.0, 0.0
    if len(FP16_FIELDS[qtype]) == 2:
        _set_halves(b, qtype, 0.0, 1.0)
        m = gguf.quants.dequantize(b, qtype).astype(np.float64)      # ... for a minimum of 1
        ratio = -a.mean() / m.mean() if m.mean() != 0 else 0.0
    d = std / max(float((a + ratio * m).std()), 1e-30)
    _set_halves(b, qtype, d, d * ratio)
    return b.reshape(rows, -1)


TINY = {"n_vocab": 96, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_head_kv": 2, "n_ff": 128,
        "n_ctx_train": 256}


def tiny_hparams(**overrides) -> HParams:
    """The tiny LLaMA's shape (GQA 4:2, base 10000, eps 1e-5, untied); `overrides` are
    HParams.llama's arguments."""
    return HParams.llama(**{**TINY, **overrides})


def _weights(cfg: HParams, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    E, F, V = cfg.n_embd, cfg.n_ff, cfg.n_vocab
    qd, kvd = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim

    def mat(rows, cols, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    w = {"token_embd.weight": mat(V, E, 1.0)}
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        w[p + "attn_q.weight"] = mat(qd, E)
        w[p + "attn_k.weight"] = mat(kvd, E)
        w[p + "attn_v.weight"] = mat(kvd, E)
        w[p + "attn_output.weight"] = mat(E, qd)
        w[p + "ffn_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        w[p + "ffn_gate.weight"] = mat(F, E)
        w[p + "ffn_up.weight"] = mat(F, E)
        w[p + "ffn_down.weight"] = mat(E, F)
    w["output_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
    if not cfg.tied_embeddings:
        w["output.weight"] = mat(V, E)
    return w


def write_tiny(path, wtype: str = "f32", cfg: HParams | None = None, seed: int = 0,
               extra=None, override_types: dict | None = None, drop: tuple = ()) -> HParams:
    """Write a tiny LLaMA GGUF: 2-D weights in `wtype`, norms in F32. `extra(writer)` may add
    keys; `override_types` maps tensor name -> gguf type name for one-off types; `drop` omits
    tensors (for error tests). The float weights are quantized by gguf-py; for a type of
    BLOCK_WTYPES they are replaced by random blocks of the same scale (scaled_blocks)."""
    cfg = cfg or tiny_hparams()
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_context_length(cfg.n_ctx_train)
    wr.add_embedding_length(cfg.n_embd)
    wr.add_block_count(cfg.n_layer)
    wr.add_feed_forward_length(cfg.n_ff)
    wr.add_head_count(cfg.n_head)
    wr.add_head_count_kv(cfg.n_head_kv)
    wr.add_rope_dimension_count(cfg.n_rot)
    wr.add_rope_freq_base(cfg.freq_base)
    wr.add_layer_norm_rms_eps(cfg.eps)
    if extra:
        extra(wr)
    rng = np.random.default_rng(seed + 1000)   # the random blocks of the block types
    for name, arr in _weights(cfg, seed).items():
        if name in drop:
            continue
        t = {**WTYPES, **BLOCK_WTYPES}[wtype] if arr.ndim == 2 else QT.F32
        if override_types and name in override_types:
            t = QT[override_types[name]]
        if t in FP16_FIELDS:
            wr.add_tensor(name, scaled_blocks(t, *arr.shape, rng, float(arr.std())), raw_dtype=t)
        elif t == QT.F32:
            wr.add_tensor(name, arr)
        elif t == QT.F16:
            wr.add_tensor(name, arr.astype(np.float16))
        else:
            wr.add_tensor(name, gguf.quants.quantize(arr, t), raw_dtype=t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return cfg


def read_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF, dequantized by gguf-py, in numpy order ([ne1, ne0])."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        if t.tensor_type in (QT.F32, QT.F16):
            a = np.array(t.data, dtype=np.float32)
        else:
            a = gguf.quants.dequantize(np.array(t.data), t.tensor_type)
        out[t.name] = a.reshape(shape).astype(np.float64)
    return out


def config_from_gguf(path, tied: bool = True) -> HParams:
    """The shape of a real LLaMA GGUF (read by gguf-py) as HParams for reference_forward."""
    r = gguf.GGUFReader(str(path))

    def num(key):
        f = r.fields[key]
        return f.parts[f.data[0]][0].item()

    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    return HParams.llama(n_vocab=int(emb.shape[1]), n_embd=num("llama.embedding_length"),
                         n_layer=num("llama.block_count"), n_head=num("llama.attention.head_count"),
                         n_head_kv=num("llama.attention.head_count_kv"), n_ff=num("llama.feed_forward_length"),
                         rope_freq_base=num("llama.rope.freq_base"),
                         rms_norm_eps=num("llama.attention.layer_norm_rms_epsilon"),
                         tied_embeddings=tied, n_ctx_train=num("llama.context_length"))


def rope_table(base: float, n_rot: int) -> np.ndarray:
    return (base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)).astype(np.float32)


def _round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_q8_K(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's Q8_K activations from the format's definition, in float32: per 256 values, the
    first value of largest magnitude `max`, iscale = -127/max, codes = round half to even of
    iscale*x (at most 127; 0 where the product is not a number in range, which only Inf and NaN
    make, as ggml's rounding trick gives), d = 1/iscale; an all-zero block has d = 0. Returns
    (codes [nb, 256], d [nb])."""
    b = x.astype(np.float32).reshape(-1, 256)
    mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
        d = np.where(mx != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
        p = (iscale[:, None] * b).astype(np.float32)
        ok = np.abs(p) <= 127.5
    q = np.where(ok, np.minimum(np.rint(np.where(ok, p, 0)), 127), 0)
    return q, d


def quantize_activations(x: np.ndarray, act: str | None) -> np.ndarray:
    """What the llama.cpp-style integer product does to its float input: 8-bit blocks of 32 with
    scale amax/127, the scale kept as fp16 (q8_0, paired with Q8_0/Q4_0/Q5_0/IQ4_NL weights) or
    float32 (q8_1, paired with Q4_1/Q5_1); or ggml's Q8_K super-blocks of 256 (q8_K, paired with
    the K-quants and IQ4_XS). Computed from the formats' definitions, in float32."""
    if act is None:
        return x
    shape = x.shape
    if act == "q8_K":
        q, d = quantize_q8_K(x)
        return (q * d[:, None]).astype(np.float64).reshape(shape)
    b = x.astype(np.float32).reshape(-1, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _round_away((b * inv).astype(np.float32))
    if act == "q8_0":
        d = d.astype(np.float16).astype(np.float32)
    return (q * d).astype(np.float64).reshape(shape)


ACT_OF = {"f32": None, "f16": None, "bf16": None, "q8_0": "q8_0", "q4_0": "q8_0", "q4_1": "q8_1",
          "q5_0": "q8_0", "q5_1": "q8_1", "iq4_nl": "q8_0", "q2_k": "q8_K", "q3_k": "q8_K", "q4_k": "q8_K",
          "q5_k": "q8_K", "q6_k": "q8_K", "iq4_xs": "q8_K"}


def acts_of_file(path) -> dict[str, str | None]:
    """tensor name -> the activation rounding its products get (ACT_OF of its type), for a file
    of mixed types."""
    r = gguf.GGUFReader(str(path))
    return {t.name: ACT_OF.get(t.tensor_type.name.lower()) for t in r.tensors}


def q8_0_rows(x: np.ndarray) -> np.ndarray:
    """x's float32 rows (the last axis, a whole number of blocks of 32) through gguf-py's Q8_0
    quantizer and dequantizer, in float64."""
    x32 = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    back = gguf.quants.dequantize(gguf.quants.quantize(x32, QT.Q8_0), QT.Q8_0)
    return back.reshape(x.shape).astype(np.float64)


def reference_forward(w: dict, cfg: HParams, ids, inv_freq=None, n_rot=None,
                      act: str | None = None, kq_scale: float = 1.0, kv_f16: bool = False,
                      kv_q8: bool = False, kv_rows=None, q_round=None) -> np.ndarray:
    """Textbook LLaMA forward in float64: [len(ids), n_vocab] logits. Rotary pairs are adjacent
    (GGUF layout) and position p turns pair i by p * inv_freq[i] (angles from float32 products,
    as the runtime forms them). `act` ("q8_0"/"q8_1", or a dict tensor name -> that) rounds a
    matrix product's input to 8-bit blocks first, as integer products of quantized weights do.
    kq_scale multiplies every attention logit q.k/sqrt(d) (YaRN's temperature: mscale^2).
    kv_f16 rounds the rotated keys and the values to IEEE half, as an f16 KV cache stores them;
    kv_q8 rounds them (as float32 rows of head_dim) to gguf-py's Q8_0 blocks, as a Q8_0 cache
    stores them, and each query head to Q8_0, as scores over a Q8_0 cache take it. kv_rows
    ([n_layer] of (k, v), each [T, n_head_kv, head_dim]) replaces the rotated keys and values of
    each layer (a cache's rows, read back), q_round(layer, q [T, n_head, head_dim]) the rotated
    queries."""
    H, HKV, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    n_rot = n_rot or cfg.n_rot
    inv = rope_table(cfg.freq_base, n_rot) if inv_freq is None else np.asarray(inv_freq, np.float32)
    ids = np.asarray(ids)
    T = len(ids)
    pos = np.arange(T, dtype=np.float32)
    ang = (pos[:, None] * inv[None, :]).astype(np.float64)          # [T, n_rot/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.eps) * g

    def mm(x, wname):
        a = act.get(wname) if isinstance(act, dict) else act
        return quantize_activations(x, a) @ w[wname].T

    def rope(x):  # x [T, heads, D]
        x = x.copy()
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * cos[:, None, :] - b * sin[:, None, :]
        x[..., 1:n_rot:2] = a * sin[:, None, :] + b * cos[:, None, :]
        return x

    x = w["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope(mm(h, p + "attn_q.weight").reshape(T, H, D))
        k = rope(mm(h, p + "attn_k.weight").reshape(T, HKV, D))
        v = mm(h, p + "attn_v.weight").reshape(T, HKV, D)
        if kv_f16:
            k, v = (a.astype(np.float16).astype(np.float64) for a in (k, v))
        if kv_q8:
            q, k, v = (q8_0_rows(a) for a in (q, k, v))
        if kv_rows is not None:
            k, v = (np.asarray(a, np.float64) for a in kv_rows[i])
        if q_round is not None:
            q = q_round(i, q)
        rep = H // HKV
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) * (kq_scale / np.sqrt(D)) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, H * D)
        x = x + mm(o, p + "attn_output.weight")
        h = rms(x, w[p + "ffn_norm.weight"])
        g = mm(h, p + "ffn_gate.weight")
        u = mm(h, p + "ffn_up.weight")
        x = x + mm(g / (1 + np.exp(-g)) * u, p + "ffn_down.weight")
    out = "output.weight" if "output.weight" in w else "token_embd.weight"
    return mm(rms(x, w["output_norm.weight"]), out)

"""The whole forward pass against an independent numpy implementation (gguf-py reads and
dequantizes the file; textbook float64 math), on tiny generated models of every weight type and
on SmolLM2-135M-Instruct; prefill equals token-by-token decoding; bad input is a ClexError."""
import numpy as np
import pytest

import tinymodel as tm
from clexrt import ClexError, ContextFullError, Model, ModelError
from clexrt.engine import native as _lib

# max |clexrt - reference| over all logits (|logits| ~ 3): float weights run in float32; quantized
# weights against the reference that rounds activations to the same 8-bit blocks.
TOL = 1e-3


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for wt in tm.WTYPES:
        p = d / f"tiny-{wt}.gguf"
        cfg = tm.write_tiny(p, wt, seed=0)
        out[wt] = (str(p), cfg)
    return out


@pytest.mark.parametrize("isa", _lib.supported_isas())
@pytest.mark.parametrize("wtype", list(tm.WTYPES))
def test_logits_match_reference(tiny_files, wtype, isa):
    path, cfg = tiny_files[wtype]
    ids = np.random.default_rng(1).integers(0, cfg.n_vocab, 40)
    ref = tm.reference_forward(tm.read_weights(path), cfg, ids, act=tm.ACT_OF[wtype])
    before = _lib.isa()
    _lib.set_isa(isa)
    try:
        with Model(path, n_threads=2) as m:
            got = m.logits(ids)
    finally:
        _lib.set_isa(before)
    assert got.shape == (len(ids), cfg.n_vocab) and got.dtype == np.float32
    assert np.abs(got - ref).max() < TOL


def test_float_reference_is_close_for_quantized(tiny_files):
    """Against the pure float reference, activation rounding costs little: same argmax."""
    path, cfg = tiny_files["q8_0"]
    ids = np.arange(30) % cfg.n_vocab
    ref = tm.reference_forward(tm.read_weights(path), cfg, ids)
    with Model(path) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() < 0.1
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("wtype", ["f32", "q4_1"])
def test_prefill_equals_decoding(tiny_files, wtype):
    path, cfg = tiny_files[wtype]
    ids = list(np.random.default_rng(2).integers(0, cfg.n_vocab, 33))
    with Model(path, n_batch=8) as m:      # several internal batches
        full = m.logits(ids)
        m.reset()
        steps = np.stack([m.eval([t]) for t in ids])
        assert m.n_past == len(ids)
        m.reset()
        mixed = np.concatenate([m.eval(ids[:10], all_logits=True), m.eval(ids[10:11], all_logits=True), m.eval(ids[11:], all_logits=True)])
    if wtype == "f32":
        assert np.abs(full - steps).max() < 1e-4
        assert np.abs(full - mixed).max() < 1e-4
        return
    # Quantized weights: batches of 8 go through the tile kernels, which sum each row in another
    # order than decoding's kernels; an activation within an ulp of a Q8_1 rounding boundary can
    # then round to the neighbouring code (one such token here moves its logits by ~0.009 on
    # AVX-512). So: nearly every token within 1e-4, none far off, the same argmax everywhere.
    for other in (steps, mixed):
        per_token = np.abs(full - other).max(-1)
        assert (per_token < 1e-4).mean() >= 0.9 and per_token.max() < 0.05, per_token
        assert np.array_equal(full.argmax(-1), other.argmax(-1))
    # below the tile kernels' batch (6 tokens), the four-token kernels give decoding's bits
    with Model(path, n_batch=4) as m:
        small = m.logits(ids)
    assert np.array_equal(small.view(np.uint32), steps.view(np.uint32))


@pytest.mark.parametrize("isa", _lib.supported_isas())
@pytest.mark.parametrize("wtype", ["f32", "q4_1"])
def test_f16_kv_cache_matches_reference(tiny_files, wtype, isa):
    """kv_type="f16": keys and values rounded to half when stored, everything else float32:
    equal to the reference that rounds them the same way, measurably different from f32, half
    the memory; prefill equals token-by-token decoding."""
    path, cfg = tiny_files[wtype]
    ids = list(np.random.default_rng(3).integers(0, cfg.n_vocab, 40))
    w = tm.read_weights(path)
    ref16 = tm.reference_forward(w, cfg, ids, act=tm.ACT_OF[wtype], kv_f16=True)
    ref32 = tm.reference_forward(w, cfg, ids, act=tm.ACT_OF[wtype])
    before = _lib.isa()
    _lib.set_isa(isa)
    try:
        with Model(path, n_threads=2, kv_type="f16", n_batch=8) as m, Model(path, n_threads=2) as m32:
            got = m.logits(ids)
            m.reset()
            steps = np.stack([m.eval([t]) for t in ids])
            assert m.kv_type == "f16" and int(_lib.lib.clex_ctx_kv_bytes(m._ctx)) * 2 == \
                int(_lib.lib.clex_ctx_kv_bytes(m32._ctx))
    finally:
        _lib.set_isa(before)
    assert np.abs(got - ref16).max() < TOL
    assert np.abs(got - ref16).max() < np.abs(ref32 - ref16).max()     # closer to its own reference
    assert np.abs(ref32 - ref16).max() > 1e-4                            # the rounding is real
    # prefill's kernels sum in another order (tiles), and a key that differs in its last float
    # bit can round to the neighbouring half: within the reference's tolerance, not bit for bit
    assert np.abs(got - steps).max() < TOL


def test_kv_type_is_checked(tiny_files):
    path, _ = tiny_files["f32"]
    with pytest.raises(ModelError, match="kv_type"):
        Model(path, kv_type="q4_0")
    assert _lib.lib.clex_ctx_create(_lib.ffi.NULL, 8, 1, 1, 1, _lib.ffi.new("clex_ctx **")) != 0


def test_tied_embeddings_and_threads(tmp_path):
    cfg = tm.tiny_hparams(tied_embeddings=True, n_head_kv=4)
    p = tmp_path / "tied.gguf"
    tm.write_tiny(p, "f16", cfg)
    ids = [1, 5, 9, 3, 7]
    ref = tm.reference_forward(tm.read_weights(p), cfg, ids)
    for nt in (1, 2, 3):
        with Model(p, n_threads=nt) as m:
            assert np.abs(m.logits(ids) - ref).max() < TOL


def test_rope_freqs_and_linear_scaling(tmp_path):
    """rope_freqs.weight divides each frequency and rope.scaling.type=linear divides by the
    factor, as llama.cpp reads them."""
    cfg = tm.tiny_hparams()
    factors = np.linspace(1.0, 4.0, cfg.head_dim // 2).astype(np.float32)

    def extra(w):
        w.add_rope_scaling_type(__import__("gguf").RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)
        w.add_tensor("rope_freqs.weight", factors)

    p = tmp_path / "ropefreqs.gguf"
    tm.write_tiny(p, "f32", cfg, extra=extra)
    inv = tm.rope_table(cfg.freq_base, cfg.head_dim).astype(np.float64) / factors / 2.0
    ids = list(range(20))
    w = tm.read_weights(p)
    ref = tm.reference_forward(w, cfg, ids, inv_freq=inv.astype(np.float32))
    with Model(p) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() < TOL
    plain = tm.reference_forward(w, cfg, ids)
    assert np.abs(got - plain).max() > 10 * TOL     # the scaling really changed something


@pytest.fixture(scope="module")
def smollm2_ref(smollm2, tmp_path_factory):
    """SmolLM2's weights dequantized by gguf-py, the tokens of a real text, and an F32 copy of
    the model (same architecture: 30 layers, 9 heads over 3 kv heads, tied embeddings)."""
    import gguf
    from clexrt.text.tokenizer import Tokenizer
    ids = Tokenizer.from_gguf(smollm2).encode("The capital of France is Paris, and the capital of Italy is")[:12]
    cfg = tm.config_from_gguf(smollm2)
    w = tm.read_weights(smollm2)
    f32 = tmp_path_factory.mktemp("smol") / "smollm2-f32.gguf"
    wr = gguf.GGUFWriter(str(f32), "llama")
    for key, v in (("context_length", cfg.n_ctx_train), ("embedding_length", cfg.n_embd), ("block_count", cfg.n_layer),
                   ("feed_forward_length", cfg.n_ff), ("attention.head_count", cfg.n_head),
                   ("attention.head_count_kv", cfg.n_head_kv), ("rope.dimension_count", cfg.head_dim)):
        wr.add_uint32(f"llama.{key}", v)
    wr.add_float32("llama.rope.freq_base", cfg.freq_base)
    wr.add_float32("llama.attention.layer_norm_rms_epsilon", cfg.eps)
    for name, arr in w.items():
        wr.add_tensor(name, arr.astype(np.float32))
    wr.write_header_to_file(); wr.write_kv_data_to_file(); wr.write_tensors_to_file(); wr.close()
    ref = tm.reference_forward(w, cfg, ids)
    return ids, ref, str(f32)


def test_smollm2_f32_copy_against_numpy(smollm2_ref):
    """The real architecture in float: clexrt on the dequantized F32 copy equals numpy."""
    ids, ref, f32 = smollm2_ref
    with Model(f32, n_ctx=64) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_smollm2_q4_1_against_numpy(smollm2, smollm2_ref):
    """The Q4_1 file itself: the integer products round activations to 8 bits, which over 30
    layers moves logits (|logits| ~ 15) by up to ~1; the numpy reference that rounds the same
    way differs from float math by as much. The predictions agree."""
    ids, ref, _ = smollm2_ref
    with Model(smollm2, n_ctx=64) as m:
        got = m.logits(ids)
    assert np.abs(got - ref).max() < 2.0
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.75


# ---------------------------------------------------------------------------- bad input

def test_unsupported_type_is_named(tmp_path):
    p = tmp_path / "mxfp4.gguf"
    tm.write_tiny(p, "f32", override_types={"blk.1.ffn_up.weight": "MXFP4"})
    with pytest.raises(ModelError, match=r"blk\.1\.ffn_up\.weight.*MXFP4"):
        Model(p)


def test_missing_tensor_is_named(tmp_path):
    p = tmp_path / "missing.gguf"
    tm.write_tiny(p, "f32", drop=("blk.0.attn_v.weight",))
    with pytest.raises(ClexError, match=r"blk\.0\.attn_v\.weight"):
        Model(p)


def test_shape_disagreeing_with_hparams(tmp_path):
    p = tmp_path / "shape.gguf"
    tm.write_tiny(p, "f32", extra=lambda w: None, cfg=tm.tiny_hparams())
    # rewrite with a wrong head count: q rows no longer match
    p2 = tmp_path / "shape2.gguf"
    import gguf
    r = gguf.GGUFReader(str(p))
    wr = gguf.GGUFWriter(str(p2), "llama")
    for k, v in (("block_count", 2), ("context_length", 256), ("embedding_length", 64),
                 ("feed_forward_length", 256), ("attention.head_count", 4), ("attention.head_count_kv", 2)):
        wr.add_uint32(f"llama.{k}", v)
    for t in r.tensors:
        wr.add_tensor(t.name, np.array(t.data).reshape(tuple(reversed([int(x) for x in t.shape]))))
    wr.write_header_to_file(); wr.write_kv_data_to_file(); wr.write_tensors_to_file(); wr.close()
    with pytest.raises(ClexError, match=r"ffn_(gate|up|down)"):
        Model(p2)


def test_token_out_of_vocab_and_context_full(tiny_files):
    path, cfg = tiny_files["f32"]
    with Model(path, n_ctx=16) as m:
        with pytest.raises(ModelError, match="outside the vocabulary"):
            m.eval([cfg.n_vocab])
        with pytest.raises(ModelError, match="outside the vocabulary"):
            m.eval([-1])
        assert m.n_past == 0
        m.eval(list(range(10)))
        with pytest.raises(ContextFullError):
            m.eval(list(range(7)))
        assert m.n_past == 10                    # nothing was lost
        m.eval(list(range(6)))
        assert m.n_past == 16


def test_n_ctx_too_big_for_memory(tiny_files):
    path, _ = tiny_files["f32"]
    with pytest.raises(ModelError, match="KV cache"):
        Model(path, n_ctx=(1 << 24) + 1)
    with pytest.raises(ModelError):
        Model(path, n_ctx=-5)


def test_native_rejects_bad_positions_directly(tiny_files):
    """The C core checks what it is given, whatever Python passes."""
    from clexrt.engine.native import ffi, lib
    path, cfg = tiny_files["f32"]
    with Model(path, n_ctx=8) as m:
        toks = np.array([1, 2, 3], np.int32)
        p = ffi.cast("int32_t *", toks.ctypes.data)
        assert lib.clex_eval(m._ctx, p, 3, 6, ffi.NULL, 0) == lib.CLEX_E_FULL
        assert lib.clex_eval(m._ctx, p, 3, -1, ffi.NULL, 0) == lib.CLEX_E_INVALID
        assert lib.clex_eval(m._ctx, p, 0, 0, ffi.NULL, 0) == lib.CLEX_E_INVALID
        bad = np.array([1, 99999], np.int32)
        assert lib.clex_eval(m._ctx, ffi.cast("int32_t *", bad.ctypes.data), 2, 0, ffi.NULL, 0) == lib.CLEX_E_INVALID
        assert lib.clex_ctx_set_rope(m._ctx, ffi.new("float[]", 3), 3) == lib.CLEX_E_INVALID


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decoding_with_split_keys_equals_the_full_forward(tiny_files, kv_type, threads):
    """Decoding one token splits each KV head's keys into chunks across threads (from 128 keys
    on) and combines their softmax partials; the logits equal the one-forward batch path. F32
    weights: with Q8_0 ones, the chunks' float rounding (1e-7) can move an activation across a
    Q8_0 rounding step and the logits by ~1e-2, whichever kernels run."""
    path, cfg = tiny_files["f32"]
    ids = list(np.random.default_rng(6).integers(0, cfg.n_vocab, 250))
    with Model(path, n_threads=threads, kv_type=kv_type) as m:
        full = m.logits(ids)
        m.reset()
        m.eval(ids[:100])
        steps = np.stack([m.eval([t]) for t in ids[100:]])
    assert np.abs(full[100:] - steps).max() < 1e-4


@pytest.mark.parametrize("isa", _lib.supported_isas())
@pytest.mark.parametrize("n_head,n_head_kv,window,kv", [(8, 2, 0, "f32"), (2, 1, 0, "f16"), (1, 1, 0, "f32"),
                                                         (8, 4, 8, "f32"), (2, 2, 19, "f16"), (4, 2, 0, "q8_0"),
                                                         (2, 1, 0, "q8_0"), (4, 4, 19, "q8_0")])
def test_prefill_attention_in_blocks(tmp_path, isa, n_head, n_head_kv, window, kv):
    """Prefill's blocked attention (AVX-512: 16 tokens per call, keys 16 at a time with a running
    softmax) at head sizes 16, 64 and 128, batches starting at 0 and past cached tokens, batch
    ends that fill part of the 16 lanes, sliding windows shorter and longer than a block: equal
    to token-by-token decoding (the per-token path) and, without a window, to the float64
    reference (a Q8_0 cache: to token-by-token decoding, the reference having no Q8_0 cache)."""
    cfg = tm.tiny_hparams(n_embd=128, n_head=n_head, n_head_kv=n_head_kv)
    p = tmp_path / "heads.gguf"
    extra = (lambda wr: wr.add_uint32("llama.attention.sliding_window", window)) if window else None
    tm.write_tiny(p, "f32", cfg, extra=extra)
    ids = list(np.random.default_rng(5).integers(0, cfg.n_vocab, 45))
    before = _lib.isa()
    _lib.set_isa(isa)
    try:
        with Model(p, n_threads=2, n_batch=64, kv_type=kv) as m:
            full = m.logits(ids)
            m.reset()
            split = np.concatenate([m.eval(ids[:5], all_logits=True), m.eval(ids[5:], all_logits=True)])
            m.reset()
            steps = np.stack([m.eval([t]) for t in ids])
    finally:
        _lib.set_isa(before)
    assert np.abs(full - steps).max() < 1e-4
    assert np.abs(split - steps).max() < 1e-4
    if not window and kv != "q8_0":
        ref = tm.reference_forward(tm.read_weights(p), cfg, ids, kv_f16=kv == "f16")
        assert np.abs(full - ref).max() < TOL

"""clexrt.gguf.schema: the model-level rules (architecture, hyper-parameter keys, tensors and
their shapes, tokenizer arrays, clex.* tables) on tiny LLaMA GGUFs built byte by byte."""
import numpy as np
import pytest

from clexrt.errors import GGUFError
from clexrt.gguf.constants import ValueType as VT
from clexrt.gguf.reader import GGUFFile
from clexrt.gguf.schema import _validate_clex, validate_model
from ggufgen import build_gguf, tiny_llama_content
from test_gguf_reader import expect_error, write

def llama_file(tmp_path, kvs_edit=None, tensors_edit=None, **overrides):
    c = tiny_llama_content(**overrides)
    kvs, tensors = dict(c.kvs), dict(c.tensors)
    if kvs_edit:
        kvs_edit(kvs)
    if tensors_edit:
        tensors_edit(tensors)
    return write(tmp_path, build_gguf(kvs, tensors).data)


def set_kv(key, vt, value):
    return lambda kvs: kvs.__setitem__(key, (vt, value))


def del_kv(key):
    return lambda kvs: kvs.pop(key)


def test_tiny_llama_variants_validate(tmp_path):
    for kw in (dict(tied=True), dict(rope_freqs=True, clex=True), dict(n_head_kv=4),
               dict(tokenizer=False), dict(n_layer=1, n_embd=32, n_head=2, n_head_kv=1)):
        with GGUFFile(llama_file(tmp_path, **kw)) as g:
            validate_model(g)


@pytest.mark.parametrize("arch", ["gpt2", "mamba", ""])
def test_unsupported_arch(tmp_path, arch):
    p = llama_file(tmp_path, set_kv("general.architecture", VT.STRING, arch))
    expect_error(p, "'general.architecture'", "not supported (supported: llama, qwen2, gemma3, phi2, gptneox)", model=True)


def test_missing_arch(tmp_path):
    expect_error(llama_file(tmp_path, del_kv("general.architecture")), "'general.architecture'",
                 "missing", model=True)


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length",
                                 "llama.feed_forward_length", "llama.attention.head_count"])
def test_missing_required_key(tmp_path, key):
    expect_error(llama_file(tmp_path, del_kv(key)), repr(key), "missing", model=True)


@pytest.mark.parametrize("key, vt, value, needle", [
    ("llama.block_count", VT.STRING, "2", "expected an integer"),
    ("llama.block_count", VT.FLOAT32, 2.0, "expected an integer"),
    ("llama.attention.head_count", VT.ARRAY, (VT.UINT32, [4, 4]), "expected an integer"),
    ("llama.block_count", VT.INT32, 0, "below 1"),
    ("llama.attention.head_count_kv", VT.INT64, -2, "below 1"),
    ("llama.embedding_length", VT.UINT64, 2**64 - 1, "'llama.attention.head_count'"),
    ("llama.rope.freq_base", VT.FLOAT32, float("nan"), "not a finite positive"),
    ("llama.rope.freq_base", VT.FLOAT64, -1.0, "not a finite positive"),
    ("llama.rope.freq_base", VT.UINT32, 10000, "expected a float"),
    ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, float("inf"), "not a finite positive"),
    ("llama.rope.scaling.type", VT.UINT32, 1, "expected STRING"),
    ("llama.rope.scaling.factor", VT.FLOAT32, 0.0, "not a finite positive"),
    ("llama.context_length", VT.UINT32, 0, "below 1"),
])
def test_bad_hparam_key(tmp_path, key, vt, value, needle):
    expect_error(llama_file(tmp_path, set_kv(key, vt, value)), repr(key), needle, model=True)


def test_heads_must_divide_width(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.attention.head_count", VT.UINT32, 5))
    expect_error(p, "'llama.attention.head_count'", "does not divide", model=True)


def test_kv_heads_must_divide_heads(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.attention.head_count_kv", VT.UINT32, 3))
    expect_error(p, "'llama.attention.head_count_kv'", "does not divide", model=True)


@pytest.mark.parametrize("n_rot", [15, 18])
def test_bad_rope_dims(tmp_path, n_rot):
    p = llama_file(tmp_path, set_kv("llama.rope.dimension_count", VT.UINT32, n_rot))
    expect_error(p, "'llama.rope.dimension_count'", model=True)


def test_block_count_larger_than_tensors(tmp_path):
    for n in (3, 2**32 - 1):
        p = llama_file(tmp_path, set_kv("llama.block_count", VT.UINT32, n))
        expect_error(p, "'llama.block_count'", "tensors", model=True)


def test_missing_layer_tensors(tmp_path):
    def edit(t):
        for i in range(9):
            t[f"pad{i}"] = np.zeros(4, np.float32)
    p = llama_file(tmp_path, set_kv("llama.block_count", VT.UINT32, 3), edit)
    expect_error(p, "'blk.2.attn_norm.weight'", "missing", model=True)


@pytest.mark.parametrize("name", ["token_embd.weight", "output_norm.weight",
                                  "blk.1.ffn_down.weight", "blk.0.attn_v.weight"])
def test_missing_tensor(tmp_path, name):
    def edit(t):
        t.pop(name)
        t["padding.weight"] = np.zeros(4, np.float32)    # keep the tensor count plausible
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "missing", model=True)


@pytest.mark.parametrize("name, shape", [
    ("blk.0.attn_q.weight", (64, 32)), ("blk.0.attn_k.weight", (64, 64)),
    ("blk.1.attn_output.weight", (32, 64)), ("blk.1.ffn_gate.weight", (128, 32)),
    ("blk.0.ffn_down.weight", (128, 64)), ("output.weight", (99, 64)),
    ("output_norm.weight", (32,)), ("token_embd.weight", (100, 32)),
    ("token_embd.weight", (2, 100, 64)), ("blk.0.attn_norm.weight", (64, 1))])
def test_wrong_tensor_shape(tmp_path, name, shape):
    def edit(t):
        t[name] = np.zeros(shape, t[name].dtype)
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "shape", model=True)


def test_wrong_rope_freqs_shape(tmp_path):
    def edit(t):
        t["rope_freqs.weight"] = np.ones(16, np.float32)
    expect_error(llama_file(tmp_path, tensors_edit=edit, rope_freqs=True), "'rope_freqs.weight'",
                 "expected [8]", model=True)


@pytest.mark.parametrize("name", ["output_norm.weight", "blk.1.ffn_norm.weight",
                                  "blk.0.attn_norm.weight"])
def test_norms_must_be_f32(tmp_path, name):
    def edit(t):
        t[name] = t[name].astype(np.float16)
    expect_error(llama_file(tmp_path, tensors_edit=edit), repr(name), "expected F32", model=True)


def test_vocab_size_mismatch(tmp_path):
    p = llama_file(tmp_path, set_kv("llama.vocab_size", VT.UINT32, 101))
    expect_error(p, "'llama.vocab_size'", "101", model=True)


def test_tokens_length_mismatch(tmp_path):
    def edit(kvs):
        kvs["tokenizer.ggml.tokens"] = (VT.ARRAY, (VT.STRING, ["x"] * 99))
    expect_error(llama_file(tmp_path, edit), "'tokenizer.ggml.tokens'", "99 tokens", model=True)


@pytest.mark.parametrize("key, value, needle", [
    ("tokenizer.ggml.tokens", (VT.ARRAY, (VT.INT32, [0] * 100)), "expected ARRAY of STRING"),
    ("tokenizer.ggml.tokens", (VT.STRING, "abc"), "expected ARRAY of STRING"),
    ("tokenizer.ggml.scores", (VT.ARRAY, (VT.FLOAT64, [0.0] * 100)), "expected ARRAY of FLOAT32"),
    ("tokenizer.ggml.token_type", (VT.ARRAY, (VT.UINT32, [1] * 100)), "expected ARRAY of INT32"),
    ("tokenizer.ggml.merges", (VT.ARRAY, (VT.ARRAY, [(VT.STRING, ["a"])])),
     "expected ARRAY of STRING"),
    ("tokenizer.ggml.scores", (VT.ARRAY, (VT.FLOAT32, [0.0] * 99)), "length 99"),
    ("tokenizer.ggml.token_type", (VT.ARRAY, (VT.INT32, [1] * 101)), "length 101"),
    ("tokenizer.ggml.model", (VT.UINT32, 1), "expected STRING"),
    ("tokenizer.ggml.eos_token_id", (VT.UINT32, 100), "outside the vocabulary"),
    ("tokenizer.ggml.padding_token_id", (VT.INT32, -1), "below 0"),
    ("tokenizer.ggml.bos_token_id", (VT.STRING, "1"), "expected an integer"),
])
def test_bad_tokenizer_arrays(tmp_path, key, value, needle):
    p = llama_file(tmp_path, set_kv(key, *value))
    expect_error(p, repr(key), needle, model=True)


@pytest.mark.parametrize("key, value", [
    ("clex.tables", (VT.ARRAY, (VT.FLOAT32, [0.0, float("nan")]))),
    ("clex.inv_freq", (VT.ARRAY, (VT.FLOAT64, [float("-inf")]))),
    ("clex.scale", (VT.FLOAT32, float("inf"))),
    ("clex.nested", (VT.ARRAY, (VT.ARRAY, [(VT.FLOAT32, [1.0]), (VT.FLOAT32, [float("nan")])]))),
])
def test_clex_values_finite(tmp_path, key, value):
    p = llama_file(tmp_path, set_kv(key, *value), clex=True)
    expect_error(p, repr(key), "NaN or infinite", model=True)


@pytest.mark.parametrize("key, value, needle", [
    ("clex.init", (VT.STRING, "magic"), "clex.init must be one of"),
    ("clex.max_factor", (VT.UINT32, 0), "clex.max_factor must be an integer"),
    ("clex.inv_freq", (VT.ARRAY, (VT.FLOAT32, [1.0, 0.5])), "rope dimension 16 needs 8"),
    ("clex.grid", (VT.ARRAY, (VT.FLOAT32, [1.0, 3.0, 2.0])), "clex.grid must increase"),
    ("clex.log_inv_freq", (VT.ARRAY, (VT.FLOAT32, [0.0] * 23)), "has 23 values, expected 24"),
    ("clex.ode_up_shape", (VT.ARRAY, (VT.UINT32, [8, 17])), "do not fit d = 16"),
    ("clex.ode_down", (VT.ARRAY, (VT.FLOAT32, [0.0] * 127)), "clex.ode_down has 127 values"),
    ("clex.ode_down_shape", (VT.ARRAY, (VT.STRING, ["16", "8"])), "clex.ode_down_shape must be two"),
])
def test_clex_table_shapes(tmp_path, key, value, needle):
    """The clex.* schema (docs/convert.md) is checked at validation, against the rope dimension."""
    p = llama_file(tmp_path, set_kv(key, *value), clex=True, n_embd=32, n_head=2, n_head_kv=1)
    expect_error(p, needle, model=True)


def test_clex_missing_key_is_named(tmp_path):
    p = llama_file(tmp_path, del_kv("clex.grid"), clex=True)
    expect_error(p, "missing clex.grid", model=True)


def test_validate_clex_hook_directly():
    md = {"clex.ok": np.array([1.0, 2.0], np.float32), "other.nan": float("nan"),
          "clex.ints": np.array([1, 2]), "clex.name": "x"}
    _validate_clex(md, {})
    md["clex.bad"] = np.array([np.inf], np.float32)
    with pytest.raises(GGUFError, match="'clex.bad'"):
        _validate_clex(md, {})


def test_key_length_sets_the_head_width(tmp_path):
    """attention.key_length is the head width when given (Gemma-style heads wider than
    n_embd / n_head): tensors must then have n_head * key_length rows."""
    def narrow(kvs):
        kvs["llama.attention.key_length"] = (VT.UINT32, 8)
        kvs["llama.rope.dimension_count"] = (VT.UINT32, 8)
    p = llama_file(tmp_path, narrow)
    expect_error(p, "'blk.0.attn_q.weight'", "expected [64, 32]", model=True)    # 4 heads x 8
    with GGUFFile(llama_file(tmp_path, set_kv("llama.attention.key_length", VT.UINT32, 16))) as g:
        assert validate_model(g).head_dim == 16


def test_value_length_must_equal_key_length(tmp_path):
    def edit(kvs):
        kvs["llama.attention.key_length"] = (VT.UINT32, 16)
        kvs["llama.attention.value_length"] = (VT.UINT32, 8)
    expect_error(llama_file(tmp_path, edit), "'llama.attention.value_length'", "differs", model=True)
    expect_error(llama_file(tmp_path, set_kv("llama.attention.value_length", VT.UINT32, 16)),
                 "given without", model=True)


def test_hparams_metadata_reads_back(tmp_path):
    """What the converter writes (hparams_metadata) is what validate_model reads."""
    from clexrt.gguf.schema import hparams_metadata

    with GGUFFile(llama_file(tmp_path)) as g:
        hp = validate_model(g)
        md = hparams_metadata(hp)
        assert {k: v for k, v in g.metadata.items() if k in md} == pytest.approx(md)


# -- the other architectures (clexrt.gguf.archs): their required tensors and keys -------------

def _as_arch(arch: str, extra_tensors: dict, extra_kvs: dict | None = None):
    """kvs/tensors edits turning the tiny LLaMA into `arch`: keys renamed, tensors added."""
    def kvs_edit(kvs):
        for k in [k for k in kvs if k.startswith("llama.")]:
            kvs[arch + k[len("llama"):]] = kvs.pop(k)
        kvs["general.architecture"] = (VT.STRING, arch)
        kvs.update(extra_kvs or {})

    def tensors_edit(tensors):
        tensors.update(extra_tensors)
    return kvs_edit, tensors_edit


def _layer_vectors(names_dims: dict, n_layer: int = 2) -> dict:
    return {f"blk.{i}.{n}": np.full(d, 0.5, np.float32) for i in range(n_layer) for n, d in names_dims.items()}


def _arch_vectors(arch: str) -> dict:
    """The per-layer F32 vectors `arch` requires beyond LLaMA's, sized for the tiny model."""
    hp = tiny_llama_content().hparams
    E, D = hp["n_embd"], hp["n_embd"] // hp["n_head"]
    dims = {"qwen2": {"attn_q.bias": E, "attn_k.bias": hp["n_head_kv"] * D, "attn_v.bias": hp["n_head_kv"] * D},
            "gemma3": {"attn_q_norm.weight": D, "attn_k_norm.weight": D, "post_attention_norm.weight": E,
                       "post_ffw_norm.weight": E}}[arch]
    return dims


@pytest.mark.parametrize("arch, missing", [
    ("qwen2", "blk.1.attn_k.bias"), ("qwen2", "blk.0.attn_q.bias"),
    ("gemma3", "blk.0.attn_q_norm.weight"), ("gemma3", "blk.1.post_ffw_norm.weight")])
def test_missing_architecture_tensor(tmp_path, arch, missing):
    kv_edit, t_edit = _as_arch(arch, _layer_vectors(_arch_vectors(arch)))
    with GGUFFile(llama_file(tmp_path, kv_edit, t_edit)) as g:      # complete: it validates
        assert validate_model(g).arch == arch
    p = llama_file(tmp_path, kv_edit, lambda t: (t_edit(t), t.pop(missing)))
    expect_error(p, f"tensor '{missing}'", f"missing (required for {arch})", model=True)


def test_gemma3_keys_give_the_layer_pattern_and_local_base(tmp_path):
    """gemma3: llama.cpp's default pattern (every 6th layer global), the window from the key,
    the local layers' base 10000 unless rope.freq_base_swa says otherwise, sqrt(d) embeddings."""
    hp = tiny_llama_content().hparams
    dims = _arch_vectors("gemma3")
    kv_edit, t_edit = _as_arch("gemma3", _layer_vectors(dims, 7),
                               {"gemma3.attention.sliding_window": (VT.UINT32, 4)})
    with GGUFFile(llama_file(tmp_path, kv_edit, t_edit, n_layer=7)) as g:
        spec = validate_model(g)
    assert spec.swa_layers == (True,) * 5 + (False, True) and spec.n_swa == 4
    assert spec.local_rope_base == 10000.0 and spec.n_rope_sets == 2
    assert [spec.layer_rope_set(i) for i in range(7)] == [1] * 5 + [0, 1]
    assert spec.embd_scale == pytest.approx(np.sqrt(hp["n_embd"]))
    kv_edit2, _ = _as_arch("gemma3", {}, {"gemma3.attention.sliding_window": (VT.UINT32, 4),
                                          "gemma3.attention.sliding_window_pattern": (VT.UINT32, 2),
                                          "gemma3.rope.freq_base_swa": (VT.FLOAT32, 500.0)})
    with GGUFFile(llama_file(tmp_path, kv_edit2, t_edit, n_layer=7)) as g:
        spec = validate_model(g)
    assert spec.swa_layers == (True, False) * 3 + (True,) and spec.local_rope_base == 500.0

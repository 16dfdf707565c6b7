"""The HF -> GGUF converter and clexify: metadata, layouts, types, CLEX keys, safe output, bad input."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import hfgen
from clexrt.rope.spline import ClexSpline
from clexrt.rope.tables import read_clex
from clexrt.gguf.schema import validate_model
from clexrt.convert import clexify, convert_hf
from clexrt.convert import quantize as Q
from clexrt.rope.ode import ClexODE, default_grid
from clexrt.convert.gguf_out import permute_qk, unpermute_qk
from clexrt.errors import ConvertError
from clexrt.gguf.reader import GGUFFile

F32 = np.float32


def gguf_of(path):
    return GGUFFile(str(path))


def test_plain_metadata_and_tensors(ckpts):
    folder, w, path, spec = ckpts["plain"]
    with gguf_of(path) as g:
        md = g.metadata
        assert md["general.architecture"] == "llama" and md["general.file_type"] == 0
        n_vocab = w["model.embed_tokens.weight"].shape[0]
        assert md["llama.vocab_size"] == n_vocab
        assert (md["llama.context_length"], md["llama.embedding_length"], md["llama.block_count"],
                md["llama.feed_forward_length"], md["llama.rope.dimension_count"],
                md["llama.attention.head_count"], md["llama.attention.head_count_kv"]) == (64, 64, 2, 96, 16, 4, 2)
        assert md["llama.rope.freq_base"] == 10000.0
        assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
        toks = md["tokenizer.ggml.tokens"]
        assert md["tokenizer.ggml.model"] == "llama" and len(toks) == n_vocab
        assert toks[-1] == f"[PAD{n_vocab - 1}]" and md["tokenizer.ggml.token_type"][-1] == 5
        assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.eos_token_id"] == 2
        assert md["tokenizer.ggml.add_bos_token"] is True
        assert md["tokenizer.chat_template"] == hfgen.CHAT_TEMPLATE
        assert not any(k.startswith("clex.") for k in md)
        assert "output.weight" not in g.tensors            # tied embeddings
        assert len(g.tensors) == 2 + 9 * spec.n_layer
        validate_model(g)
        # bf16 checkpoint -> f32 exactly; q/k permuted, the rest as stored
        emb = np.asarray(g.tensor_array("token_embd.weight"))
        assert np.array_equal(emb, w["model.embed_tokens.weight"])
        q = np.asarray(g.tensor_array("blk.1.attn_q.weight"))
        k = np.asarray(g.tensor_array("blk.1.attn_k.weight"))
        assert np.array_equal(q, permute_qk(w["model.layers.1.self_attn.q_proj.weight"], spec.n_head))
        assert np.array_equal(k, permute_qk(w["model.layers.1.self_attn.k_proj.weight"], spec.n_head_kv))
        assert np.array_equal(np.asarray(g.tensor_array("blk.0.ffn_down.weight")),
                              w["model.layers.0.mlp.down_proj.weight"])


def test_permutation_turns_rotate_half_into_adjacent_pairs():
    """Rotating rotate_half-layout rows equals rotating the permuted rows in adjacent pairs."""
    rng = np.random.default_rng(0)
    n_head, d, n_in = 3, 8, 5
    w = rng.standard_normal((n_head * d, n_in))
    x = rng.standard_normal(n_in)
    theta = rng.uniform(0, 6, d // 2)
    c, s = np.cos(theta), np.sin(theta)
    q_hf = (w @ x).reshape(n_head, d)
    a, b = q_hf[:, : d // 2], q_hf[:, d // 2:]
    rot_hf = np.concatenate([a * c - b * s, a * s + b * c], axis=1)
    q_gg = (permute_qk(w, n_head) @ x).reshape(n_head, d)
    e, o = q_gg[:, 0::2], q_gg[:, 1::2]
    rot_gg = np.empty_like(q_gg)
    rot_gg[:, 0::2], rot_gg[:, 1::2] = e * c - o * s, e * s + o * c
    # same vectors, same dot products: the adjacent layout is a fixed permutation of rotate_half's
    assert np.allclose(rot_gg[:, 0::2], rot_hf[:, : d // 2]) and np.allclose(rot_gg[:, 1::2], rot_hf[:, d // 2:])
    assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)


def test_bake_clex(ckpts):
    folder, w, path, spec = ckpts["clex"]
    with gguf_of(path) as g:
        md = g.metadata
        assert md["llama.context_length"] == spec.n_ctx                     # stays L
        assert "llama.rope.scaling.type" not in md                          # llama.cpp would refuse "clex"
        assert not any(n.startswith("clex") or "rope_freqs" in n for n in g.tensors)   # no extra tensors
        assert "output.weight" in g.tensors
        c = read_clex(md, n_rot=md["llama.rope.dimension_count"])
    assert (c.train_length, c.max_factor, c.param_factor, c.act, c.init) == (64, 4, 1, "silu", "ode")
    assert c.time_dt == pytest.approx(0.01) and c.log_scale is True
    assert np.array_equal(c.inv_freq, w["model.clex_layer.inv_freq"])
    assert np.array_equal(c.ode_up, w["model.clex_layer.proj_func.ode_up_proj"])
    assert np.array_equal(c.ode_down, w["model.clex_layer.proj_func.ode_down_proj"])
    assert np.array_equal(c.grid, default_grid(4))
    ode = ClexODE(w["model.clex_layer.inv_freq"], act="silu", time_dt=0.01,
                  up=w["model.clex_layer.proj_func.ode_up_proj"], down=w["model.clex_layer.proj_func.ode_down_proj"])
    official = ode.solve(np.arange(1, 5, dtype=F32))      # the official inference's integer tables
    for t in (2, 3, 4):     # stored as log: exp then log again loses at most an ulp
        assert np.array_equal(c.tables[np.flatnonzero(c.grid == t)[0]], official[t - 1])
        assert np.abs(np.log(c.table_at(t).astype(np.float64)) - official[t - 1]).max() < 2e-7
    assert np.array_equal(c.table_at(1), w["model.clex_layer.inv_freq"])
    # the network is far from zero: tables differ from NTK scaling
    assert np.abs(c.tables - ClexODE(c.inv_freq).tables(c.grid)).max() > 0.05
    js = c.to_json()
    assert js["train_length"] == 64 and js["max_factor"] == 4 and js["act"] == "silu" and js["n_grid"] == c.grid.size
    json.dumps(js)


def test_every_outtype_writes_a_valid_file(ckpts, tmp_path):
    for kind in ("plain", "clex"):
        folder, w, _, spec = ckpts[kind]
        for outtype in ("f16", "bf16", "q8_0", "q4_0", "q4_1"):
            out = tmp_path / f"{kind}-{outtype}.gguf"
            plan = convert_hf(folder, out, outtype=outtype, progress=False)
            with gguf_of(out) as g:
                validate_model(g)
                assert g.metadata["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3}[outtype]
                tid = Q.TYPE_IDS[outtype]
                for name, t in g.tensors.items():
                    if name.endswith("norm.weight"):
                        assert t.ggml_type == Q.F32_ID
                    elif name.endswith("ffn_down.weight") and spec.n_ff % 32 and tid in Q.BLOCK_TYPES:
                        assert t.ggml_type == Q.F16_ID       # row of 80: f16 fallback, said in the plan
                        assert any(name in n and "F16" in n for n in plan.notes)
                    else:
                        assert t.ggml_type == tid, name
                src = w["model.layers.0.self_attn.q_proj.weight"]
                want = Q.quantize(permute_qk(src, spec.n_head), tid)
                assert bytes(g.tensor_bytes("blk.0.attn_q.weight")) == np.ascontiguousarray(want).tobytes()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_dry_run_prints_the_plan_and_writes_nothing(ckpts, tmp_path):
    from clexrt.cli.convert import convert as cmd

    folder = ckpts["clex"][0]
    before = sorted(os.listdir(folder))
    out = tmp_path / "x.gguf"
    r = CliRunner().invoke(cmd, [str(folder), "-o", str(out), "--outtype", "q8_0", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "blk.1.ffn_down.weight" in r.output and "Q8_0" in r.output and "F16" in r.output
    assert "clex.log_inv_freq" in r.output and "llama.context_length" in r.output
    assert not out.exists() and sorted(os.listdir(folder)) == before and not os.listdir(tmp_path)


def test_vocab_only(ckpts, tmp_path):
    folder = ckpts["plain"][0]
    out = tmp_path / "vocab.gguf"
    convert_hf(folder, out, vocab_only=True, progress=False)
    with gguf_of(out) as g:
        assert not g.tensors and "general.file_type" not in g.metadata
        assert len(g.metadata["tokenizer.ggml.tokens"]) == g.metadata["llama.vocab_size"]
    import sentencepiece as spm

    from clexrt.text.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    text = "The quick brown fox, 12345 café 東京"
    assert tok.encode(text) == sp.encode(text)


def test_interrupted_write_leaves_nothing(ckpts, tmp_path, monkeypatch):
    from clexrt.convert import gguf_out

    folder = ckpts["plain"][0]
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous file")
    calls = {"n": 0}
    real = gguf_out.TensorPlan.data

    def data(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(gguf_out.TensorPlan, "data", data)
    with pytest.raises(KeyboardInterrupt):
        convert_hf(folder, out, outtype="q8_0", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"] and out.read_bytes() == b"previous file"


def test_ntk_init_for_a_plain_checkpoint(ckpts, tmp_path):
    folder, w, _, spec = ckpts["plain"]
    with pytest.raises(ConvertError, match="clex-max-factor"):
        convert_hf(folder, tmp_path / "a.gguf", clex_init="ntk", dry_run=True)
    with pytest.raises(ConvertError, match="CLEX checkpoint"):
        convert_hf(folder, tmp_path / "a.gguf", clex_init="ode", dry_run=True)
    out = tmp_path / "ntk.gguf"
    convert_hf(folder, out, clex_init="ntk", clex_max_factor=8, progress=False)
    with gguf_of(out) as g:
        c = read_clex(g.metadata)
    assert c.init == "ntk" and c.ode_up is None and c.max_factor == 8 and c.train_length == spec.n_ctx
    d = spec.head_dim
    for t in (2, 5, 8):
        base = spec.rope_theta * (2 * t - 1) ** (d / (d - 2))
        want = 1.0 / base ** (np.arange(0, d, 2) / d)
        assert np.allclose(c.table_at(t), want, rtol=2e-6)
    spline = ClexSpline(c)
    for t in (1.3, 2.7, 7.9):   # zero network: the residual is constant, interpolation is exact
        assert np.allclose(np.exp(c.ode().ntk_closed_form([t])[0]), spline.table(t), rtol=2e-6)


def test_clexify_copies_tensors_and_adds_tables(ckpts, tmp_path):
    folder, w, _, spec = ckpts["plain"]
    src = tmp_path / "q.gguf"
    convert_hf(folder, src, outtype="q4_1", progress=False)
    out = tmp_path / "q-clex.gguf"
    plan = clexify(src, out, max_factor=4, train_length=32, progress=False)
    assert plan.tensors
    with gguf_of(src) as a, gguf_of(out) as b:
        assert list(a.tensors) == list(b.tensors)
        for n in a.tensors:
            assert a.tensors[n].ggml_type == b.tensors[n].ggml_type and a.tensors[n].shape == b.tensors[n].shape
            assert bytes(a.tensor_bytes(n)) == bytes(b.tensor_bytes(n))
        for k, v in a.metadata.items():
            assert a.metadata_types[k] == b.metadata_types[k]
            assert (np.array_equal(v, b.metadata[k]) if isinstance(v, np.ndarray) else v == b.metadata[k]), k
        c = read_clex(b.metadata, n_rot=16)
        validate_model(b)
    assert c.init == "ntk" and c.train_length == 32 and c.max_factor == 4
    assert np.allclose(c.inv_freq, 1 / 10000 ** (np.arange(0, 16, 2) / 16), rtol=1e-7)
    with pytest.raises(ConvertError, match="overwrite"):
        clexify(out, out, max_factor=2)
    with pytest.raises(ConvertError, match="(?i)no such file"):
        clexify(tmp_path / "nope.gguf", tmp_path / "o.gguf", max_factor=2)


def test_clexify_honours_rope_freqs(tmp_path):
    from ggufgen import make_tiny_llama_gguf

    src = tmp_path / "rf.gguf"
    content = make_tiny_llama_gguf(src, rope_freqs=True)
    out = tmp_path / "rf-clex.gguf"
    clexify(src, out, max_factor=2, progress=False)
    with gguf_of(src) as a, gguf_of(out) as b:
        ff = np.asarray(a.tensor_array("rope_freqs.weight")).reshape(-1)
        d = int(a.metadata.get("llama.rope.dimension_count"))
        base = float(a.metadata.get("llama.rope.freq_base", 10000.0))
        c = read_clex(b.metadata)
    want = 1 / base ** (np.arange(0, d, 2) / d) / ff
    assert np.allclose(c.inv_freq, want, rtol=1e-6)
    assert content is not None


def test_clexify_smollm2(smollm2, tmp_path):
    out = tmp_path / "smol-clex.gguf"
    clexify(smollm2, out, max_factor=8, progress=False)
    with gguf_of(smollm2) as a, gguf_of(out) as b:
        assert set(a.tensors) == set(b.tensors)
        n = "blk.3.attn_q.weight"
        assert bytes(a.tensor_bytes(n)) == bytes(b.tensor_bytes(n))
        c = read_clex(b.metadata, n_rot=int(a.metadata["llama.rope.dimension_count"]))
        assert c.train_length == a.metadata["llama.context_length"] and c.max_factor == 8


def test_cli_convert_and_clexify(ckpts, tmp_path):
    from clexrt.cli import main

    folder = ckpts["plain"][0]
    out = tmp_path / "cli.gguf"

    def run(args):
        try:
            main(args)
        except SystemExit as e:
            assert e.code in (0, None)

    run(["convert", str(folder), "-o", str(out), "--outtype", "q8_0", "--no-progress"])
    assert out.exists()
    out2 = tmp_path / "cli-clex.gguf"
    run(["clexify", str(out), "-o", str(out2), "--max-factor", "3"])
    assert out2.exists()


def test_cli_error_is_one_line(tmp_path, capsys):
    from clexrt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path), "-o", str(tmp_path / "o.gguf")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_bpe_tokenizer_json_round_trip(smollm2, ckpts, tmp_path):
    """SmolLM2's vocabulary written out as a tokenizer.json and converted back: the same tokens,
    types, merges, pre-tokenizer and special ids as the GGUF llama.cpp's converter wrote."""
    from clexrt.text.tokenizer import Tokenizer

    with gguf_of(smollm2) as g:
        md = dict(g.metadata)
    k = "tokenizer.ggml."
    toks, types, merges = md[k + "tokens"], np.asarray(md[k + "token_type"]), md[k + "merges"]
    tok_json = {
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(toks) if types[i] == 1},
                  "merges": [m.split(" ") for m in merges[:50]] + merges[50:]},
        "added_tokens": [{"id": i, "content": t, "special": bool(types[i] == 3)}
                         for i, t in enumerate(toks) if types[i] != 1],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    }
    folder = tmp_path / "bpe"
    shutil.copytree(ckpts["plain"][0], folder)
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = len(toks)
    (folder / "config.json").write_text(json.dumps(cfg))
    bos, eos = toks[md[k + "bos_token_id"]], toks[md[k + "eos_token_id"]]
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos,
                                                               "chat_template": md["tokenizer.chat_template"]}))
    out = tmp_path / "bpe.gguf"
    convert_hf(folder, out, vocab_only=True, progress=False)
    with gguf_of(out) as g:
        m2 = g.metadata
    assert m2[k + "model"] == "gpt2" and m2[k + "pre"] == md[k + "pre"] == "smollm"
    assert m2[k + "tokens"] == toks and list(m2[k + "merges"]) == list(merges)
    assert np.array_equal(m2[k + "token_type"], types)
    assert m2[k + "bos_token_id"] == md[k + "bos_token_id"] and m2[k + "eos_token_id"] == md[k + "eos_token_id"]
    assert m2["tokenizer.chat_template"] == md["tokenizer.chat_template"]
    text = "Hello world, 2024 is here: café!"
    assert Tokenizer.from_gguf(str(out)).encode(text) == Tokenizer.from_gguf(smollm2).encode(text)


@pytest.mark.parametrize("header,words", [
    (b"", "shorter than 8"),
    ((0).to_bytes(8, "little"), "header length"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    (None, "outside"),
    (None, "invalid shape"),
    (None, "unknown dtype"),
    (None, "invalid data_offsets"),
])
def test_safetensors_header_validation(tmp_path, header, words):
    from clexrt.convert.safetensors import SafetensorsFile

    p = tmp_path / "x.safetensors"
    if header is None:
        entry = {"outside": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]},
                 "invalid shape": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},
                 "unknown dtype": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]},
                 "invalid data_offsets": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}[words]
        raw = json.dumps({"w": entry}).encode()
        header = len(raw).to_bytes(8, "little") + raw + bytes(8)
    p.write_bytes(header)
    with pytest.raises(ConvertError, match=words):
        SafetensorsFile(str(p))


def test_clexify_keeps_a_custom_alignment(tmp_path):
    from ggufgen import build_gguf, tiny_llama_content
    from gguf import GGUFValueType as VT

    content = tiny_llama_content()
    kvs = dict(content.kvs)
    kvs["general.alignment"] = (VT.UINT32, 64)
    src = tmp_path / "a64.gguf"
    src.write_bytes(bytes(build_gguf(kvs, content.tensors, alignment=64).data))
    out = tmp_path / "a64-clex.gguf"
    clexify(src, out, max_factor=2, progress=False)
    with gguf_of(src) as a, gguf_of(out) as b:
        assert b.alignment == 64 and all(t.offset % 64 == 0 for t in b.tensors.values())
        for n in a.tensors:
            assert bytes(a.tensor_bytes(n)) == bytes(b.tensor_bytes(n))

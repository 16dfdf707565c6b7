"""convert/mixture.py against llama-quantize: for every file type and every recorded model, the
type chosen for each tensor equals the one llama-quantize wrote (tests/data/llamacpp_mixtures.json,
made by tools/llamacpp_mixtures.py; neither llama.cpp nor the model files are needed here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clexrt.convert.mixture import FILE_TYPES, choose_types, file_type_id
from clexrt.errors import ClexError, ConvertError
from clexrt.gguf.constants import FILE_TYPES as CONST_FILE_TYPES
from clexrt.gguf.constants import GGML_TYPES

DATA = Path(__file__).parent / "data" / "llamacpp_mixtures.json"
RECORD = json.loads(DATA.read_text())
TYPE_ID = {name: tid for tid, (name, _b, _n) in GGML_TYPES.items()}
CASES = [(m, ft) for m in RECORD["models"] for ft in FILE_TYPES]


def _inputs(model: dict) -> list[tuple[str, tuple[int, ...], int]]:
    return [(name, tuple(shape), TYPE_ID[tname]) for name, shape, tname in model["tensors"]]


def _hparams(model: dict) -> dict:
    return {k: model[k] for k in ("arch", "n_layer", "n_head", "n_head_kv", "n_expert")}


def test_record_covers_every_file_type():
    assert RECORD["file_types"] == FILE_TYPES
    assert "smollm2-135m-instruct" in RECORD["models"]
    for model in RECORD["models"].values():
        assert set(model["types"]) == set(FILE_TYPES)
        assert all(len(v) == len(model["tensors"]) for v in model["types"].values())


@pytest.mark.parametrize("model_name,file_type", CASES, ids=[f"{m}-{ft}" for m, ft in CASES])
def test_same_types_as_llama_quantize(model_name, file_type):
    model = RECORD["models"][model_name]
    got = choose_types(_inputs(model), file_type, **_hparams(model))
    want = dict(zip((t[0] for t in model["tensors"]), model["types"][file_type]))
    diff = {n: (GGML_TYPES[got[n]][0], want[n]) for n in want if GGML_TYPES[got[n]][0] != want[n]}
    assert not diff, f"{len(diff)} tensors differ (ours, llama-quantize's): {dict(list(diff.items())[:8])}"
    assert list(got) == [t[0] for t in model["tensors"]]


def test_file_type_ids_come_from_the_shared_table():
    assert FILE_TYPES["Q4_K_M"] == 15 and file_type_id("q4_k_m") == 15
    for name, fid in FILE_TYPES.items():
        if fid in CONST_FILE_TYPES:
            assert CONST_FILE_TYPES[fid] == name
    assert FILE_TYPES["IQ4_NL"] == 25 and FILE_TYPES["IQ4_XS"] == 30


def test_file_type_by_id_and_case():
    model = RECORD["models"]["tiny-llama"]
    by_name = choose_types(_inputs(model), "Q4_K_M", **_hparams(model))
    assert choose_types(_inputs(model), "q4_k_m", **_hparams(model)) == by_name
    assert choose_types(_inputs(model), 15, **_hparams(model)) == by_name


TINY = [("token_embd.weight", (256, 512), 0), ("blk.0.attn_norm.weight", (256,), 0),
        ("blk.0.attn_v.weight", (256, 128), 0), ("blk.0.ffn_down.weight", (512, 256), 0)]
HP = dict(arch="llama", n_layer=1, n_head=4, n_head_kv=2)


@pytest.mark.parametrize("bad", ["Q4_K_X", "", "F16", "IQ2_XXS", "Q2_K_S", 99, None, True])
def test_unknown_file_type_is_a_clear_error(bad):
    with pytest.raises(ConvertError, match="unknown quantization file type") as ei:
        choose_types(TINY, bad, **HP)
    assert isinstance(ei.value, ClexError)
    assert "Q4_K_M" in str(ei.value)          # the message lists the choices


@pytest.mark.parametrize("tensors,hp,match", [
    (TINY, dict(HP, n_layer=0), "n_layer"),
    (TINY, dict(HP, n_head_kv=-1), "n_head_kv"),
    (TINY + [TINY[0]], HP, "listed twice"),
    ([("x.weight", (0, 4), 0)], HP, "bad tensor entry"),
    ([("x.weight", (4, 4))], HP, "must be"),
    ([("x.weight", (4, 4), 123)], HP, "unknown ggml type"),
    ([("ffn_down_exps.weight", (256, 256, 8), 0)], dict(HP, n_expert=8), "layer"),
    ([("blk.3.ffn_up_exps.weight", (256, 256, 8), 0)], dict(HP, n_expert=8), "outside"),
])
def test_bad_input(tensors, hp, match):
    with pytest.raises(ConvertError, match=match):
        choose_types(tensors, "Q4_K_M", **hp)


def test_vectors_and_norms_keep_their_type():
    got = choose_types(TINY + [("rope_freqs.weight", (32,), 0), ("blk.0.x.weight", (256, 1), 1)],
                       "Q8_0", **HP)
    assert got["blk.0.attn_norm.weight"] == 0 and got["rope_freqs.weight"] == 0
    assert got["blk.0.x.weight"] == 1                     # trailing 1s do not make it 2-D
    assert GGML_TYPES[got["blk.0.ffn_down.weight"]][0] == "Q8_0"

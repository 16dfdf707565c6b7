"""`clexrt clexify` on every architecture's GGUF (tiny transformers checkpoints converted by
`clexrt convert`): within the training length the clexified file runs exactly as the plain one;
past it the zero-network CLEX tables drive the global rope only, which transformers (its own
modules, the global rotary embedding's frequencies replaced by the tables, Gemma 3's local one
left as trained) reproduces within 1e-4."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

import hfgen                                                          # noqa: E402
from test_convert_archs import L, SPECS, _convert, _ids, _model, _rel, _transformers_logits  # noqa: E402

ARCHS = ["llama3", "mistral", "qwen2", "gemma3"]


@pytest.fixture(scope="module")
def clexified(tmp_path_factory):
    from clexrt.convert import clexify

    root = tmp_path_factory.mktemp("clexify")
    out = {}
    for name in ARCHS:
        model = hfgen.make_tf_checkpoint(root / name, SPECS[name])
        plain = _convert(root / name, root / f"{name}.gguf")
        plan = clexify(plain, root / f"{name}-clex.gguf", max_factor=4, progress=False)
        out[name] = (model, plain, root / f"{name}-clex.gguf", plan)
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_clexified_file_runs_as_the_plain_one_within_L(clexified, name):
    model, plain, clex, _ = clexified[name]
    ids = _ids(L - 4, model.config.vocab_size, seed=11)
    a = np.asarray(_model(plain).logits(ids), np.float64)
    b = np.asarray(_model(clex, clex_mode="ceil").logits(ids), np.float64)
    assert _rel(b, a) < 1e-5, name


@pytest.mark.parametrize("name", ARCHS)
def test_clexified_file_past_L_is_transformers_with_the_tables(clexified, name):
    from clexrt.gguf import GGUFFile
    from clexrt.rope.tables import read_clex

    model, _, clex, plan = clexified[name]
    with GGUFFile(str(clex)) as g:
        tables = read_clex(dict(g.metadata), n_rot=2 * model.model.rotary_emb.inv_freq.numel())
    Lt = tables.train_length                        # the file's context length (Llama 3's is 2 L)
    n = 2 * Lt + 5                                  # t = ceil(n / L) = 3
    inv = np.asarray(tables.table_at(3), np.float64)
    m = _model(clex, clex_mode="ceil")
    ids = _ids(n, model.config.vocab_size, seed=5)
    rel = _rel(np.asarray(m.logits(ids), np.float64), _transformers_logits(model, ids, inv_freq=inv))
    assert rel < 1e-4, (name, rel)
    # and the tables really moved the model: unscaled rope is far from it
    rel_plain = _rel(np.asarray(m.logits(ids), np.float64), _transformers_logits(model, ids))
    assert rel_plain > 1e-2, (name, rel_plain)
    if name == "gemma3":
        assert any("sliding-window layers keep their own base" in note for note in plan.notes)
        assert m.hparams.n_rope_sets == 2

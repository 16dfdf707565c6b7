"""Converted checkpoints run in clexrt with the logits of an independent PyTorch implementation of
the HF model (rotate_half layout, float64): within 1e-3 for f32 output; every outtype loads and
runs. For the CLEX model at N <= L the official code uses the stored inv_freq, so the same forward
applies."""
import numpy as np
import pytest

import hfgen
from clexrt.convert import convert_hf

pytest.importorskip("torch")
try:
    from clexrt.engine.model import Model
except ImportError as e:  # the native core is not built
    pytest.skip(f"clexrt.engine.model unavailable: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("logits")
    out = {}
    for spec in (hfgen.PLAIN, hfgen.CLEX):
        folder = root / spec.kind
        w = hfgen.make_checkpoint(folder, spec)
        out[spec.kind] = (folder, w, spec)
    return out


def ids_for(spec, n, seed=0):
    return [int(x) for x in np.random.default_rng(seed).integers(3, 390, n)]


@pytest.mark.torch
@pytest.mark.parametrize("kind,n", [("plain", 48), ("clex", 17), ("clex", 64)])
def test_f32_logits_match_pytorch(models, tmp_path, kind, n):
    folder, w, spec = models[kind]
    out = tmp_path / "m.gguf"
    convert_hf(folder, out, outtype="f32", progress=False)
    ids = ids_for(spec, n)
    ref = hfgen.torch_forward(w, spec, ids,
                              inv_freq=w.get("model.clex_layer.inv_freq"))
    # transformers' eager forward, the reference, never applies the checkpoint's log_scale
    got = Model(str(out), n_threads=1, log_scale=False).logits(ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()


@pytest.mark.torch
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_every_outtype_runs(models, tmp_path, outtype):
    for kind in ("plain", "clex"):
        folder, w, spec = models[kind]
        out = tmp_path / f"{kind}.gguf"
        convert_hf(folder, out, outtype=outtype, progress=False)
        ids = ids_for(spec, 32, seed=1)
        ref = hfgen.torch_forward(w, spec, ids)
        got = Model(str(out), n_threads=1, log_scale=False).logits(ids)
        assert np.isfinite(got).all()
        corr = np.corrcoef(got.reshape(-1), ref.reshape(-1))[0, 1]
        # the plain model is stored in bf16: its f16/bf16 files are exact
        if kind == "plain" and outtype in ("f16", "bf16"):
            assert np.abs(got - ref).max() < 1e-3
        assert corr > {"f16": 0.9999, "bf16": 0.999, "q8_0": 0.99, "q4_0": 0.8, "q4_1": 0.8}[outtype], (kind, corr)


@pytest.mark.torch
def test_clex_tables_drive_the_official_forward_past_L(models, tmp_path):
    """Past L the official inference rotates with exp(y(t)), t = ceil(N/L): the baked tables, run by
    clexrt's ceil mode, give the official full forward (our tables' end-to-end check)."""
    from clexrt.rope.ode import ClexODE

    folder, w, spec = models["clex"]
    out = tmp_path / "c.gguf"
    convert_hf(folder, out, outtype="f32", progress=False)
    try:
        m = Model(str(out), n_threads=1, clex_mode="ceil", log_scale=False)   # the eager path's math
    except TypeError:
        pytest.skip("this Model has no CLEX schedule yet")
    ode = ClexODE(w["model.clex_layer.inv_freq"], act=spec.act, time_dt=0.01,
                  up=w["model.clex_layer.proj_func.ode_up_proj"], down=w["model.clex_layer.proj_func.ode_down_proj"])
    official = ode.solve(np.arange(1, spec.max_factor + 1, dtype=np.float32)).astype(np.float64)
    L = spec.n_ctx
    for n in (L + 1, 2 * L + 5, 4 * L):
        t = -(-n // L)
        ids = ids_for(spec, n, seed=n)
        ref = hfgen.torch_forward(w, spec, ids, inv_freq=np.exp(official[t - 1]))
        assert np.abs(m.logits(ids) - ref).max() < 1e-3, n

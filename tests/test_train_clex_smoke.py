"""tools/train_clex: a few training steps of each stage on a slice of the committed held-out text
(a tiny config, a 512-piece tokenizer), the export to a Hugging Face folder, `clexrt convert`, and
clexrt's logits past L against the trained PyTorch model's official CLEX forward. CI never trains
the real models (`make train-clex` does)."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")
spm = pytest.importorskip("sentencepiece")

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "train_clex"
sys.path.insert(0, str(TOOLS))

import export as tc_export  # noqa: E402
import model as tc_model  # noqa: E402
import tokenizer as tc_tok  # noqa: E402
import train as tc_train  # noqa: E402
from corpus import split_files  # noqa: E402

TINY = {"n_vocab": 512, "n_embd": 64, "n_layer": 2, "n_head": 2, "n_ff": 96, "n_ctx_train": 32}


def test_split_is_deterministic_and_by_file():
    names = [f"f{i:03d}.rst.txt" for i in range(50)]
    sizes = {n: 1000 + i for i, n in enumerate(names)}
    tr, te = split_files(names, seed=7, test_bytes=10_000, sizes=sizes)
    assert (tr, te) == split_files(list(reversed(names)), seed=7, test_bytes=10_000, sizes=sizes)
    assert set(tr).isdisjoint(te) and sorted(tr + te) == sorted(names)
    assert 0 < sum(sizes[n] for n in te) <= 10_000
    assert split_files(names, seed=8, test_bytes=10_000, sizes=sizes)[1] != te


def test_config_is_the_runtime_hparams_and_round_trips():
    from clexrt.gguf.schema import HParams
    c = tc_model.Config.make(**TINY, max_factor=4)
    assert isinstance(c.hparams, HParams) and c.hparams == HParams.llama(**TINY)
    assert c.hparams.head_dim == 32 and c.max_factor == 4
    assert tc_model.Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c     # a checkpoint's "config"
    assert tc_model.Config().hparams == HParams.llama(**tc_model.DEFAULT_SHAPE)
    with pytest.raises(ValueError, match="plain LLaMA"):
        tc_model.Config.make(**TINY, n_head_kv=1)


def test_clex_training_draw_follows_the_official_recipe(monkeypatch):
    c = tc_model.Config.make(**TINY)
    layer = tc_model.ClexLayer(c)
    solved = []
    monkeypatch.setattr(layer, "solve", lambda times: solved.append(times) or torch.stack([layer.inv_freq] * 2))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        t, pos, inv = layer.train_draw(32, g)
        seen.add(t)
        assert 1 <= t <= c.max_factor and pos.numel() == 32
        assert pos[0] == 0 and pos[-1] == 32 * t - 1
        assert torch.all(pos[1:] > pos[:-1]) and torch.all(pos == pos.round())
        if t == 1:
            assert torch.equal(pos, torch.arange(32.0)) and torch.equal(inv, layer.inv_freq)
    assert seen == set(range(1, c.max_factor + 1))
    assert all(ts[0] == 1.0 and ts[1] in seen for ts in solved)       # solved on [1, t]


def test_zero_network_ode_is_ntk_scaling():
    c = tc_model.Config.make(**TINY)
    layer = tc_model.ClexLayer(c)          # ode_down_proj starts at zero
    d, h = c.hparams.head_dim, c.hparams.head_dim // 2
    j = torch.arange(h, dtype=torch.float64)
    with torch.no_grad():
        rows = layer.solve([float(t) for t in range(1, c.max_factor + 1)]).double()
    for t in (2, 5, 8):
        want = layer.inv_freq.double() * (2 * t - 1) ** (-2 * j / (d - 2))
        got = rows[t - 1]
        assert torch.allclose(got, want, rtol=2e-5), (t, (got / want - 1).abs().max())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_clex")
    text = (TOOLS / "data" / "test.txt").read_text(encoding="utf-8")[:60_000]
    (tmp / "train.txt").write_text(text, encoding="utf-8")
    tok = tc_tok.train_tokenizer(str(tmp / "train.txt"), str(tmp / "tok"), TINY["n_vocab"])
    sp = spm.SentencePieceProcessor(model_file=tok)
    np.save(tmp / "ids.npy", tc_tok.encode_file(sp, str(tmp / "train.txt")))
    common = ["--data", str(tmp / "ids.npy"), "--batch", "4", "--ckpt-every", "2"]
    infos = {"base": tc_train.main(["base", "--out", str(tmp / "base"), "--steps", "4", "--lr", "1e-2",
                                    "--warmup", "1", "--config", json.dumps(TINY)] + common)}
    for stage in ("clex", "twin"):
        infos[stage] = tc_train.main([stage, "--init", str(tmp / "base" / "model.pt"), "--out", str(tmp / stage),
                                      "--steps", "4"] + common)
    return tmp, tok, infos


def _losses(path):
    return [json.loads(x)["loss"] for x in open(path)]


def test_stages_train_and_share_the_data(trained):
    tmp, _, infos = trained
    base = _losses(tmp / "base" / "log.jsonl")
    assert len(base) == 4 and all(math.isfinite(x) for x in base)
    # the base learned: lower loss than its (same-seed) initialisation on fixed windows
    cfg = tc_model.Config.make(**TINY)
    init = tc_train.build("base", None, cfg, 0)
    after = tc_train.build("base", str(tmp / "base" / "model.pt"), cfg, 0)
    x = tc_train.draw_batch(np.load(tmp / "ids.npy"), 8, cfg.hparams.n_ctx_train, torch.Generator().manual_seed(5))

    def loss(m):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x[:, :-1]).reshape(-1, cfg.hparams.n_vocab),
                                                           x[:, 1:].reshape(-1)))
    assert loss(after) < loss(init) - 0.1, (loss(init), loss(after))
    clex = [json.loads(x) for x in open(tmp / "clex" / "log.jsonl")]
    twin = [json.loads(x) for x in open(tmp / "twin" / "log.jsonl")]
    # the same windows: where CLEX drew t = 1 its first step equals the twin's exactly
    if clex[0]["t"] == 1:
        assert clex[0]["loss"] == twin[0]["loss"]
    assert all(r["t"] == 1 for r in twin) and any(r["t"] > 1 for r in clex)
    sd = torch.load(tmp / "clex" / "model.pt", weights_only=False)["state_dict"]
    assert sd["model.clex_layer.proj_func.ode_down_proj"].abs().max() > 0      # the ODE network learned
    assert infos["clex"]["tokens"] == infos["twin"]["tokens"] == 4 * 4 * TINY["n_ctx_train"]


def test_a_killed_run_resumes_to_the_same_model(trained, tmp_path):
    tmp, _, _ = trained
    args = ["clex", "--data", str(tmp / "ids.npy"), "--batch", "4", "--ckpt-every", "2", "--steps", "4",
            "--init", str(tmp / "base" / "model.pt")]
    assert tc_train.main(args + ["--out", str(tmp_path), "--stop-after", "2"]) == {"stopped_at": 2}
    assert not (tmp_path / "model.pt").exists()
    tc_train.main(args + ["--out", str(tmp_path)])                       # resumes at step 2
    a = torch.load(tmp_path / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp / "clex" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _exported_clex(trained, tmp_path):
    """The smoke CLEX run exported as a Hugging Face folder and converted to F32: (its config,
    the GGUF, the PyTorch model in eval mode, the tokenizer)"""
    from clexrt.convert import convert_hf

    tmp, tok, _ = trained
    hf = tmp_path / "hf"
    conf = tc_export.export(str(tmp / "clex" / "model.pt"), tok, str(hf), "smoke")
    gguf = tmp_path / "smoke.gguf"
    convert_hf(str(hf), str(gguf), outtype="f32", progress=False)
    m = tc_model.TinyLlama(tc_model.Config.make(**TINY), clex=True)
    m.load_state_dict(torch.load(tmp / "clex" / "model.pt", weights_only=False)["state_dict"])
    m.eval()
    return conf, gguf, m, spm.SentencePieceProcessor(model_file=tok)


def test_exported_clex_folder_converts_and_runs_like_pytorch(trained, tmp_path):
    from clexrt import Model

    conf, gguf, m, sp = _exported_clex(trained, tmp_path)
    assert conf["rope_scaling"] == {"type": "clex", "max_factor": 8, "param_factor": 1, "time_dt": 0.01,
                                    "act": "tanh", "factor": 1}
    ids = [1] + sp.encode((TOOLS / "data" / "test.txt").read_text(encoding="utf-8")[60_000:70_000])[:95]
    with Model(str(gguf), rope="clex", clex_mode="ceil") as cm:
        got = cm.logits(ids)
    t = math.ceil(len(ids) / TINY["n_ctx_train"])                                  # 3: past L
    with torch.no_grad():
        want = m(torch.tensor([ids]), None, m.model.clex_layer.table(t))[0].numpy()
        plain = m(torch.tensor([ids]))[0].numpy()
    err = np.abs(got - want).max()
    assert err < 2e-3, err
    assert np.abs(got - plain).max() > 100 * err          # the CLEX table is really in use


def test_continuous_tables_between_integers_follow_the_ode(trained, tmp_path):
    """clexrt's continuous schedule at t = N/L exactly (rope_steps=0; ppl_steps.py, docs/tiny_clex.md's
    CLEX continuous row) against the trained network's own ODE solved on [1, N/L] in PyTorch."""
    from clexrt import Model

    _, gguf, m, sp = _exported_clex(trained, tmp_path)
    ids = [1] + sp.encode((TOOLS / "data" / "test.txt").read_text(encoding="utf-8")[70_000:80_000])[:79]
    assert len(ids) == 80                                   # t = 80 / 32 = 2.5, between grid points
    with Model(str(gguf), rope="clex", clex_mode="continuous", rope_steps=0) as cm:
        got = cm.logits(ids)
        assert cm.schedule.factor(len(ids)) == 2.5
    with torch.no_grad():
        want = m(torch.tensor([ids]), None, m.model.clex_layer.solve([1.0, 2.5])[1])[0].numpy()
        ceil = m(torch.tensor([ids]), None, m.model.clex_layer.table(3))[0].numpy()
    err = np.abs(got - want).max()
    assert err < 5e-3, err
    assert np.abs(got - ceil).max() > 10 * err             # not the t = 3 table


def test_device_auto_without_a_gpu_is_the_cpu():
    if torch.cuda.is_available():
        assert tc_train.pick_device("auto") == "cuda"
        return
    assert tc_train.pick_device("auto") == "cpu" and tc_train.pick_device("cpu") == "cpu"
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        tc_train.pick_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_run_follows_the_cpu_run(trained, tmp_path):
    """--device cuda: the same seeds and draws (t, positions, windows) as on the CPU, losses close."""
    tmp, _, _ = trained
    args = ["clex", "--data", str(tmp / "ids.npy"), "--batch", "4", "--ckpt-every", "2", "--steps", "4",
            "--init", str(tmp / "base" / "model.pt"), "--no-bf16"]
    tc_train.main(args + ["--out", str(tmp_path / "cpu"), "--device", "cpu"])
    info = tc_train.main(args + ["--out", str(tmp_path / "gpu"), "--device", "cuda"])
    assert info["device"] == "cuda"
    a, b = _losses(tmp_path / "cpu" / "log.jsonl"), _losses(tmp_path / "gpu" / "log.jsonl")
    ta = [json.loads(x)["t"] for x in open(tmp_path / "cpu" / "log.jsonl")]
    tb = [json.loads(x)["t"] for x in open(tmp_path / "gpu" / "log.jsonl")]
    assert ta == tb
    assert all(abs(x - y) <= 2e-3 * abs(x) for x, y in zip(a, b)), (a, b)

"""The committed tiny models (models/*.gguf, trained by `make train-clex`, docs/tiny_clex.md): they
resolve by short name, carry what they were trained as, match models/MANIFEST.json, and
`clexrt perplexity` on the committed held-out text gives the float32 PyTorch model's CLEX
perplexity (eval_torch.py's, recorded by report.py), for the ceil and the continuous schedule."""
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clexrt import Model
from clexrt.cli import cli
from clexrt.cli.registry import resolve_model

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "models" / "MANIFEST.json"
NAMES = ("tiny-clex", "tiny-clex-base", "tiny-clex-twin")

pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="models/MANIFEST.json is not present")


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_short_name_resolves_to_the_committed_file(name, manifest, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                    # from anywhere, not just the repository root
    p = Path(resolve_model(name))
    assert p.resolve() == (ROOT / "models" / f"{name}.gguf").resolve()
    assert _sha(p) == manifest["models"][name]["sha256"]


def test_models_are_what_they_were_trained_as():
    with Model(resolve_model("tiny-clex")) as m:
        assert m.clex is not None
        assert (m.clex.train_length, m.clex.max_factor, m.clex.init) == (128, 8, "ode")
        assert m.n_ctx == 1024 and m.rope_state["method"] == "clex"
    for name in ("tiny-clex-base", "tiny-clex-twin"):
        with Model(resolve_model(name)) as m:
            assert m.clex is None and m.hparams.n_ctx_train == 128 and m.rope_state["method"] == "none"


def test_generate_by_short_name():
    r = CliRunner().invoke(cli, ["generate", "-m", "tiny-clex", "-p", "The built-in function", "-n", "12",
                                 "--temp", "0"])
    assert r.exit_code == 0, r.output
    assert len(r.output.strip()) > len("The built-in function")


def test_the_clex_model_is_the_ode_lr_variant(manifest):
    train = manifest["models"]["tiny-clex"]["train"]
    assert train["stage"] == "clex" and train["ode_lr"] == 2e-5 and train["steps"] >= 600


def test_perplexity_matches_the_pytorch_model(manifest):
    text = ROOT / manifest["test_text"]["path"]
    assert _sha(text) == manifest["test_text"]["sha256"]
    q = manifest["quick_check"]
    r = CliRunner().invoke(cli, ["perplexity", "-m", q["model"], "-f", str(text), "--ctx", str(q["ctx"]),
                                 "--rope", q["rope"], "--clex-mode", q["clex_mode"], "--chunks", str(q["chunks"]),
                                 "--json"])
    assert r.exit_code == 0, r.output
    # CliRunner interleaves stderr (progress) and stdout (the JSON row) in r.output
    row, _ = json.JSONDecoder().raw_decode(r.output[r.output.index('{"ctx"'):])
    assert row["t"] == q["ctx"] / 128 and row["chunks"] == q["chunks"]
    # q8_0 weights against float32: within 0.5% (docs/tiny_clex.md's cross-check: 0.12% at most)
    assert abs(row["ppl"] - q["ppl_torch"]) <= 5e-3 * q["ppl_torch"], (row["ppl"], q["ppl_torch"])


def test_continuous_schedule_between_integers_matches_the_pytorch_ode(manifest):
    """t = N/L exactly (Model(rope_steps=0), the CLEX continuous row of docs/tiny_clex.md) at a
    non-multiple of L: the PyTorch model with the ODE solved on [1, N/L]."""
    from clexrt.cli.perplexity import perplexity
    from clexrt.text.tokenizer import Tokenizer

    q = manifest["quick_check_continuous"]
    text = (ROOT / manifest["test_text"]["path"]).read_text(encoding="utf-8")
    with Model(resolve_model(q["model"]), n_ctx=q["ctx"], rope=q["rope"], clex_mode="continuous",
               rope_steps=q["steps"], n_threads=1) as m:
        assert m.schedule.factor(q["ctx"]) == q["t_torch"] == q["ctx"] / 128
        tok = Tokenizer.from_metadata(m.metadata)
        r = perplexity(m, tok.encode(text, add_bos=True), q["ctx"], q["chunks"], bos_id=tok.bos_id)
    assert abs(r.ppl - q["ppl_torch"]) <= 5e-3 * q["ppl_torch"], (r.ppl, q["ppl_torch"])

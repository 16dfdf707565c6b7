"""Tool calling (clexrt/text/tools.py) and constrained decoding (clexrt/text/constrain.py).

References: the official chat templates in tests/data/templates (Qwen2.5 and Llama 3.1, as
llama.cpp ships them) rendered by transformers' own render_jinja_template; the tool-call
strings those templates write for an assistant turn and the examples of the models'
documentation, parsed back; llguidance (the library itself) for what a grammar accepts."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from clexrt.text.chat_template import ChatTemplate
from clexrt.text.tools import (HERMES, LLAMA3, MISTRAL, ToolError, check_tools, forced_call_lark,
                               parse_tool_calls, plan_chat, prepare_messages, tool_format)

TEMPLATES = Path(__file__).parent / "data" / "templates"
QWEN = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()

WEATHER = {"type": "function", "function": {
    "name": "get_current_temperature", "description": "Get the current temperature at a location.",
    "parameters": {"type": "object", "required": ["location"], "additionalProperties": False,
                   "properties": {"location": {"type": "string", "maxLength": 40},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
CALL = {"type": "function", "function": {"name": "get_current_temperature",
                                          "arguments": '{"location": "Paris, France"}'}}
CONVERSATION = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "How warm is it in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": '{"temperature": 21}'}]


def _hf_render(source, messages, tools):
    tr = pytest.importorskip("transformers.utils.chat_template_utils")
    msgs = [dict(m) for m in messages]
    for m in msgs:                   # HF's templates take the arguments as objects
        if m.get("tool_calls"):
            m["tool_calls"] = [dict(c, function=dict(c["function"], arguments=json.loads(
                c["function"]["arguments"]))) for c in m["tool_calls"]]
    out = tr.render_jinja_template(conversations=[msgs], tools=tools, chat_template=source,
                                   add_generation_prompt=True, date_string="26 Jul 2024",
                                   bos_token="<|begin_of_text|>")
    return out[0][0]


@pytest.mark.parametrize("source", [QWEN, LLAMA31], ids=["qwen2.5", "llama3.1"])
def test_template_renders_tools_as_transformers_does(source):
    ours = ChatTemplate(source, bos_token="<|begin_of_text|>").render(
        prepare_messages(CONVERSATION, [WEATHER], native=True), tools=[WEATHER])
    assert ours == _hf_render(source, CONVERSATION, [WEATHER])
    assert "get_current_temperature" in ours and "Paris, France" in ours


def test_formats_are_read_from_the_templates():
    assert tool_format(QWEN) == HERMES
    assert tool_format(LLAMA31) == LLAMA3
    assert tool_format((TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()) == MISTRAL


def test_parse_back_what_the_templates_write():
    """The assistant turn each template renders for a tool call parses back into that call."""
    qwen = _hf_render(QWEN, CONVERSATION, [WEATHER])
    turn = qwen.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    content, calls = parse_tool_calls(turn, HERMES)
    assert content == "" and [c["function"]["name"] for c in calls] == ["get_current_temperature"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"location": "Paris, France"}
    llama = _hf_render(LLAMA31, CONVERSATION, [WEATHER])
    turn = llama.split("<|start_header_id|>assistant<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
    content, calls = parse_tool_calls(turn, LLAMA3)
    assert content == "" and json.loads(calls[0]["function"]["arguments"]) == {"location": "Paris, France"}


# The models' documented examples (Qwen's function-calling guide, Meta's Llama 3.1 model card
# "JSON based tool calling", Mistral's function-calling docs).
DOC_EXAMPLES = [
    (HERMES, 'I will check.\n<tool_call>\n{"name": "get_current_temperature", "arguments": '
             '{"location": "San Francisco, CA, USA"}}\n</tool_call>\n<tool_call>\n{"name": '
             '"get_temperature_date", "arguments": {"location": "San Francisco, CA, USA", "date": '
             '"2024-10-01"}}\n</tool_call>',
     "I will check.", [("get_current_temperature", {"location": "San Francisco, CA, USA"}),
                       ("get_temperature_date", {"location": "San Francisco, CA, USA",
                                                 "date": "2024-10-01"})]),
    (LLAMA3, '{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA", '
             '"unit": "Fahrenheit"}}',
     "", [("get_current_conditions", {"location": "San Francisco, CA", "unit": "Fahrenheit"})]),
    (LLAMA3, '<|python_tag|>{"name": "search", "parameters": {"query": "weather"}}; '
             '{"name": "time", "parameters": {}}',
     "", [("search", {"query": "weather"}), ("time", {})]),
    (MISTRAL, '[TOOL_CALLS][{"name": "retrieve_payment_status", "arguments": {"transaction_id": '
              '"T1001"}}]',
     "", [("retrieve_payment_status", {"transaction_id": "T1001"})]),
]


@pytest.mark.parametrize("fmt,text,content,calls", DOC_EXAMPLES)
def test_parse_documented_examples(fmt, text, content, calls):
    got_content, got = parse_tool_calls(text, fmt)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got)


@pytest.mark.parametrize("fmt,text", [(HERMES, "The answer is 4."), (LLAMA3, "Paris is nice."),
                                      (LLAMA3, '{"name": "x"}'), (HERMES, "<tool_call>\nnot json"),
                                      (MISTRAL, "no calls")])
def test_plain_replies_stay_content(fmt, text):
    assert parse_tool_calls(text, fmt) == (text, [])


def test_bad_tools_are_errors():
    for tools, choice in [("x", None), ([{"type": "function"}], None), ([WEATHER], "sometimes"),
                          ([WEATHER], {"type": "function", "function": {"name": "other"}}),
                          (None, "required")]:
        with pytest.raises(ToolError):
            check_tools(tools, choice)


def test_template_without_tools_gets_them_in_a_system_message():
    from clexrt.text.chat_template import CHATML

    msgs = prepare_messages(CONVERSATION, [WEATHER], native=False)
    assert msgs[0]["role"] == "system" and "<tools>" in msgs[0]["content"]
    assert msgs[0]["content"].startswith("You are a helpful assistant.")
    assert msgs[2]["content"].startswith("<tool_call>") and msgs[3]["role"] == "user"
    text = ChatTemplate(CHATML).render(msgs)
    assert '"name": "get_current_temperature"' in text and "<tool_response>" in text


# ---------------------------------------------------------------- constrained decoding (llguidance)
llguidance = pytest.importorskip("llguidance")


@pytest.fixture(scope="module")
def qwen_vocab(tmp_path_factory):
    from clexrt.text.tokenizer import Tokenizer

    xz = Path(__file__).parent / "data" / "vocab" / "ggml-vocab-qwen2.gguf.xz"
    path = tmp_path_factory.mktemp("vocab") / "qwen2.gguf"
    path.write_bytes(lzma.decompress(xz.read_bytes()))
    return Tokenizer.from_gguf(path)


def _accepts(tok, grammar, text) -> bool:
    """Whether llguidance's own matcher takes our tokens of `text` and is then complete."""
    from clexrt.text.constrain import _ll_tokenizer

    m = llguidance.LLMatcher(_ll_tokenizer(tok), grammar, log_level=0)
    ids = tok.encode(text, add_bos=False, special=False)
    return m.validate_tokens(ids) == len(ids) and m.consume_tokens(ids) and m.is_accepting()


def test_forced_call_grammar_takes_exactly_a_call(qwen_vocab):
    from clexrt.text.constrain import grammar_for

    g = grammar_for(lark=forced_call_lark([WEATHER], "required", HERMES))
    good = '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "Rome"}}\n</tool_call>'
    assert _accepts(qwen_vocab, g, good)
    assert not _accepts(qwen_vocab, g, good.replace("get_current_temperature", "rm_rf"))
    assert not _accepts(qwen_vocab, g, good.replace('"Rome"', "42"))
    g3 = grammar_for(lark=forced_call_lark([WEATHER], "required", LLAMA3))
    assert _accepts(qwen_vocab, g3, '{"name": "get_current_temperature", "parameters": {"location": "Rome", "unit": "celsius"}}')
    assert forced_call_lark([WEATHER], "auto", HERMES) is None


def test_constraint_masks_what_the_grammar_forbids(qwen_vocab):
    import numpy as np

    from clexrt.text.constrain import Constraint, ConstraintError, grammar_for

    c = Constraint(qwen_vocab, grammar_for(grammar='root ::= "yes" | "no"'))
    logits = np.zeros(qwen_vocab.n_vocab, dtype=np.float32)
    c.mask(logits)
    allowed = {qwen_vocab.decode([int(i)]) for i in np.nonzero(np.isfinite(logits))[0]}
    assert allowed and all("yes".startswith(a) or "no".startswith(a) for a in allowed)
    c.accept(qwen_vocab.encode("yes")[0])
    assert c.done or c.accepting
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}
    with pytest.raises(ConstraintError):
        Constraint(qwen_vocab, grammar_for(response_format=bad))
    with pytest.raises(ConstraintError):
        Constraint(qwen_vocab, grammar_for(grammar="root ::= ("))


def test_plan_chat_forces_a_call_through_the_template(qwen_vocab):
    t = ChatTemplate(QWEN)
    plan = plan_chat(t, qwen_vocab, CONVERSATION[:2], [WEATHER], "required")
    assert plan.fmt == HERMES and plan.grammar and plan.tools
    assert "<tools>" in qwen_vocab.decode(plan.prompt)
    msg, reason = plan.message('<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "Oslo"}}\n</tool_call>')
    assert reason == "tool_calls" and msg["content"] is None
    none = plan_chat(t, qwen_vocab, CONVERSATION[:2], [WEATHER], "none")
    assert none.grammar is None and not none.tools and "<tools>" not in qwen_vocab.decode(none.prompt)

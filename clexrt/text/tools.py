"""Tool calling: OpenAI `tools` into the prompt, the model's reply back into `tool_calls`.

The tools are rendered by the model's own chat template (a Jinja template gets ``tools``, as
Hugging Face's apply_chat_template gives them). The reply is parsed in the format the template
teaches, recognised from the template's text:

- ``hermes`` (Qwen2.5, Hermes, SmolLM3, ...): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  one block per call, content before the first block;
- ``llama3`` (Llama 3.1 / 3.2 / 3.3): the whole reply is ``{"name": ..., "parameters": {...}}``
  (``<|python_tag|>`` in front allowed; several calls separated by ``;``);
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.

A template that knows no tools (it never reads ``tools``) gets them from us in a system message
in the hermes format, which is then parsed back; earlier tool calls and tool results in the
conversation are written as hermes text for it.

``tool_choice`` "required" or a named function forces a call: text.constrain gets a Lark grammar
(this module's :func:`forced_call_lark`) whose JSON part is the tools' parameter schemas, so even
a model that cannot call tools produces a well-formed call. "auto" (the default) leaves the reply
free and parses whatever call it holds; "none" drops the tools.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ClexError

__all__ = ["ToolError", "tool_format", "template_knows_tools", "check_tools", "prepare_messages",
           "parse_tool_calls", "forced_call_lark", "tools_system_prompt", "chat_message",
           "ChatPlan", "plan_chat", "legacy_functions"]

HERMES, LLAMA3, MISTRAL = "hermes", "llama3", "mistral"


class ToolError(ClexError, ValueError):
    """Malformed `tools` / `tool_choice`."""


def template_knows_tools(source: str) -> bool:
    return bool(re.search(r"\btools\b", source or ""))


def tool_format(source: str) -> str:
    """The tool-call format a chat template teaches (hermes when it teaches none)."""
    src = source or ""
    if "[TOOL_CALLS]" in src:
        return MISTRAL
    if "<tool_call>" in src:
        return HERMES
    if "<|start_header_id|>" in src and '"parameters"' in src:
        return LLAMA3
    return HERMES


def check_tools(tools, tool_choice) -> tuple[list[dict], object]:
    """The tools as a list of OpenAI function tools and the tool_choice, or a ToolError."""
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise ToolError("tool_choice needs tools")
        return [], "none"
    if not isinstance(tools, (list, tuple)):
        raise ToolError("tools must be a list")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type", "function") != "function" or \
                not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                            f"{{\"name\": ..., \"parameters\": {{...}}}}}}")
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, Mapping):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append({"type": "function", "function": dict(fn, parameters=dict(params))})
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), Mapping) else None
        if name not in {t["function"]["name"] for t in out}:
            raise ToolError(f"tool_choice names a function that is not in tools: {name!r}")
    elif choice not in ("auto", "none", "required"):
        raise ToolError(f"tool_choice must be 'auto', 'none', 'required' or "
                        f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {choice!r}")
    return out, choice


def tools_system_prompt(tools: Sequence[Mapping]) -> str:
    """The hermes instructions, for a template that does not render tools itself."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{lines}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def _arguments(call: Mapping) -> dict:
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ToolError(f"tool call {call.get('name')!r}: arguments are not JSON") from None
    return args


def prepare_messages(messages: Sequence[Mapping], tools: Sequence[Mapping],
                     native: bool) -> list[dict]:
    """Messages ready for the template: tool-call arguments as objects (templates apply
    ``tojson`` to them); for a template without tools (`native` False), the tools' system
    prompt, and earlier calls and results written as hermes text."""
    out = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise ToolError("every chat message must be an object")
        d = dict(m)
        calls = d.get("tool_calls")
        if calls:
            fixed = []
            for c in calls:
                fn = c.get("function", c) if isinstance(c, Mapping) else None
                if not isinstance(fn, Mapping):
                    raise ToolError("tool_calls entries must be objects")
                fixed.append(dict(c, function=dict(fn, arguments=_arguments(fn))))
            d["tool_calls"] = fixed
        out.append(d)
    if native or not tools:
        return out
    plain = []
    for d in out:
        if d.get("role") == "assistant" and d.get("tool_calls"):
            text = "".join(f"\n<tool_call>\n{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']}, ensure_ascii=False)}\n</tool_call>"
                           for c in d["tool_calls"])
            d = {"role": "assistant", "content": ((d.get("content") or "") + text).strip()}
        elif d.get("role") == "tool":
            d = {"role": "user", "content": f"<tool_response>\n{d.get('content') or ''}\n</tool_response>"}
        plain.append(d)
    prompt = tools_system_prompt(tools)
    if plain and plain[0].get("role") == "system":
        first = plain[0].get("content") or ""
        plain[0] = dict(plain[0], content=f"{first}\n\n{prompt}" if first else prompt)
    else:
        plain.insert(0, {"role": "system", "content": prompt})
    return plain


def _call(name: str, args) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


_DECODER = json.JSONDecoder()


def _json_at(text: str, i: int):
    """(value, end) of the JSON value starting at or after i (whitespace skipped), else None."""
    while i < len(text) and text[i].isspace():
        i += 1
    try:
        return _DECODER.raw_decode(text, i)
    except json.JSONDecodeError:
        return None


def _hermes(text: str) -> tuple[str, list[dict]] | None:
    start = text.find("<tool_call>")
    if start < 0:
        return None
    calls, pos = [], start
    while True:
        at = text.find("<tool_call>", pos)
        if at < 0:
            break
        got = _json_at(text, at + len("<tool_call>"))
        if got is None or not isinstance(got[0], Mapping) or not isinstance(got[0].get("name"), str):
            return None
        obj, end = got
        calls.append(_call(obj["name"], obj.get("arguments", obj.get("parameters", {}))))
        close = text.find("</tool_call>", end)
        pos = close + len("</tool_call>") if close >= 0 else end
    return text[:start].strip(), calls


def _llama3(text: str) -> tuple[str, list[dict]] | None:
    body = text.strip()
    if body.startswith("<|python_tag|>"):
        body = body[len("<|python_tag|>"):]
    calls, pos = [], 0
    while True:
        got = _json_at(body, pos)
        if got is None:
            return None
        obj, pos = got
        if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or \
                not isinstance(obj.get("parameters", obj.get("arguments")), Mapping):
            return None
        calls.append(_call(obj["name"], obj.get("parameters", obj.get("arguments"))))
        rest = body[pos:].lstrip()
        if not rest:
            return "", calls
        if not rest.startswith(";"):
            return None
        pos = len(body) - len(rest) + 1


def _mistral(text: str) -> tuple[str, list[dict]] | None:
    at = text.find("[TOOL_CALLS]")
    if at < 0:
        return None
    got = _json_at(text, at + len("[TOOL_CALLS]"))
    if got is None or not isinstance(got[0], list):
        return None
    calls = []
    for obj in got[0]:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str):
            return None
        calls.append(_call(obj["name"], obj.get("arguments", {})))
    return text[:at].strip(), calls


_PARSERS = {HERMES: _hermes, LLAMA3: _llama3, MISTRAL: _mistral}


def parse_tool_calls(text: str, fmt: str) -> tuple[str, list[dict]]:
    """(content, tool_calls) from a reply in format `fmt`; no calls: (text, [])."""
    got = _PARSERS[fmt](text)
    return (text, []) if got is None else got


def _call_schema(tools: Sequence[Mapping], tool_choice, args_key: str) -> dict:
    chosen = tools
    if isinstance(tool_choice, Mapping):
        chosen = [t for t in tools if t["function"]["name"] == tool_choice["function"]["name"]]
    alts = [{"type": "object", "additionalProperties": False, "required": ["name", args_key],
             "properties": {"name": {"const": t["function"]["name"]},
                            args_key: t["function"].get("parameters") or {"type": "object"}}}
            for t in chosen]
    schema = alts[0] if len(alts) == 1 else {"anyOf": alts}
    from .constrain import JSON_STYLE

    return dict(schema, **{"x-guidance": JSON_STYLE})


def forced_call_lark(tools: Sequence[Mapping], tool_choice, fmt: str) -> str | None:
    """A Lark grammar (llguidance's, with %json) that forces one call of the chosen tool(s), in
    format `fmt`; None when tool_choice does not force a call."""
    if not tools or tool_choice in ("auto", "none", None):
        return None
    if fmt == LLAMA3:
        return "start: %json " + json.dumps(_call_schema(tools, tool_choice, "parameters"))
    if fmt == MISTRAL:
        raise ToolError("a forced tool call is not available for the Mistral format "
                        "([TOOL_CALLS] is a control token); use tool_choice 'auto'")
    schema = json.dumps(_call_schema(tools, tool_choice, "arguments"))
    return f'start: "<tool_call>\\n" %json {schema} "\\n</tool_call>"'


def chat_message(text: str, tools: Sequence[Mapping], fmt: str) -> tuple[dict, bool]:
    """The assistant message for a reply, and whether it holds tool calls."""
    if tools:
        content, calls = parse_tool_calls(text, fmt)
        if calls:
            return {"role": "assistant", "content": content or None, "tool_calls": calls}, True
    return {"role": "assistant", "content": text}, False


@dataclass
class ChatPlan:
    """A chat request made ready to generate: the prompt ids, the grammar (None: free), the
    tools in force and their format, and the ids / texts that end the reply."""
    prompt: list[int]
    grammar: str | None
    tools: list[dict]
    fmt: str
    end_ids: set[int]
    stop: list[str]

    def message(self, text: str) -> tuple[dict, str | None]:
        """The assistant message for the reply text, and "tool_calls" when it holds calls."""
        msg, calls = chat_message(text, self.tools, self.fmt)
        return msg, ("tool_calls" if calls else None)


def legacy_functions(functions, function_call):
    """OpenAI's older `functions` / `function_call` as tools / tool_choice."""
    tools = [{"type": "function", "function": f} for f in functions] if functions else None
    if isinstance(function_call, Mapping):
        return tools, {"type": "function", "function": {"name": function_call.get("name")}}
    return tools, function_call


def plan_chat(template, tokenizer, messages, tools=None, tool_choice=None, response_format=None,
              grammar: str | None = None) -> ChatPlan:
    """Messages (and the tools / response_format / grammar options) -> a ChatPlan, through the
    chat template. Raises ToolError / TemplateError / ConstraintError (all ValueErrors)."""
    from .constrain import grammar_for

    if not isinstance(messages, (list, tuple)) or not messages:
        raise ToolError("messages must be a non-empty list")
    tools, choice = check_tools(tools, tool_choice)
    active = tools if choice != "none" else []
    fmt = tool_format(template.source)
    native = template_knows_tools(template.source)
    msgs = prepare_messages(messages, active, native)
    extra = {"tools": active} if active and native else {}
    prompt = template.tokenize(tokenizer, msgs, add_generation_prompt=True, **extra)
    g = grammar_for(response_format, grammar, forced_call_lark(active, choice, fmt))
    return ChatPlan(prompt, g, active, fmt, set(template.end_ids(tokenizer)), list(template.stop))

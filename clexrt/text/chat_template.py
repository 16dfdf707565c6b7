"""Chat messages -> prompt ids, through the GGUF's own Jinja chat template.

The template (``tokenizer.chat_template``) runs in Jinja's immutable sandbox with the settings and
helpers Hugging Face's ``apply_chat_template`` gives it (trim_blocks, lstrip_blocks,
loopcontrols, ``raise_exception``, ``strftime_now``, a non-escaping ``tojson``; variables
``messages``, ``bos_token``, ``eos_token``, ``add_generation_prompt``).

A GGUF without a template gets the format of its model family, chosen from the special tokens
of its vocabulary (``<start_of_turn>``/``<end_of_turn>``: Gemma, ``<|start_header_id|>``/
``<|eot_id|>``: Llama 3, ...) as llama.cpp's llm_chat_detect_template chooses one from a
template's text; ChatML when nothing matches. Each built-in format is our own short Jinja
rendering of the family's official template (system message, generation prompt; no default
system prompt and no tools). The text that ends the format's assistant turn (``<end_of_turn>``,
``<|eot_id|>``, ...) ends a generation even where the file does not mark it end-of-generation
(``end_ids``; ``stop`` holds those that are not tokens of the vocabulary).

Special tokens are parsed in the template's own text and never in message contents, so a user
who types ``<|im_end|>`` gets those characters, not the control token. How: the template is
rendered a second time with each content replaced by a unique sentinel; the output is split on
the sentinels, special tokens are looked for only in the template's pieces, and the text between
two special tokens (template text and contents alike) is tokenized as one run with
``special=False``. That is exactly how llama.cpp tokenizes the whole rendered prompt with special
tokens on (it too cuts at special tokens first, then tokenizes each run of plain text), so the ids
are the same whenever the contents hold no special-token text. If a template transforms contents
beyond ``trim`` (so the sentinels cannot be traced), the rendered text is tokenized whole, after
checking that no content holds special-token text.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Mapping, Sequence

from ..errors import ClexError

__all__ = ["ChatTemplate", "TemplateError", "CHATML", "ChatFormat", "FORMATS", "detect_format",
           "special_tokens_from_metadata", "find_format", "FORMAT_ALIASES"]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# -- the built-in formats -------------------------------------------------------------------------
# Raw strings: a '\n' below is Jinja's escape inside a Jinja string literal. A leading system
# message is taken apart as `sys` (and the rest as `msgs`) by _SPLIT.
_SPLIT = (r"{% set first = messages[0] if messages else {} %}"
          r"{% set sys = first.content if first.role == 'system' else none %}"
          r"{% set msgs = messages[1:] if sys is not none else messages %}")
_END_EACH = r"{% endif %}{% endfor %}"


def _gen(text: str) -> str:
    return r"{% if add_generation_prompt %}{{ '" + text + r"' }}{% endif %}"


def _mistral(space: str, trim: bool, v7: bool) -> str:
    """[INST]-style formats. v3: the system text opens the last user message; v7: its own
    [SYSTEM_PROMPT] block. `space`: ' ' with the SentencePiece vocabulary, '' with Tekken."""
    reply = r"' ' + m.content | trim" if trim else f"'{space}' + m.content"
    if v7:
        return (r"{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}"
                f"{{{{ '[SYSTEM_PROMPT]{space}' + m.content + '[/SYSTEM_PROMPT]' }}}}"
                f"{{% elif m.role == 'user' %}}{{{{ '[INST]{space}' + m.content + '[/INST]' }}}}"
                f"{{% elif m.role == 'assistant' %}}{{{{ {reply} + eos_token }}}}" + _END_EACH)
    return (r"{{ bos_token }}" + _SPLIT + r"{% set ns = namespace(last=-1) %}"
            r"{% for m in msgs %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}"
            r"{% endif %}{% endfor %}{% for m in msgs %}{% if m.role == 'user' %}"
            f"{{{{ '[INST]{space}' + (sys + '\\n\\n' if sys is not none and loop.index0 == "
            r"ns.last else '') + m.content + '[/INST]' }}"
            f"{{% elif m.role == 'assistant' %}}{{{{ {reply} + eos_token }}}}" + _END_EACH)


_SOURCES = {
    "chatml": CHATML,
    "phi4": (r"{% for m in messages %}{{ '<|im_start|>' + m.role + '<|im_sep|>' + m.content + "
             r"'<|im_end|>' }}{% endfor %}" + _gen("<|im_start|>assistant<|im_sep|>")),
    # Gemma has no system turn: its text opens the first user turn (Gemma 3's own template).
    "gemma": (r"{{ bos_token }}" + _SPLIT + r"{% for m in msgs %}{{ '<start_of_turn>' + "
              r"('model' if m.role == 'assistant' else m.role) + '\n' + (sys + '\n\n' if "
              r"loop.first and sys is not none else '') + m.content | trim + '<end_of_turn>\n' }}"
              r"{% endfor %}" + _gen(r"<start_of_turn>model\n")),
    # Gemma 4: a system turn; earlier replies lose their thought channels; no thinking.
    "gemma4": (r"{{ bos_token }}" + _SPLIT + r"{% if sys is not none %}"
               r"{{ '<|turn>system\n' + sys | trim + '<turn|>\n' }}{% endif %}"
               r"{% for m in msgs %}{% if m.role == 'assistant' %}{% set ns = namespace(t='') %}"
               r"{% for part in m.content.split('<channel|>') %}"
               r"{% set ns.t = ns.t + part.split('<|channel>')[0] %}{% endfor %}"
               r"{{ '<|turn>model\n' + ns.t | trim + '<turn|>\n' }}{% else %}"
               r"{{ '<|turn>' + m.role + '\n' + m.content | trim + '<turn|>\n' }}" + _END_EACH
               + _gen(r"<|turn>model\n<|channel>thought\n<channel|>")),
    "llama3": (r"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m.role + "
               r"'<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}{% endfor %}"
               + _gen(r"<|start_header_id|>assistant<|end_header_id|>\n\n")),
    "command-r": (r"{{ bos_token }}" + _SPLIT + r"{% if sys is not none %}"
                  r"{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + sys + '<|END_OF_TURN_TOKEN|>' }}"
                  r"{% endif %}{% for m in msgs %}{% if m.role in ('user', 'assistant') %}"
                  r"{{ '<|START_OF_TURN_TOKEN|>' + ('<|USER_TOKEN|>' if m.role == 'user' else "
                  r"'<|CHATBOT_TOKEN|>') + m.content | trim + '<|END_OF_TURN_TOKEN|>' }}"
                  + _END_EACH + _gen("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")),
    # Phi-3.5's template: a system turn only when it says something; EOS closes a finished chat.
    "phi3": (r"{% for m in messages %}{% if m.role in ('user', 'assistant') or m.role == "
             r"'system' and m.content %}{{ '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}"
             r"{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
             r"{% else %}{{ eos_token }}{% endif %}"),
    "deepseek3": (r"{{ bos_token }}{% for m in messages if m.role == 'system' %}{{ m.content }}"
                  r"{% endfor %}{% for m in messages %}{% if m.role == 'user' %}"
                  r"{{ '<｜User｜>' + m.content }}{% elif m.role == 'assistant' %}"
                  r"{{ '<｜Assistant｜>' + m.content + '<｜end▁of▁sentence｜>' }}" + _END_EACH
                  + _gen("<｜Assistant｜>")),
    # deepseek-coder; its own template adds a long default system prompt, we add none.
    "deepseek": (r"{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}"
                 r"{{ m.content }}{% elif m.role == 'user' %}"
                 r"{{ '### Instruction:\n' + m.content + '\n' }}{% elif m.role == 'assistant' %}"
                 r"{{ '### Response:\n' + m.content + '\n<|EOT|>\n' }}" + _END_EACH
                 + _gen(r"### Response:\n")),
    "deepseek2": (r"{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}"
                  r"{{ m.content + '\n\n' }}{% elif m.role == 'user' %}"
                  r"{{ 'User: ' + m.content + '\n\n' }}{% elif m.role == 'assistant' %}"
                  r"{{ 'Assistant: ' + m.content + eos_token }}" + _END_EACH
                  + _gen("Assistant:")),
    "granite": (r"{% for m in messages %}{{ '<|start_of_role|>' + m.role + '<|end_of_role|>' + "
                r"m.content + '<|end_of_text|>\n' }}{% endfor %}"
                + _gen("<|start_of_role|>assistant<|end_of_role|>")),
    "mistral-v7": _mistral(" ", False, True),
    "mistral-v7-tekken": _mistral("", False, True),
    "mistral-v3": _mistral(" ", True, False),
    "mistral-v3-tekken": _mistral("", False, False),
}


def _tekken(md: Mapping) -> bool:
    return md.get("tokenizer.ggml.model") == "gpt2"


@dataclass(frozen=True)
class ChatFormat:
    """A built-in format: `source` (Jinja), `needs` (the vocabulary texts that select it, all of
    them), `end` (the texts that end an assistant turn), `when` (a further test on the GGUF
    metadata)."""
    name: str
    needs: tuple[str, ...]
    end: tuple[str, ...]
    when: Callable[[Mapping], bool] | None = None

    @property
    def source(self) -> str:
        return _SOURCES[self.name]


# In detection order: the first whose tokens are all in the vocabulary wins, so a format whose
# tokens include another's comes before it (phi4 before chatml, deepseek before deepseek2).
FORMATS: tuple[ChatFormat, ...] = (
    ChatFormat("gemma", ("<start_of_turn>", "<end_of_turn>"), ("<end_of_turn>",)),
    ChatFormat("gemma4", ("<|turn>", "<turn|>"), ("<turn|>",)),
    ChatFormat("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               ("<|eot_id|>",)),
    ChatFormat("command-r", ("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                             "<|CHATBOT_TOKEN|>"), ("<|END_OF_TURN_TOKEN|>",)),
    ChatFormat("phi4", ("<|im_start|>", "<|im_sep|>", "<|im_end|>"), ("<|im_end|>",)),
    ChatFormat("chatml", ("<|im_start|>", "<|im_end|>"), ("<|im_end|>",)),
    ChatFormat("deepseek3", ("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
               ("<｜end▁of▁sentence｜>",)),
    ChatFormat("deepseek", ("<|EOT|>", "<｜end▁of▁sentence｜>"), ("<|EOT|>",)),
    ChatFormat("deepseek2", ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
               ("<｜end▁of▁sentence｜>",)),
    ChatFormat("phi3", ("<|user|>", "<|assistant|>", "<|end|>"), ("<|end|>",)),
    ChatFormat("granite", ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
               ("<|end_of_text|>",)),
    ChatFormat("mistral-v7-tekken", ("[INST]", "[/INST]", "[SYSTEM_PROMPT]"), ("</s>",), _tekken),
    ChatFormat("mistral-v7", ("[INST]", "[/INST]", "[SYSTEM_PROMPT]"), ("</s>",)),
    ChatFormat("mistral-v3-tekken", ("[INST]", "[/INST]"), ("</s>",), _tekken),
    ChatFormat("mistral-v3", ("[INST]", "[/INST]"), ("</s>",)),
)
_BY_NAME = {f.name: f for f in FORMATS}
CHATML_FORMAT = _BY_NAME["chatml"]


# llama-cpp-python's chat_format names for the formats we have under another name
FORMAT_ALIASES = {"llama-3": "llama3", "mistral-instruct": "mistral-v3", "phi-3": "phi3",
                  "phi-4": "phi4", "gemma-3": "gemma", "deepseek-coder": "deepseek",
                  "deepseek-v2": "deepseek2", "deepseek-v3": "deepseek3", "granite-3": "granite",
                  "command-r-plus": "command-r"}


def find_format(name: str) -> ChatFormat:
    """The built-in format called `name` (ours or llama-cpp-python's chat_format name)."""
    key = FORMAT_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _BY_NAME:
        names = sorted(set(_BY_NAME) | set(FORMAT_ALIASES))
        raise TemplateError(f"unknown chat_format {name!r} (choose from {', '.join(names)})")
    return _BY_NAME[key]


def detect_format(md: Mapping) -> tuple[ChatFormat, str]:
    """The built-in format for a GGUF's vocabulary, and why (for `clexrt info` and /show)."""
    vocab = set(map(str, md.get("tokenizer.ggml.tokens") or ()))
    for f in FORMATS:
        if all(t in vocab for t in f.needs) and (f.when is None or f.when(md)):
            why = f"{f.name}, detected from special tokens {', '.join(f.needs)}"
            return f, why + (" in a BPE (Tekken) vocabulary" if f.when is _tekken else "")
    return CHATML_FORMAT, "ChatML: nothing else matched"


# GGUF tokenizer.ggml.token_type values that llama.cpp parses only when special=True.
_TYPE_UNKNOWN, _TYPE_CONTROL = 2, 3


class TemplateError(ClexError, ValueError):
    """The chat template failed (it raised, or it cannot be rendered safely)."""


def special_tokens_from_metadata(md: Mapping) -> dict[str, int]:
    """text -> id of the control (and unknown) tokens: what special=True may parse."""
    tokens = md.get("tokenizer.ggml.tokens")
    types = md.get("tokenizer.ggml.token_type")
    if tokens is None or types is None:
        return {}
    out = {}
    for i, t in enumerate(types):
        if int(t) in (_TYPE_CONTROL, _TYPE_UNKNOWN) and tokens[i]:
            out.setdefault(str(tokens[i]), i)
    return out


def _raise_exception(message):
    raise TemplateError(f"chat template: {message}")


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _content_text(content) -> str:
    """OpenAI messages may carry a list of parts; we keep the text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


class ChatTemplate:
    """A compiled chat template plus what it needs to turn messages into ids.

    `special` maps the text of every token that only template text may produce (control tokens)
    to its id. Without a `source`, the built-in format `fmt` is used (ChatML if none is given);
    `origin` says why (`describe()`). `end` lists the texts that end an assistant turn (the
    built-in format's own by default): `end_ids(tokenizer)` are the ids among them that stop a
    generation, `stop` the stop strings for those that are not tokens of the vocabulary (the
    ChatML fallback on a vocabulary without <|im_end|>).
    """

    def __init__(self, source: str | None = None, bos_token: str = "", eos_token: str = "",
                 special: Mapping[str, int] | None = None, *, fmt: ChatFormat | None = None,
                 origin: str | None = None, end: Sequence[str] | None = None):
        from jinja2 import TemplateError as JinjaTemplateError

        self.is_fallback = not source            # the file has none: a built-in format is used
        self.format = None if source else (fmt or CHATML_FORMAT)
        self.source = source or self.format.source
        self.origin = origin or ("from the file" if source else
                                 f"{self.format.name}, as asked" if fmt else
                                 "ChatML: nothing else matched")
        self.end = tuple(end) if end is not None else (self.format.end if self.format else ())
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(self.source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from e
        # A built-in format's own tokens are parsed in its text whatever their type.
        self._markers = (self.format.needs + self.format.end) if self.format else ()
        self._set_special(special or {})
        self._special_from = None        # the tokenizer `special` was last taken from
        self.stop = [t for t in self.end if t not in self.special]

    @property
    def name(self) -> str:
        """The built-in format's name, or "file"."""
        return self.format.name if self.format else "file"

    def describe(self) -> str:
        """Which template is used and why, in one line."""
        return self.origin

    def end_ids(self, tokenizer) -> set[int]:
        """The ids of the `end` texts in the tokenizer's vocabulary."""
        find = getattr(tokenizer, "token_id", None)
        return {int(i) for i in map(find, self.end) if i is not None} if find else set()

    def _set_special(self, special: Mapping[str, int]) -> None:
        self.special = dict(special)
        names = sorted(self.special, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names))) if names else None

    def _use_tokenizer(self, tokenizer) -> None:
        """Takes the special tokens from the tokenizer itself when it can list them (it may
        promote tokens to control that the GGUF typed otherwise, e.g. <|eot_id|>)."""
        if self._special_from is tokenizer:
            return
        types = getattr(tokenizer, "token_type", None)
        text = getattr(tokenizer, "token_text", None)
        if types is not None and text is not None:
            found = {}
            for i in range(int(tokenizer.n_vocab)):
                if types(i) in (_TYPE_CONTROL, _TYPE_UNKNOWN):
                    t = text(i)
                    if t:
                        found.setdefault(t, i)
            find = getattr(tokenizer, "token_id", None)
            for t in self._markers if find else ():
                if find(t) is not None:
                    found.setdefault(t, int(find(t)))
            self._set_special(found)
        self._special_from = tokenizer

    @classmethod
    def from_metadata(cls, md: Mapping, chat_format: str | None = None) -> "ChatTemplate":
        """The GGUF's own template; without one, the format its vocabulary points to.
        `chat_format` (a built-in format's name, see find_format) overrides both."""
        tokens = [str(t) for t in md.get("tokenizer.ggml.tokens") or ()]

        def text_of(key):
            i = md.get(key)
            return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else ""

        bos, eos = text_of("tokenizer.ggml.bos_token_id"), text_of("tokenizer.ggml.eos_token_id")
        special = special_tokens_from_metadata(md)
        fmt, why = detect_format(md)
        source = md.get("tokenizer.chat_template")
        if chat_format is not None:
            fmt, why, source = find_format(chat_format), f"{chat_format}, as asked", None
        if source:      # the file's template; its turns end as the vocabulary's format says
            return cls(source, bos, eos, special,
                       end=[t for t in fmt.end if isinstance(source, str) and t in source])
        ids = {t: i for i, t in enumerate(tokens)}
        for t in fmt.needs + fmt.end:
            if t in ids:
                special.setdefault(t, ids[t])
        return cls(None, bos, eos, special, fmt=fmt, origin=why)

    # -- rendering ----------------------------------------------------------------------------
    def _render(self, messages, add_generation_prompt, extra) -> str:
        from jinja2 import TemplateError as JinjaTemplateError

        try:
            return self._template.render(messages=messages, bos_token=self.bos_token,
                                         eos_token=self.eos_token,
                                         add_generation_prompt=add_generation_prompt, **extra)
        except TemplateError:
            raise
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template failed: {e}") from e

    @staticmethod
    def _normalize(messages: Sequence[Mapping]) -> list[dict]:
        out = []
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m:
                raise TemplateError("every chat message needs a 'role'")
            d = dict(m)
            d["content"] = _content_text(m.get("content"))
            out.append(d)
        return out

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
               **extra) -> str:
        """The prompt text, as Hugging Face's apply_chat_template(tokenize=False) gives it."""
        return self._render(self._normalize(messages), add_generation_prompt, extra)

    def render_parts(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                     **extra) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, from_template) pieces: contents have False."""
        msgs = self._normalize(messages)
        text = self._render(msgs, add_generation_prompt, extra)
        nonce = secrets.token_hex(6)
        marks = [f"\ue000clex{nonce}m{i}\ue001" for i in range(len(msgs))]
        marked = [dict(m, content=marks[i]) for i, m in enumerate(msgs)]
        try:
            skeleton = self._render(marked, add_generation_prompt, extra)
        except TemplateError:
            skeleton = None
        if skeleton is not None:
            split = re.split(f"\ue000clex{nonce}m(\\d+)\ue001", skeleton)
            for strip in (False, True):
                parts: list[tuple[str, bool]] = []
                for j, s in enumerate(split):
                    if j % 2 == 0:
                        parts.append((s, True))
                    else:
                        c = msgs[int(s)]["content"]
                        parts.append((c.strip() if strip else c, False))
                if "".join(p for p, _ in parts) == text:
                    return [(p, t) for p, t in parts if p]
        # The template rewrites contents: tokenize whole, but only if no content can inject.
        if self._special_re is not None:
            for m in msgs:
                hit = self._special_re.search(m["content"])
                if hit:
                    raise TemplateError(
                        f"a {m['role']} message contains the special token {hit.group(0)!r} "
                        f"and this chat template rewrites contents, so it cannot be kept as text")
        return [(text, True)]

    # -- tokenizing ---------------------------------------------------------------------------
    def tokenize(self, tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                 add_bos: bool | None = None, **extra) -> list[int]:
        """Prompt ids: special tokens from template text only. A BOS is added in front when the
        tokenizer asks for one (``add_bos``) and the template did not already put it there."""
        self._use_tokenizer(tokenizer)
        ids: list[int] = []
        run: list[str] = []

        def flush():
            if run:
                text = "".join(run)
                run.clear()
                if text:
                    ids.extend(tokenizer.encode(text, add_bos=False, special=False))

        for text, from_template in self.render_parts(messages, add_generation_prompt, **extra):
            if not from_template or self._special_re is None:
                run.append(text)
                continue
            pos = 0
            for m in self._special_re.finditer(text):
                run.append(text[pos:m.start()])
                flush()
                ids.append(self.special[m.group(0)])
                pos = m.end()
            run.append(text[pos:])
        flush()
        if add_bos is None:
            add_bos = bool(getattr(tokenizer, "add_bos", False))
        bos = getattr(tokenizer, "bos_id", None)
        if add_bos and bos is not None and bos >= 0 and (not ids or ids[0] != bos):
            ids.insert(0, int(bos))
        return ids

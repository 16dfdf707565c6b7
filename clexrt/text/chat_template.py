"""Chat messages -> prompt ids, through the GGUF's own Jinja chat template.

The template (``tokenizer.chat_template``) runs in Jinja's immutable sandbox with the settings and
helpers Hugging Face's ``apply_chat_template`` gives it (trim_blocks, lstrip_blocks,
loopcontrols, ``raise_exception``, ``strftime_now``, a non-escaping ``tojson``; variables
``messages``, ``bos_token``, ``eos_token``, ``add_generation_prompt``). Models without a
template get ChatML, llama.cpp's fallback too.

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
from datetime import datetime
from typing import Mapping, Sequence

from ..errors import ClexError

__all__ = ["ChatTemplate", "TemplateError", "CHATML", "special_tokens_from_metadata"]

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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
    to its id; `stop` lists stop strings the template implies (the ChatML fallback on a model
    whose vocabulary lacks <|im_end|> needs one).
    """

    def __init__(self, source: str | None = None, bos_token: str = "", eos_token: str = "",
                 special: Mapping[str, int] | None = None):
        from jinja2 import TemplateError as JinjaTemplateError

        self.is_fallback = not source
        self.source = source or CHATML
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(self.source)
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from e
        self._set_special(special or {})
        self._special_from = None        # the tokenizer `special` was last taken from
        self.stop = ["<|im_end|>"] if self.is_fallback and "<|im_end|>" not in self.special else []

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
            self._set_special(found)
        self._special_from = tokenizer

    @classmethod
    def from_metadata(cls, md: Mapping) -> "ChatTemplate":
        tokens = md.get("tokenizer.ggml.tokens") or []

        def text_of(key):
            i = md.get(key)
            return str(tokens[int(i)]) if i is not None and 0 <= int(i) < len(tokens) else ""

        return cls(md.get("tokenizer.chat_template"), text_of("tokenizer.ggml.bos_token_id"),
                   text_of("tokenizer.ggml.eos_token_id"), special_tokens_from_metadata(md))

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

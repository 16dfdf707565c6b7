"""The model side of `clexrt chat`: a :class:`Conversation` (the messages, the ids in the KV
cache, the sampler) and what /set changes (:class:`ChatParams`); no terminal I/O. The terminal
around it is clexrt/cli/repl.py.

Why the conversation keeps its own ids. Re-rendering the whole conversation through the chat
template each turn would let the KV cache reuse only the prefix that re-tokenizes identically,
and the model's own reply does not always re-tokenize into the ids it generated (BPE has many
spellings of a text; templates may trim or rewrite replies). So ``Conversation.ids`` is exactly
what the model was given plus what it generated, and a new turn appends only the template's
rendering of what follows the last reply (its closing, e.g. ``<|im_end|>\\n``, the new user turn
and the generation prompt). The cache then holds a prefix of the new prompt and a turn evaluates
only its new tokens. Whenever that cannot be done exactly (the template renders earlier turns
differently once a new one follows, a reply was cut inside a character, the system prompt or the
history changed) the whole conversation is rendered again and the cache keeps whatever prefix
still matches: slower, never wrong.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

from ..errors import ClexError, ContextFullError
from ..engine.session import Session
from ..text.generate import Generation
from ..text.sampler import Sampler, SamplingParams

__all__ = ["ChatParams", "Conversation", "PARAMS", "TurnStats", "parse_param", "rope_label"]


# -- sampling parameters ------------------------------------------------------------------------

@dataclass
class ChatParams:
    """What /set changes. seed -1: a random one; max_tokens -1: until the model ends its turn
    (or the context is full)."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = -1
    max_tokens: int = -1

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                              seed=None if self.seed < 0 else self.seed)


# name -> (type, test, what the test wants)
_RULES: dict[str, tuple[type, Callable, str]] = {
    "temperature": (float, lambda v: v >= 0, ">= 0 (0 is greedy)"),
    "top_k": (int, lambda v: v >= 0, "an integer >= 0 (0: off)"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1] (1: off)"),
    "min_p": (float, lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"),
    "repeat_penalty": (float, lambda v: v > 0, "> 0 (1: off)"),
    "seed": (int, lambda v: v >= -1, "an integer >= 0, or -1 for a random seed"),
    "max_tokens": (int, lambda v: v == -1 or v > 0, "an integer > 0, or -1 for no limit"),
}
_ALIASES = {"temp": "temperature", "n": "max_tokens", "n_predict": "max_tokens",
            "topk": "top_k", "topp": "top_p", "minp": "min_p", "repeat-penalty": "repeat_penalty",
            "max-tokens": "max_tokens", "top-k": "top_k", "top-p": "top_p", "min-p": "min_p"}
PARAMS = tuple(_RULES)                                 # the names /set takes


def parse_param(name: str, value) -> tuple[str, float | int]:
    """(canonical name, checked value); ValueError with a one-line message otherwise."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _RULES:
        raise ValueError(f"unknown parameter {name!r} (one of: {', '.join(_RULES)})")
    kind, ok, want = _RULES[key]
    try:
        v = kind(value) if kind is float else int(str(value), 10)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {want}, got {value!r}") from None
    if kind is float and v != v:                       # NaN
        raise ValueError(f"{key} must be {want}, got {value!r}")
    if not ok(v):
        raise ValueError(f"{key} must be {want}, got {value!r}")
    return key, v


def rope_label(model) -> str:
    """"rope METHOD t=FACTOR" from the model's rope_state, or "rope none t=1" without one."""
    st = getattr(model, "rope_state", None)
    if not st:
        return "rope none t=1"
    if not isinstance(st, Mapping):
        return f"rope {st}"
    method = st.get("method") or st.get("rope") or "none"
    t = next((st[k] for k in ("t", "factor", "scale") if st.get(k) is not None), 1)
    try:
        t = f"{float(t):g}"
    except (TypeError, ValueError):
        pass
    return f"rope {method} t={t}"


# -- the conversation ---------------------------------------------------------------------------

@dataclass
class TurnStats:
    """One reply. finish: "stop" (the model ended its turn), "length" (max_tokens), "full" (the
    context is full), "interrupted" (Ctrl-C)."""
    n_prompt: int              # prompt tokens evaluated (the rest was already in the cache)
    t_prompt: float            # seconds
    n_gen: int
    t_gen: float
    n_ctx_used: int
    n_ctx: int
    finish: str
    rope: str = "rope none t=1"

    def line(self) -> str:
        def rate(n, t):
            return f"{n / t:.1f} t/s" if n and t > 0 else "- t/s"
        return (f"prompt {self.n_prompt} tok {rate(self.n_prompt, self.t_prompt)} | "
                f"gen {self.n_gen} tok {rate(self.n_gen, self.t_gen)} | "
                f"ctx {self.n_ctx_used}/{self.n_ctx} | {self.rope}")


class Conversation:
    """Messages, the ids the model has seen for them, and the sampler; no terminal I/O.

    ``say(text, emit)`` answers a user message, ``regen(emit)`` answers the last one again; both
    stream the reply through ``emit(str)`` and return :class:`TurnStats`. A KeyboardInterrupt
    while replying ends the reply: what was shown is kept (in the messages and in the cache).
    """

    def __init__(self, model, tokenizer, template, params: ChatParams | None = None,
                 system: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.session = Session(model)
        self.params = params or ChatParams()
        self.sampler = Sampler(self.params.sampling())
        self.system = system or None
        self.messages: list[dict] = []          # user/assistant turns; the system is apart
        self.ids: list[int] | None = None       # prompt + reply ids of the last turn; None: unknown
        self._exact = False                     # the last reply's ids decode to its shown text
        self._last_prompt: list[int] | None = None
        self._special_re = None
        self._special_of = None

    # -- state ----------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.session.n_ctx

    @property
    def n_used(self) -> int:
        """Tokens the conversation takes in the context so far."""
        if self.ids is not None:
            return min(len(self.ids), self.n_ctx)   # a reply cut by a full context has one more
        if not self.messages:
            return 0
        return len(self.template.tokenize(self.tokenizer, self.full_messages(),
                                          add_generation_prompt=False))

    def full_messages(self, messages: Sequence[Mapping] | None = None) -> list[dict]:
        msgs = self.messages if messages is None else messages
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [dict(m) for m in msgs]

    def _forget_ids(self) -> None:
        self.ids = None
        self._last_prompt = None
        self._exact = False

    def clear(self) -> None:
        """A new conversation; the cache keeps what the next one shares (the system prompt)."""
        self.messages = []
        self._forget_ids()
        if self.params.seed >= 0:
            self.sampler.reseed(self.params.seed)

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self._forget_ids()

    def set_param(self, name: str, value) -> tuple[str, float | int]:
        key, v = parse_param(name, value)
        setattr(self.params, key, v)
        if key == "seed":
            self.sampler.reseed(None if v < 0 else v)
        elif key != "max_tokens":
            rng = self.sampler.rng                  # the random stream goes on
            self.sampler = Sampler(self.params.sampling())
            self.sampler.rng = rng
        return key, v

    # -- saving ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": "clexrt-chat", "version": 1,
                "model": os.path.basename(str(getattr(self.model, "path", "")) or ""),
                "system": self.system, "params": asdict(self.params),
                "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages]}

    def load_json(self, data) -> None:
        """From to_json's object, or a plain list of {"role", "content"} messages (a leading
        system message becomes the system prompt). ValueError (one line) if it is neither."""
        if isinstance(data, list):
            data = {"messages": data}
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ValueError("not a conversation: expected an object with a \"messages\" list")
        system = data.get("system")
        msgs = []
        for i, m in enumerate(data["messages"]):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"message {i + 1} is not a {{\"role\": \"user\"|\"assistant\"|"
                                 f"\"system\", \"content\": string}} object")
            if m["role"] == "system":
                if i:
                    raise ValueError(f"message {i + 1}: a system message may only come first")
                system = m["content"]
                continue
            msgs.append({"role": m["role"], "content": m["content"]})
        if system is not None and not isinstance(system, str):
            raise ValueError("\"system\" must be a string or null")
        given = data.get("params") or {}
        if not isinstance(given, dict):
            raise ValueError("\"params\" must be an object")
        params = ChatParams(**asdict(self.params))
        for k, v in given.items():
            key, val = parse_param(k, v)
            setattr(params, key, val)
        # Check that the template accepts it before anything changes.
        self.template.render(([{"role": "system", "content": system}] if system else []) + msgs,
                             add_generation_prompt=True)
        self.system = system or None
        self.messages = msgs
        self.params = params
        self.sampler = Sampler(params.sampling())
        self._forget_ids()

    # -- prompts --------------------------------------------------------------------------------
    def _special(self):
        """Regex over the control-token texts the template may produce (ChatTemplate.special is
        filled from the tokenizer by its first tokenize call)."""
        special = getattr(self.template, "special", None) or {}
        if self._special_of is not special:
            names = sorted(special, key=len, reverse=True)
            self._special_re = re.compile("|".join(map(re.escape, names))) if names else None
            self._special_of = special
        return self._special_re, special

    def _encode_parts(self, parts: Sequence[tuple[str, bool]]) -> list[int]:
        """Ids of rendered (text, from_template) pieces by ChatTemplate.tokenize's rule: control
        tokens only in template text, every run between two of them encoded as plain text."""
        rx, special = self._special()
        ids: list[int] = []
        run: list[str] = []

        def flush():
            text = "".join(run)
            run.clear()
            if text:
                ids.extend(self.tokenizer.encode(text, add_bos=False, special=False))

        for text, from_template in parts:
            pos = 0
            if from_template and rx is not None:
                for m in rx.finditer(text):
                    run.append(text[pos:m.start()])
                    flush()
                    ids.append(int(special[m.group(0)]))
                    pos = m.end()
            run.append(text[pos:])
        flush()
        return ids

    def _continuation(self, msgs: list[dict]) -> list[int] | None:
        """self.ids + the template's text after the last reply, for msgs (the history with its
        system message, then the new user message); None when that would not be exact."""
        if self.ids is None or not self._exact or len(msgs) < 3 \
                or msgs[-2]["role"] != "assistant":
            return None
        head = (self.template.render(msgs[:-2], add_generation_prompt=True)
                + msgs[-2]["content"])
        parts = self.template.render_parts(msgs, add_generation_prompt=True)
        if not "".join(p for p, _ in parts).startswith(head):
            return None
        skip, tail = len(head), []
        for text, from_template in parts:
            if skip >= len(text):
                skip -= len(text)
                continue
            tail.append((text[skip:], from_template))
            skip = 0
        return self.ids + self._encode_parts(tail)

    def prompt_for(self, text: str) -> list[int]:
        """The ids the model should hold before answering `text` as the next user message."""
        msgs = self.full_messages() + [{"role": "user", "content": text}]
        ids = self._continuation(msgs)
        if ids is None:
            ids = self.template.tokenize(self.tokenizer, msgs, add_generation_prompt=True)
        return ids

    def _check_room(self, prompt: Sequence[int]) -> None:
        if len(prompt) + 1 > self.n_ctx:
            raise ContextFullError(
                f"the context is full: this turn needs {len(prompt)} tokens and the context "
                f"holds {self.n_ctx}; /clear starts a new conversation (or run with a larger -c)")

    # -- replies --------------------------------------------------------------------------------
    def eog_ids(self) -> set[int]:
        """What ends a reply: the vocabulary's end-of-generation ids and the chat format's own
        end of turn (e.g. <end_of_turn>), even where the file does not mark it so."""
        ids = set(self.tokenizer.eog_ids)
        end_ids = getattr(self.template, "end_ids", None)
        return ids | set(end_ids(self.tokenizer)) if end_ids else ids

    def say(self, text: str, emit: Callable[[str], None]) -> TurnStats:
        prompt = self.prompt_for(text)
        self._check_room(prompt)
        return self._reply(self.messages + [{"role": "user", "content": text}], prompt, emit)

    def regen(self, emit: Callable[[str], None]) -> TurnStats:
        """Drops the last reply and answers the last user message again."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise ClexError("there is no reply to regenerate yet")
        msgs = self.messages[:-1]
        prompt = self._last_prompt
        if prompt is None:
            prompt = self.template.tokenize(self.tokenizer, self.full_messages(msgs),
                                            add_generation_prompt=True)
        self._check_room(prompt)
        return self._reply(msgs, prompt, emit)

    def _reply(self, msgs: list[dict], prompt: list[int], emit) -> TurnStats:
        max_tokens = self.params.max_tokens if self.params.max_tokens > 0 else None
        gen = Generation(self.session, self.tokenizer, prompt, self.sampler,
                         max_tokens=max_tokens, stop=list(getattr(self.template, "stop", [])),
                         eog_ids=self.eog_ids())
        shown: list[str] = []
        interrupted = False
        try:
            for piece in gen:
                if piece.text:
                    shown.append(piece.text)
                    emit(piece.text)
        except KeyboardInterrupt:
            interrupted = True
        reply = "".join(shown)
        tokens = list(gen.tokens)
        stats = TurnStats(n_prompt=gen.n_prompt_eval, t_prompt=gen.t_prompt, n_gen=len(tokens),
                          t_gen=gen.t_gen, n_ctx_used=0, n_ctx=self.n_ctx,
                          finish="interrupted" if interrupted else (gen.finish_reason or "stop"),
                          rope=rope_label(self.model))
        if interrupted and not tokens:
            # Stopped before the reply began: as if the message had not been sent.
            stats.n_ctx_used = self.n_used
            return stats
        ids = list(prompt) + tokens
        if not interrupted and gen.finish_reason == "length" and len(ids) >= self.n_ctx:
            stats.finish = "full"
        self.messages = msgs + [{"role": "assistant", "content": reply}]
        self.ids = ids
        self._last_prompt = list(prompt)
        # A reply cut by a stop string or inside a character does not decode to what was shown:
        # the next turn then renders the conversation again instead of appending to these ids.
        self._exact = self.tokenizer.decode(tokens) == reply
        stats.n_ctx_used = min(len(ids), self.n_ctx)
        return stats

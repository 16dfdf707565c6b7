"""Constrained decoding with llguidance (the library llama.cpp uses): a grammar becomes a mask of
the tokens allowed next, applied to the logits before sampling.

We write no grammar engine. This module only
- builds llguidance's tokenizer from our vocabulary (each token's bytes; control tokens prefixed
  with 0xFF as llguidance's llama.cpp adapter marks them, so grammar text never matches them);
- turns the OpenAI / llama.cpp request options into one llguidance grammar: ``response_format``
  ``{"type": "json_object"}`` / ``{"type": "json_schema", "json_schema": {"schema": ...}}``, a
  GBNF or Lark ``grammar`` string (llguidance reads both), or a Lark grammar built by
  text.tools for a forced tool call;
- keeps a matcher per generation (:class:`Constraint`): ``mask(logits)`` in place before the
  sampler draws, ``accept(token)`` after. The end-of-generation ids are allowed exactly when the
  grammar is complete; once the grammar can take nothing more, ``done`` ends the generation.

A grammar the library rejects is a :class:`ConstraintError` (a ClexError and ValueError: a 400
in the server), raised before any token is generated.
"""
from __future__ import annotations

import json
import threading
from typing import Iterable, Mapping

import numpy as np

from ..errors import ClexError
from .special_tokens import CONTROL, UNKNOWN

__all__ = ["ConstraintError", "Constraint", "grammar_for", "json_schema_grammar", "available"]

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# llguidance's own marker for a token that grammar text must never produce (its llama.cpp adapter
# prefixes control tokens with it)
_SPECIAL_PREFIX = b"\xff"


class ConstraintError(ClexError, ValueError):
    """A grammar, JSON schema or response_format the constrained decoder cannot use."""


def _llg():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401  (the bitmask helpers)
    except ImportError as e:        # pragma: no cover - it is a dependency
        raise ConstraintError("structured output needs the llguidance package "
                              "(pip install llguidance)") from e
    return llguidance


def available() -> bool:
    try:
        _llg()
        return True
    except ConstraintError:
        return False


class _Vocab:
    """What llguidance's TokenizerWrapper reads: the tokens' bytes, BOS/EOS and a tokenize call."""

    def __init__(self, tokenizer):
        n = int(tokenizer.n_vocab)
        types = getattr(tokenizer, "token_type", None)
        self.tokens, self.special_token_ids = [], []
        for i in range(n):
            b = tokenizer.token_to_bytes(i, True)
            if types is not None and types(i) in (CONTROL, UNKNOWN):
                b = _SPECIAL_PREFIX + b
                self.special_token_ids.append(i)
            self.tokens.append(b)
        eog = sorted(int(t) for t in getattr(tokenizer, "eog_ids", ()) if t is not None and t >= 0)
        eos = getattr(tokenizer, "eos_id", None)
        self.eos_token_id = eos if eos is not None and eos >= 0 else (eog[0] if eog else 0)
        bos = getattr(tokenizer, "bos_id", None)
        self.bos_token_id = bos if bos is not None and bos >= 0 else None
        self.eog = eog or [self.eos_token_id]
        self._tokenizer = tokenizer

    def __call__(self, text):
        """llguidance tokenizes bytes the grammar forces, which continue earlier text: so no
        SentencePiece space prefix in front (the tokenizer adds one at the start of a text)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        tok = self._tokenizer
        if getattr(tok, "_spm", False) and getattr(tok, "add_space_prefix", False):
            out: list[int] = []
            tok._encode_spm(text.replace(" ", "\u2581"), out)   # encode() minus the prefix
            return out
        return list(tok.encode(text, add_bos=False, special=False))


_CACHE: dict[int, tuple[object, object]] = {}
_CACHE_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer):
    """llguidance's tokenizer for ours, built once per tokenizer object (about half a second for
    a 49k vocabulary)."""
    key = id(tokenizer)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
    llg = _llg()
    vocab = _Vocab(tokenizer)
    ll = llg.LLTokenizer(llg.TokenizerWrapper(vocab), n_vocab=len(vocab.tokens),
                         eos_token=vocab.eog)
    with _CACHE_LOCK:
        _CACHE[key] = (tokenizer, ll)
    return ll


def json_schema_grammar(schema) -> str:
    """The llguidance grammar of a JSON schema (a dict or its JSON text)."""
    llg = _llg()
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, (Mapping, bool)):
        raise ConstraintError("a JSON schema must be an object")
    try:
        # JSON as json.dumps writes it, without free whitespace (a small model's greedy reply
        # could otherwise fill max_tokens with newlines); a schema's own x-guidance overrides
        return llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_STYLE)
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"JSON schema rejected: {e}") from None


def _response_format_grammar(rf) -> str | None:
    if rf is None:
        return None
    if not isinstance(rf, Mapping) or not isinstance(rf.get("type"), str):
        raise ConstraintError("response_format must be an object with a 'type'")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        # llama.cpp also takes a "schema" here; OpenAI's json_object is any object
        return json_schema_grammar(rf.get("schema") or {"type": "object"})
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, Mapping):
            raise ConstraintError("response_format json_schema needs a 'json_schema' object")
        schema = js.get("schema", js.get("json_schema"))
        if schema is None:
            raise ConstraintError("response_format json_schema needs json_schema.schema")
        return json_schema_grammar(schema)
    raise ConstraintError(f"unknown response_format type {kind!r} "
                          f"(text, json_object or json_schema)")


def grammar_for(response_format=None, grammar: str | None = None,
                lark: str | None = None) -> str | None:
    """One llguidance grammar from the request options, or None when nothing is constrained.
    `grammar`: GBNF (llama.cpp's) or Lark text; `lark`: Lark text built by clexrt itself."""
    response_format_grammar = _response_format_grammar(response_format)
    if len([g for g in (response_format_grammar, grammar, lark) if g]) > 1:
        raise ConstraintError("give only one of response_format, grammar and a forced tool call")
    if response_format_grammar:
        return response_format_grammar
    llg = _llg()
    if grammar:
        if not isinstance(grammar, str):
            raise ConstraintError("grammar must be a string (GBNF or Lark)")
        try:
            return llg.grammar_from("gbnf", grammar)
        except ValueError as e:
            raise ConstraintError(f"grammar rejected: {e}") from None
    if lark:
        return llg.LLMatcher.grammar_from_lark(lark)
    return None


class Constraint:
    """One generation's grammar state over a tokenizer's vocabulary.

    `end_ids`: the ids that end this generation (the vocabulary's end-of-generation ids and a
    chat format's end-of-turn ids); they are allowed only where the grammar is complete.
    """

    def __init__(self, tokenizer, grammar: str, end_ids: Iterable[int] = ()):
        llg = _llg()
        ll = _ll_tokenizer(tokenizer)
        err = llg.LLMatcher.validate_grammar(grammar, ll)
        if err and not err.startswith("WARNING"):
            raise ConstraintError(f"grammar rejected: {err}")
        self._matcher = llg.LLMatcher(ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"grammar rejected: {self._matcher.get_error()}")
        self.n_vocab = int(tokenizer.n_vocab)
        ends = set(int(t) for t in end_ids) | set(getattr(tokenizer, "eog_ids", ()))
        self.end_ids = np.array(sorted(t for t in ends if 0 <= t < self.n_vocab), dtype=np.int64)
        self._mask = llg.numpy.allocate_token_bitmask(1, self.n_vocab)

    @property
    def done(self) -> bool:
        """The grammar takes no further token: the generation is complete."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())

    def allowed(self) -> np.ndarray:
        """bool [n_vocab]: the ids the grammar allows next (end ids where it is complete)."""
        import llguidance.numpy as lnp

        lnp.fill_next_token_bitmask(self._matcher, self._mask, 0)
        bits = np.unpackbits(self._mask.view(np.uint8)[0], bitorder="little")[:self.n_vocab]
        ok = bits.astype(bool)
        ok[self.end_ids] = self.accepting
        if not ok.any():
            raise ConstraintError(f"the grammar allows no token here: "
                                  f"{self._matcher.get_error() or 'dead end'}")
        return ok

    def mask(self, logits: np.ndarray) -> None:
        """In place: every id the grammar does not allow next gets -inf."""
        ok = self.allowed()
        n = min(ok.size, logits.shape[-1])
        logits[:n][~ok[:n]] = -np.inf
        logits[n:] = -np.inf

    def accept(self, token: int) -> None:
        """The sampled id (never an end id: the generation stops before it)."""
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"token {token} broke the grammar: {self._matcher.get_error()}")

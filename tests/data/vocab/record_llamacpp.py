"""Record llama.cpp's tokenizer outputs into recorded.json (the reference tests/test_tokenizer.py
checks us against, beside the .inp/.out vectors llama.cpp ships).

    python tests/data/vocab/record_llamacpp.py /path/to/libllama.so [gemma-3-270m.gguf]

It loads each vocabulary here (the .gguf.xz files, decompressed to a temporary folder) with
llama.cpp's own library through ctypes (vocab_only) and records, for texts that the shipped
vectors do not cover (white space of every kind, marks, unassigned and newly assigned code
points, special-token texts, random mixtures):

* vocabs[name].ids / .ids_special: llama_tokenize without / with add_special and parse_special;
* vocabs[name].detok: llama_detokenize of each shipped vector's ids (its clean-up of spaces),
  and .detok_texts: llama_detokenize(llama_tokenize(text)) of the texts here;
* vocabs["gpt-neox"].vectors: the ids of the shipped texts (llama.cpp ships no .out for it);
* pre[value]: every tokenizer.ggml.pre value we support that has no vectors of its own, set on
  the GPT-2 vocabulary (Llama 3's for those that ignore merges): a digest of the ids of all
  texts and of their detokenized text, and the ids themselves for the first name of each chain;
* gemma-3-270m: the ids of all texts in Gemma 3 270M (a SentencePiece vocabulary).

The struct layout below is llama.h's llama_model_params of the llama.cpp this was recorded with
(the one vendored by llama-cpp-python 0.3.36); check it before recording with another.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import lzma
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEP = "\n__ggml_vocab_test__\n"

EXTRA_TEXTS = [
    "Hello\u3000world\u3000\u3000x", "a\x85b\xa0c\u2028d\u2029e\u1680f\u202fg\u205fh\u2009i",
    "x\x1cy\x1dz\x1e\x1f", "\x0b\x0c\r\n\r\n\t\t \n", "e\u0301te\u0301 n\u0303o \u0915\u093f",
    "\u0378\u0379 unassigned", "\u2ffc\u0cf3\U0001e030 Unicode 15", "\ue000\U000f0000 private",
    "\u1f7d\u03ce \u2126\u03a9 \u212aK \u00b5\u03bc", "\uff01\uff1f\uff0c\u3002\u3001\u2018\u201c",
    "\u6771\u4eac\u3068\u30bd\u30a6\u30eb \ud55c\uad6d\uc5b4 \u4e2d\u6587\u5b57",
    "'S 'LL 'Re 'VE 'M 'D 'T I'M", "x'sy 'll' ''s", "1234567 3.14159 1,000,000 \u00bd\u00b2\u0663",
    "\U0001f469\u200d\U0001f4bb \U0001f44d\U0001f3fd \U0001f1e9\U0001f1ea \U0001f999!!",
    "def f(x):\n\treturn x  # done\n\n\n", "   leading and trailing   ", "a , b . c ? d ! e ' f 's",
    "<s>Hi</s> <unk> <|endoftext|> <|im_start|>user\nhi<|im_end|>\n",
    "<|user|>\n  hi <|end|>\n<|assistant|> ok", "<start_of_turn>user\n hi<end_of_turn>\n<eos>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nX<|eot_id|>",
    "</s> <pad> <mask> <bos> <|tool_response> \u2581\u2581x \u0120y",
    "\u0964\u06d4\u060c \u2026 (\u3002|x)", "\n\n\n\n", " ", "", "\u00ad\ufeff\u200b",
    "x", "  two  spaces  ", "\n\n\t\r\n",
    "\u00dcn\u00efc\u00f6d\u00e9 \u2713 \u6771\u4eac \U0001f600\U0001f999",
    "def f(x):\n    return x ** 2  # ok\n", "\u00a0nbsp\u3000ideographic\x1cfs",
    "3.14159 1,000,000 \u00bd \u00be", "a , b ' c 's", "Hello , world ? 't 'd 'll 're 've 'm !",
]


def random_texts(n: int = 40, seed: int = 20260101) -> list[str]:
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 2
            + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + [" "] * 12 + list("\t\n\r\v\f\x1c\x7f")
            + list("\x85\xa0\u3000\u2009\u200b\u0301\u00e9\u00df\u017f\u0130\u6771\ud55c\u30a2")
            + list("\u03a9\u2126\u0436\u1f7d\U0001f600\U0001f999\u0378\u2ffc\ue000\u00bd\uff01")
            + ["'s", "'LL", "'re", "<s>", "</s>", "<|endoftext|>", "<|end|>", "<eos>", "\u2581"])
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.choice([3, 8, 20, 50])))
            for _ in range(n)]


class LlamaVocab:
    """llama.cpp's tokenizer of one GGUF (vocab_only), through libllama."""

    class Params(ctypes.Structure):
        _fields_ = [("devices", ctypes.c_void_p), ("tensor_buft_overrides", ctypes.c_void_p),
                    ("n_gpu_layers", ctypes.c_int32), ("split_mode", ctypes.c_int32),
                    ("load_mode", ctypes.c_int32), ("lazy_mode", ctypes.c_int32),
                    ("main_gpu", ctypes.c_int32), ("tensor_split", ctypes.c_void_p),
                    ("progress_callback", ctypes.c_void_p), ("user_data", ctypes.c_void_p),
                    ("kv_overrides", ctypes.c_void_p), ("vocab_only", ctypes.c_bool),
                    ("check_tensors", ctypes.c_bool), ("use_extra_bufts", ctypes.c_bool),
                    ("no_host", ctypes.c_bool), ("no_alloc", ctypes.c_bool),
                    ("load_mtp", ctypes.c_bool)]

    lib = None

    @classmethod
    def load_library(cls, path: str) -> None:
        lib = cls.lib = ctypes.CDLL(path)
        cls._quiet = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(
            lambda level, text, data: None)
        lib.llama_log_set(cls._quiet, None)
        lib.llama_backend_init()
        lib.llama_model_default_params.restype = cls.Params
        lib.llama_model_load_from_file.restype = ctypes.c_void_p
        lib.llama_model_load_from_file.argtypes = [ctypes.c_char_p, cls.Params]
        lib.llama_model_get_vocab.restype = ctypes.c_void_p
        lib.llama_model_get_vocab.argtypes = [ctypes.c_void_p]
        lib.llama_model_free.argtypes = [ctypes.c_void_p]
        i32p = ctypes.POINTER(ctypes.c_int32)
        lib.llama_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, i32p,
                                       ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
        lib.llama_detokenize.argtypes = [ctypes.c_void_p, i32p, ctypes.c_int32, ctypes.c_char_p,
                                         ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]

    def __init__(self, path: Path):
        params = self.lib.llama_model_default_params()
        params.vocab_only = True
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        self.vocab = self.lib.llama_model_get_vocab(self.model)

    def close(self) -> None:
        self.lib.llama_model_free(self.model)

    def tokenize(self, text: str, add_special=False, parse_special=False) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        buf = (ctypes.c_int32 * room)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, room, add_special,
                                    parse_special)
        assert n >= 0, text
        return list(buf[:n])

    def detokenize(self, ids: list[int]) -> str:
        arr = (ctypes.c_int32 * max(1, len(ids)))(*ids)
        room = 64 + 64 * len(ids)
        out = ctypes.create_string_buffer(room)
        n = self.lib.llama_detokenize(self.vocab, arr, len(ids), out, room, False, False)
        assert n >= 0
        return out.raw[:n].decode("utf-8", errors="replace")


def vectors(name: str) -> list[tuple[str, list[int]]]:
    """The shipped (text, ids) pairs, read as llama.cpp's test-tokenizer-0 reads them."""
    raw = (HERE / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEP)
    if texts[-1] == "":
        texts.pop()
    lines = (HERE / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()
    return [(t, [int(v) for v in line.split()]) for t, line in zip(texts, lines, strict=True)]


def digest(values) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=True).encode()).hexdigest()


def with_pre(src: Path, dst: Path, pre: str) -> None:
    """A copy of a vocab GGUF with tokenizer.ggml.pre set to `pre` (gguf-py)."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "tokenizer.ggml.pre"):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    writer.add_string("tokenizer.ggml.pre", pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def main(lib_path: str, gemma3: str | None = None) -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from clexrt.text.pretokenize import PRE_TOKENIZERS

    LlamaVocab.load_library(lib_path)
    texts = EXTRA_TEXTS + random_texts()
    standard = [t for t, _ in vectors("llama-bpe")]
    out = {"about": "llama.cpp (vendored by llama-cpp-python 0.3.36) through libllama; "
                    "written by record_llamacpp.py", "texts": texts, "vocabs": {}, "pre": {}}
    names = sorted(p.name[len("ggml-vocab-"):-len(".gguf.xz")] for p in HERE.glob("*.gguf.xz"))
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name in names:
            files[name] = Path(tmp) / f"{name}.gguf"
            files[name].write_bytes(lzma.decompress((HERE / f"ggml-vocab-{name}.gguf.xz")
                                                    .read_bytes()))
            vocab = LlamaVocab(files[name])
            rec = {"ids": [vocab.tokenize(t) for t in texts],
                   "ids_special": [vocab.tokenize(t, True, True) for t in texts]}
            rec["detok_texts"] = [vocab.detokenize(ids) for ids in rec["ids"]]
            if name == "gpt-neox":
                rec["vectors"] = [vocab.tokenize(t) for t in standard]
            else:
                rec["detok"] = [vocab.detokenize(ids) for _, ids in vectors(name)]
            out["vocabs"][name] = rec
            vocab.close()
        shipped = {"gpt-2", "llama-bpe", "mpt", "starcoder", "refact", "falcon", "command-r",
                   "qwen2", "qwen35", "deepseek-llm", "deepseek-coder", "gemma4"}
        seen_chains = set()
        for pre, spec in PRE_TOKENIZERS.items():
            if pre in shipped:
                continue
            base = "llama-bpe" if spec.ignore_merges else "gpt-2"
            path = Path(tmp) / f"pre-{pre}.gguf"
            with_pre(files[base], path, pre)
            vocab = LlamaVocab(path)
            ids = [vocab.tokenize(t, True) for t in standard + texts]
            rec = {"base": base, "ids_digest": digest(ids),
                   "detok_digest": digest([vocab.detokenize(i) for i in ids])}
            if spec.chain not in seen_chains:
                seen_chains.add(spec.chain)
                rec["ids"] = ids
            out["pre"][pre] = rec
            vocab.close()
    if gemma3:
        vocab = LlamaVocab(Path(gemma3))
        out["gemma-3-270m"] = {"ids": [vocab.tokenize(t, True) for t in standard + texts],
                               "ids_special": [vocab.tokenize(t, True, True) for t in texts]}
        vocab.close()
    (HERE / "recorded.json").write_text(json.dumps(out, ensure_ascii=True, separators=(",", ":"))
                                        + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])

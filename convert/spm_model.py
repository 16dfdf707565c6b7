"""SentencePiece ``tokenizer.model`` files -> the ``tokenizer.ggml.*`` keys of a GGUF. A small
protobuf reader of our own: the sentencepiece package parses the same files in the tests."""
from __future__ import annotations

import os

import numpy as np

from clexrt.errors import ConvertError
from clexrt.text.tokenizer import _KEY, NORMAL

def _proto_fields(data: bytes):
    """(field number, wire type, value) for each field of one protobuf message. Values: int for
    varints and fixed-size fields, bytes for length-delimited ones."""
    pos, end = 0, len(data)

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ConvertError("SentencePiece model: truncated or malformed varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ConvertError("SentencePiece model: truncated fixed-size field")
            value = int.from_bytes(data[pos:pos + size], "little")
            pos += size
        elif wire == 2:
            size = varint()
            if pos + size > end:
                raise ConvertError("SentencePiece model: truncated length-delimited field")
            value = data[pos:pos + size]
            pos += size
        else:
            raise ConvertError(f"SentencePiece model: unsupported protobuf wire type {wire}")
        yield field, wire, value


def _int32(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def spm_metadata_from_model(path_or_bytes) -> dict:
    """GGUF tokenizer metadata (``tokenizer.ggml.*``) from a SentencePiece ``tokenizer.model``.

    Reads the ModelProto directly (no protobuf dependency). Token types are the pieces' own types
    (normal, unknown, control, user-defined, unused, byte), scores the pieces' scores, as
    llama.cpp's converter writes them, except that user-defined pieces stay USER_DEFINED (its
    converter makes them NORMAL unless an added_tokens file says otherwise) so they are matched
    whole, as SentencePiece does. Only BPE models are accepted: llama.cpp's score-driven merging
    reproduces BPE segmentation, not unigram.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    else:
        with open(os.fspath(path_or_bytes), "rb") as f:
            data = f.read()

    tokens, scores, types = [], [], []
    trainer, normalizer = b"", b""
    for field, wire, value in _proto_fields(data):
        if field == 1 and wire == 2:
            piece, score, kind = "", 0.0, NORMAL
            for f, w, v in _proto_fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = float(np.frombuffer(v.to_bytes(4, "little"), np.float32)[0])
                elif f == 3 and w == 0:
                    kind = v
            tokens.append(piece)
            scores.append(score)
            types.append(kind)
        elif field == 2 and wire == 2:
            trainer = value
        elif field == 3 and wire == 2:
            normalizer = value
    if not tokens:
        raise ConvertError("SentencePiece model has no pieces (not a tokenizer.model?)")

    spec = {"model_type": 1, "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    names = {3: "model_type", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
    for f, w, v in _proto_fields(trainer):
        if f in names and w == 0:
            spec[names[f]] = _int32(v)
    add_dummy_prefix = True
    for f, w, v in _proto_fields(normalizer):
        if f == 3 and w == 0:
            add_dummy_prefix = bool(v)
    if spec["model_type"] != 2:
        kind = {1: "unigram", 3: "word", 4: "char"}.get(spec["model_type"], spec["model_type"])
        raise ConvertError(f"SentencePiece model type is {kind}; only BPE models are supported")

    md = {
        _KEY + "model": "llama",
        _KEY + "pre": "default",
        _KEY + "tokens": tokens,
        _KEY + "scores": np.asarray(scores, dtype=np.float32),
        _KEY + "token_type": np.asarray(types, dtype=np.int32),
        _KEY + "add_bos_token": True,
        _KEY + "add_eos_token": False,
        _KEY + "add_space_prefix": add_dummy_prefix,
    }
    for name, key in (("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"),
                      ("unk_id", "unknown_token_id"), ("pad_id", "padding_token_id")):
        if 0 <= spec[name] < len(tokens):
            md[_KEY + key] = spec[name]
    return md

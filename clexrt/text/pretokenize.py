"""Pre-tokenizers for byte-level BPE vocabularies (``tokenizer.ggml.pre``): the regexes that cut
text into words before merging, with llama.cpp's Unicode classes, and GPT-2's byte alphabet."""
from __future__ import annotations

import functools
import re
import unicodedata

# -- Unicode classes for the pre-tokenizer regexes --------------------------------------------

# llama.cpp's \s: the Unicode White_Space property (Python's \s also takes U+001C..U+001F).
_WHITESPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]


def _class_body(ranges) -> str:
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.lru_cache(maxsize=None)
def _unicode_classes() -> tuple[str, str, str]:
    """Character-class bodies for \\p{L}, \\p{N} and \\s, from this Python's unicodedata."""
    # One letter per code point: the major general category (L, N, P, ...). Scanning all of
    # Unicode once takes ~0.2 s, so it happens on first use, not at import.
    major = "".join(map(unicodedata.category, map(chr, range(0x110000))))[::2]
    letters = [(m.start(), m.end() - 1) for m in re.finditer("L+", major)]
    numbers = [(m.start(), m.end() - 1) for m in re.finditer("N+", major)]
    return _class_body(letters), _class_body(numbers), _class_body(_WHITESPACE)


@functools.lru_cache(maxsize=None)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    """(GPT-2 word regex, single \\p{N} regex) with explicit Unicode classes.

    GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)
    """
    L, N, S = _unicode_classes()
    gpt2 = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
                      rf"|[{S}]+(?![^{S}])")
    return gpt2, re.compile(f"[{N}]")


def _split(pattern: re.Pattern, text: str, out: list) -> None:
    """Cut `text` into the matches of `pattern` and the runs between them (llama.cpp keeps both)."""
    pos = 0
    for m in pattern.finditer(text):
        start = m.start()
        if start > pos:
            out.append(text[pos:start])
        out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])


def _pre_gpt2(text: str) -> list[str]:
    out: list[str] = []
    _split(_patterns()[0], text, out)
    return out


def _pre_starcoder(text: str) -> list[str]:
    """Every \\p{N} code point on its own, then the GPT-2 regex inside each remaining run. The
    runs are split separately, so (?!\\S) sees a run's end even where a digit follows."""
    gpt2, digit = _patterns()
    out: list[str] = []
    pos = 0
    for m in digit.finditer(text):
        if m.start() > pos:
            _split(gpt2, text[pos:m.start()], out)
        out.append(m.group())
        pos = m.end()
    if pos < len(text):
        _split(gpt2, text[pos:], out)
    return out


# tokenizer.ggml.pre -> pre-tokenizer. "default" and a missing key mean GPT-2 here (llama.cpp
# would use its own "default" regex set, which no supported model needs).
_PRE_TOKENIZERS = {
    "gpt-2": _pre_gpt2,
    "default": _pre_gpt2,
    "smollm": _pre_starcoder,
    "starcoder": _pre_starcoder,
    "refact": _pre_starcoder,
}
SUPPORTED_PRE_TOKENIZERS = tuple(_PRE_TOKENIZERS)


# -- GPT-2's byte <-> unicode alphabet ----------------------------------------------------------

def _byte_alphabet() -> list[str]:
    """The character standing for each byte: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, DEL, NBSP, soft hyphen...) take U+0100 upwards in order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(0x100 + extra))
            extra += 1
    return chars


_BYTE_CHARS = _byte_alphabet()
# str.translate table from Latin-1 characters (one per byte) to the alphabet.
_BYTES_TO_ALPHABET = {b: c for b, c in enumerate(_BYTE_CHARS)}
_ALPHABET_TO_BYTE = {c: b for b, c in enumerate(_BYTE_CHARS)}

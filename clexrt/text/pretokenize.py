"""Pre-tokenizers of byte-level BPE vocabularies (``tokenizer.ggml.pre``), as llama.cpp runs them.

A pre-tokenizer is a chain of regexes. The first cuts the text into its matches and the runs
between them (both kept); each further regex cuts every piece again. llama.cpp writes them with
\\p{L}, \\p{N}, \\p{P}, \\p{S}, \\p{M} and \\s, which Python's re lacks (and whose \\s means more):
they are translated here into classes from llama.cpp's own Unicode table (unicode_classes.py).

How llama.cpp runs a regex decides what it matches, and we follow it:

* Regexes that use \\p{..} run on a copy of the text with each non-ASCII code point collapsed to
  its class; hand-written splitters for the GPT-2, Llama 3 and Qwen patterns behave the same.
  Both amount to the regex over the classes, which is what we run.
* Regexes without \\p{..} (the DeepSeek ones, with literal ranges) run with std::wregex on the
  text with every non-ASCII white-space character replaced by U+000B, so a literal range never
  matches such a character (U+3000 lies in DeepSeek's range U+3000-U+3002, yet splits as white
  space). We run them on the same masked copy and cut the real text at the same places.

Also here: each ``tokenizer.ggml.pre`` name's regex chain and flags (``PreTokenizer``), and
GPT-2's byte alphabet.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .unicode_classes import WHITESPACE, class_body, class_ranges

# -- llama.cpp's regex notation -> Python's re ------------------------------------------------

_WS = class_body(WHITESPACE)
_MASK = {cp: 0x0B for a, b in WHITESPACE for cp in range(max(a, 0x80), b + 1)}


def _translate(expr: str) -> str:
    """\\p{X}, \\s and \\S as explicit classes, inside or outside brackets; the rest as is."""
    bodies = {f"\\p{{{c}}}": class_body(r) for c, r in class_ranges().items()}
    out, i, inside = [], 0, False
    while i < len(expr):
        ch = expr[i]
        if ch == "\\":
            name = expr[i:expr.index("}", i) + 1] if expr.startswith("\\p{", i) else expr[i:i + 2]
            if name in bodies or name == "\\s":
                body = _WS if name == "\\s" else bodies[name]
                out.append(body if inside else f"[{body}]")
            elif name == "\\S" and not inside:
                out.append(f"[^{_WS}]")
            elif name.startswith("\\p") or name == "\\S":
                raise ValueError(f"pre-tokenizer regex: {name} unsupported here")
            else:
                out.append(name)
            i += len(name)
            continue
        if ch == "[" and not inside:
            inside = True
        elif ch == "]" and inside:
            inside = False
        out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=None)
def _compiled(expr: str) -> tuple[re.Pattern, bool]:
    """(pattern, masked): masked runs it on the white-space-masked copy (see the docstring)."""
    return re.compile(_translate(expr)), "\\p{" not in expr


def _cut(pattern: re.Pattern, masked: bool, pieces: list[str]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        probe = piece.translate(_MASK) if masked else piece
        pos = 0
        for m in pattern.finditer(probe):
            start, end = m.span()
            if start > pos:
                out.append(piece[pos:start])
            if end > start:
                out.append(piece[start:end])
            pos = end
        if pos < len(piece):
            out.append(piece[pos:])
    return out


# -- the regex chains (llama-vocab.cpp, llm_tokenizer_bpe) -------------------------------------

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
# llama.cpp's GPT-2 regex has no final "|\s+": its splitter treats a lone white space that the
# regex leaves over as a piece of its own, and so does "|\s+".
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_LETTERS = (
    "A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-"
    "\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-"
    "\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
    "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-"
    "\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-"
    "\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-"
    "\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124"
    "\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183"
    "\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-"
    "\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK3_MAIN = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?"
                   r"[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PORO = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

CHAINS: dict[str, tuple[str, ...]] = {
    # llama.cpp's "default" (a BPE file without tokenizer.ggml.pre, e.g. GPT-NeoX 20B)
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", _DEEPSEEK_PUNCT, r"\s+\Z",
                     _CJK_HANGUL, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}"),
    "deepseek3": (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+", _DEEPSEEK3_MAIN),
    "poro": (_PORO,),
    "viking": (_PORO, r"\p{N}"),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "bailingmoe": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+",),
    "laguna": ("[^\n]+|[\n]+", _QWEN2),
    "minicpm5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    # SentencePiece-style BPE: spaces already U+2581, only newlines cut the text
    "gemma4": ("[^\n]+|[\n]+",),
}


@dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp pre-tokenizes one ``tokenizer.ggml.pre`` value, and the flags it sets.

    chain: the key of CHAINS. byte_encode: words are spelt in GPT-2's byte alphabet (else raw
    UTF-8, with <0xNN> byte tokens). escape_whitespaces: spaces become U+2581 first.
    ignore_merges: a word that is a token is that token, merges or not. clean_spaces: the
    detokenizer's clean-up applies. add_bos: BOS is added unless tokenizer.ggml.add_bos_token
    says otherwise (force_bos: even then).
    """
    chain: str
    byte_encode: bool = True
    escape_whitespaces: bool = False
    ignore_merges: bool = False
    clean_spaces: bool = True
    add_bos: bool = False
    force_bos: bool = False

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; joined they are `text`."""
        pieces = [text]
        for expr in CHAINS[self.chain]:
            pieces = _cut(*_compiled(expr), pieces)
        return pieces


def _names(chain: str, names: str, **flags) -> dict[str, PreTokenizer]:
    spec = PreTokenizer(chain, **flags)
    return {name: spec for name in names.split()}


# tokenizer.ggml.pre -> PreTokenizer, as llama-vocab.cpp maps them (llama_vocab::impl::load).
# A BPE file without the key gets "default", as in llama.cpp.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_names("default", "default"),
    **_names("llama3", "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 "
             "jina-v5-nano", ignore_merges=True, add_bos=True),
    **_names("llama3", "dbrx smaug-bpe chatglm-bpe"),
    **_names("llama3", "glm4 glm5", ignore_merges=True),
    **_names("gpt2", "gpt-2 phi-2 gigachat a.x-4.0 mellum mpt olmo jais exaone4"),
    **_names("gpt2", "trillion granite-docling", clean_spaces=False),
    **_names("starcoder", "starcoder refact codeshell exaone minerva-7b mellum2"),
    **_names("starcoder", "command-r smollm", clean_spaces=False),
    **_names("falcon", "falcon"),
    **_names("qwen2", "stablelm2 megrez"),
    **_names("qwen2", "qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2",
             clean_spaces=False),
    **_names("qwen35", "qwen35", clean_spaces=False),
    **_names("deepseek-llm", "deepseek-llm", clean_spaces=False),
    **_names("deepseek-coder", "deepseek-coder", clean_spaces=False),
    **_names("deepseek3", "deepseek-v3 hunyuan-dense joyai-llm hy_v4", clean_spaces=False),
    **_names("poro", "bloom gpt3-finnish"),
    **_names("poro", "poro-chat", clean_spaces=False),
    **_names("viking", "viking", clean_spaces=False),
    **_names("seed-coder", "seed-coder", clean_spaces=False),
    **_names("bailingmoe", "bailingmoe bailingmoe2 llada-moe", clean_spaces=False),
    **_names("ufakzeka", "ufakzeka", clean_spaces=False),
    **_names("laguna", "laguna", clean_spaces=False),
    **_names("minicpm5", "minicpm5", ignore_merges=True),
    **_names("gemma4", "gemma4", byte_encode=False, escape_whitespaces=True, add_bos=True,
             force_bos=True),
}
SUPPORTED_PRE_TOKENIZERS = tuple(PRE_TOKENIZERS)


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

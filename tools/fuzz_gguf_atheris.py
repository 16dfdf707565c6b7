#!/usr/bin/env python3
"""Coverage-guided fuzzing of the GGUF reader (GGUFFile.from_bytes + validate_model, which also
reads the clex.* tables) with atheris.

    python3 tools/fuzz_gguf_atheris.py [libFuzzer flags] [corpus dir]

With no corpus dir, build/fuzz/gguf_corpus is used; the corpus is seeded with small valid GGUFs
from tests/ggufgen.py. Crashes (any exception but GGUFError, a broken reader promise, a
per-input timeout or an RSS blow-up) are written to build/fuzz/ unless -artifact_prefix says
otherwise. Useful flags: -max_total_time=SECONDS -timeout=1 -rss_limit_mb=2048 -runs=N.
Reproduce a crash: python3 tools/fuzz_gguf_atheris.py build/fuzz/crash-<sha1>
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["clexrt.gguf", "clexrt.rope.tables"]):
    importlib.import_module("clexrt.rope.tables")   # the schema checks read the clex tables
    from clexrt.errors import GGUFError
    from clexrt.gguf.reader import GGUFFile
    from clexrt.gguf.schema import validate_model

import numpy as np  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "build", "fuzz", "gguf_corpus")
ARTIFACTS = os.path.join(ROOT, "build", "fuzz") + os.sep


def seed_corpus(path: str) -> None:
    from clexrt.gguf.constants import ValueType as VT
    from ggufgen import build_gguf, tiny_llama_content

    # (re)written every run, so a corpus kept from an older run still starts from today's
    # valid files (the clex.* schema, say)
    os.makedirs(path, exist_ok=True)
    seeds = {
        "micro_llama": dict(n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16, n_vocab=8,
                            clex=True, rope_freqs=True),
        "micro_tied_all_types": dict(n_layer=1, n_embd=8, n_head=2, n_head_kv=2, n_ff=16,
                                     n_vocab=8, tied=True, all_types=True),
    }
    for name, kw in seeds.items():
        c = tiny_llama_content(**kw)
        with open(os.path.join(path, name + ".gguf"), "wb") as f:
            f.write(build_gguf(c.kvs, c.tensors).data)
    vocab = {k: v for k, v in tiny_llama_content(n_vocab=8).kvs.items()
             if k.startswith(("general.", "tokenizer."))}
    vocab["x.nested"] = (VT.ARRAY, (VT.ARRAY, [(VT.INT8, [1]), (VT.STRING, ["a"])]))
    with open(os.path.join(path, "vocab_only.gguf"), "wb") as f:
        f.write(build_gguf(vocab, {}).data)


def test_one_input(data: bytes) -> None:
    try:
        g = GGUFFile.from_bytes(data, "<fuzz>")
    except GGUFError as e:
        if "\n" in str(e):
            raise AssertionError(f"multi-line error: {e!r}")
        return
    # The reader's promises about what it hands to C.
    end = 0
    for t in sorted(g.tensors.values(), key=lambda t: t.offset):
        if not (t.offset % g.alignment == 0 and t.offset >= max(end, g.data_offset)
                and t.offset + t.nbytes <= len(data)):
            raise AssertionError(f"tensor promise broken: {t}")
        end = t.offset + t.nbytes
        if g.tensor_array(t.name).nbytes != t.nbytes:
            raise AssertionError(f"tensor_array size: {t}")
    for v in g.metadata.values():
        if isinstance(v, np.ndarray) and v.flags.writeable:
            raise AssertionError("writable metadata array")
    try:
        validate_model(g)
    except GGUFError as e:
        if "\n" in str(e):
            raise AssertionError(f"multi-line error: {e!r}")


def main() -> None:
    argv = list(sys.argv)
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if not positional:
        argv.append(DEFAULT_CORPUS)
        positional = [DEFAULT_CORPUS]
    for p in positional:
        if not os.path.isfile(p):
            seed_corpus(p)
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        os.makedirs(ARTIFACTS, exist_ok=True)
        argv.insert(1, f"-artifact_prefix={ARTIFACTS}")
    if not any(a.startswith("-timeout=") for a in argv):
        argv.insert(1, "-timeout=2")
    if not any(a.startswith("-rss_limit_mb=") for a in argv):
        argv.insert(1, "-rss_limit_mb=2048")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Mutation fuzzing of the GGUF reader (issue 7): thousands of corrupted small GGUFs, fixed seeds.

Every case must either load (and then satisfy the reader's promises: tensors aligned, inside the
file, not overlapping) or raise GGUFError with a one-line message; anything else, or a case
slower than a second, fails. Cases that load also go through validate_llama and have every
tensor viewed. A failing case is named by family and index: rerun it with case_data(family, i).
"""
import random
import struct
import time
import traceback

import numpy as np
import pytest

from clexrt.errors import GGUFError
from clexrt.gguf.schema import validate_model
from clexrt.gguf.constants import ValueType as VT
from clexrt.gguf.reader import GGUFFile
from gguf.constants import GGML_QUANT_SIZES
from ggufgen import build_gguf, tiny_llama_content

SEED = 20240607
MAX_CASE_S = 1.0
SMALL = dict(n_layer=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=64, n_vocab=40)


def _bases():
    """Two small valid files covering every value type, nested arrays, clex arrays and a tied
    and an untied model."""
    out = []
    for kw in (dict(clex=True, rope_freqs=True), dict(tied=True, all_types=True)):
        c = tiny_llama_content(seed=len(out), **kw, **SMALL)
        kvs = dict(c.kvs)
        if kw.get("all_types"):
            kvs["x.nested"] = (VT.ARRAY, (VT.ARRAY, [(VT.INT16, [1, -2]), (VT.STRING, ["a", ""])]))
            kvs["x.empty"] = (VT.ARRAY, (VT.UINT64, []))
        out.append(build_gguf(kvs, c.tensors))
    return out


BASES = _bases()
INTERESTING_U64 = [0, 1, 2, 31, 32, 33, 0x7F, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                   2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
ALL_TYPE_IDS = sorted(set(range(0, 16)) | set(int(t) for t in GGML_QUANT_SIZES) | {99, 2**31, 2**32 - 1})


def _poke(buf: bytearray, offset: int, size: int, value: int) -> None:
    struct.pack_into("<Q" if size == 8 else "<I", buf, offset, value % (1 << (8 * size)))


# -- mutation families: each is f(rng, base) -> bytes ---------------------------------------

def bitflip(rng, b):
    d = bytearray(b.data)
    hi = b.data_offset if rng.random() < 0.85 else len(d)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(hi)
        d[i] ^= 1 << rng.randrange(8)
    return bytes(d)


def byteset(rng, b):
    d = bytearray(b.data)
    for _ in range(rng.choice((1, 2, 4))):
        i = rng.randrange(b.data_offset)
        n = rng.choice((1, 2, 4, 8))
        d[i:i + n] = bytes([rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x20))]) * len(d[i:i + n])
    return bytes(d)


def truncate(rng, b):
    points = sorted({f.offset + k for f in b.fields for k in (-1, 0, 1, 3)} | {len(b.data) - 1})
    if rng.random() < 0.7:
        cut = rng.choice(points)
    else:
        cut = rng.randrange(len(b.data))
    return b.data[:max(cut, 0)]


def field_value(rng, b):
    f = rng.choice([f for f in b.fields if f.size in (4, 8) and f.kind != "magic"])
    d = bytearray(b.data)
    old = int.from_bytes(d[f.offset:f.offset + f.size], "little")
    v = rng.choice(INTERESTING_U64 + [old + 1, old - 1, old * 2, old + 32, len(d), len(d) - old,
                                      rng.getrandbits(8 * f.size)])
    _poke(d, f.offset, f.size, v)
    return bytes(d)


def type_swap(rng, b):
    f = rng.choice(b.of_kind("value_type", "array_type", "ggml_type"))
    d = bytearray(b.data)
    _poke(d, f.offset, 4, rng.choice(ALL_TYPE_IDS))
    return bytes(d)


def offsets(rng, b):
    fs = b.of_kind("tensor_offset")
    d = bytearray(b.data)
    vals = [struct.unpack_from("<Q", d, f.offset)[0] for f in fs]
    how = rng.randrange(4)
    if how == 0:            # shuffle the offsets among the tensors
        rng.shuffle(vals)
    elif how == 1:          # one tensor onto another's data
        i, j = rng.randrange(len(vals)), rng.randrange(len(vals))
        vals[i] = vals[j]
    elif how == 2:          # nudge by a multiple of the alignment, either way
        i = rng.randrange(len(vals))
        vals[i] += 32 * rng.randint(-3, 3)
    else:                   # swap two tensors' dims as well as their offsets
        i, j = rng.randrange(len(vals)), rng.randrange(len(vals))
        vals[i], vals[j] = vals[j], vals[i]
        di = [f for f in b.of_kind("dim") if f.label == fs[i].label]
        dj = [f for f in b.of_kind("dim") if f.label == fs[j].label]
        for a, c in zip(di, dj):
            va, vc = d[a.offset:a.offset + 8], d[c.offset:c.offset + 8]
            d[a.offset:a.offset + 8], d[c.offset:c.offset + 8] = vc, va
    for f, v in zip(fs, vals):
        _poke(d, f.offset, 8, v)
    return bytes(d)


def splice(rng, b):
    d = bytearray(b.data)
    i = rng.randrange(b.data_offset)
    n = rng.choice((1, 2, 4, 8, 13, 64))
    how = rng.randrange(3)
    if how == 0:
        del d[i:i + n]
    elif how == 1:
        d[i:i] = d[i:i + n]
    else:
        d[i:i] = bytes(rng.getrandbits(8) for _ in range(n))
    return bytes(d)


FAMILIES = {  # name -> (mutator, number of cases)
    "bitflip": (bitflip, 1600),
    "byteset": (byteset, 500),
    "truncate": (truncate, 900),
    "fields": (field_value, 1600),
    "types": (type_swap, 600),
    "offsets": (offsets, 400),
    "splice": (splice, 500),
}


def case_data(family: str, i: int) -> bytes:
    mutate, _ = FAMILIES[family]
    rng = random.Random(f"{SEED}:{family}:{i}")
    return mutate(rng, BASES[i % len(BASES)])


# -- the oracle ------------------------------------------------------------------------------

def check(data: bytes, name: str) -> str:
    """Loads data; returns 'rejected', 'model-rejected' or 'valid'. Raises on a broken promise."""
    try:
        g = GGUFFile.from_bytes(data, name)
    except GGUFError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(name + ": "), msg
        return "rejected"
    size, prev_end = len(data), 0
    assert g.data_offset % g.alignment == 0
    for t in sorted(g.tensors.values(), key=lambda t: t.offset):
        assert t.offset % g.alignment == 0 and t.offset >= g.data_offset, t
        assert t.offset >= prev_end and t.offset + t.nbytes <= size, t
        prev_end = t.offset + t.nbytes
        assert len(g.tensor_bytes(t.name)) == t.nbytes
        a = g.tensor_array(t.name)
        assert a.nbytes == t.nbytes and not a.flags.writeable
    for v in g.metadata.values():
        if isinstance(v, np.ndarray):
            assert not v.flags.writeable
    try:
        validate_model(g)
    except GGUFError as e:
        assert "\n" not in str(e)
        return "model-rejected"
    return "valid"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fuzz_family(family):
    _, n = FAMILIES[family]
    outcomes, failures, slowest = {}, [], 0.0
    t_start = time.perf_counter()
    for i in range(n):
        data = case_data(family, i)
        t0 = time.perf_counter()
        try:
            r = check(data, f"<{family}#{i}>")
            outcomes[r] = outcomes.get(r, 0) + 1
        except Exception as e:   # anything but GGUFError is a bug in the reader
            failures.append(f"{family}#{i}: {type(e).__name__}: {e}\n"
                            + "".join(traceback.format_exception(e)[-3:]))
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if dt > MAX_CASE_S:
            failures.append(f"{family}#{i}: took {dt:.2f}s")
    total = time.perf_counter() - t_start
    print(f"{family}: {n} cases in {total:.2f}s, slowest {slowest * 1e3:.1f} ms, {outcomes}")
    assert not failures, "\n".join(failures[:10])
    assert outcomes.get("rejected", 0) > 0     # the mutations do bite


def test_truncation_at_every_boundary_through_files(tmp_path):
    """The path-based loader (open + mmap) on every section boundary of one base."""
    b = BASES[0]
    p = tmp_path / "cut.gguf"
    cuts = sorted({f.offset for f in b.fields if f.kind == "boundary"} | {0, 1, 4, 8, 23, 24})
    for cut in cuts:
        if cut >= len(b.data):
            continue
        p.write_bytes(b.data[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            GGUFFile(p)
    p.write_bytes(b.data)
    with GGUFFile(p) as g:
        validate_model(g)


def test_bases_are_valid():
    for b in BASES:
        assert check(b.data, "<base>") == "valid"

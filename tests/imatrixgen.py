"""Importance-matrix files for tests, as llama-imatrix writes them: its GGUF format (per weight
matrix NAME.in_sum2 [ne0, 1] and NAME.counts [1, 1], F32, and the imatrix.* keys llama-quantize
requires) and the legacy .dat (values stored as mean * ncall). Random but seeded."""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

from clexrt.convert.mixture import is_quantizable
from clexrt.gguf.reader import GGUFFile


def imatrix_entries(path, seed=0):
    """Random sums and counts (as llama-imatrix would write) for every weight matrix of the
    model but the token embedding and the output head (llama-imatrix skips those)."""
    rng = np.random.default_rng(seed)
    out = {}
    with GGUFFile(path) as g:
        for name, t in g.tensors.items():
            if is_quantizable(name, t.shape) and name not in ("token_embd.weight", "output.weight"):
                count = float(rng.integers(1, 4) * 512)
                out[name] = ((rng.lognormal(0, 1.5, t.shape[0]) * count).astype(np.float32), count)
    return out


def write_imatrix(path, entries, meta=True):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "imatrix")
    if meta:
        w.add_array("imatrix.datasets", ["test.txt"])
        w.add_uint32("imatrix.chunk_count", 3)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, count) in entries.items():
        w.add_tensor(name + ".in_sum2", np.asarray(sums, np.float32).reshape(1, -1))
        w.add_tensor(name + ".counts", np.array([[count]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy(path, entries, ncall=3):
    """The legacy .dat: values stored as mean * ncall, as llama-imatrix used to write them."""
    b = struct.pack("<i", len(entries))
    for name, (sums, count) in entries.items():
        vals = (sums / np.float32(count) * np.float32(ncall)).astype("<f4")
        b += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, vals.size) + vals.tobytes()
    b += struct.pack("<ii", ncall, 8) + b"test.txt"
    Path(path).write_bytes(b)

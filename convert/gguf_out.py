"""Planning and writing a GGUF: metadata, the q/k permutation, output types, CLEX keys,
and a write that is atomic (temporary name, fsync, rename) and streams one tensor at a time.

A conversion is a Plan: ordered metadata and a list of TensorPlans, each of which knows how to
produce its data. `--dry-run` prints the plan; `write_plan` writes it.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from clexrt.errors import ConvertError, GGUFError
from clexrt.gguf.constants import FILE_TYPES as GGUF_FILE_TYPES
from clexrt.gguf.strings import StringArray

from . import native_rows
from . import quantize as Q
from .mixture import FILE_TYPES as FILE_TYPES_MIX

ARCH = "llama"
# --outtype: every 2-D weight in that type (convert_hf_to_gguf.py's meaning of q8_0) ...
OUTTYPES = ("f32", "f16", "q4_0", "q4_1", "q8_0", "bf16")
# ... or one of llama.cpp's file types beyond those, whose per-tensor types follow llama-quantize's
# mixture (convert/mixture.py): q4_k_m, q6_k, ...
MIX_OUTTYPES = tuple(n.lower() for n in FILE_TYPES_MIX if n.lower() not in OUTTYPES)
# --outtype -> general.file_type
FILE_TYPES = {name.lower(): ft for ft, name in GGUF_FILE_TYPES.items()
              if name.lower() in OUTTYPES + MIX_OUTTYPES}
_NP_TYPES = {Q.F32_ID: np.float32, Q.F16_ID: np.float16}


@dataclass
class TensorPlan:
    name: str                       # GGUF name
    shape: tuple[int, ...]          # numpy order: (rows, row length)
    type_id: int                    # GGML type written
    load: Callable[[], np.ndarray]  # float32 data in GGUF layout (or raw bytes when raw=True)
    source: str = ""
    raw: bool = False               # load() gives the stored bytes already (clexify's copy)
    size: int | None = None         # byte size of a raw tensor (any GGML type)

    @property
    def nbytes(self) -> int:
        if self.size is not None:
            return self.size
        rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        return rows * Q.row_bytes(self.type_id, self.shape[-1])

    def data(self) -> np.ndarray:
        a = self.load()
        if self.raw:
            return np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        if a.shape != self.shape:
            raise ConvertError(f"tensor {self.name}: data has shape {list(a.shape)}, planned {list(self.shape)}")
        if self.type_id == Q.F32_ID:
            return np.ascontiguousarray(a, np.float32)
        if self.type_id not in Q.TYPE_IDS.values():
            # the types numpy does not quantize: llama-quantize's quantizers in the C core
            return native_rows.quantize_array(a, self.type_id, name=self.name)
        # quantize in slabs of rows: the temporaries stay small next to the tensor itself
        rows = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
        out = np.empty((rows.shape[0], Q.row_bytes(self.type_id, rows.shape[1])), np.uint8)
        step = max(1, (1 << 20) // max(1, rows.shape[1]))
        for i in range(0, rows.shape[0], step):
            out[i:i + step] = np.ascontiguousarray(Q.quantize(rows[i:i + step], self.type_id)).view(np.uint8).reshape(
                -1, out.shape[1])
        return out


@dataclass
class Plan:
    kv: dict = field(default_factory=dict)          # key -> (value, GGUFValueType, sub type)
    tensors: list[TensorPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    alignment: int | None = None                    # general.alignment, when not the default 32

    # -- metadata with GGUF types ------------------------------------------------------------
    def add(self, key: str, value, vtype: GGUFValueType | None = None, sub: GGUFValueType | None = None):
        if vtype is None:
            vtype, sub, value = _infer(key, value)
        self.kv[key] = (value, vtype, sub)

    def describe(self) -> str:
        lines = ["metadata:"]
        for k, (v, t, sub) in self.kv.items():
            lines.append(f"  {k:<44} {_type_str(t, sub):<14} {_short(v)}")
        lines.append(f"tensors: {len(self.tensors)}, {_size(sum(t.nbytes for t in self.tensors))}")
        for t in self.tensors:
            src = f"  <- {t.source}" if t.source else ""
            lines.append(f"  {t.name:<28} {str(list(t.shape)):<16} {_ggml_name(t.type_id):<5}{src}")
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)


def _ggml_name(t: int) -> str:
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type{t}"


def _infer(key, value):
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None, value
    if isinstance(value, (int, np.integer)):
        return GGUFValueType.UINT32, None, int(value)
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32, None, float(value)
    if isinstance(value, str):
        return GGUFValueType.STRING, None, value
    if isinstance(value, np.ndarray):
        sub = {np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.int32): GGUFValueType.INT32,
               np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(bool): GGUFValueType.BOOL}.get(value.dtype)
        if sub is None:
            raise TypeError(f"{key}: cannot store an array of {value.dtype}")
        return GGUFValueType.ARRAY, sub, value.reshape(-1)
    if isinstance(value, (list, tuple, StringArray)) and all(isinstance(x, str) for x in value):
        return GGUFValueType.ARRAY, GGUFValueType.STRING, list(value)
    raise TypeError(f"{key}: cannot store {type(value).__name__}")


def _type_str(t, sub):
    return f"{t.name}[{sub.name}]" if sub is not None else t.name


def _short(v) -> str:
    if isinstance(v, np.ndarray):
        head = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in v[:4].tolist())
        return f"[{head}{', ...' if v.size > 4 else ''}] ({v.size})"
    if isinstance(v, (list, StringArray)):
        head = ", ".join(repr(x) for x in v[:4])
        return f"[{head}{', ...' if len(v) > 4 else ''}] ({len(v)})"
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return repr(s)
    return repr(v)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------------------------
# The q/k permutation
# ------------------------------------------------------------------------------------------
def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rows of each head come in rotate_half order (component i pairs with i + d/2); llama.cpp
    rotates adjacent pairs (2i, 2i+1). Reorder each head's rows so that new row 2i+s is old row
    s*d/2 + i:

        HF   head rows:  x0 x1 ... x(d/2-1) | y0 y1 ... y(d/2-1)
        GGUF head rows:  x0 y0 x1 y1 ... x(d/2-1) y(d/2-1)
    """
    rows = w.shape[0]
    d = rows // n_head
    return (w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of permute_qk (GGUF -> HF rotate_half order)."""
    rows = w.shape[0]
    d = rows // n_head
    return (w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def weight_type(outtype: str, shape: tuple[int, ...], name: str, notes: list[str]) -> int:
    """The GGML type a tensor gets: norms, every 1-D tensor and an expert router stay F32 (as
    llama.cpp's converter keeps them); 2-D weights and 3-D expert stacks take the outtype,
    falling back to F16 where the row length is not a multiple of 32."""
    if len(shape) < 2 or outtype == "f32" or name.endswith("ffn_gate_inp.weight"):
        return Q.F32_ID
    tid = Q.TYPE_IDS[outtype]
    if tid in Q.BLOCK_TYPES and shape[-1] % Q.QK:
        notes.append(f"{name}: row length {shape[-1]} is not a multiple of {Q.QK}: written as F16")
        return Q.F16_ID
    return tid


# ------------------------------------------------------------------------------------------
# CLEX metadata
# ------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def _progress(total: int, enabled: bool):
    """A one-line stderr progress report (bytes written, rate), refreshed at most 5x a second."""
    state = {"done": 0, "t0": time.monotonic(), "last": 0.0}
    show = enabled and total > 0 and sys.stderr.isatty()

    def update(n: int, name: str):
        state["done"] += n
        now = time.monotonic()
        if show and (now - state["last"] > 0.2 or state["done"] >= total):
            state["last"] = now
            pct = 100.0 * state["done"] / total
            rate = state["done"] / max(now - state["t0"], 1e-9) / 2**20
            sys.stderr.write(f"\rwriting {pct:5.1f}%  {_size(state['done'])} / {_size(total)}  "
                             f"{rate:6.1f} MiB/s  {name[:32]:<32}")
            sys.stderr.flush()
            if state["done"] >= total:
                sys.stderr.write("\n")

    return update


def write_plan(plan: Plan, out_path, progress: bool = True) -> None:
    """Writes the plan to out_path atomically: OUT.tmp-XXXX in the same folder, fsync, rename.
    On any error (or KeyboardInterrupt) the temporary file is removed and nothing is left."""
    out_path = os.path.abspath(os.fspath(out_path))
    folder = os.path.dirname(out_path)
    if not os.path.isdir(folder):
        raise ConvertError(f"output folder does not exist: {folder}")
    if os.path.isdir(out_path):
        raise ConvertError(f"output is a folder: {out_path}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out_path) + ".tmp-", dir=folder)
    except OSError as e:
        raise ConvertError(f"cannot write in {folder}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)      # mkstemp's 0600 is for the temporary name, not the result
    writer = None
    try:
        arch = plan.kv.get("general.architecture", (ARCH,))[0]
        writer = GGUFWriter(tmp, arch)
        if plan.alignment:
            writer.data_alignment = plan.alignment
        for k, (v, t, sub) in plan.kv.items():
            if k == "general.architecture":
                continue
            if t == GGUFValueType.ARRAY:
                v = v.tolist() if isinstance(v, np.ndarray) else list(v)
            writer.add_key_value(k, v, t, sub)
        for tp in plan.tensors:
            writer.add_tensor_info(tp.name, tp.shape, np.dtype(np.float32), tp.nbytes,
                                   raw_dtype=GGMLQuantizationType(tp.type_id))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        update = _progress(sum(t.nbytes for t in plan.tensors), progress)
        for tp in plan.tensors:
            data = tp.data()
            if data.nbytes != tp.nbytes:
                raise ConvertError(f"tensor {tp.name}: {data.nbytes} bytes of data, planned {tp.nbytes}")
            writer.write_tensor_data(data)
            update(tp.nbytes, tp.name)
            del data
        fout = writer.fout[0]
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        writer = None
        os.replace(tmp, out_path)
        tmp = None
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except OSError as e:
        raise ConvertError(f"cannot write {out_path}: {e.strerror or e}") from None
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def open_gguf(path):
    from clexrt.gguf.reader import GGUFFile

    try:
        return GGUFFile(path)
    except FileNotFoundError:
        raise ConvertError(f"no such file: {path}") from None
    except GGUFError as e:
        raise ConvertError(str(e)) from None
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from None


def rewrite_gguf(src, out, make_plan: Callable, dry_run: bool = False, progress: bool = True):
    """The GGUF-to-GGUF commands' common course (clexify, quantize, export-static): refuse an
    output that is the input, open src, make_plan(g) -> Plan, write it to out unless dry_run,
    close; returns the plan."""
    if not os.path.isfile(src):
        raise ConvertError(f"no such file: {src}")
    if out is not None and (os.path.abspath(out) == os.path.abspath(src)
                            or (os.path.exists(out) and os.path.samefile(src, out))):
        raise ConvertError(f"the output {out} would overwrite the input: choose another path")
    g = open_gguf(src)
    try:
        plan = make_plan(g)
        if not dry_run:
            if out is None:
                raise ValueError("an output path is needed unless dry_run")
            write_plan(plan, out, progress=progress)
    finally:
        g.close()
    return plan

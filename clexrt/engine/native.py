"""Checked wrappers over the compiled core (clexrt._native): return codes become exceptions,
and a stale or missing build is one clear error instead of a crash."""
from __future__ import annotations

import importlib.util
import os
import sys

from ..errors import ClexError, ContextFullError, ModelError, NativeError

EXPECTED_ABI = 18

# CLEXRT_NATIVE_LIB=/path/to/_native*.so loads another build of the core (make asan uses it to
# run the tests against the sanitized build).
_override = os.environ.get("CLEXRT_NATIVE_LIB")
if _override and "clexrt._native" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("clexrt._native", _override)
    if _spec is None or _spec.loader is None:
        raise ClexError(f"CLEXRT_NATIVE_LIB={_override!r} is not a loadable module")
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["clexrt._native"] = _mod

try:
    from .._native import ffi, lib  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    raise ClexError(
        f"the clexrt C core is not built ({e}); run `make install` (or `pip install -e .`) in the "
        "repository") from None

if lib.clex_abi_version() != EXPECTED_ABI:  # pragma: no cover
    raise ClexError(
        f"the compiled clexrt core has ABI {lib.clex_abi_version()}, this Python code expects "
        f"{EXPECTED_ABI}: rebuild with `make install`")

# The constants below come from the compiled core, never from a second copy in Python.
ISA_NAMES = {code: ffi.string(lib.clex_isa_name(code)).decode()
             for code in (lib.CLEX_ISA_SCALAR, lib.CLEX_ISA_AVX2, lib.CLEX_ISA_AVX512, lib.CLEX_ISA_NEON)}


def type_name(type_id: int) -> str | None:
    """The ggml name of a type id the core knows ("Q4_K"), or None."""
    p = lib.clex_type_name(int(type_id))
    return None if p == ffi.NULL else ffi.string(p).decode()


# KV cache element types: name -> (type id, values per block, bytes per block); a cached row of
# head_dim values is head_dim / block blocks (Q8_0: 32 values in 34 bytes; f32, f16: blocks of 1)
KV_TYPES = {type_name(t).lower(): (t, int(lib.clex_type_block_size(t)), int(lib.clex_type_block_bytes(t)))
            for t in range(lib.CLEX_TYPE_COUNT) if lib.clex_kv_type_supported(t)}

# The architecture fields of clex_hparams: HParams' names -> the core's enum values
NORM_KINDS = {"rms": lib.CLEX_NORM_RMS, "layer": lib.CLEX_NORM_LAYER}
ROPE_LAYOUTS = {"adjacent": lib.CLEX_ROPE_ADJACENT, "neox": lib.CLEX_ROPE_NEOX}
FFN_KINDS = {"swiglu": lib.CLEX_FFN_SWIGLU, "geglu": lib.CLEX_FFN_GEGLU, "gelu": lib.CLEX_FFN_GELU}


def supported_weight_types() -> str:
    """The weight types the core runs, as the core lists them ("F32, F16, ...")."""
    return ffi.string(lib.clex_supported_weight_types()).decode()


def last_error() -> str:
    return ffi.string(lib.clex_last_error()).decode("utf-8", "replace")


def check(rc: int, what: str = "", where: str = "") -> None:
    """Raise the exception that fits a C return code."""
    if rc == lib.CLEX_OK:
        return
    msg = last_error()
    if where:
        msg = f"{where}: {msg}"
    if rc == lib.CLEX_E_FULL:
        raise ContextFullError(msg)
    if rc in (lib.CLEX_E_INVALID, lib.CLEX_E_UNSUPPORTED):
        raise ModelError(msg)
    if rc == lib.CLEX_E_NOMEM:
        raise NativeError(f"out of memory: {msg}")
    raise NativeError(f"{what or 'native call'} failed ({rc}): {msg}")


def isa() -> str:
    return ISA_NAMES.get(lib.clex_isa(), "unknown")


def supported_isas() -> list[str]:
    return [name for code, name in ISA_NAMES.items() if lib.clex_isa_supported(code)]


def set_isa(name: str) -> None:
    codes = {v: k for k, v in ISA_NAMES.items()}
    if name not in codes:
        raise ClexError(f"unknown instruction set {name!r} (known: {', '.join(codes)})")
    check(lib.clex_set_isa(codes[name]))


def physical_cores() -> int:
    return int(lib.clex_physical_cores())


def decode_rows4_bytes() -> int:
    """decoding takes weight rows of at most this many bytes four per kernel call (-1: every row;
    CLEXRT_DECODE_ROWS4_MAX=<bytes> decides at start-up)"""
    return int(lib.clex_decode_rows4_bytes())


def set_decode_rows4_bytes(max_bytes: int) -> None:
    check(lib.clex_set_decode_rows4_bytes(max_bytes))


def decode_prefetch_bytes() -> int:
    """how far ahead decoding prefetches the weights, in bytes (0: not at all;
    CLEXRT_DECODE_PREFETCH=<bytes> decides at start-up)"""
    return int(lib.clex_decode_prefetch_bytes())


def set_decode_prefetch_bytes(n: int) -> None:
    """sets both distances, the short rows' and the long rows'"""
    check(lib.clex_set_decode_prefetch_bytes(n))


# rows of more bytes than this take decoding's long prefetch distance
DECODE_PREFETCH_SHORT_ROW = int(lib.CLEX_DECODE_PREFETCH_SHORT_ROW)


def decode_prefetch_long_bytes() -> int:
    """how far ahead decoding prefetches the weights of rows longer than DECODE_PREFETCH_SHORT_ROW
    bytes (CLEXRT_DECODE_PREFETCH_LONG=<bytes> decides at start-up)"""
    return int(lib.clex_decode_prefetch_long_bytes())


def set_decode_prefetch_long_bytes(n: int) -> None:
    check(lib.clex_set_decode_prefetch_long_bytes(n))


def decode_prefetch_page_bytes() -> int:
    """of each 4 KiB page in a long row's prefetch reach, the bytes asked for (0: every cache
    line; CLEXRT_DECODE_PREFETCH_PAGE=<bytes> decides at start-up)"""
    return int(lib.clex_decode_prefetch_page_bytes())


def set_decode_prefetch_page_bytes(n: int) -> None:
    check(lib.clex_set_decode_prefetch_page_bytes(n))


def decode_quarters() -> bool:
    """whether decoding's four rows per kernel call lie a quarter of a thread's rows apart (True)
    or side by side (CLEXRT_DECODE_QUARTERS=0|1 decides at start-up)"""
    return bool(lib.clex_decode_quarters())


def set_decode_quarters(on: bool) -> None:
    check(lib.clex_set_decode_quarters(1 if on else 0))


# n_batch=None: DEFAULT_BATCH tokens a step, fewer (a multiple of 32, at least 32) where the batch
# scratch would pass BATCH_SCRATCH_BUDGET. A 1B-class model then takes about 320 at a time: a
# 512-token prompt reads the weights twice, about 1% of its prefill (docs/performance.md), and the
# peak memory stays within the file, the KV cache and 64 MiB. A small model keeps 512.
DEFAULT_BATCH, MIN_BATCH, BATCH_SCRATCH_BUDGET = 512, 32, 16 << 20


def default_batch(model, n_threads: int) -> int:
    """The n_batch that keeps a context's batch scratch for `model` (a clex_model *) in the budget."""
    per_token = max(1, int(lib.clex_batch_token_bytes(model, int(n_threads))))
    return max(MIN_BATCH, min(DEFAULT_BATCH, BATCH_SCRATCH_BUDGET // per_token // 32 * 32))

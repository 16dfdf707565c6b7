"""Checked wrappers over the compiled core (clexrt._native): return codes become exceptions,
and a stale or missing build is one clear error instead of a crash."""
from __future__ import annotations

import importlib.util
import os
import sys

from .errors import ClexError, ContextFullError, ModelError, NativeError

EXPECTED_ABI = 5

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
    from ._native import ffi, lib  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    raise ClexError(
        f"the clexrt C core is not built ({e}); run `make install` (or `pip install -e .`) in the "
        "repository") from None

if lib.clex_abi_version() != EXPECTED_ABI:  # pragma: no cover
    raise ClexError(
        f"the compiled clexrt core has ABI {lib.clex_abi_version()}, this Python code expects "
        f"{EXPECTED_ABI}: rebuild with `make install`")

ISA_NAMES = {lib.CLEX_ISA_SCALAR: "scalar", lib.CLEX_ISA_AVX2: "avx2",
             lib.CLEX_ISA_AVX512: "avx512", lib.CLEX_ISA_NEON: "neon"}


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

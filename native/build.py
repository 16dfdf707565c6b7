"""cffi builder for clexrt._native (out-of-line API mode).

The cdef is the CDEF-BEGIN..CDEF-END region of include/clexrt.h, so the C compiler and cffi
read the same declarations. Kernels for each instruction set are compiled into one module and
chosen at run time from the CPU's features, so the build runs on any x86-64 (or ARM64) CPU.
"""
import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rel(p: Path) -> str:
    # setuptools wants source paths relative to the project root
    return os.path.relpath(p, ROOT)


def _cdef() -> str:
    text = (HERE / "include" / "clexrt.h").read_text()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if not m:
        raise RuntimeError("clexrt.h has no CDEF-BEGIN/CDEF-END region")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return body


SOURCES = sorted(
    [p for p in (HERE / "src").rglob("*.c")],
    key=lambda p: str(p),
)

CFLAGS = ["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-D_GNU_SOURCE", "-pthread"]
if os.environ.get("CLEXRT_SANITIZE"):
    # make asan: AddressSanitizer + UBSan build of the same sources
    # float-cast-overflow: GCC's "undefined" leaves out float -> int conversions out of range
    # (clang's includes them), and the quantizers are where such a conversion would hide
    CFLAGS += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined,float-cast-overflow",
               "-fno-sanitize-recover=undefined,float-cast-overflow"]
LDFLAGS = ["-pthread"] + (["-fsanitize=address,undefined,float-cast-overflow"]
                          if os.environ.get("CLEXRT_SANITIZE") else [])

def make_builder(absolute: bool = False) -> FFI:
    """The cffi builder; absolute=True for compiling outside the project root (tools/asan_build.py)."""
    path = (lambda p: str(p)) if absolute else _rel
    b = FFI()
    b.cdef(_cdef())
    b.set_source(
        "clexrt._native",
        '#include "clexrt.h"\n',
        sources=[path(p) for p in SOURCES],
        include_dirs=[path(HERE / "include")],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        libraries=["m"],
    )
    return b


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

#!/usr/bin/env python3
"""Build the C core with AddressSanitizer + UBSan into build/asan/ and print the module's path;
the tests then load it through CLEXRT_NATIVE_LIB:

    CLEXRT_NATIVE_LIB=$(python tools/asan_build.py) \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 python -m pytest tests/...

(`make asan` does both.)"""
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "asan"


def main():
    os.environ["CLEXRT_SANITIZE"] = "1"
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "native"))
    import build as native_build  # native/build.py

    if OUT.exists():
        shutil.rmtree(OUT)
    so = native_build.make_builder(absolute=True).compile(tmpdir=str(OUT), verbose=False)
    print(so)


if __name__ == "__main__":
    main()

"""The corpus: Python 3.11's documentation sources (reStructuredText) from Debian's python3.11-doc.

    python tools/train_clex/corpus.py [--deb FILE.deb] [--out build/train_clex/corpus]

Gets the .deb (`apt-get download python3.11-doc`, no root needed) unless --deb names one, extracts
it with `dpkg-deb -x`, and splits the ~500 files `usr/share/doc/python3.11/html/_sources/**/*.rst.txt`
by file: sorted paths, shuffled with a fixed seed, files taken into the test split until it holds
TEST_BYTES. Writes train.txt, test.txt (files joined by a blank line) and manifest.json (the .deb's
sha256 and version, the license, the file lists and each split's sha256).

License: the Python documentation is under the PSF License Agreement (Debian's copyright file,
copied next to the committed test text as LICENSE-PSF.txt), which allows redistribution with the
notice.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"
COPYRIGHT = "usr/share/doc/python3.11-doc/copyright"
SEED = 1234
TEST_BYTES = 240_000
SEP = "\n\n"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fetch_deb(workdir: str) -> str:
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True)
    debs = sorted(glob.glob(os.path.join(workdir, f"{PACKAGE}_*.deb")))
    if not debs:
        sys.exit(f"apt-get download {PACKAGE} produced no .deb in {workdir}")
    return debs[-1]


def deb_version(deb: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True,
                          text=True).stdout.strip()


def split_files(names: list[str], seed: int = SEED, test_bytes: int = TEST_BYTES,
                sizes: dict | None = None) -> tuple[list[str], list[str]]:
    """Deterministic split by file: sorted, shuffled with `seed`, test files taken in that order
    while the test split stays under `test_bytes` (files larger than a quarter of it are skipped)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    test, total = [], 0
    for n in order:
        s = sizes[n]
        if s > test_bytes // 4 or total + s > test_bytes:
            continue
        test.append(n)
        total += s
    tset = set(test)
    return sorted(n for n in names if n not in tset), sorted(test)


def build(deb: str, out: str) -> dict:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        root = os.path.join(tmp, SOURCES)
        paths = sorted(glob.glob(os.path.join(root, "**", "*.rst.txt"), recursive=True))
        texts = {}
        for p in paths:
            with open(p, encoding="utf-8") as f:
                texts[os.path.relpath(p, root)] = f.read().strip("\n")
        shutil.copyfile(os.path.join(tmp, COPYRIGHT), os.path.join(out, "LICENSE-PSF.txt"))
    sizes = {n: len(t.encode("utf-8")) for n, t in texts.items()}
    train, test = split_files(list(texts), sizes=sizes)
    manifest = {
        "source": f"Debian package {PACKAGE} (Python 3.11 documentation, reStructuredText sources)",
        "package": PACKAGE, "version": deb_version(deb), "deb": os.path.basename(deb),
        "deb_sha256": sha256_file(deb),
        "license": "PSF License Agreement (Python Software Foundation); see LICENSE-PSF.txt "
                   "(Debian's copyright file for the package)",
        "files_glob": SOURCES + "/**/*.rst.txt", "n_files": len(texts), "split_seed": SEED,
        "join": "files joined by a blank line, in sorted path order", "splits": {},
    }
    for name, files in (("train", train), ("test", test)):
        text = SEP.join(texts[n] for n in files) + "\n"
        with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        manifest["splits"][name] = {"files": files, "n_files": len(files),
                                    "bytes": len(text.encode("utf-8")), "sha256": sha256_text(text)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", help="a python3.11-doc .deb already downloaded (default: apt-get download)")
    ap.add_argument("--out", default="build/train_clex/corpus")
    a = ap.parse_args()
    deb = a.deb
    if deb is None:
        os.makedirs(a.out, exist_ok=True)
        deb = fetch_deb(os.path.abspath(a.out))
    m = build(deb, a.out)
    for k, s in m["splits"].items():
        print(f"{k}: {s['n_files']} files, {s['bytes']} bytes, sha256 {s['sha256']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Every C function in native/ with its length, longest first; exit status 1 if any is longer
than the limit (80 lines by default).

    tools/c_func_lengths.py [--max N] [--top K] [paths...]     (default path: native/)

A function's length is the lines of its body: from the line after its opening brace to the line
before its closing one (a one-line function is 0). Functions written inside a #define (the SIMD
kernels that are instantiated per variant) count too, under the name they are spelled with
(vec_dot_q8_0_##SFX). Comments, strings and character literals are blanked before the braces
are matched, and other preprocessor lines are ignored, so neither can unbalance them.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80
KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "do", "else", "__attribute__"}


@dataclass
class Func:
    path: str
    name: str
    line: int      # line of the opening brace
    length: int    # body lines


def _blank(m: re.Match) -> str:
    """The match with everything but newlines replaced by spaces (line numbers stay put)."""
    return re.sub(r"[^\n]", " ", m.group(0))


DEFINE = re.compile(r"\s*#\s*define\s+\w+(\([^)]*\))?")


def clean(text: str) -> str:
    """Comments, strings and char literals blanked; preprocessor lines blanked, except the bodies
    of #defines, whose head becomes a ';' and whose continuation backslashes go (so a function
    spelled inside a macro is seen, and nothing before the macro runs into it)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", _blank, text, flags=re.S)
    out, in_directive, keep = [], False, False
    for line in text.split("\n"):
        if not in_directive and line.lstrip().startswith("#"):
            head = DEFINE.match(line)
            keep = head is not None
            if keep:
                line = ";" + " " * (head.end() - 1) + line[head.end():]
            in_directive = True
        if in_directive:
            in_directive = line.rstrip().endswith("\\")
            line = line.rstrip().rstrip("\\") if keep else ""
        out.append(line)
    return "\n".join(out)


def _name_before(text: str, close: int) -> str | None:
    """The name of the function whose parameter list ends at text[close] == ')'."""
    depth, i = 0, close
    while i >= 0:
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if depth == 0:
                break
        i -= 1
    m = re.search(r"([A-Za-z_][\w#]*)\s*$", text[:i])
    if not m:
        return None
    if m.group(1) == "__attribute__":   # f(...) __attribute__((...)) {: the name is further back
        j = m.start(1) - 1
        while j >= 0 and text[j].isspace():
            j -= 1
        return _name_before(text, j) if j >= 0 and text[j] == ")" else None
    return m.group(1)


def functions(path: Path) -> list[Func]:
    text = clean(path.read_text(errors="replace"))
    found, depth, i, n = [], 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and depth == 0:
            j = i - 1
            while j >= 0 and text[j].isspace():
                j -= 1
            name = _name_before(text, j) if j >= 0 and text[j] == ")" else None
            end, d = i, 0
            while end < n:          # the matching brace
                d += text[end] == "{"
                d -= text[end] == "}"
                if d == 0:
                    break
                end += 1
            if name and name not in KEYWORDS:
                first, last = text.count("\n", 0, i) + 1, text.count("\n", 0, end) + 1
                found.append(Func(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), name,
                                  first, max(0, last - first - 1)))
            i = end + 1
            continue
        i += 1
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "native"])
    ap.add_argument("--max", type=int, default=LIMIT, help="longest body allowed (lines)")
    ap.add_argument("--top", type=int, default=0, help="list only the K longest (0: all)")
    args = ap.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.[ch]")))
    funcs = sorted((f for path in files for f in functions(path)), key=lambda f: (-f.length, f.path, f.line))
    over = [f for f in funcs if f.length > args.max]
    for f in funcs[: args.top or None]:
        print(f"{f.length:5d}  {f.path}:{f.line}  {f.name}{'   <-- over ' + str(args.max) if f.length > args.max else ''}")
    print(f"{len(funcs)} functions in {len(files)} files; longest {funcs[0].length if funcs else 0} lines; "
          f"{len(over)} over {args.max}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

"""Quantization quality as llama.cpp measures it: the KL divergence of a quantized model's token
distributions from the F32 model's, computed as `llama-perplexity --kl-divergence` does, with
both models run by clexrt; and the same numbers from llama.cpp for llama-quantize's files.

llama-perplexity's method (tools/perplexity/perplexity.cpp), followed here step by step: the text
is tokenized once (BOS where the vocabulary asks for it), cut into chunks of n_ctx = 512 whose
first token is set to BOS (where it asks); each chunk is one forward pass, and the positions
n_ctx/2 .. n_ctx-2 are scored. The base pass stores, per scored position, the F32 model's
log-probabilities as 16-bit codes over the top 16 nats (scale, minimum, uint16 per token: the
file `--kl-divergence-base` writes, same layout); the quantized pass computes per position
KLD = sum_i p_base,i (log p_base,i - log p_q,i) over the tokens with log p_base > -16, and whether
the two arg-maxes agree. Reported: mean KLD with its uncertainty sqrt(var / (n - 1)), the same-top
percentage with sqrt(p (1 - p) / (n - 1)), and both perplexities. The base files are
interchangeable with llama.cpp's (clexrt can score against llama.cpp's F32 base and the other way
round).

    python benchmarks/quality.py base  F32.gguf TEXT BASE.kld [--chunks N]     (clexrt F32 run)
    python benchmarks/quality.py score Q.gguf BASE.kld                         (clexrt Q run)
    python benchmarks/quality.py table F32.gguf TEXT --workdir DIR [--types Q4_0,...] [--chunks N]
        [--llama-bin /work/llama/build/bin] [--json OUT.json]

`table` quantizes F32 to each file type with `clexrt quantize` and with llama-quantize, compares
the two files (tensor types, tensor bytes), and measures our file's KLD with clexrt and
llama-quantize's file's KLD with llama-perplexity:

    llama-perplexity -m F32 --kl-divergence-base BASE.kld -f TEXT -c 512 --chunks N
    llama-perplexity -m Q --kl-divergence-base BASE.kld --kl-divergence -c 512
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAGIC = b"_logits_"
F32 = np.float32


# ---------------------------------------------------------------- llama.cpp's base file

def row_width(n_vocab: int) -> int:
    """uint16 per stored row: two floats (scale, min log-prob) and n_vocab codes, padded even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def _lse(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max and float(log(sum expf(x - max))), the sum in double as llama.cpp has it."""
    mx = logits.max(axis=1)
    s = np.exp(logits - mx[:, None]).astype(np.float64).sum(axis=1)
    return mx, np.log(s).astype(F32)


def encode_base(logits: np.ndarray) -> np.ndarray:
    """[rows, n_vocab] float32 logits -> [rows, row_width] uint16, as llama-perplexity writes
    them (perplexity.cpp, log_softmax with log_prob)."""
    logits = np.ascontiguousarray(logits, F32)
    rows, n_vocab = logits.shape
    mx, lse = _lse(logits)
    mn = np.maximum(logits.min(axis=1), mx - F32(16))
    min_log_prob = (mn - mx - lse).astype(F32)
    scale = ((mx - mn) / F32(65535)).astype(F32)
    out = np.zeros((rows, row_width(n_vocab)), np.uint16)
    out[:, :4] = np.stack([scale, min_log_prob], axis=1).view(np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale != 0, F32(1) / scale, F32(0)).astype(F32)
        q = np.rint(inv[:, None] * (logits - mn[:, None])).astype(np.int64)   # nearest, ties to even
    q = np.where(logits > mn[:, None], q, 0)
    out[:, 4:4 + n_vocab] = np.where(scale[:, None] != 0, q, 0).astype(np.uint16)
    return out


def decode_base(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """The stored log-probabilities, float32 [rows, n_vocab]: scale * code + min."""
    head = np.ascontiguousarray(rows[:, :4]).view(F32)
    return (head[:, :1] * rows[:, 4:4 + n_vocab].astype(F32) + head[:, 1:2]).astype(F32)


@dataclass
class BaseHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray          # int32 [n_chunk * n_ctx], as tokenized (BOS not substituted)

    @property
    def scored(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2


def write_base_header(f, n_ctx: int, n_vocab: int, tokens: np.ndarray) -> None:
    n_chunk = tokens.size // n_ctx
    f.write(MAGIC + np.array([n_ctx, n_vocab, n_chunk], "<i4").tobytes())
    f.write(np.asarray(tokens[:n_chunk * n_ctx], "<i4").tobytes())


def read_base(path):
    """(header, iterator over the chunks' [scored, row_width] uint16 rows)."""
    f = open(path, "rb")
    if f.read(8) != MAGIC:
        raise SystemExit(f"{path}: not a llama-perplexity log-probability file")
    n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(f.read(12), "<i4"))
    hdr = BaseHeader(n_ctx, n_vocab, n_chunk, np.frombuffer(f.read(4 * n_ctx * n_chunk), "<i4").copy())

    def chunks():
        with f:
            nbytes = hdr.scored * row_width(n_vocab) * 2
            for _ in range(n_chunk):
                b = f.read(nbytes)
                if len(b) != nbytes:
                    raise SystemExit(f"{path}: truncated")
                yield np.frombuffer(b, np.uint16).reshape(hdr.scored, -1)
    return hdr, chunks()


# ---------------------------------------------------------------- the statistics

def mean_and_uncertainty(s: float, s2: float, n: int) -> tuple[float, float]:
    """llama-perplexity's: the mean and sqrt(var / (n - 1)) (0 for 10 values or fewer)."""
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


@dataclass
class KLD:
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    same_top: int = 0
    count: int = 0

    def add(self, logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """One chunk: the quantized model's logits [rows, n_vocab] against the stored base rows;
        returns the per-position KLD (as perplexity.cpp's log_softmax with base_log_prob)."""
        logits = np.ascontiguousarray(logits, F32)
        rows, n_vocab = logits.shape
        mx, lse = _lse(logits)
        imax = logits.argmax(axis=1)
        p_log_base = decode_base(base_rows, n_vocab)
        r = np.arange(rows)
        nll = (mx + lse - logits[r, targets]).astype(F32).astype(np.float64)
        nll_base = (-p_log_base[r, targets]).astype(np.float64)
        shift = (mx + lse).astype(F32)
        terms = np.exp(p_log_base) * (p_log_base - logits + shift[:, None])
        kld = np.where(p_log_base > F32(-16), terms, F32(0)).astype(np.float64).sum(axis=1)
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_nll += float(nll.sum())
        self.sum_nll2 += float((nll * nll).sum())
        self.sum_nll_base += float(nll_base.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).sum())
        self.same_top += int((imax == p_log_base.argmax(axis=1)).sum())
        self.count += rows
        return kld

    def result(self) -> dict:
        kld, kld_err = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        nll, nll_err = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        nllb, nllb_err = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        p = self.same_top / max(self.count, 1)
        top_err = math.sqrt(p * (1 - p) / (self.count - 1)) if self.count > 1 else 0.0
        return {"kld": kld, "kld_err": kld_err, "same_top": 100 * p, "same_top_err": 100 * top_err,
                "ppl": math.exp(nll), "ppl_err": math.exp(nll) * nll_err, "ppl_base": math.exp(nllb),
                "ppl_base_err": math.exp(nllb) * nllb_err, "tokens": self.count}


# ---------------------------------------------------------------- clexrt runs

def chunk_rows(model, tokens: np.ndarray, n_ctx: int, i: int, bos: int | None) -> np.ndarray:
    """Logits of positions n_ctx/2 .. n_ctx-2 of chunk i (its first token set to bos)."""
    batch = np.array(tokens[i * n_ctx:(i + 1) * n_ctx], np.int64)
    if bos is not None:
        batch[0] = bos
    first = n_ctx // 2
    rows = [r for _pos, r in model.logits_blocks(batch, start=first, block=n_ctx)]
    return np.concatenate(rows)[: n_ctx - 1 - first]


def _bos(model) -> int | None:
    """The BOS id each chunk starts with when the vocabulary asks for one (None for a model
    without a vocabulary, as the tests' tiny ones)."""
    from clexrt.errors import ClexError
    from clexrt.text.tokenizer import Tokenizer
    try:
        tok = Tokenizer.from_metadata(model.metadata)
    except ClexError:
        return None
    return tok.bos_id if tok.add_bos else None


def make_base(f32_path, text_path, out_path, n_ctx: int = 512, n_chunks: int = -1, threads: int | None = None,
              log=print) -> BaseHeader:
    """The base pass with clexrt: writes a llama.cpp-compatible log-probability file."""
    from clexrt.engine.model import Model
    from clexrt.text.tokenizer import Tokenizer

    with Model(str(f32_path), n_ctx=n_ctx, n_threads=threads) as m:
        tok = Tokenizer.from_metadata(m.metadata)
        tokens = np.array(tok.encode(Path(text_path).read_text(encoding="utf-8", errors="replace"),
                                     add_bos=True), np.int32)
        avail = tokens.size // n_ctx
        n = avail if n_chunks <= 0 else min(n_chunks, avail)
        if n < 1:
            raise SystemExit(f"{text_path}: {tokens.size} tokens, fewer than one chunk of {n_ctx}")
        hdr = BaseHeader(n_ctx, m.n_vocab, n, tokens[:n * n_ctx])
        with open(out_path, "wb") as f:
            write_base_header(f, n_ctx, m.n_vocab, hdr.tokens)
            for i in range(n):
                t0 = time.perf_counter()
                f.write(encode_base(chunk_rows(m, hdr.tokens, n_ctx, i, _bos(m))).tobytes())
                log(f"base: chunk {i + 1}/{n} in {time.perf_counter() - t0:.1f} s")
    return hdr


def score(model_path, base_path, threads: int | None = None, log=print) -> dict:
    """The quantized pass with clexrt against a base file (ours or llama-perplexity's)."""
    from clexrt.engine.model import Model

    hdr, chunks = read_base(base_path)
    acc = KLD()
    first = hdr.n_ctx // 2
    with Model(str(model_path), n_ctx=hdr.n_ctx, n_threads=threads) as m:
        if m.n_vocab != hdr.n_vocab:
            raise SystemExit(f"{model_path}: {m.n_vocab} tokens, the base file has {hdr.n_vocab}")
        bos = _bos(m)
        t0 = time.perf_counter()
        for i, base_rows in enumerate(chunks):
            rows = chunk_rows(m, hdr.tokens, hdr.n_ctx, i, bos)
            targets = hdr.tokens[i * hdr.n_ctx + first + 1:(i + 1) * hdr.n_ctx].astype(np.int64)
            acc.add(rows, base_rows, targets)
        r = acc.result()
        log(f"score {Path(model_path).name}: KLD {r['kld']:.6f} +/- {r['kld_err']:.6f}, same top "
            f"{r['same_top']:.2f}%, {r['tokens']} tokens in {time.perf_counter() - t0:.1f} s")
    return r


# ---------------------------------------------------------------- llama.cpp runs

def run(cmd: list[str], log=print) -> str:
    log("$ " + " ".join(str(c) for c in cmd))
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout + r.stderr


_NUM = r"(-?[0-9.]+(?:e-?\d+)?|nan|inf)"


def parse_llama_kld(out: str) -> dict:
    """The summary llama-perplexity --kl-divergence prints (its 'Mean KLD', 'Same top p' and
    'Mean PPL' lines)."""
    def grab(label):
        m = re.search(re.escape(label) + r"\s*:?\s*" + _NUM + r"\s*±\s*" + _NUM, out)
        return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))
    kld, top, ppl, ppl_base = grab("Mean    KLD:"), grab("Same top p:"), grab("Mean PPL(Q)"), grab("Mean PPL(base)")
    return {"kld": kld[0], "kld_err": kld[1], "same_top": top[0], "same_top_err": top[1],
            "ppl": ppl[0], "ppl_err": ppl[1], "ppl_base": ppl_base[0], "ppl_base_err": ppl_base[1]}


def compare_files(ours, theirs) -> dict:
    """Tensor types and bytes of two GGUFs of the same model, tensor by tensor (by name)."""
    from clexrt.gguf.reader import GGUFFile
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        if set(a.tensors) != set(b.tensors):
            return {"tensors": len(a.tensors), "same_set": False}
        types = [n for n in a.tensors if a.tensors[n].ggml_type != b.tensors[n].ggml_type]
        data = [n for n in a.tensors if bytes(a.tensor_bytes(n)) != bytes(b.tensor_bytes(n))]
        return {"tensors": len(a.tensors), "same_set": True, "types_differ": len(types),
                "bytes_differ": len(data), "first_differing": (types or data or [None])[0],
                "size_ours": os.path.getsize(ours), "size_theirs": os.path.getsize(theirs)}


def table(args) -> list[dict]:
    from clexrt.convert.mixture import FILE_TYPES
    from clexrt.convert.requantize import quantize_gguf

    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    lq, lp = Path(args.llama_bin) / "llama-quantize", Path(args.llama_bin) / "llama-perplexity"
    t = str(args.threads)
    base_ours, base_theirs = wd / "base-clexrt.kld", wd / "base-llamacpp.kld"
    if not base_ours.exists():
        make_base(args.f32, args.text, base_ours, args.ctx, args.chunks, args.threads)
    if not base_theirs.exists() and lp.exists():
        run([lp, "-m", args.f32, "--kl-divergence-base", base_theirs, "-f", args.text, "-c", args.ctx,
             "--chunks", args.chunks, "-t", t])
    h_ours = read_base(base_ours)[0]
    if base_theirs.exists():
        h_theirs = read_base(base_theirs)[0]
        same = np.array_equal(h_ours.tokens, h_theirs.tokens)
        print(f"tokens: clexrt's and llama.cpp's tokenization {'agree' if same else 'DIFFER'} "
              f"({h_ours.n_chunk} chunks of {h_ours.n_ctx})")
    rows = []
    for ft in (args.types.split(",") if args.types else list(FILE_TYPES)):
        ft = ft.upper()
        ours, theirs = wd / f"clexrt-{ft}.gguf", wd / f"llamacpp-{ft}.gguf"
        row = {"type": ft}
        t0 = time.perf_counter()
        if not ours.exists():
            quantize_gguf(args.f32, ours, ft, n_threads=args.threads, progress=False)
            row["quantize_s_ours"] = time.perf_counter() - t0
        if lq.exists():
            t0 = time.perf_counter()
            if not theirs.exists():
                run([lq, args.f32, theirs, ft, t])
                row["quantize_s_theirs"] = time.perf_counter() - t0
            row["agreement"] = compare_files(ours, theirs)
        row["size_mib"] = os.path.getsize(ours) / 2**20
        row["ours"] = score(ours, base_ours, args.threads)
        if lp.exists() and theirs.exists():
            row["theirs"] = parse_llama_kld(run([lp, "-m", theirs, "--kl-divergence-base", base_theirs,
                                                 "--kl-divergence", "-c", args.ctx, "-t", t]))
            if row.get("agreement", {}).get("bytes_differ", 1):      # other bytes: clexrt on theirs too
                row["theirs_by_clexrt"] = score(theirs, base_ours, args.threads)
        rows.append(row)
        print(markdown([row], header=not rows[:-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    out = []
    if header:
        out += ["| type | size MiB | same types / bytes as llama-quantize | KLD ours (clexrt) | "
                "KLD llama.cpp (llama-perplexity) | ratio | same top % ours / llama.cpp |",
                "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        a = r.get("agreement", {})
        agree = (f"{a['tensors'] - a['types_differ']}/{a['tensors']} types, "
                 f"{a['tensors'] - a['bytes_differ']}/{a['tensors']} bytes") if a.get("same_set") else "n/a"
        o, th = r["ours"], r.get("theirs", {})
        ratio = o["kld"] / th["kld"] if th.get("kld") else float("nan")
        out.append(f"| {r['type']} | {r['size_mib']:.1f} | {agree} | {o['kld']:.5f} ± {o['kld_err']:.5f} | "
                   f"{th.get('kld', float('nan')):.5f} ± {th.get('kld_err', float('nan')):.5f} | {ratio:.3f} | "
                   f"{o['same_top']:.2f} / {th.get('same_top', float('nan')):.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="the F32 pass: write a llama.cpp-compatible log-probability file")
    b.add_argument("f32"), b.add_argument("text"), b.add_argument("out")
    s = sub.add_parser("score", help="KLD of a model against a base file, both run by clexrt")
    s.add_argument("model"), s.add_argument("base")
    tb = sub.add_parser("table", help="every file type: clexrt quantize vs llama-quantize")
    tb.add_argument("f32"), tb.add_argument("text")
    tb.add_argument("--workdir", required=True)
    tb.add_argument("--types", default=None, help="comma-separated file types (default: all 16)")
    tb.add_argument("--llama-bin", default="/work/llama/build/bin")
    tb.add_argument("--json", default=None)
    for p in (b, s, tb):
        p.add_argument("--threads", type=int, default=None)
    for p in (b, tb):
        p.add_argument("--ctx", type=int, default=512)
        p.add_argument("--chunks", type=int, default=8)
    args = ap.parse_args(argv)
    if args.cmd == "base":
        make_base(args.f32, args.text, args.out, args.ctx, args.chunks, args.threads)
    elif args.cmd == "score":
        print(json.dumps(score(args.model, args.base, args.threads)))
    else:
        rows = table(args)
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

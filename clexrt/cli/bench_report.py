"""The output of `clexrt bench` in llama-bench's formats: a markdown table (md), one JSON array
(json), one JSON object per line (jsonl), or CSV with a header (csv).

A row is one test (pp or tg at one depth and thread count) as a dict. Fields that mean what
llama-bench's fields mean carry its names (model_size, model_n_params, n_threads, n_prompt,
n_gen, n_depth, avg_ts, stddev_ts, samples_ts, ...); ours follow (isa, kv_type, peak_rss_bytes,
weight_bytes_per_token, read_gbps, tg_bandwidth_pct, rope, table_change_ms, ...). A field that
does not apply to a row (tg's bandwidth figures on a pp row) is absent in JSON and empty in CSV.
"""
from __future__ import annotations

import csv
import io
import json

import click

FORMATS = ("md", "json", "jsonl", "csv")

# The CSV columns, in order: every scalar field of a row, with the rope state's main entries
# flattened (rope_method, ...), and --profile's totals (profile_wall_us, ...; its steps stay
# JSON-only); the lists (samples_*) and objects stay JSON-only, as llama-bench leaves its
# samples out of its CSV.
CSV_FIELDS = (
    "cpu_info", "backends", "isa", "model_filename", "model_type", "model_size", "model_n_params",
    "n_batch", "n_threads", "type_k", "type_v", "kv_type", "n_prompt", "n_gen", "n_depth",
    "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "reps", "kv_bytes", "peak_rss_bytes",
    "weight_bytes_per_token", "read_gbps", "tg_weight_gbps", "tg_bandwidth_pct",
    "rope_method", "rope_mode", "rope_t", "rope_kv_policy", "rope_log_scale",
    "table_change_ms", "table_change_ms_std",
    "profile_wall_us", "profile_in_c_us", "profile_outside_us",
)
ROPE_CSV = ("method", "mode", "t", "kv_policy", "log_scale")
PROFILE_CSV = ("wall_us", "in_c_us", "outside_us")

# markdown columns: (display name, width; negative = left-aligned), llama-bench's widths
_MD_COLUMNS = [("model", -30), ("size", 10), ("params", 10), ("backend", -12), ("threads", 7)]
_MD_KV = [("type_k", 6), ("type_v", 6)]
_MD_TAIL = [("test", 15), ("t/s", 20)]


def label_of(n_prompt: int, n_gen: int, depth: int) -> str:
    """llama-bench's test label: pp512, tg128, pp512+tg128, with ' @ d4096' at a depth."""
    name = f"pp{n_prompt}" if not n_gen else f"tg{n_gen}" if not n_prompt else f"pp{n_prompt}+tg{n_gen}"
    return name + (f" @ d{depth}" if depth else "")


def size_label(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:.2f} GiB"


def params_label(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


class Printer:
    """Writes rows as they come (print_rows, per model load) and closes the output (finish)."""

    def __init__(self, fmt: str, kv_columns: bool = False, echo=click.echo):
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}")
        self.fmt, self.echo, self.n = fmt, echo, 0
        self.columns = _MD_COLUMNS + (_MD_KV if kv_columns else []) + _MD_TAIL

    def print_rows(self, rows: list[dict]) -> None:
        for row in rows:
            if self.n == 0:
                self._header()
            getattr(self, f"_row_{self.fmt}")(row)
            self.n += 1

    def finish(self) -> None:
        if self.fmt == "json":
            self.echo("[]" if self.n == 0 else "\n]")

    # -- per format
    def _header(self) -> None:
        if self.fmt == "md":
            self.echo("|" + "".join(f" {_cell(name, w)} |" for name, w in self.columns))
            self.echo("|" + "".join(f" {'-' * (abs(w) - 1)}{':' if w > 0 else '-'} |" for _, w in self.columns))
        elif self.fmt == "csv":
            self.echo(",".join(CSV_FIELDS))        # llama-bench quotes the values, not the names

    def _row_md(self, row: dict) -> None:
        self.echo("|" + "".join(f" {_cell(_md_value(row, name), w)} |" for name, w in self.columns))

    def _row_json(self, row: dict) -> None:
        text = json.dumps(row, indent=2)
        self.echo(("[\n" if self.n == 0 else ",\n") + "\n".join("  " + line for line in text.splitlines()),
                  nl=False)

    def _row_jsonl(self, row: dict) -> None:
        self.echo(json.dumps(row))

    def _row_csv(self, row: dict) -> None:
        flat = csv_values(row)
        self.echo(_csv_line(_csv_text(flat.get(f)) for f in CSV_FIELDS))


def csv_values(row: dict) -> dict:
    """A row's CSV fields: its scalars, rope_* from its rope state, profile_* from its profile."""
    out = {k: v for k, v in row.items() if k in CSV_FIELDS}
    for k in ROPE_CSV:
        if k in row.get("rope", {}):
            out[f"rope_{k}"] = row["rope"][k]
    for k in PROFILE_CSV:
        if k in row.get("profile", {}):
            out[f"profile_{k}"] = row["profile"][k]
    return out


def _cell(text: str, width: int) -> str:
    return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"


def _md_value(row: dict, column: str) -> str:
    if column == "model":
        return row["model_type"]
    if column == "size":
        return size_label(row["model_size"])
    if column == "params":
        return params_label(row["model_n_params"])
    if column == "backend":
        return f"{row['backends']} ({row['isa']})"
    if column == "threads":
        return str(row["n_threads"])
    if column == "test":
        return label_of(row["n_prompt"], row["n_gen"], row["n_depth"])
    if column == "t/s":
        return f"{row['avg_ts']:.2f} ± {row['stddev_ts']:.2f}"
    return str(row[column])


def _csv_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))          # llama-bench writes its booleans as 0/1 in CSV
    return str(v)


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="").writerow(list(values))
    return buf.getvalue()

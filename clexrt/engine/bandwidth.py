"""Decoding's yardstick: the machine's read bandwidth and the weight bytes one decoded token
streams. A token's decode reads every weight matrix once (the token embedding only as one row,
unless it is also the output matrix; of the experts, only the n_expert_used chosen per layer),
so weight bytes per token x tokens/s is the bandwidth decoding uses, and its ratio to a plain
read of memory with the same threads says how close to memory speed it runs."""
from __future__ import annotations

import json
import subprocess
import sys

from ..errors import ClexError

_CHILD = ("import json, sys\n"
          "from clexrt.engine.native import ffi, lib\n"
          "g = ffi.new('double *')\n"
          "rc = lib.clex_read_bandwidth(0, int(sys.argv[1]), int(sys.argv[2]), g)\n"
          "print(json.dumps({'rc': rc, 'gbps': g[0], 'err': ffi.string(lib.clex_last_error()).decode()}))\n")


def read_bandwidth(n_threads: int, passes: int = 5, timeout: float = 120.0) -> float:
    """GB/s (1e9 bytes) that n_threads threads read from a buffer 4x the last-level cache, the
    best of `passes`; measured in a child process, so this process's peak RSS stays its own."""
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(int(n_threads)), str(int(passes))],
                             capture_output=True, text=True, timeout=timeout, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise ClexError(f"measuring the read bandwidth failed: {e}") from None
    if res["rc"] != 0:
        raise ClexError(f"measuring the read bandwidth failed: {res['err']}")
    return float(res["gbps"])


def decode_bytes_per_token(gguf, n_expert: int = 0, n_expert_used: int = 0) -> int:
    """Weight bytes one decoded token reads from a GGUF's tensors."""
    t = gguf.tensors
    total = 0
    for name, info in t.items():
        if name == "token_embd.weight" and "output.weight" in t:
            total += info.nbytes // max(1, info.shape[-1])          # one row
        elif "_exps." in name and n_expert:
            total += info.nbytes * n_expert_used // n_expert        # the chosen experts
        else:
            total += info.nbytes
    return int(total)

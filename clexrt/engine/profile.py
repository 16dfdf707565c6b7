"""Where evaluation's time goes: the C core's step counters (clex_ctx_profile), read for
`clexrt bench --profile`. A mixin of Model: it uses the model's context, lock and open check."""
from __future__ import annotations

import numpy as np

from .native import check, ffi, lib


class Profiling:
    def profile(self, on: bool = True) -> None:
        """Start (counters zeroed) or stop counting where evaluation's time goes."""
        with self._lock:
            self._check_open()
            check(lib.clex_ctx_profile(self._ctx, 1 if on else 0), "profile")

    def profile_read(self) -> tuple[int, list[str], np.ndarray]:
        """The passes counted, the steps' names, and uint64 [n_threads, steps, 3]: each thread's
        ns of work and of waiting at barriers in each step, and the barriers it crossed."""
        out = np.zeros((self.n_threads, int(lib.CLEX_PROF_STEPS), 3), dtype=np.uint64)
        with self._lock:
            self._check_open()
            passes = int(lib.clex_ctx_profile_read(self._ctx, ffi.cast("uint64_t *", out.ctypes.data), out.size))
        check(min(passes, 0), "profile_read")
        return passes, [ffi.string(lib.clex_profile_step_name(i)).decode() for i in range(out.shape[1])], out

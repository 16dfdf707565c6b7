"""The model thread: N slots of one SlotPool, a bounded FIFO queue, one batched decode per token.

Everything that touches the model runs on this one thread; the asyncio side only submits jobs
(a short lock, never held while the model computes) and reads their events from an
asyncio.Queue the thread fills with ``loop.call_soon_threadsafe``.

Each turn of the loop:
1. cancelled jobs (a client that went away) leave their slots; the slot's cache keeps what was
   evaluated, for the next prompt that shares it;
2. while a slot is free, the oldest waiting job gets the free slot whose cached tokens share the
   longest prefix with its prompt (ties: the one used least recently); the prompt is evaluated
   past that prefix (engine.session.Session.prefill) and the first token sampled;
3. one ``SlotPool.step`` decodes the last sampled token of every active slot together (the
   weights read once for all of them), and each job samples its next token from its row.

A job's events are those of ``Llama._run``: ("piece", (text, logprobs)) and at the end
("done", Generation), or ("error", exception).
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..engine.session import PROMPT_CHUNK, Session, common_prefix
from ..errors import ClexError

__all__ = ["Scheduler", "Job", "QueueFull"]


class QueueFull(ClexError):
    """Every slot is busy and the queue holds its maximum: try again later (503)."""


@dataclass
class Job:
    """One request. `prompt`: ids; `make`: slot -> a text.generate.Generation (not yet started)
    for a generation, or None for `work`, a callable run on the slot (embeddings) whose result
    is the event ("done", result)."""
    prompt: list[int]
    make: Callable | None
    loop: asyncio.AbstractEventLoop
    work: Callable | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None            # the first token's time (TTFT = t_first - t_submit)
    gen: object = None

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, kind: str, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:                # the loop is closed: nobody is listening
            self.cancelled = True


class _Active:
    __slots__ = ("job", "gen", "token")      # token: the id to evaluate next (None: none)

    def __init__(self, job, gen, token):
        self.job, self.gen, self.token = job, gen, token


class Scheduler:
    """The slots of `pool` (engine.batch.SlotPool) and the thread that runs them. `to_event`:
    (Generation, Piece) -> the piece's event payload (text, logprobs)."""

    def __init__(self, pool, to_event: Callable, max_queue: int = 16):
        self.pool = pool
        self.slots = list(pool.slots)
        self.sessions = [Session(s) for s in self.slots]
        self.max_queue = max(0, int(max_queue))
        self.to_event = to_event
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: dict[int, _Active] = {}          # slot index -> its job
        self._last_used = [0.0] * len(self.slots)
        # per slot: how far its cache was written by whole prefill chunks (see _reuse)
        self._aligned = [0] * len(self.slots)
        self._cv = threading.Condition()
        self._stop = False
        self.n_done = 0
        self.n_cancelled = 0
        self.cancelled_tokens = 0           # tokens the cancelled generations had made
        self._thread = threading.Thread(target=self._run, name="clexrt-model", daemon=True)
        self._thread.start()

    # -- the asyncio side ---------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cv:
            free = len(self.slots) - len(self._active)
            if len(self._waiting) >= self.max_queue + max(0, free):
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self._waiting)} "
                                f"requests are waiting")
            self._waiting.append(job)
            self._cv.notify()
        return job

    def state(self) -> dict:
        with self._cv:
            return {"slots": len(self.slots), "busy": len(self._active),
                    "waiting": len(self._waiting), "done": self.n_done,
                    "cancelled": self.n_cancelled, "cancelled_tokens": self.cancelled_tokens}

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- the model thread ---------------------------------------------------------------------
    def _admit(self) -> list[tuple[int, Job]]:
        with self._cv:
            while not self._stop and not self._waiting and not self._active:
                self._cv.wait()
            taken = []
            while self._waiting and len(self._active) + len(taken) < len(self.slots):
                job = self._waiting.popleft()
                if job.cancelled:
                    job.emit("error", ClexError("cancelled"))
                    continue
                busy = set(self._active) | {i for i, _ in taken}
                free = [i for i in range(len(self.slots)) if i not in busy]
                i = max(free, key=lambda k: (common_prefix(self.slots[k].tokens, job.prompt),
                                             -self._last_used[k]))
                taken.append((i, job))
            for i, job in taken:
                self._active[i] = _Active(job, None, None)
            return taken

    def _finish(self, i: int, kind: str, payload) -> None:
        act = self._active.get(i)
        with self._cv:
            self._active.pop(i, None)
            self._last_used[i] = time.monotonic()
            self.n_done += 1
        if act is not None:
            act.job.emit(kind, payload)

    def _deliver(self, i: int, act: _Active, pieces, tok) -> None:
        job = act.job
        if job.t_first is None:
            job.t_first = time.perf_counter()
        for p in pieces:
            job.emit("piece", self.to_event(act.gen, p))
        act.token = tok
        if tok is None:
            self._finish(i, "done", act.gen)

    def _start(self, i: int, job: Job) -> None:
        act = self._active[i]
        try:
            if job.make is None:
                self._aligned[i] = 0            # its forward is not in prefill chunks
                result = job.work(self.slots[i])
                self._finish(i, "done", result)
                return
            gen = job.make(self.slots[i])
            act.gen = job.gen = gen
            session = self.sessions[i]
            session.truncate(self._reuse(i, gen.prompt))
            logits = session.prefill(gen.prompt)
            self._aligned[i] = len(gen.prompt) // PROMPT_CHUNK * PROMPT_CHUNK
            gen.n_prompt_eval = session.n_prefill_eval
            gen.start()
            pieces, tok = gen.step(logits, room=self._room(i))
            self._deliver(i, act, pieces, tok)
        except Exception as e:                 # the request's fault or the model's: its answer
            self._finish(i, "error", e)

    def _reuse(self, i: int, prompt) -> int:
        """How much of slot i's cache the prompt keeps: the common prefix, cut to whole
        prefill chunks that were evaluated as whole chunks. The rest is then evaluated in the
        same chunks as from an empty cache, so a reply does not depend on what the slot held
        before: the C core's kernels round differently for different batch sizes, and a
        prefix evaluated in other pieces can change a greedy reply at a near-tie."""
        common = min(common_prefix(self.slots[i].tokens, prompt), len(prompt) - 1)
        return min(self._aligned[i], common // PROMPT_CHUNK * PROMPT_CHUNK)

    def _room(self, i: int) -> bool:
        s = self.slots[i]
        return bool(s.context_shift) or s.n_past < s.n_ctx

    def _decode(self) -> None:
        for i, act in list(self._active.items()):
            if act.job.cancelled:
                self.n_cancelled += 1
                self.cancelled_tokens += len(act.gen.tokens) if act.gen is not None else 0
                self._finish(i, "error", ClexError("cancelled"))
        batch = [(i, act) for i, act in self._active.items() if act.token is not None]
        if not batch:
            return
        try:
            rows = self.pool.step([(self.slots[i], act.token) for i, act in batch])
        except Exception as e:
            for i, _ in batch:
                self.sessions[i].reset()       # its cache may be half-way: forget it
                self._finish(i, "error", e)
            return
        for (i, act), logits in zip(batch, rows):
            try:
                pieces, tok = act.gen.step(logits, room=self._room(i))
            except Exception as e:
                self._finish(i, "error", e)
                continue
            self._deliver(i, act, pieces, tok)

    def _run(self) -> None:
        while True:
            taken = self._admit()
            if self._stop:
                break
            for i, job in taken:
                self._start(i, job)
            self._decode()
        with self._cv:
            for job in self._waiting:
                job.emit("error", ClexError("the server is shutting down"))
            for act in self._active.values():
                act.job.emit("error", ClexError("the server is shutting down"))

"""The terminal around a :class:`~clexrt.cli.conversation.Conversation`: `clexrt chat`'s
:class:`Repl` (line editing and history, the commands, streaming replies, Ctrl-C, the status
line)."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import fields
from typing import Iterator, Sequence

from ..errors import ClexError, ContextFullError
from .conversation import PARAMS, Conversation, rope_label

__all__ = ["Repl", "ctrl_c_raises", "signals_looked_at"]


@contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """Inside, Ctrl-C raises KeyboardInterrupt in the main thread, whatever SIGINT the process
    found at start; on leaving, SIGINT is as it was.

    Python installs its KeyboardInterrupt handler at start only if SIGINT is at its default. A
    process started in the background by a script (`cmd &` with no job control: the shell sets
    SIGINT to ignored, and exec keeps that), or by a parent that blocked SIGINT (the mask is
    inherited too), gets no KeyboardInterrupt, ever: the terminal turns ^C into SIGINT and the
    kernel drops it (ignored) or holds it (blocked), so a reply runs on to max_tokens and the
    prompt does not answer Ctrl-C. The REPL reads the keyboard, so Ctrl-C is its to take. (Only
    the main thread can set handlers; elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    ours = old in (signal.SIG_IGN, signal.SIG_DFL)   # None: a handler set outside Python: kept
    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # the handler first: a Ctrl-C held while blocked then raises instead of being dropped
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        if ours:
            signal.signal(signal.SIGINT, old)


# input() looks at the signals noted while it waits this often (seconds): see signals_looked_at.
SIGNAL_CHECK_S = 0.05


def _looked_at(signum, frame) -> None:
    """SIGALRM's handler inside signals_looked_at: nothing; being run is the point."""


@contextmanager
def signals_looked_at(interval: float = SIGNAL_CHECK_S) -> Iterator[None]:
    """Inside, a SIGALRM every `interval` s makes a waiting input() look at the signals noted
    meanwhile, so a Ctrl-C at the prompt raises within `interval` s wherever it landed.

    CPython's readline waits for a key in select() and runs Python's signal handlers only when
    that select() returns EINTR. A SIGINT that does not interrupt it is only noted (Python's C
    handler sets a flag); select() then waits for the next key, so the Ctrl-C seems lost, and a
    key later it eats that line. That happens to a Ctrl-C typed as soon as the prompt shows:
    readline draws the prompt (rl_redisplay) and sets the terminal up (rl_prep_terminal) with
    SIGINT blocked, so the kernel gives it to another thread (the native worker threads here)
    or holds it until readline unblocks it, before the select(). On a busy machine the write
    that shows the prompt hands the CPU to whoever waits for it, and the Ctrl-C comes in that
    window. Reads and writes restart after this SIGALRM (SA_RESTART); select() never does."""
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return
    old = signal.signal(signal.SIGALRM, _looked_at)
    signal.siginterrupt(signal.SIGALRM, False)
    timer = signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield
    finally:
        _undo(lambda: signal.setitimer(signal.ITIMER_REAL, *timer),
              lambda: signal.signal(signal.SIGALRM, signal.SIG_DFL if old is None else old))


def _undo(*steps) -> None:
    """Runs every step (each may run twice) even if Ctrl-C comes in between, so no timer is
    left running; a KeyboardInterrupt that came is raised at the end."""
    interrupted = False
    for step in steps:
        while True:
            try:
                step()
                break
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        raise KeyboardInterrupt


# -- the terminal -------------------------------------------------------------------------------

HELP = [
    ("/help", "this list"),
    ("/exit", "quit (also /bye and Ctrl-D; Ctrl-C twice at an empty prompt)"),
    ("/clear", "start a new conversation (the system prompt stays)"),
    ("/regen", "answer the last message again"),
    ("/system TEXT", "set the system prompt (/system alone shows it; /system none removes it)"),
    ("/set PARAM VALUE", "temperature, top_k, top_p, min_p, repeat_penalty, seed, max_tokens"),
    ("/show info|params|template", "the model, the settings, the chat template"),
    ("/stats on|off", "the status line after each reply"),
    ("/save FILE", "write the conversation as JSON"),
    ("/load FILE", "read a conversation written by /save (or a JSON list of messages)"),
    ('"""', "begin and end a multi-line message"),
]

DEFAULT_HISTORY = "~/.clexrt_history"
PROMPT, MORE = ">>> ", "... "


class Repl:
    """Reads lines, runs commands, streams replies. `info` is the model's description for
    /show info and the banner: a list of (label, value)."""

    def __init__(self, conv: Conversation, *, info: Sequence[tuple[str, str]] = (),
                 out=None, stats: bool | None = None, history_file: str | None = DEFAULT_HISTORY,
                 color: bool | None = None, banner: str = ""):
        self.conv = conv
        self.info = list(info)
        self.out = out or sys.stdout
        tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.stats = tty if stats is None else stats
        if color is None:
            color = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.color = color
        self.history_file = os.path.expanduser(history_file) if history_file else None
        self.banner = banner
        self._readline = None
        self._ctrl_c = 0                           # Ctrl-Cs in a row at an empty prompt
        self._notice = ""                          # what the last Ctrl-C (or Ctrl-D) has to say

    # -- output ---------------------------------------------------------------------------------
    def write(self, s: str) -> None:
        self.out.write(s)
        self.out.flush()

    def _styled(self, s: str, style: str) -> str:
        codes = {"dim": "\033[2m", "warn": "\033[33m", "bold": "\033[1m"}
        return f"{codes[style]}{s}\033[0m" if self.color and style in codes else s

    def say(self, s: str, style: str = "") -> None:
        """One line of our own (not the model's), dimmed (style "dim") or yellow ("warn")."""
        self.write(self._styled(s, style) + "\n")

    def error(self, msg: str) -> None:
        self.say(f"error: {msg}", "warn")

    # -- input ----------------------------------------------------------------------------------
    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:                       # no line editing: input() still works
            return
        self._readline = readline
        readline.set_history_length(1000)
        if self.history_file:
            try:
                if os.path.exists(self.history_file):
                    readline.read_history_file(self.history_file)
                    if readline.get_current_history_length() > readline.get_history_length():
                        readline.write_history_file(self.history_file)      # trims it
                else:
                    open(self.history_file, "a").close()
            except OSError as e:
                self.error(f"history file {self.history_file}: {e.strerror}; history is not saved")
                self.history_file = None

    def _input(self, prompt: str) -> str:
        """input() with line editing; each line that enters the history is appended to the
        history file at once (so a crash loses nothing and parallel sessions do not overwrite
        each other's lines)."""
        rl = self._readline
        n = rl.get_current_history_length() if rl is not None else 0
        with signals_looked_at():
            line = input(prompt)
        if rl is not None and self.history_file and hasattr(rl, "append_history_file") \
                and rl.get_current_history_length() > n:
            try:
                rl.append_history_file(1, self.history_file)
            except OSError:
                pass
        return line

    def _save_history(self) -> None:
        """Where readline cannot append (libedit), the history is written once at the end."""
        rl = self._readline
        if rl is not None and self.history_file and not hasattr(rl, "append_history_file"):
            try:
                rl.write_history_file(self.history_file)
            except OSError:
                pass

    def _line_buffer(self) -> str:
        try:
            return self._readline.get_line_buffer() if self._readline else ""
        except Exception:
            return ""

    def read(self) -> tuple[str, bool]:
        """(text, literal): one message or command, or with literal True a block from a line
        starting with \"\"\" to the closing \"\"\" (always a message, even if it starts with
        "/"). Raises EOFError (Ctrl-D) and KeyboardInterrupt (Ctrl-C)."""
        line = self._input(PROMPT)
        if not line.lstrip().startswith('"""'):
            return line, False
        text = line.lstrip()[3:]
        if text.rstrip().endswith('"""'):
            return text.rstrip()[:-3], True
        lines = [text] if text else []
        while True:
            line = self._input(MORE)
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n"), True
            lines.append(line)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Until /exit, Ctrl-D, or Ctrl-C twice at an empty prompt; returns 0."""
        with ctrl_c_raises():
            try:
                self._setup_readline()
                if self.banner:
                    self.say(self.banner, "dim")
                while True:
                    try:
                        if not self._turn():
                            break
                    except KeyboardInterrupt:      # while the last Ctrl-C was being answered
                        pass
            except KeyboardInterrupt:              # in the set-up
                pass
            finally:
                self._save_history()
        return 0

    def _turn(self) -> bool:
        """Reads one input and runs it; False when it is time to quit. A Ctrl-C anywhere in a
        turn ends here (a reply's own stops in Conversation, which says "(stopped)"); what it
        has to say is written at the start of the next turn, inside its try, so that Ctrl-Cs
        in quick succession are each taken as one more Ctrl-C, never escape the REPL."""
        reading = True
        try:
            notice, self._notice = self._notice, ""
            if notice:
                self.write(notice)
            line, literal = self.read()
            reading = False
            self._ctrl_c = 0
            return self.handle(line, literal)
        except EOFError:
            self._notice = "\n"
        except KeyboardInterrupt:
            return self._interrupted(reading)
        self._flush_notice()
        return False

    def _interrupted(self, reading: bool) -> bool:
        """A Ctrl-C: False when it is the second one in a row at an empty prompt."""
        if not reading:                              # a command, or the end of a reply
            self._ctrl_c = 0
            self._notice = "\n" + self._styled("(interrupted)", "dim") + "\n"
            return True
        if self._line_buffer():                      # the line being typed is dropped
            self._ctrl_c = 0
            self._notice = "\n"
            return True
        self._ctrl_c += 1
        if self._ctrl_c >= 2:
            self._notice = "\n"
            self._flush_notice()
            return False
        self._notice = "\n" + self._styled("(Ctrl-C again to quit, or /exit)", "dim") + "\n"
        return True

    def _flush_notice(self) -> None:
        notice, self._notice = self._notice, ""
        try:
            self.write(notice)
        except KeyboardInterrupt:
            pass

    def handle(self, line: str, literal: bool = False) -> bool:
        """Runs one input (with `literal`, a message even if it looks like a command); False
        when it asks to quit."""
        if not line.strip():
            return True
        stripped = line.strip()
        if not literal and re.match(r"/[A-Za-z]", stripped):
            name, _, arg = stripped.partition(" ")
            return self.command(name.lower(), arg.strip())
        self.reply(lambda emit: self.conv.say(line, emit))
        return True

    def reply(self, run) -> None:
        tail = [""]

        def emit(s: str) -> None:
            tail[0] = s
            self.write(s)

        try:
            st = run(emit)
        except ContextFullError as e:
            self.say(str(e), "warn")
            return
        if tail[0] and not tail[0].endswith("\n"):
            self.write("\n")
        if st.finish == "interrupted" and not st.n_gen:
            self.say("(interrupted: the message was not sent)", "dim")
            return
        if st.finish == "interrupted":
            self.say("(stopped)", "dim")
        if self.stats:
            self.say(st.line(), "dim")
        used, n = st.n_ctx_used, st.n_ctx
        if st.finish == "full":
            self.say(f"the context is full ({used}/{n} tokens): the reply stops here. "
                     f"/clear starts a new conversation (or run with a larger -c)", "warn")
        elif used >= 0.9 * n:
            self.say(f"warning: the context is {100 * used // n}% full ({used}/{n} tokens); "
                     f"/clear starts a new conversation", "warn")

    # -- commands -------------------------------------------------------------------------------
    def command(self, name: str, arg: str) -> bool:
        if name in ("/exit", "/bye", "/quit"):
            return False
        fn = {"/help": self.cmd_help, "/?": self.cmd_help, "/clear": self.cmd_clear,
              "/regen": self.cmd_regen, "/system": self.cmd_system, "/set": self.cmd_set,
              "/show": self.cmd_show, "/stats": self.cmd_stats, "/save": self.cmd_save,
              "/load": self.cmd_load}.get(name)
        if fn is None:
            self.error(f"unknown command {name}; /help lists them")
            return True
        try:
            fn(arg)
        except (ClexError, ValueError, OSError) as e:
            self.error(_one_line(e))
        return True

    def cmd_help(self, arg: str) -> None:
        w = max(len(c) for c, _ in HELP)
        for c, text in HELP:
            self.write(f"  {c.ljust(w)}  {text}\n")

    def cmd_clear(self, arg: str) -> None:
        self.conv.clear()
        self.say("(new conversation)", "dim")

    def cmd_regen(self, arg: str) -> None:
        self.reply(self.conv.regen)

    def cmd_system(self, arg: str) -> None:
        if not arg:
            sys_text = self.conv.system
            self.say(f"system: {sys_text}" if sys_text is not None
                     else "system: (none: the chat template's default)", "dim")
            return
        self.conv.set_system(None if arg.lower() == "none" else arg)
        self.say("(system prompt set; it applies from the next reply)" if self.conv.system
                 else "(system prompt removed)", "dim")

    def cmd_set(self, arg: str) -> None:
        parts = arg.split()
        if len(parts) != 2:
            raise ValueError("usage: /set PARAM VALUE (PARAM: " + ", ".join(PARAMS) + ")")
        key, v = self.conv.set_param(parts[0], parts[1])
        self.say(f"{key} = {v}", "dim")

    def cmd_show(self, arg: str) -> None:
        what = arg.lower()
        if what == "info":
            # Which chat template is used, and why, is the template's to say.
            rows = [(k, v) for k, v in self.info if k != "chat template"]
            rows += [("chat template", _template_line(self.conv.template)),
                     ("context used", f"{self.conv.n_used}/{self.conv.n_ctx} tokens"),
                     ("rope", rope_label(self.conv.model)[5:])]
            w = max(len(k) for k, _ in rows)
            for k, v in rows:
                self.write(f"  {k.ljust(max(w, 12))}  {v}\n")
        elif what == "params":
            for f in fields(self.conv.params):
                self.write(f"  {f.name.ljust(14)}  {getattr(self.conv.params, f.name)}\n")
            sys_text = self.conv.system
            self.write(f"  {'system'.ljust(14)}  "
                       f"{sys_text if sys_text is not None else '(template default)'}\n")
        elif what == "template":
            t = self.conv.template
            self.say(f"(chat template: {_template_line(t)})", "dim")
            self.write(t.source.rstrip("\n") + "\n")
        else:
            raise ValueError("usage: /show info|params|template")

    def cmd_stats(self, arg: str) -> None:
        if arg.lower() not in ("on", "off"):
            raise ValueError("usage: /stats on|off")
        self.stats = arg.lower() == "on"

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise ValueError("usage: /save FILE")
        path = os.path.expanduser(arg)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.conv.to_json(), f, ensure_ascii=False, indent=1)
            f.write("\n")
        self.say(f"(saved {len(self.conv.messages)} messages to {path})", "dim")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise ValueError("usage: /load FILE")
        path = os.path.expanduser(arg)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        try:
            self.conv.load_json(data)
        except ValueError as e:
            raise ValueError(f"{path}: {_one_line(e)}") from None
        self.say(f"(loaded {len(self.conv.messages)} messages from {path})", "dim")
        for m in self.conv.messages[-2:]:
            self.say(f"{m['role']}: {_preview(m['content'])}", "dim")


def _template_line(t) -> str:
    """Which template a conversation uses and why, as ChatTemplate.describe() says it (from the
    file; a built-in format and the special tokens it was detected from; ChatML as the last
    resort)."""
    describe = getattr(t, "describe", None)
    if describe is not None:
        return describe()
    return "ChatML (the GGUF has none)" if getattr(t, "is_fallback", False) else "from the file"


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def _preview(s: str, n: int = 70) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n - 3] + "..."

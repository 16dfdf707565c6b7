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

import os
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..engine.session import Session
from ..errors import ClexError, ContextFullError
from ..text.chat_template import ChatTemplate, find_format
from ..text.generate import Generation
from ..text.sampler import Sampler, SamplingParams, log_softmax
from . import shapes
from .embeddings import LLAMA_POOLING_TYPE_UNSPECIFIED, embed_ids, pooling_of
from .options import (NEUTRAL_INIT, KeepLogits, check_neutral, check_neutral_init, kv_type_of,
                      metadata_str)

__all__ = ["Llama", "LLAMA_DEFAULT_SEED"]

# llama.cpp's "no seed given": draw a random one.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF


class Llama:
    """A GGUF model with llama-cpp-python's interface.

    >>> llm = Llama("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048, seed=1)
    >>> llm("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"]

    clexrt-specific arguments: `rope` (the scaling method: "auto" reads the GGUF), `clex_mode`
    and `kv_policy` (see the model docs), `context_shift` and `n_keep` (past the context, drop the
    older half of the tokens after the first n_keep instead of stopping), `kv_type` ("f32", "f16"
    for half the KV cache's memory, "q8_0" for 34/128 of it; llama-cpp-python's type_k / type_v
    name the same, and must agree: one type for keys and values); they are passed to
    :class:`clexrt.engine.model.Model`.
    """

    def __init__(self, model_path: str, *, n_ctx: int = 0, n_threads: int | None = None,
                 n_batch: int | None = None, seed: int = LLAMA_DEFAULT_SEED, verbose: bool = False,
                 vocab_only: bool = False, last_n_tokens_size: int = 64, rope: str = "auto",
                 clex_mode: str | None = None, kv_policy: str | None = None,
                 context_shift: bool = False, n_keep: int = 1, kv_type: str = "f32",
                 type_k=None, type_v=None, logits_all: bool = False,
                 chat_format: str | None = None, n_threads_batch: int | None = None,
                 pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
                 clex_log_scale: bool | None = None, **kwargs):
        unknown = set(kwargs) - set(NEUTRAL_INIT)
        if unknown:
            raise TypeError(f"Llama() got unexpected arguments: {', '.join(sorted(unknown))}")
        check_neutral_init(kwargs)
        if n_threads_batch not in (None, -1, n_threads):
            raise ValueError("Llama(n_threads_batch=...): clexrt uses n_threads for prompts "
                             "and generation alike; set n_threads")
        kv_type = kv_type_of(type_k, type_v, kv_type)
        from ..text.tokenizer import Tokenizer

        t0 = time.perf_counter()
        self.model_path = str(model_path)
        if vocab_only:
            from ..gguf.reader import read_metadata

            md = read_metadata(self.model_path)
            model = None
        else:
            from ..engine.model import Model

            extra = {} if clex_log_scale is None else {"log_scale": clex_log_scale}
            model = Model(self.model_path, n_ctx=n_ctx, n_threads=n_threads, rope=rope,
                          clex_mode=clex_mode, kv_policy=kv_policy, n_batch=n_batch,
                          context_shift=context_shift, n_keep=n_keep, kv_type=kv_type, **extra)
            md = model.metadata
        tokenizer = Tokenizer.from_metadata(md)
        self._setup(model, tokenizer, md, seed=seed, verbose=verbose, n_ctx=n_ctx,
                    last_n_tokens_size=last_n_tokens_size, logits_all=logits_all,
                    chat_format=chat_format, pooling_type=pooling_type)
        if verbose:
            what = "vocabulary" if vocab_only else f"model, n_ctx={self.n_ctx()}"
            print(f"clexrt: loaded {what} from {self.model_path} in "
                  f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)

    @classmethod
    def from_parts(cls, model, tokenizer, metadata: Mapping | None = None, *,
                   model_path: str = "", seed: int = LLAMA_DEFAULT_SEED, verbose: bool = False,
                   last_n_tokens_size: int = 64, **kw) -> "Llama":
        """A Llama over an already loaded model (None for vocabulary only) and tokenizer;
        `kw`: logits_all, chat_format, pooling_type."""
        self = cls.__new__(cls)
        self.model_path = model_path or str(getattr(model, "path", "") or "")
        md = metadata if metadata is not None else getattr(model, "metadata", {}) or {}
        self._setup(model, tokenizer, md, seed=seed, verbose=verbose, n_ctx=0,
                    last_n_tokens_size=last_n_tokens_size, **kw)
        return self

    def _setup(self, model, tokenizer, md, *, seed, verbose, n_ctx, last_n_tokens_size,
               logits_all=False, chat_format=None, pooling_type=LLAMA_POOLING_TYPE_UNSPECIFIED):
        self.pooling = pooling_of(md, pooling_type)
        self._chat_format = chat_format
        if chat_format is not None:
            find_format(chat_format)             # an unknown name fails here, not at the first chat
        self.logits_all = bool(logits_all) and model is not None
        if self.logits_all:
            model = KeepLogits(model)
        self._model = model
        self._tokenizer = tokenizer
        self._raw_metadata = md
        self.verbose = verbose
        self.last_n_tokens_size = last_n_tokens_size
        self.metadata: dict[str, str] = {}
        for k, v in md.items():
            s = metadata_str(v)
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
            self._chat_template = ChatTemplate.from_metadata(self._raw_metadata, self._chat_format)
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

    @property
    def scores(self) -> np.ndarray:
        """With logits_all=True: the logits of every cached position, [n_tokens, n_vocab]."""
        if not self.logits_all:
            raise ValueError("scores are kept only with Llama(logits_all=True)")
        return self._model.scores[:self.n_tokens]

    def _real_model(self):
        m = self._model
        return m._m if isinstance(m, KeepLogits) else m

    def save_state(self, path=None) -> bytes:
        """The KV cache, its token ids and the rope state (engine.batch.get_state), as bytes;
        with `path`, also written to that file."""
        from ..engine.batch import get_state

        self._need_model()
        with self._busy():
            data = get_state(self._real_model())
        if path is not None:
            tmp = f"{os.fspath(path)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return data

    def load_state(self, state) -> None:
        """Restores what save_state gave (bytes, or the path of its file). A state saved from
        another model is a ClexError, and the cache is left as it was."""
        from ..engine.batch import set_state

        self._need_model()
        if not isinstance(state, (bytes, bytearray, memoryview)):
            try:
                with open(state, "rb") as f:
                    state = f.read()
            except OSError as e:
                raise ClexError(f"{state}: cannot read the saved state: {e.strerror}") from None
        with self._busy():
            set_state(self._real_model(), bytes(state))
            self.last_logits = None

    def embed(self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Embeddings of a text or a list of texts: one vector each (pooled as self.pooling
        says), or one per token with pooling "none". `normalize`: to unit length (euclidean).
        `truncate`: inputs past the context are cut to it (otherwise an error)."""
        self._need_model()
        texts = [input] if isinstance(input, str) else list(input)
        out, total = [], 0
        with self._busy():                  # the cache then holds the last input
            for text in texts:
                ids = self.tokenize(text, add_bos=True)
                if len(ids) > self.n_ctx() and truncate:
                    ids = ids[:self.n_ctx()]
                self._check_fits(ids)
                v = embed_ids(self._real_model(), ids, self.pooling, 2 if normalize else None)
                out.append(v.tolist())
                total += len(ids)
        result = out[0] if isinstance(input, str) else out
        return (result, total) if return_count else result

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict:
        """OpenAI's embeddings response (vectors as embed() gives them, not normalized)."""
        vectors, n = self.embed(input, return_count=True)
        if isinstance(input, str):
            vectors = [vectors]
        return shapes.embeddings_result(model or self.model_path, [np.asarray(v) for v in vectors], n)

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

    def _sampler(self, seed, grammar: str | None = None, end_ids=(), **kw) -> Sampler:
        constraint = None
        if grammar:
            from ..text.constrain import Constraint

            constraint = Constraint(self._tokenizer, grammar, end_ids)
        s = Sampler(SamplingParams(penalty_last_n=self.last_n_tokens_size,
                                   logit_bias={int(k): float(v) for k, v in (kw.pop("logit_bias") or {}).items()},
                                   seed=seed, **kw), constraint=constraint)
        if seed is None:
            s.rng = self._rng         # calls without a seed continue the Llama's stream
        return s

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
        """OpenAI text completion: a dict, or an iterator of chunk dicts when `stream`.
        `grammar`: GBNF or Lark text (or llama-cpp-python's LlamaGrammar) the text must match."""
        check_neutral(suffix=suffix, typical_p=typical_p, tfs_z=tfs_z,
                      mirostat_mode=mirostat_mode, stopping_criteria=stopping_criteria,
                      logits_processor=logits_processor)
        from ..text.constrain import grammar_for

        self._need_model()
        prompt_tokens = self._prompt_tokens(prompt)
        self._check_fits(prompt_tokens)
        g = grammar_for(grammar=getattr(grammar, "_grammar", grammar))
        sampler = self._sampler(seed, g, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, logit_bias=logit_bias)
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion",
                "created": int(time.time()), "model": model or self.model_path}
        echo_text = (prompt if isinstance(prompt, str) else None) if echo else False
        run = self._run(prompt_tokens, sampler, max_tokens, stop, logprobs, echo_text)
        if stream:
            return shapes.completion_stream(head, run)
        return shapes.completion_result(head, run)

    __call__ = create_completion

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
                    rows = self._model.logits(prompt_tokens)     # leaves the prompt cached
                    text, lp = shapes.echo_logprobs(rows, prompt_tokens, n_logprobs,
                                                    self._tokenizer.stream_decoder(),
                                                    self._token_str)
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
                    ts = piece.tokens
                    lp = shapes.logprobs_obj(
                        self._token_str, [t.id for t in ts], [base + t.offset for t in ts],
                        [t.logprob for t in ts],
                        [shapes.top_dict(self._token_str, t.logprob, t.id, t.top) for t in ts])
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
        ends the reply even where the vocabulary does not mark it end-of-generation. `tools` are
        rendered by the template and calls parsed back into `tool_calls` (text.tools);
        `response_format` (json_object / json_schema) and `grammar` constrain the reply."""
        from ..text.tools import legacy_functions, plan_chat

        check_neutral(typical_p=typical_p, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                      logits_processor=logits_processor)
        if functions is not None or function_call is not None:
            if tools is not None or tool_choice is not None:
                raise ValueError("give tools / tool_choice or the older functions / "
                                 "function_call, not both")
            tools, tool_choice = legacy_functions(functions, function_call)
        self._need_model()
        plan = plan_chat(self.chat_template, self._tokenizer, messages, tools, tool_choice,
                         response_format, getattr(grammar, "_grammar", grammar))
        self._check_fits(plan.prompt)
        end = plan.end_ids
        sampler = self._sampler(seed, plan.grammar, end, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, logit_bias=logit_bias)
        n_lp = (top_logprobs or 0) if logprobs else None
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion",
                "created": int(time.time()), "model": model or self.model_path}
        run = self._run(plan.prompt, sampler, max_tokens, stop, n_lp, echo=False,
                        extra_stop=plan.stop, extra_eog=end)
        if stream:
            return shapes.chat_stream(head, run, plan)
        return shapes.chat_result(head, run, plan, bool(logprobs))

"""CLEX at inference against the official model's math (docs/clex.md, "Exactness"), written here
in PyTorch: torchdiffeq's rk4 solve of the ODE in float32, rotate_half RoPE on the Hugging Face
weights, keys cached *before* RoPE and rotated with the current table at every step, t = min(ceil(N/L), M).

The model is a tiny CLEX checkpoint with a non-zero ODE network (tests/hfgen.py), converted to GGUF
by clexrt's converter: L = 32, max_factor = 8, so 8L = 256 tokens stay quick.

hfgen's ODE network is halved here (STRENGTH): at t = 8 it still moves log-frequencies by up to
1.1 from NTK scaling (more than a trained CLEX model does), the largest frequency reaching 2.3
rad/token. At hfgen's full strength the first frequency reaches 5 at t = 8, and this random model's
logits at 8L then move by 1.6e-3 between the converter's baked table and torch's, which differ by 7
float32 ulps (1e-6 relative, the converter's tolerance: the order of summation in the ODE's small
matmuls); the runtime given torch's own tables agrees with the reference to 1.4e-5 there. No
float32 solver controls that noise, so the end-to-end 1e-3 is asserted on the halved network.

The checkpoint here says `log_scale: false`, so these tests are the math without it;
tests/test_log_scale.py runs the same reference with the official flash path's log_scale.
"""
import dataclasses
import json
import math

import numpy as np
import pytest

import clexref
import hfgen
from clexrt import Model
from clexrt.convert import convert_hf
from clexrt.errors import ContextFullError, ModelError

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")   # clexref solves the official ODE with it

pytestmark = pytest.mark.torch

L, M = 32, 8
SPEC = dataclasses.replace(hfgen.CLEX, n_ctx=L, max_factor=M)
TOL = 1e-3
STRENGTH = 0.5
DOWN = "model.clex_layer.proj_func.ode_down_proj"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build(tmp_path_factory.mktemp("clexrt"), log_scale=False)


def build(root, log_scale: bool):
    """The halved-network checkpoint, its config.json's log_scale set, converted to F32:
    (gguf path, weights, Official)."""
    original = hfgen.weights

    def weights(spec, n_vocab):
        w = original(spec, n_vocab)
        w[DOWN] = w[DOWN] * np.float32(STRENGTH)
        return w

    hfgen.weights = weights
    try:
        w = hfgen.make_checkpoint(root / "hf", SPEC)
    finally:
        hfgen.weights = original
    cfg_path = root / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["log_scale"] = log_scale
    cfg_path.write_text(json.dumps(cfg))
    path = root / f"clex-f32-{'log' if log_scale else 'plain'}.gguf"
    convert_hf(root / "hf", path, outtype="f32", progress=False)
    return str(path), w, Official(w, SPEC)


# ---------------------------------------------------------------------------------------------
# The official model, in PyTorch
class Official:
    def __init__(self, w, spec):
        self.spec = spec
        self.hd = spec.head_dim
        self.w = {k: torch.from_numpy(np.asarray(v, np.float32)).double() for k, v in w.items()}
        self.tables = self._solve(w)        # t -> float32 inverse frequencies

    def _solve(self, w):
        return clexref.official_tables(w["model.clex_layer.inv_freq"], w["model.clex_layer.proj_func.ode_up_proj"],
                                       w["model.clex_layer.proj_func.ode_down_proj"], self.spec.act, 0.01,
                                       range(1, self.spec.max_factor + 1))

    def t_of(self, n):
        return min(-(-n // self.spec.n_ctx), self.spec.max_factor)

    def new_cache(self):
        return {"k": [torch.zeros(0, self.spec.n_head_kv, self.hd, dtype=torch.float64)
                      for _ in range(self.spec.n_layer)],
                "v": [torch.zeros(0, self.spec.n_head_kv, self.hd, dtype=torch.float64)
                      for _ in range(self.spec.n_layer)]}

    def step(self, cache, ids, log_scale=False):
        """Append ids to the cache (keys before RoPE); every key rotated with the table of the
        new total length; returns the logits of ids [len(ids), V]. log_scale: the official flash
        path's q *= log(kv_seq_len) / log(max_position_embeddings), kv_seq_len = the new total."""
        s, w, hd = self.spec, self.w, self.hd
        n_past = cache["k"][0].shape[0]
        n = len(ids)
        N = n_past + n
        inv = torch.from_numpy(self.tables[self.t_of(N)])
        freqs = torch.outer(torch.arange(N, dtype=torch.float32), inv)      # float32, as official
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos().double(), emb.sin().double()

        def rot(x, pos):     # x [T, heads, hd] at positions pos
            x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
            return x * cos[pos, None, :] + torch.cat([-x2, x1], -1) * sin[pos, None, :]

        def rms(x, g):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps) * g

        qpos = torch.arange(n_past, N)
        mask = torch.full((n, N), float("-inf"), dtype=torch.float64).triu(n_past + 1)
        rep = s.n_head // s.n_head_kv
        x = w["model.embed_tokens.weight"][torch.as_tensor(ids)]
        for i in range(s.n_layer):
            p = f"model.layers.{i}."
            h = rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(n, s.n_head, hd)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(n, s.n_head_kv, hd)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(n, s.n_head_kv, hd)
            cache["k"][i] = torch.cat([cache["k"][i], k])
            cache["v"][i] = torch.cat([cache["v"][i], v])
            kr = rot(cache["k"][i], torch.arange(N)).repeat_interleave(rep, 1)
            vv = cache["v"][i].repeat_interleave(rep, 1)
            qr = rot(q, qpos)
            if log_scale:       # as modeling_llama_clex.py's LlamaFlashAttention2 writes it
                log_n = (torch.log(torch.tensor(N * 1.0)).to(dtype=qr.dtype) /
                         torch.log(torch.tensor(s.n_ctx)).to(dtype=qr.dtype))
                qr = qr * log_n
            att = torch.softmax(torch.einsum("thd,shd->hts", qr, kr) / math.sqrt(hd) + mask, -1)
            o = torch.einsum("hts,shd->thd", att, vv).reshape(n, s.n_head * hd)
            x = x + o @ w[p + "self_attn.o_proj.weight"].T
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            x = x + (torch.nn.functional.silu(g) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = rms(x, w["model.norm.weight"])
        return (x @ w["lm_head.weight"].T).numpy()

    def full(self, ids, log_scale=False):
        return self.step(self.new_cache(), ids, log_scale)


def ids_for(n, seed=0, vocab=None):
    return np.random.default_rng(seed).integers(3, vocab, n)


# ---------------------------------------------------------------------------------------------
def test_tables_are_the_official_solve(ckpt):
    path, _, ref = ckpt
    with Model(path, clex_mode="ceil") as m:
        assert m.n_ctx == L * M                        # n_ctx = 0: L x max_factor
        assert m.rope_state["method"] == "clex"
        for t in range(1, M + 1):
            ours = m.schedule.table_for(t).table
            np.testing.assert_allclose(ours, ref.tables[t], rtol=2e-6, atol=0)
        # the network matters: t = M is far from NTK scaling with base 10000 (2M-1)^(d/(d-2))
        d = SPEC.head_dim
        ntk = ref.tables[1] * (2.0 * M - 1) ** (-np.arange(d // 2) / (d // 2 - 1))
        assert np.abs(np.log(ref.tables[M]) - np.log(ntk)).max() > 1.0
        assert ref.tables[M].max() < 2.5


@pytest.mark.parametrize("n", [L // 2, L, L + 1, 2 * L, 3 * L + 5, 8 * L])
def test_full_forward_ceil_equals_official(ckpt, n):
    path, _, ref = ckpt
    with Model(path, clex_mode="ceil") as m:
        ids = ids_for(n, seed=n, vocab=m.n_vocab)
        ours = m.logits(ids)
        assert m.rope_state["t"] == ref.t_of(n)
    want = ref.full(ids)
    assert np.abs(ours - want).max() < TOL
    # and the reference is the one hfgen's independent transformers-style forward gives
    if n == 3 * L + 5:
        inv = ref.tables[ref.t_of(n)].astype(np.float64)
        np.testing.assert_allclose(hfgen.torch_forward(ckpt[1], SPEC, ids, inv_freq=inv), want, atol=TOL)


def _decode(path, policy, ids, n0, mode="ceil"):
    """Prefill ids[:n0] in one eval, then one token at a time: the logits after each length."""
    out = {}
    with Model(path, clex_mode=mode, kv_policy=policy) as m:
        out[n0] = m.eval(ids[:n0])
        for n in range(n0 + 1, len(ids) + 1):
            out[n] = m.eval(ids[n - 1:n])
        state = m.rope_state
    return out, state


def test_decode_recompute_equals_full_forward_every_step(ckpt):
    path, _, ref = ckpt
    ids = ids_for(4 * L + 6, seed=7, vocab=ref.w["lm_head.weight"].shape[0])
    n0 = L - 12
    got, state = _decode(path, "recompute", ids, n0)
    assert state["table_changes"] == 4 and state["t"] == 5 and state["kv_policy"] == "recompute"
    worst = max(np.abs(got[n] - ref.full(ids[:n])[-1]).max() for n in got)
    assert worst < TOL


def test_decode_rerotate_equals_official_cached_decoding(ckpt):
    path, _, ref = ckpt
    ids = ids_for(4 * L + 6, seed=7, vocab=ref.w["lm_head.weight"].shape[0])
    n0 = L - 12
    got, state = _decode(path, "rerotate", ids, n0)
    assert state["table_changes"] == 4
    cache = ref.new_cache()
    want = {n0: ref.step(cache, ids[:n0])[-1]}
    for n in range(n0 + 1, len(ids) + 1):
        want[n] = ref.step(cache, ids[n - 1:n])[-1]
    assert max(np.abs(got[n] - want[n]).max() for n in got) < TOL
    # cached decoding is not the full forward once a multiple of L is crossed (CLEX.md)
    assert np.abs(want[2 * L + 1] - ref.full(ids[:2 * L + 1])[-1]).max() > 10 * TOL


def test_continuous_recompute_equals_full_forward_at_the_new_table(ckpt):
    path, _, ref = ckpt
    ids = ids_for(2 * L + 3, seed=3, vocab=ref.w["lm_head.weight"].shape[0])
    with Model(path, clex_mode="continuous", kv_policy="recompute", rope_steps=4) as m:
        m.eval(ids[:L])
        seen = set()
        for n in range(L + 1, len(ids) + 1):
            last = m.eval(ids[n - 1:n])
            t = m.rope_state["t"]
            assert t == min(max(math.ceil(n * 4 / L) / 4, 1), M)
            seen.add(t)
            if n in (L + 1, L + L // 4 + 1, 2 * L + 3):
                inv = m.rope_table.astype(np.float64)
                want = hfgen.torch_forward(ckpt[1], SPEC, ids[:n], inv_freq=inv)[-1]
                assert np.abs(last - want).max() < TOL
        assert seen == {1.25, 1.5, 1.75, 2.0, 2.25}
        assert m.rope_state["table_changes"] == 5


def test_past_the_clex_range(ckpt):
    path, _, ref = ckpt
    ids = ids_for(L * M + 8, seed=5, vocab=ref.w["lm_head.weight"].shape[0])
    with Model(path, clex_mode="ceil") as m:
        m.eval(ids[:L * M])
        with pytest.raises(ContextFullError, match="L x max_factor"):
            m.eval(ids[L * M:L * M + 1])
        assert m.n_past == L * M                     # the cache is untouched
    with Model(path, clex_mode="ceil", context_shift=True, n_keep=4) as m:
        m.eval(ids[:L * M])
        before = m.tokens
        last = m.eval(ids[L * M:L * M + 1])
        assert np.isfinite(last).all()
        kept = (L * M - 4) // 2
        assert m.n_past == 4 + (L * M - 4 - kept) + 1
        np.testing.assert_array_equal(m.tokens[:4], before[:4])
        np.testing.assert_array_equal(m.tokens[4:-1], before[4 + kept:])
        assert m.rope_state["t"] == ref.t_of(m.n_past)     # t follows the shorter sequence down
    with pytest.raises(ModelError, match="kv_policy"):
        Model(path, kv_policy="sometimes")


def test_reserve_makes_a_chunked_prompt_the_one_forward_prompt(ckpt):
    path, _, ref = ckpt
    ids = ids_for(3 * L + 9, seed=11, vocab=ref.w["lm_head.weight"].shape[0])
    n0 = 2 * L + 20
    with Model(path, clex_mode="ceil", kv_policy="rerotate") as m:
        m.reserve(n0)
        for i in range(0, n0, 16):                # a prompt fed 16 tokens at a time
            last = m.eval(ids[i:min(i + 16, n0)])
        assert m.rope_state["table_changes"] == 0 and m.rope_state["t"] == 3
        np.testing.assert_allclose(last, ref.full(ids[:n0])[-1], atol=TOL)
        cache = ref.new_cache()
        ref.step(cache, ids[:n0])
        for n in range(n0 + 1, len(ids) + 1):     # then decoding as the official code does
            last = m.eval(ids[n - 1:n])
            want = ref.step(cache, ids[n - 1:n])[-1]
            assert np.abs(last - want).max() < TOL
        assert m.rope_state["table_changes"] == 1
        m.truncate(10)
        m.eval(ids[10:12])
        assert m.rope_state["t"] == 1                  # truncate forgets the reservation


def test_session_prefill_is_one_forward_across_chunks(ckpt):
    """Generation's chunked prefill (16 tokens per eval here) crossing 2L gives the official
    one-forward prompt: no table change between chunks."""
    from clexrt.engine.session import Session
    path, _, ref = ckpt
    ids = ids_for(2 * L + 20, seed=12, vocab=ref.w["lm_head.weight"].shape[0])
    with Model(path, clex_mode="ceil", kv_policy="rerotate") as m:
        s = Session(m, chunk=16)
        last = s.prefill(ids)
        assert m.rope_state["table_changes"] == 0 and m.rope_state["t"] == 3
        np.testing.assert_allclose(last, ref.full(ids)[-1], atol=TOL)

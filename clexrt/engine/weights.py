"""The C core's view of a GGUF model: clex_hparams from HParams, and clex_layer structs whose
tensors point into the file mapping (nothing is copied). Which tensors a layer has comes from the
architecture's table (clexrt.gguf.archs); absent optional ones stay NULL, which the forward pass
reads as "no bias", "no norm".
"""
from __future__ import annotations

from ..gguf import GGUFFile, HParams
from ..gguf.archs import arch_spec, layer_tensors
from .native import FFN_KINDS, NORM_KINDS, ROPE_LAYOUTS, check, ffi, lib

__all__ = ["NativeWeights"]


class NativeWeights:
    """Builds the clex_model of a mapped GGUF; keeps every cffi object it points to alive."""

    def __init__(self, g: GGUFFile):
        self.g = g
        self._base = ffi.from_buffer("char[]", g.buffer)
        self._keep: list = []

    def tensor(self, name: str):
        """A clex_tensor over the mapped bytes of GGUF tensor `name`."""
        t = self.g.tensors[name]
        ct = ffi.new("clex_tensor *")
        ct.type = t.ggml_type
        ct.n_dims = len(t.shape)
        for i, d in enumerate(t.shape):
            ct.ne[i] = d
        ct.data = self._base + t.offset
        ct.nbytes = t.nbytes
        cname = ffi.new("char[]", name.encode())
        self._keep += [cname, ct]
        ct.name = cname
        return ct

    def optional(self, name: str):
        return self.tensor(name) if name in self.g.tensors else ffi.NULL

    def row_views(self, name: str, sizes: tuple[int, ...]) -> list:
        """Consecutive row ranges of a matrix (or pieces of a vector) as tensors of their own:
        a fused attn_qkv is q's rows, then k's, then v's (the order llama.cpp's converter writes)."""
        t = self.g.tensors[name]
        whole = self.tensor(name)
        per = t.nbytes // (t.shape[1] if len(t.shape) == 2 else t.shape[0])
        views, start = [], 0
        for n in sizes:
            v = ffi.new("clex_tensor *", whole[0])
            if len(t.shape) == 2:
                v.ne[1] = n
            else:
                v.ne[0] = n
            v.data = whole.data + start * per
            v.nbytes = n * per
            self._keep.append(v)
            views.append(v)
            start += n
        return views

    def hparams(self, hp: HParams):
        return ffi.new("clex_hparams *", dict(
            n_vocab=hp.n_vocab, n_embd=hp.n_embd, n_layer=hp.n_layer, n_head=hp.n_head,
            n_head_kv=hp.n_head_kv, head_dim=hp.head_dim, n_rot=hp.n_rot, n_ff=hp.n_ff, rms_eps=hp.eps,
            norm_kind=NORM_KINDS[hp.norm], rope_layout=ROPE_LAYOUTS[hp.rope_layout], ffn_kind=FFN_KINDS[hp.ffn],
            parallel_residual=int(hp.parallel_residual), n_expert=hp.n_expert, n_expert_used=hp.n_expert_used,
            embd_scale=hp.embd_scale, attn_scale=hp.attn_scale, attn_softcap=hp.attn_softcap,
            final_softcap=hp.final_softcap, n_rope_sets=hp.n_rope_sets))

    def layers(self, hp: HParams):
        spec = arch_spec(hp.arch)
        tensors = layer_tensors(spec, hp.n_expert, "blk.0.attn_qkv.weight" in self.g.tensors)
        sizes = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim)
        fused = {"wqkv": ("wq", "wk", "wv"), "bqkv": ("bq", "bk", "bv")}
        layers = ffi.new("clex_layer[]", hp.n_layer)
        self._keep.append(layers)
        for i in range(hp.n_layer):
            L = layers[i]
            for lt in tensors:
                name = f"blk.{i}.{lt.name}"
                if name not in self.g.tensors:
                    continue
                if lt.field in fused:
                    for field, v in zip(fused[lt.field], self.row_views(name, sizes)):
                        setattr(L, field, v[0])
                else:
                    setattr(L, lt.field, self.tensor(name)[0])
            L.n_swa = hp.n_swa if hp.layer_swa(i) else 0
            L.rope_set = hp.layer_rope_set(i)
        return layers

    def create_model(self, hp: HParams, where: str):
        """The clex_model (freed with the returned cffi object)."""
        # tied embeddings: no output.weight, the C core projects with token_embd.weight
        out = self.tensor("output.weight") if not hp.tied_embeddings else ffi.NULL
        pm = ffi.new("clex_model **")
        check(lib.clex_model_create(self.hparams(hp), self.tensor("token_embd.weight"),
                                    self.tensor("output_norm.weight"), self.optional("output_norm.bias"),
                                    out, self.optional("output.bias"), self.layers(hp), pm), where=where)
        return ffi.gc(pm[0], lib.clex_model_free)

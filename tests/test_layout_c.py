"""The C core's shape (issue 12): no function longer than 80 lines, and the architecture as data
in clex_hparams (zero is LLaMA; every field's range checked; the values not implemented yet
refused with CLEX_E_UNSUPPORTED and a message naming the field and value)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clexrt.engine import native
from clexrt.engine.native import ffi, lib

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "c_func_lengths.py"


def test_no_c_function_is_over_80_lines():
    out = subprocess.run([sys.executable, str(TOOL), "--top", "5"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 over 80" in out.stdout


def test_the_length_tool_sees_what_it_must(tmp_path):
    """Long functions, functions spelled inside macros, and no false ones from braces in
    comments, strings, initializers or preprocessor lines."""
    long_body = "\n".join(f"    x += {i};" for i in range(81))
    (tmp_path / "a.c").write_text(
        "/* { not code } */\nstatic const int t[] = {1, 2};\n#if X\n#endif\n"
        f"int long_one(int x) {{\n{long_body}\n    return x;\n}}\n"
        "const char *s(void) { return \"}{\"; }\n"
        "#define MAKE(SFX) \\\n    static int f_##SFX(int a) { \\\n        return a; \\\n    }\n"
        "struct point { int x, y; };\n")
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert "82" in lines[0] and "long_one" in lines[0] and "over 80" in lines[0]
    assert any("f_##SFX" in line for line in lines) and any(line.endswith(" s") for line in lines)
    assert "3 functions in 1 files; longest 82 lines; 1 over 80" in out.stdout


# ---------------------------------------------------------------------------- architecture fields

def _tiny(**arch):
    """clex_model_create on a 1-layer F32 model with these architecture fields; (rc, message)."""
    E, V, F, D = 8, 4, 8, 4
    keep = []

    def t(*shape):
        a = np.ones(shape[::-1], np.float32)
        keep.append(a)
        ct = ffi.new("clex_tensor *", dict(type=lib.CLEX_TYPE_F32, n_dims=len(shape),
                                          data=ffi.cast("void *", a.ctypes.data), nbytes=a.nbytes))
        for i, n in enumerate(shape):
            ct.ne[i] = n
        keep.append(ct)
        return ct

    hp = ffi.new("clex_hparams *", dict(n_vocab=V, n_embd=E, n_layer=1, n_head=2, n_head_kv=1, head_dim=D,
                                       n_rot=D, n_ff=F, rms_eps=1e-5, **arch))
    layers = ffi.new("clex_layer[]", 1)
    L = layers[0]
    L.attn_norm, L.ffn_norm = t(E)[0], t(E)[0]
    L.wq, L.wk, L.wv, L.wo = t(E, 2 * D)[0], t(E, D)[0], t(E, D)[0], t(2 * D, E)[0]
    L.w_gate, L.w_up, L.w_down = t(E, F)[0], t(E, F)[0], t(F, E)[0]
    pm = ffi.new("clex_model **")
    rc = lib.clex_model_create(hp, t(E, V), t(E), ffi.NULL, ffi.NULL, ffi.NULL, layers, pm)
    if rc == 0:
        lib.clex_model_free(pm[0])
    else:
        assert pm[0] == ffi.NULL
    return rc, native.last_error()


def test_zero_is_llama():
    assert _tiny() == (0, _tiny()[1])
    assert _tiny(norm_kind=lib.CLEX_NORM_RMS, rope_layout=lib.CLEX_ROPE_ADJACENT, ffn_kind=lib.CLEX_FFN_SWIGLU,
                 parallel_residual=0, n_expert=0, n_expert_used=0)[0] == 0


@pytest.mark.parametrize("field, value", [
    ("norm_kind", 1), ("rope_layout", 1), ("ffn_kind", 1), ("ffn_kind", 2), ("parallel_residual", 1),
    ("n_rope_sets", 2), ("embd_scale", 3.0), ("attn_scale", 0.1), ("attn_softcap", 50.0), ("final_softcap", 30.0)])
def test_every_named_value_runs(field, value):
    rc, msg = _tiny(**{field: value})
    assert rc == 0, msg


def test_mixture_of_experts_needs_its_tensors():
    rc, msg = _tiny(n_expert=8, n_expert_used=2)
    assert rc == lib.CLEX_E_INVALID and msg == "layer 0: tensor 'ffn_gate_inp' is missing"


@pytest.mark.parametrize("arch", [
    dict(norm_kind=2), dict(norm_kind=-1), dict(rope_layout=2), dict(ffn_kind=3), dict(ffn_kind=-5),
    dict(parallel_residual=2), dict(n_expert=-1), dict(n_expert_used=1), dict(n_expert=4),
    dict(n_expert=4, n_expert_used=5), dict(n_expert=2000, n_expert_used=1), dict(embd_scale=-1.0),
    dict(attn_scale=float("inf")), dict(attn_softcap=float("nan")), dict(final_softcap=-2.0),
    dict(n_rope_sets=3), dict(n_rope_sets=-1)])
def test_out_of_range_is_invalid(arch):
    rc, msg = _tiny(**arch)
    assert rc == lib.CLEX_E_INVALID, msg
    assert next(iter(arch)) in msg

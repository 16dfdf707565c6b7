"""RoPE scaling as data: every method is a pure function that returns a table of inverse
frequencies for a length, and the C core rotates with whatever table it is given.

    methods.py   none / linear / NTK / YaRN tables, the base table, the shared NTK factor
    ode.py       the CLEX ODE, solved as the official code solves it (float32 3/8-rule RK4)
    tables.py    the clex.* GGUF keys: baked from an ODE (bake_clex), read and checked (read_clex)
    spline.py    CLEX tables between the baked grid points
    schedule.py  length N -> factor t -> table (RopeSchedule)

The converter and the runtime both import these; there is one implementation of each.
"""
from .methods import (CLEX_NTK_BASE, DeclaredRope, base_inv_freq, declared_rope, gguf_inv_freq,
                      linear_inv_freq, ntk_inv_freq, phase_error, yarn_attn_factor, yarn_inv_freq)
from .schedule import (DEFAULT_STEPS, METHODS, MIN_STEP_TOKENS, MODES, RopeChoice, RopeSchedule,
                       default_steps, describe_state)
from .spline import ClexSpline
from .tables import ClexTables, bake_clex, read_clex

__all__ = ["CLEX_NTK_BASE", "DeclaredRope", "declared_rope", "base_inv_freq", "gguf_inv_freq", "linear_inv_freq", "ntk_inv_freq",
           "phase_error", "yarn_attn_factor", "yarn_inv_freq", "DEFAULT_STEPS", "METHODS",
           "MIN_STEP_TOKENS", "MODES", "RopeChoice", "RopeSchedule", "default_steps",
           "describe_state", "ClexSpline", "ClexTables", "bake_clex", "read_clex"]

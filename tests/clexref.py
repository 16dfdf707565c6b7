"""The official CLEX frequency ODE in PyTorch (CLEX/clex_layer.py's math, solved with torchdiffeq's
rk4 at the layer's time_dt): the independent reference the tests hold clexrt's baked tables to.
torch and torchdiffeq are imported when called, so importing this module needs neither."""
import numpy as np


def official_tables(inv_freq, up, down, act: str, time_dt: float, ts) -> dict[int, np.ndarray]:
    """t -> float32 inverse frequencies exp(y(t)) for each integer t in ts (t = 1: inv_freq as is),
    y' = act((y + log n(t)) @ up) @ down + n'(t) / n(t), n the NTK-by-(2t-1) frequencies"""
    import torch
    import torchdiffeq

    inv = torch.from_numpy(np.asarray(inv_freq, np.float32))
    up = torch.from_numpy(np.asarray(up, np.float32))
    down = torch.from_numpy(np.asarray(down, np.float32))
    f = torch.tanh if act == "tanh" else torch.nn.functional.silu
    d = 2 * inv.numel()
    index = torch.arange(0, d, 2, dtype=torch.float32)

    class ODE(torch.nn.Module):
        def forward(self, t, y):
            a = 1 if t < 1 else 2 * t - 1
            n = 1.0 / ((10000 * a ** (d / (d - 2))) ** (index / d))
            dn = -2 * index / (d - 2) / (10000 ** (index / d) * a ** (index / (d - 2) + 1))
            return f((y + torch.log(n)) @ up) @ down + dn / n

    times = torch.arange(1, max(ts) + 1, dtype=torch.float32)
    with torch.no_grad():
        sol = torchdiffeq.odeint(ODE(), torch.log(inv), times, method="rk4", options={"step_size": time_dt})
    return {t: (inv.numpy().copy() if t == 1 else torch.exp(sol[t - 1]).numpy()) for t in ts}

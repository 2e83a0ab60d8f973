"""Fitting per-block times to measured step times (the timing half of `fedquad profile`).

Pure numpy, beside the cost model whose step-time equation it inverts:
    step = base + sum_trainable backward_l + sum_quantized quant_l[bits]
(costmodel/model.py). diagnostics/profile.py measures the steps with torch and calls this.
"""

from __future__ import annotations

import numpy as np

from fedquad.costmodel.profile import PROFILE_BITS
from fedquad.plan import ClientPlan


def nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares, min ||Ax - b|| subject to x >= 0 (Lawson and Hanson's
    active-set method). Small dense problems only: a few dozen unknowns."""
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(np.float64).eps * max(A.shape) * max(1.0, float(np.abs(A).sum(axis=0).max()))
    for _ in range(3 * n + 10):
        w = A.T @ (b - A @ x)
        if passive.all() or not (w[~passive] > tol).any():
            break
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (s[passive] > tol).all():
                break
            shrink = passive & (s <= tol)
            alpha = float(np.min(x[shrink] / (x[shrink] - s[shrink])))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                s = np.zeros(n)
                break
        x = s
    return np.maximum(x, 0.0)


def fit_step_times(plans: list[ClientPlan], measured_s: list[float], num_blocks: int):
    """Fit base, backward_l and quant_l[bits] (all >= 0) to median step times of `plans`,
    minimising the relative error. Returns (base, backward, {bits: quant}, fitted_s)."""
    L = num_blocks
    cols = 1 + L + L * len(PROFILE_BITS)
    A = np.zeros((len(plans), cols))
    for r, plan in enumerate(plans):
        A[r, 0] = 1.0
        for i in plan.trainable_blocks(L):
            A[r, 1 + i] = 1.0
        if plan.quant_layers:
            k = PROFILE_BITS.index(plan.bits)
            for i in plan.quantized_blocks(L):
                A[r, 1 + L + k * L + i] = 1.0
    t = np.asarray(measured_s, dtype=np.float64)
    weight = 1.0 / np.maximum(t, 1e-9)
    x = nnls(A * weight[:, None], t * weight)
    fitted = A @ x
    backward = [float(v) for v in x[1:1 + L]]
    quant = {bits: [float(v) for v in x[1 + L + k * L:1 + L + (k + 1) * L]] for k, bits in enumerate(PROFILE_BITS)}
    return float(x[0]), backward, quant, [float(v) for v in fitted]

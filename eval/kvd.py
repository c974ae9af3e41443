"""Kernel video distance (KVD): the unbiased MMD² between two feature sets with the cubic polynomial kernel

    k(a, b) = (a·b / d + 1)³

as the Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", 2018) and torchmetrics'
`KernelInceptionDistance` compute it, on video features (I3D or the domain detector) instead of Inception ones.

    KVD = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)

Each term is an unbiased U-statistic, so E[KVD] is the population MMD² at any sample size: 0 for equal
distributions (single estimates can be negative, and are reported as they are, not clamped), and no n < d bias as
the Fréchet distance has. That is why the gate should lean on it at our suite sizes (42..200 clips, 400-d I3D).

Scale: reported raw, in the kernel's own units (no ×1000 as KID tables often print); the kernel's 1/d keeps it
comparable across detectors of different feature dimension only roughly, so compare KVDs of one detector.

Matched sets. When row i of x and row i of y come from the same prompt and seed (student vs teacher), the cross
term's diagonal k(x_i, y_i) is correlated with the pairing, and the estimate above (the KID/torchmetrics one) is no
longer unbiased for the MMD² between the two distributions: identical sets give a negative value, not 0.
`matched=True` drops that diagonal, −2/(n(n−1)) Σ_{i≠j} k(x_i, y_j), which is the U-statistic of the pairs and
unbiased whether or not the rows are paired; identical sets then give exactly 0.

KID's block averaging (mean over random subsets of a fixed size) only bounds the cost for tens of thousands of
samples; at our n the full estimate is cheaper than that and has lower variance, so there is none here.
"""

from __future__ import annotations

import numpy as np


def _as_features(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"kvd: {what} must be a 2-D feature array [N, D], got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"kvd: {what} needs at least 2 rows for an unbiased estimate, got {arr.shape[0]}")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"kvd: {what} has {bad} NaN or infinite entries")
    return arr


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    """k(a_i, b_j) = (a_i·b_j / d + coef)^degree for all pairs, [len(a), len(b)]."""
    return (a @ b.T / a.shape[1] + coef) ** degree


def kvd(x, y, matched: bool = False, degree: int = 3, coef: float = 1.0, what: str = "kvd") -> float:
    """Unbiased MMD² of feature sets x [m, d] and y [n, d] under the polynomial kernel (a·b/d + coef)^degree: the
    cubic one by default (module docstring); JEDi (eval/jedi.py) calls it with its own degree and coef.

    `matched=True` (requires m == n) leaves out the cross pairs k(x_i, y_i) of rows from the same prompt and seed.
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{what}: x and y have different feature dimensions, {x.shape[1]} and {y.shape[1]}")
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = (polynomial_kernel(a, b, degree, coef) for a, b in ((x, x), (y, y), (x, y)))
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    if matched:
        if m != n:
            raise ValueError(f"{what}: matched=True needs row i of x and y from the same prompt and seed, "
                             f"but x has {m} rows and y has {n}")
        cross = (k_xy.sum() - np.trace(k_xy)) / (n * (n - 1))
    else:
        cross = k_xy.sum() / (m * n)
    return float(within_x + within_y - 2.0 * cross)

"""The Fréchet distance between two Gaussians fitted to feature sets (the statistic behind FID and FVD).

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^½)

Everything is float64. The trace of the matrix square root is taken without forming (Σ₁Σ₂)^½: the product of two
covariance matrices is not symmetric, and a general-purpose `sqrtm` of it is slow and can come back complex or
inaccurate when the covariances are singular (fewer clips than feature dimensions, the usual case for FVD with
400-d I3D features). Instead, with S = Σ₁^½ (symmetric, from an eigen-decomposition), Σ₁Σ₂ = S⁻¹·(S Σ₂ S)·S is
similar to the symmetric positive semi-definite matrix S Σ₂ S, so they share eigenvalues, and
tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(S Σ₂ S). Both steps are `eigh` of symmetric matrices: real eigenvalues, no imaginary parts to
discard, and round-off negatives (tiny, from singular covariances) are clamped to zero. Negatives too large to be
round-off mean an input was not a covariance matrix, and raise.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# An eigenvalue below -NEGATIVE_TOLERANCE·(largest |eigenvalue|) is not round-off: the matrix is not PSD.
NEGATIVE_TOLERANCE = 1e-6
# Asymmetry above this (relative to the largest entry) means the input is not a covariance matrix.
SYMMETRY_TOLERANCE = 1e-6


def _as_float64(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"{what}: {bad} of {arr.size} entries are NaN or infinite")
    return arr


def _check_covariance(sigma: np.ndarray, dim: int, what: str) -> None:
    if sigma.shape != (dim, dim):
        raise ValueError(f"{what}: expected shape ({dim}, {dim}) to match the mean, got {sigma.shape}")
    scale = max(float(np.abs(sigma).max()), np.finfo(np.float64).tiny)
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > SYMMETRY_TOLERANCE * scale:
        raise ValueError(f"{what}: not symmetric (max |Σ − Σᵀ| = {asymmetry:.3g}, largest entry {scale:.3g})")


def _psd_eigenvalues(matrix: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clamped at 0) and eigenvectors of a symmetric PSD matrix; raises if it is clearly not PSD."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    largest = max(float(np.abs(eigenvalues).max(initial=0.0)), np.finfo(np.float64).tiny)
    smallest = float(eigenvalues.min(initial=0.0))
    if smallest < -NEGATIVE_TOLERANCE * largest:
        raise ValueError(f"{what}: not positive semi-definite (eigenvalue {smallest:.3g}, "
                         f"largest {largest:.3g}); is it really a covariance matrix?")
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁Σ₂)^½) for symmetric PSD Σ₁, Σ₂, via eigenvalues of Σ₁^½ Σ₂ Σ₁^½ (see the module docstring)."""
    eigenvalues, eigenvectors = _psd_eigenvalues(sigma1, "sigma1")
    sqrt_sigma1 = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    inner_eigenvalues, _ = _psd_eigenvalues(inner, "sigma1^1/2 · sigma2 · sigma1^1/2")
    return float(np.sqrt(inner_eigenvalues).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Accepts numpy arrays or torch tensors. Clamped at 0: the exact value is ≥ 0, and round-off on identical
    inputs may otherwise give a tiny negative number.
    """
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be 1-D and the same length, got shapes {mu1.shape} and {mu2.shape}")
    sigma1, sigma2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    _check_covariance(sigma1, mu1.shape[0], "sigma1")
    _check_covariance(sigma2, mu1.shape[0], "sigma2")
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(distance), 0.0)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64 numpy) of a feature set [N, D].

    Unbiased (N − 1) as in pytorch-fid and fvd-comparison's `np.cov`. With N < D the covariance is singular; the
    distance is still defined but is a noisy, biased estimate, so this warns, naming N and D.
    """
    feats = _as_float64(features, "features")
    if feats.ndim != 2:
        raise ValueError(f"features: expected a 2-D array [N, D], got shape {feats.shape}")
    n, d = feats.shape
    if n < 2:
        raise ValueError(f"features: a covariance needs at least 2 samples, got N={n}")
    if n < d:
        warnings.warn(f"feature_stats: only N={n} samples for D={d} feature dimensions; the covariance is "
                      f"singular and the Fréchet distance is a high-variance, biased estimate", stacklevel=2)
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance_of_features(x, y) -> float:
    """`frechet_distance(*feature_stats(x), *feature_stats(y))` for feature sets x [N, D] and y [M, D], computed
    in the N × M space when both sets have no more rows than dimensions (the usual FVD case with I3D's 400-d
    features, and the jackknife's many leave-out evaluations), and from a Cholesky factor when both have more
    (`_frechet_distance_full_rank`: the toy suite's 168 clips of 128-d features). The N × M form: with centred
    features X, Y and the (N − 1), (M − 1) covariances, tr Σ_x = ‖X‖²_F/(N − 1), and the non-zero eigenvalues of Σ_x Σ_y are those of (X Yᵀ)(X Yᵀ)ᵀ/((N − 1)(M − 1)),
    so tr((Σ_x Σ_y)^½) is the sum of the singular values of X Yᵀ over √((N − 1)(M − 1)). Same number to round-off
    (tests/eval/test_intervals.py), an N × M SVD instead of two D × D eigen-decompositions."""
    xs, ys = _as_float64(x, "x"), _as_float64(y, "y")
    if xs.ndim != 2 or ys.ndim != 2 or xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must be [N, D] and [M, D] with the same D, got shapes {xs.shape} and {ys.shape}")
    (n, d), m = xs.shape, ys.shape[0]
    if min(n, m) > d:
        fast = _frechet_distance_full_rank(xs, ys)
        if fast is not None:
            return fast
    if max(n, m) > d:
        return frechet_distance(*feature_stats(xs), *feature_stats(ys))
    if min(n, m) < 2:
        raise ValueError(f"features: a covariance needs at least 2 samples, got N={n} and M={m}")
    warnings.warn(f"feature_stats: only N={min(n, m)} samples for D={d} feature dimensions; the covariance is "
                  f"singular and the Fréchet distance is a high-variance, biased estimate", stacklevel=2)
    mu_x, mu_y = xs.mean(axis=0), ys.mean(axis=0)
    xc, yc = xs - mu_x, ys - mu_y
    diff = mu_x - mu_y
    trace_sqrt = float(np.linalg.svd(xc @ yc.T, compute_uv=False).sum()) / np.sqrt((n - 1) * (m - 1))
    distance = diff @ diff + np.sum(xc * xc) / (n - 1) + np.sum(yc * yc) / (m - 1) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)


def _frechet_distance_full_rank(xs: np.ndarray, ys: np.ndarray) -> float | None:
    """The Fréchet distance of two feature sets with more rows than dimensions (full-rank covariances), or None
    when Σ_x is not numerically positive definite (then the eigen path above, which tolerates singular ones).

    With the Cholesky factor Σ_x = L Lᵀ, Σ_x Σ_y = L (Lᵀ Σ_y L) L⁻¹ is similar to the symmetric PSD Lᵀ Σ_y L, so
    tr((Σ_x Σ_y)^½) is the sum of the square roots of its eigenvalues: one Cholesky and one eigenvalues-only `eigvalsh`
    instead of two eigen-decompositions with vectors, about 3× faster at d = 128, which is what the bias-corrected
    FVD's jackknife (hundreds of leave-out evaluations per record) spends its time on. Same number to round-off
    (tests/eval/test_intervals.py)."""
    (n, d), m = xs.shape, ys.shape[0]
    mu_x, mu_y = xs.mean(axis=0), ys.mean(axis=0)
    xc, yc = xs - mu_x, ys - mu_y
    sigma_x, sigma_y = xc.T @ xc / (n - 1), yc.T @ yc / (m - 1)
    try:
        chol = np.linalg.cholesky(sigma_x)
    except np.linalg.LinAlgError:
        return None
    inner = chol.T @ sigma_y @ chol
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    largest = max(float(np.abs(eigenvalues).max(initial=0.0)), np.finfo(np.float64).tiny)
    if eigenvalues.min(initial=0.0) < -NEGATIVE_TOLERANCE * largest:
        return None  # not round-off: let the checked path say what is wrong
    diff = mu_x - mu_y
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = diff @ diff + np.trace(sigma_x) + np.trace(sigma_y) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)

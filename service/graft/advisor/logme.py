"""LogME: the maximum log evidence of a linear model on frozen features.

Reference: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained
Models for Transfer Learning", ICML 2021 (Algorithm 1). Written here from the paper's
equations, in float64 torch.

The model. For one real target vector y ∈ ℝⁿ (one column of the one-hot label matrix) and
features F ∈ ℝⁿˣᵈ, LogME assumes a Bayesian linear regression

    y = F w + ε,    w ~ N(0, α⁻¹ I_d),    ε ~ N(0, β⁻¹ I_n),

whose evidence (marginal likelihood) is Gaussian:

    p(y | F, α, β) = N(y; 0, β⁻¹ I_n + α⁻¹ F Fᵀ).

With A = α I_d + β FᵀF and the posterior mean m = β A⁻¹ Fᵀ y, its logarithm is

    L(α, β) = n/2 log β + d/2 log α − n/2 log 2π
              − β/2 ‖F m − y‖² − α/2 mᵀm − ½ log |A|.

Maximising over α, β. Let σ_1..σ_d be the eigenvalues of FᵀF (the squared singular values
of F, zero beyond its rank). Setting ∂L/∂α = ∂L/∂β = 0 (m is itself a stationary point, so
its own dependence on α, β drops out) gives MacKay's fixed point, iterated from α = β = 1:

    γ = Σ_i β σ_i / (α + β σ_i)      (the effective number of well-determined weights)
    α ← γ / mᵀm,    β ← (n − γ) / ‖F m − y‖²,

until both α and β change by less than `tol` relative to their previous value. The
evidence is then evaluated at the final (α, β), with m recomputed for them, so that the
value returned is exactly log N(y; 0, β⁻¹ I + α⁻¹ F Fᵀ) there (see `log_evidence`).

The maximum need not be interior. Features that explain nothing of y put the supremum at
α → ∞ (the prior pins w to 0, and the evidence tends to that of pure noise,
−n/2 (log(2π ‖y‖²/n) + 1)); with few samples, y may also be fit best at β → ∞. The fixed
point then walks off towards infinity geometrically while the evidence converges to its
limit, so a column also stops once its evidence no longer changes in float64.

The LogME score of features for K classes is the mean over the K one-hot columns y_k of
the maximised evidence per sample:

    LogME = 1/K Σ_k max_{α,β} L_k(α, β) / n.

Computation. One eigendecomposition of the smaller Gram matrix serves every class and
every iteration (as in the authors' reference implementation, instead of an SVD of F):

* n ≥ d: FᵀF = V diag(σ) Vᵀ. With w = Vᵀ Fᵀ y, m = V (β w / (α + β σ)), so mᵀm is a sum over
  d terms and the residual is F V (β w / (α + βσ)) − y, computed directly (no cancellation).
* n < d: F Fᵀ = U diag(σ) Uᵀ (n eigenvalues; FᵀF has the same nonzero ones, and d − n more
  zeros). With z = Uᵀ y, F m = U (β σ z / (α + β σ)), so
  ‖F m − y‖² = Σ α² z² / (α + β σ)² and mᵀm = Σ β² σ z² / (α + β σ)².

In both cases log |A| = Σ_i log(α + β σ_i) over all d dimensions: every zero eigenvalue
(rank-deficient F, or the d − n missing ones when n < d) contributes log α. Eigenvalues
that come out slightly negative from round-off are clamped to zero.

An update whose denominator is exactly zero leaves that parameter where it is (e.g.
all-zero features, where α does not matter). A target that features fit exactly with n > d
has unbounded evidence (β → ∞); the iteration stops at `max_iter` (or where round-off
floors the residual) with a large value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["kendall_tau", "log_evidence", "logme"]

_DTYPE = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)
# Relative change of the evidence between iterations below which it has stopped moving.
_FLAT = 8 * torch.finfo(_DTYPE).eps


def logme(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> float:
    """LogME score of `features` (n, d) for integer `labels` (n,): the mean over classes of
    the maximised log evidence per sample. Higher means the features suit the labels
    better. `num_classes` defaults to max(labels) + 1; every class must have a sample."""
    f = _check_features(features)
    n = f.shape[0]
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    lab = labels.to(device=f.device, dtype=torch.int64)
    lo, hi = int(lab.min()), int(lab.max())
    k = hi + 1 if num_classes is None else num_classes
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k}), got [{lo}, {hi}]")
    counts = torch.bincount(lab, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        # An all-zero target has unbounded evidence (α, β → ∞): the score would be meaningless.
        raise ValueError(f"classes without samples: {empty}")
    targets = torch.nn.functional.one_hot(lab, k).to(_DTYPE)
    evidence, _, _ = _maximise(f, targets, max_iter=max_iter, tol=tol)
    return float(evidence.mean()) / n


def log_evidence(features: torch.Tensor, targets: torch.Tensor, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) = log N(y; 0, β⁻¹ I + α⁻¹ F Fᵀ) for one real target vector y (n,),
    computed directly from the n × n covariance (Cholesky). O(n³): a reference, not for
    large n."""
    f = _check_features(features)
    y = _check_target(targets, f)
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha and beta must be positive, got {alpha}, {beta}")
    n = f.shape[0]
    cov = f @ f.T / alpha + torch.eye(n, dtype=_DTYPE, device=f.device) / beta
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, y[:, None], upper=False)
    log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return float(-0.5 * (n * _LOG_2PI + log_det + (white**2).sum()))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ_b between two paired sequences, with ties:

        τ_b = (C − D) / √((n₀ − n_a)(n₀ − n_b)),

    C / D the concordant / discordant pairs, n₀ = n(n−1)/2, n_a / n_b the pairs tied in a /
    in b. NaN when either sequence is constant (as scipy.stats.kendalltau). O(n²), meant
    for ranking a handful of models."""
    if len(a) != len(b):
        raise ValueError(f"sequences differ in length: {len(a)} != {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError("kendall_tau needs at least two pairs")
    concordant = discordant = tied_a = tied_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da = (a[i] > a[j]) - (a[i] < a[j])
            db = (b[i] > b[j]) - (b[i] < b[j])
            if da == 0:
                tied_a += 1
            if db == 0:
                tied_b += 1
            if da * db > 0:
                concordant += 1
            elif da * db < 0:
                discordant += 1
    pairs = n * (n - 1) // 2
    denominator = math.sqrt((pairs - tied_a) * (pairs - tied_b))
    return (concordant - discordant) / denominator if denominator > 0 else math.nan


def _maximise_evidence(
    features: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-3
) -> tuple[float, float, float]:
    """(max log evidence, α, β) for one real target vector (n,): the evidence is the total
    log N(y; 0, β⁻¹ I + α⁻¹ F Fᵀ) at the (α, β) the fixed point reached, not divided by n."""
    f = _check_features(features)
    y = _check_target(targets, f)
    evidence, alpha, beta = _maximise(f, y[:, None], max_iter=max_iter, tol=tol)
    return float(evidence[0]), float(alpha[0]), float(beta[0])


def _maximise(
    f: torch.Tensor, y: torch.Tensor, *, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MacKay's fixed point for every column of y (n, K) at once, each column with its own
    α, β and its own stopping point. Returns (evidence, α, β), each (K,)."""
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    n, d = f.shape
    k = y.shape[1]
    primal = n >= d
    if primal:
        sigma, v = torch.linalg.eigh(f.T @ f)
        fv = f @ v  # F V = U diag(√σ): the features in the eigenbasis, (n, d)
        proj = fv.T @ y  # w = Vᵀ Fᵀ y, (d, K)
    else:
        sigma, u = torch.linalg.eigh(f @ f.T)
        proj = u.T @ y  # z = Uᵀ y, (n, K)
    sigma = sigma.clamp(min=0.0)[:, None]
    missing_zeros = d - sigma.shape[0]  # eigenvalues of FᵀF not in the n × n spectrum

    def terms(
        alpha: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """γ, mᵀm, ‖Fm − y‖², log|A| at (α, β), each (K,)."""
        lam = alpha + beta * sigma  # eigenvalues of A (the nonzero-σ part when n < d)
        gamma = (beta * sigma / lam).sum(0)
        # Ratios are formed before squaring so that a diverging α or β cannot overflow.
        if primal:
            m_eig = beta * proj / lam  # m in the eigenbasis: m = V m_eig
            m_sq = (m_eig**2).sum(0)
            residual_sq = ((fv @ m_eig - y) ** 2).sum(0)
        else:
            m_sq = ((beta * sigma.sqrt() / lam) * proj).square().sum(0)
            residual_sq = ((alpha / lam) * proj).square().sum(0)
        log_det = torch.log(lam).sum(0) + missing_zeros * torch.log(alpha)
        return gamma, m_sq, residual_sq, log_det

    def evidence(
        alpha: torch.Tensor,
        beta: torch.Tensor,
        m_sq: torch.Tensor,
        residual_sq: torch.Tensor,
        log_det: torch.Tensor,
    ) -> torch.Tensor:
        return (
            0.5 * n * torch.log(beta)
            + 0.5 * d * torch.log(alpha)
            - 0.5 * n * _LOG_2PI
            - 0.5 * beta * residual_sq
            - 0.5 * alpha * m_sq
            - 0.5 * log_det
        )

    alpha = torch.ones(k, dtype=_DTYPE, device=f.device)
    beta = torch.ones(k, dtype=_DTYPE, device=f.device)
    active = torch.ones(k, dtype=torch.bool, device=f.device)
    previous = torch.full((k,), math.nan, dtype=_DTYPE, device=f.device)
    for _ in range(max_iter):
        gamma, m_sq, residual_sq, log_det = terms(alpha, beta)
        current = evidence(alpha, beta, m_sq, residual_sq, log_det)
        new_alpha = torch.where(m_sq > 0, gamma / m_sq, alpha)
        new_beta = torch.where(residual_sq > 0, (n - gamma) / residual_sq, beta)
        converged = ((new_alpha - alpha).abs() <= tol * alpha) & (
            (new_beta - beta).abs() <= tol * beta
        )
        # When the supremum lies at α → ∞ (features that explain nothing) or β → ∞, the
        # parameter grows without end while the evidence settles to its limit: stop once
        # the evidence no longer moves in float64.
        converged |= (current - previous).abs() <= _FLAT * current.abs()
        previous = current
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active &= ~converged
        if not bool(active.any()):  # one host sync per iteration when on a GPU
            break
    _, m_sq, residual_sq, log_det = terms(alpha, beta)  # m for the final (α, β)
    return evidence(alpha, beta, m_sq, residual_sq, log_det), alpha, beta


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features must have shape (n, d), got {tuple(features.shape)}")
    f = features.to(_DTYPE)
    if not bool(torch.isfinite(f).all()):
        raise ValueError("features must be finite")
    return f


def _check_target(targets: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if targets.dim() != 1 or targets.shape[0] != f.shape[0]:
        raise ValueError(f"targets must have shape ({f.shape[0]},), got {tuple(targets.shape)}")
    return targets.to(device=f.device, dtype=_DTYPE)

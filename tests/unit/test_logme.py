"""LogME (graft.advisor.logme): the evidence it maximises against a brute-force Gaussian, the
optimum against a grid, its invariances, and Kendall's τ_b against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from graft.advisor.logme import _maximise_evidence, kendall_tau, log_evidence, logme

SHAPES = [(30, 5), (8, 20)]  # n > d and n < d


def _problem(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A target drawn from LogME's own model (α = d, β = 1: signal and noise of equal
    variance), so that the evidence has a finite interior maximum rather than a supremum at
    α → ∞ or β → ∞ (see test_useless_features_send_alpha_to_infinity)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = f @ torch.randn(d, generator=g, dtype=torch.float64) / math.sqrt(d)
    y += torch.randn(n, generator=g, dtype=torch.float64)
    return f, y


def _tight(f: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """The fixed point run to (float64) convergence."""
    return _maximise_evidence(f, y, max_iter=10_000, tol=1e-12)


def _brute_force(f: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> float:
    n = f.shape[0]
    cov = torch.eye(n, dtype=torch.float64) / beta + f @ f.T / alpha
    mvn = MultivariateNormal(torch.zeros(n, dtype=torch.float64), covariance_matrix=cov)
    return float(mvn.log_prob(y))  # type: ignore[no-untyped-call]


def _explicit(f: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> float:
    n = f.shape[0]
    cov = torch.eye(n, dtype=torch.float64) / beta + f @ f.T / alpha
    sign, logdet = torch.linalg.slogdet(cov)
    assert float(sign) == 1.0
    quad = y @ torch.linalg.solve(cov, y)
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + quad))


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_evidence_at_optimum_is_the_gaussian_marginal(n: int, d: int, seed: int) -> None:
    f, y = _problem(n, d, seed)
    for tol in (1e-3, 1e-12):  # the default too: m is recomputed at the final α, β
        evidence, alpha, beta = _maximise_evidence(f, y, max_iter=10_000, tol=tol)
        assert evidence == pytest.approx(_brute_force(f, y, alpha, beta), rel=1e-6)
        assert evidence == pytest.approx(_explicit(f, y, alpha, beta), rel=1e-6)
        assert log_evidence(f, y, alpha, beta) == pytest.approx(evidence, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_rank_deficient_features(n: int, d: int) -> None:
    """Duplicated columns make FᵀF singular (n > d) on top of the d − n zeros of n < d;
    every zero eigenvalue must still count log α in log|A|."""
    f, y = _problem(n, d, 2)
    f = torch.cat([f, f[:, :2], 2 * f[:, :1]], dim=1)
    evidence, alpha, beta = _tight(f, y)
    assert evidence == pytest.approx(_brute_force(f, y, alpha, beta), rel=1e-6)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_zero_feature_columns_change_nothing(n: int, d: int) -> None:
    """An all-zero feature adds ½ log α to the prior term and ½ log α to ½ log|A|: they
    cancel, and the optimum is unchanged. Miscounting the zero eigenvalues breaks this."""
    f, y = _problem(n, d, 4)
    padded = torch.cat([f, torch.zeros(n, 7, dtype=torch.float64)], dim=1)
    base = _tight(f, y)
    more = _tight(padded, y)
    assert more[0] == pytest.approx(base[0], rel=1e-10)
    # α, β only to ~√eps: the evidence is flat to round-off that close to its maximum.
    assert more[1:] == pytest.approx(base[1:], rel=1e-5)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_fixed_point_is_the_maximum(n: int, d: int) -> None:
    f, y = _problem(n, d, 7)
    evidence, alpha, beta = _tight(f, y)
    assert max(alpha, beta) < 1e4  # an interior maximum (the seed is chosen for it)
    steps = torch.tensor([0.25 * i for i in range(-8, 9)], dtype=torch.float64)
    log_alpha, log_beta = torch.meshgrid(steps, steps, indexing="ij")
    off_centre = (log_alpha != 0) | (log_beta != 0)
    alphas = alpha * log_alpha[off_centre].exp()
    betas = beta * log_beta[off_centre].exp()
    eye = torch.eye(n, dtype=torch.float64)
    covs = eye / betas[:, None, None] + (f @ f.T) / alphas[:, None, None]
    mvn = MultivariateNormal(torch.zeros(n, dtype=torch.float64), covariance_matrix=covs)
    grid: list[float] = mvn.log_prob(y).tolist()  # type: ignore[no-untyped-call]
    assert max(grid) <= evidence + 1e-9 * abs(evidence)
    # And a strict one: no grid point ties with it.
    assert max(grid) < evidence - 1e-6


def test_useless_features_send_alpha_to_infinity() -> None:
    """y orthogonal to every feature: the supremum is at α → ∞, the pure-noise evidence
    −n/2 (log(2π ‖y‖²/n) + 1) at β = n/‖y‖². The iteration must stop there, finite."""
    f, noise = _problem(30, 5, 12)
    q, _ = torch.linalg.qr(f)
    y = noise - q @ (q.T @ noise)
    n = y.shape[0]
    evidence, alpha, beta = _maximise_evidence(f, y, max_iter=1000)
    assert alpha > 1e10
    assert beta == pytest.approx(n / float(y @ y), rel=1e-9)
    limit = -n / 2 * (math.log(2 * math.pi * float(y @ y) / n) + 1)
    assert evidence == pytest.approx(limit, rel=1e-9)


def test_default_tolerance_is_close_to_the_maximum() -> None:
    f, y = _problem(30, 5, 5)
    loose, _, _ = _maximise_evidence(f, y)
    tight, _, _ = _tight(f, y)
    assert loose <= tight + 1e-9
    assert loose == pytest.approx(tight, rel=1e-5)


def _labels(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])


def test_logme_is_the_mean_evidence_per_sample_over_one_hot_classes() -> None:
    n, d, k = 40, 6, 3
    labels = _labels(n, k, 6)
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    per_class = [_maximise_evidence(f, (labels == c).to(torch.float64))[0] / n for c in range(k)]
    assert logme(f, labels) == pytest.approx(sum(per_class) / k, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(120, 4), (12, 4)])
def test_informative_features_score_higher_than_random(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(7)
    labels = _labels(n, d, 7)
    informative = torch.nn.functional.one_hot(labels, d).to(torch.float64)
    informative += 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    random = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert logme(informative, labels) > logme(random, labels) + 0.5


def test_score_ignores_sample_order() -> None:
    n, d = 50, 8
    labels = _labels(n, 4, 8)
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(9))
    assert logme(f[perm], labels[perm]) == pytest.approx(logme(f, labels), rel=1e-10)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_scaling_features_rescales_alpha_only(n: int, d: int) -> None:
    """N(y; 0, β⁻¹ I + α⁻¹ c² F Fᵀ) equals the unscaled evidence at α' = c² α: the maximum
    is the same, reached at α' = c² α and the same β. Only the iteration's path (it starts
    at α = 1 either way) differs, so the default tolerance agrees to about that tolerance."""
    f, y = _problem(n, d, 10)
    c = 37.0
    evidence, alpha, beta = _tight(f, y)
    scaled, alpha_c, beta_c = _tight(c * f, y)
    assert scaled == pytest.approx(evidence, rel=1e-9)
    assert alpha_c == pytest.approx(c**2 * alpha, rel=1e-5)  # to ~√eps, as above
    assert beta_c == pytest.approx(beta, rel=1e-5)
    labels = _labels(n, 3, 10)
    assert logme(c * f, labels) == pytest.approx(logme(f, labels), rel=1e-4)


def test_float32_features_and_zero_features() -> None:
    n, d = 20, 3
    labels = _labels(n, 2, 11)
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(11))
    assert logme(f, labels) == pytest.approx(logme(f.double(), labels), rel=1e-6)
    # Useless all-zero features: α does not matter, β fits the labels' own scale.
    zeros = torch.zeros(n, d)
    y = (labels == 0).to(torch.float64)
    evidence, _, beta = _maximise_evidence(zeros, y)
    assert math.isfinite(evidence)
    assert beta == pytest.approx(n / float(y @ y))


def test_invalid_inputs_are_rejected() -> None:
    f = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="shape"):
        logme(f, labels[:5])
    with pytest.raises(ValueError, match="integer"):
        logme(f, labels.float())
    with pytest.raises(ValueError, match=r"\[0, 2\), got \[-1, 0\]"):
        logme(f, labels - 1, num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 1\), got \[0, 1\]"):
        logme(f, labels, num_classes=1)
    with pytest.raises(ValueError, match=r"without samples: \[2\]"):
        logme(f, labels, num_classes=3)
    with pytest.raises(ValueError, match="finite"):
        logme(torch.full((6, 2), math.nan), labels)


@pytest.mark.parametrize(
    ("a", "b", "tau"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        # pairs: (0,1) C, (0,2) C, (0,3) C, (1,2) tied in a, (1,3) D, (2,3) tied in b
        # τ_b = (3 − 1) / √((6 − 1)(6 − 1)) = 0.4
        ([1, 2, 2, 3], [1, 3, 2, 2], 0.4),
        # (0,1) tied in a, (0,2) C, (1,2) tied in b: 1 / √(2 · 2) = 0.5
        ([1, 1, 2], [1, 2, 2], 0.5),
        # (0,1) D, (0,2) C, (1,2) D, no ties: (1 − 2) / 3
        ([0.1, 0.3, 0.2], [0.2, 0.1, 0.3], -1 / 3),
    ],
)
def test_kendall_tau_by_hand(a: list[float], b: list[float], tau: float) -> None:
    assert kendall_tau(a, b) == pytest.approx(tau)
    assert kendall_tau(b, a) == pytest.approx(tau)


def test_kendall_tau_constant_and_bad_input() -> None:
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        kendall_tau([1], [1])

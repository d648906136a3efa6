"""The batched logistic-regression solver behind the probe (graft.advisor.solver)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from graft.advisor.solver import Problems, _fit, fit_batched, in_row_space


def _problem(seed: int, n: int, d: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, c, generator=g, dtype=torch.float64)
    y = (x @ w + 2 * torch.randn(n, c, generator=g, dtype=torch.float64)).argmax(1)
    return x, y


def _objective(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float
) -> torch.Tensor:
    return F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()


def test_the_gradient_is_autograds() -> None:
    x, y = _problem(0, 30, 6, 4)
    rows = torch.ones(2, 30, dtype=torch.float64)
    rows[1, 25:] = 0.0  # padding
    problems = Problems(
        torch.stack([x, x]), torch.stack([y, y]), rows, torch.tensor([0.1, 0.01]).double(), 4
    )
    theta = torch.randn(2, problems.width, dtype=torch.float64, requires_grad=True)
    loss, grad = problems.loss_and_grad(theta.detach())
    w, b = problems.split(theta)
    expected = torch.stack(
        [_objective(x, y, w[0], b[0], 0.1), _objective(x[:25], y[:25], w[1], b[1], 0.01)]
    )
    (auto,) = torch.autograd.grad(expected.sum(), theta)
    assert torch.allclose(loss, expected.detach(), atol=1e-12)
    assert torch.allclose(grad, auto, atol=1e-12)


def test_batched_problems_reach_each_ones_own_optimum() -> None:
    """Three problems of different sizes and penalties, padded into one batch, end where
    each one fitted alone ends."""
    sizes, strengths = [40, 33, 25], [0.02, 0.1, 0.5]
    data = [_problem(seed, n, 8, 3) for seed, n in zip([1, 2, 3], sizes, strict=True)]
    xs = torch.zeros(3, 40, 8, dtype=torch.float64)
    ys = torch.zeros(3, 40, dtype=torch.long)
    rows = torch.zeros(3, 40, dtype=torch.float64)
    for i, (x, y) in enumerate(data):
        xs[i, : len(x)], ys[i, : len(y)], rows[i, : len(x)] = x, y, 1.0
    w, b = fit_batched(
        Problems(xs, ys, rows, torch.tensor(strengths, dtype=torch.float64), 3),
        max_iter=1000,
        tolerance_grad=1e-10,
    )
    for i, ((x, y), l2) in enumerate(zip(data, strengths, strict=True)):
        ref_w, ref_b = _reference_fit(x, y, l2, 3)
        ours = torch.softmax(x @ w[i] + b[i], 1)
        theirs = torch.softmax(x @ ref_w + ref_b, 1)
        assert (ours - theirs).abs().max() < 1e-5, i
        assert (
            float(_objective(x, y, w[i], b[i], l2))
            <= float(_objective(x, y, ref_w, ref_b, l2)) + 1e-9
        )


def test_features_wider_than_the_rows_are_solved_in_the_rows_span() -> None:
    """d = 50 features over 30 and 24 rows (padded): solved on 30 columns, the weights
    mapped back are each problem's own optimum in all 50 dimensions."""
    sizes, strengths = [30, 24], [0.05, 0.2]
    data = [_problem(seed, n, 50, 4) for seed, n in zip([5, 6], sizes, strict=True)]
    xs = torch.zeros(2, 30, 50, dtype=torch.float64)
    ys = torch.zeros(2, 30, dtype=torch.long)
    rows = torch.zeros(2, 30, dtype=torch.float64)
    for i, (x, y) in enumerate(data):
        xs[i, : len(x)], ys[i, : len(y)], rows[i, : len(x)] = x, y, 1.0
    problems = Problems(xs, ys, rows, torch.tensor(strengths, dtype=torch.float64), 4)
    reduced, basis = in_row_space(problems)
    assert reduced.x.shape == (2, 30, 30) and basis.shape == (2, 50, 30)
    w, b = fit_batched(problems, max_iter=1000, tolerance_grad=1e-10)
    assert w.shape == (2, 50, 4)
    for i, ((x, y), l2) in enumerate(zip(data, strengths, strict=True)):
        ref_w, ref_b = _reference_fit(x, y, l2, 4)
        ours = torch.softmax(x @ w[i] + b[i], 1)
        theirs = torch.softmax(x @ ref_w + ref_b, 1)
        assert (ours - theirs).abs().max() < 1e-5, i
        assert torch.allclose(w[i], ref_w, atol=1e-4), i
    # And the same fit without the reduction, in float32 as the probe runs it: the same
    # predictions to float32's precision.
    wide = Problems(xs.float(), ys, rows.float(), problems.l2.float(), 4)
    w32, b32 = fit_batched(wide)
    full_w, full_b = _fit(wide, max_iter=100, tolerance_grad=1e-5)
    for i, (x, _) in enumerate(data):
        p_reduced = torch.softmax(x.float() @ w32[i] + b32[i], 1)
        p_full = torch.softmax(x.float() @ full_w[i] + full_b[i], 1)
        assert (p_reduced - p_full).abs().max() < 1e-3, i


def _reference_fit(
    x: torch.Tensor, y: torch.Tensor, l2: float, c: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same objective minimised alone by a long run of torch's own L-BFGS."""
    w = torch.zeros(x.shape[1], c, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(c, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=2000,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _objective(x, y, w, b, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def test_float32_stops_at_rounding_instead_of_halving_steps() -> None:
    """In float32 a tight gradient tolerance is out of reach: the fit must stop once the
    loss stops falling by more than rounding, near float64's optimum: its objective within
    1e-4 (relative), the same predictions, probabilities within 0.005."""
    x, y = _problem(4, 200, 20, 5)
    rows = torch.ones(1, 200)
    args = (y.unsqueeze(0), rows, torch.tensor([0.005]), 5)
    w32, b32 = fit_batched(Problems(x.float().unsqueeze(0), *args), max_iter=10_000)
    w64, b64 = fit_batched(
        Problems(x.unsqueeze(0), args[0], rows.double(), args[2].double(), 5), max_iter=10_000
    )
    p32 = torch.softmax(x.float() @ w32[0] + b32[0], 1)
    p64 = torch.softmax(x @ w64[0] + b64[0], 1)
    assert (p32.double() - p64).abs().max() < 5e-3
    assert torch.equal(p32.argmax(1), p64.argmax(1))
    f32 = float(_objective(x, y, w32[0].double(), b32[0].double(), 0.005))
    f64 = float(_objective(x, y, w64[0], b64[0], 0.005))
    assert f64 <= f32 < f64 * (1 + 1e-4)


def test_mismatched_shapes_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="do not match"):
        Problems(
            torch.zeros(2, 5, 3),
            torch.zeros(2, 4, dtype=torch.long),
            torch.ones(2, 5),
            torch.ones(2),
            3,
        )

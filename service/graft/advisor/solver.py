"""Many L2-penalised multinomial logistic regressions fitted at once: one per fold of a
k-fold probe, as one batched problem.

The objective of problem b is the mean cross-entropy over its rows plus `l2 / 2 · ‖W‖²`
(the bias is not penalised), exactly `probe.fit_logistic`'s. The problems share nothing
but the solver: L-BFGS with each problem's own history, step and stopping test, the
gradient written out (no autograd), every operation a batched tensor operation. Problems
of different sizes are padded with rows of weight zero. Fitting the k folds of a probe one
after another with torch.optim.LBFGS cost about 1.5 ms per iteration per fold on two CPU
cores, nearly all of it Python and autograd overhead (docs/ADVISOR.md § Advise in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

# L-BFGS memory: the last HISTORY steps and gradient changes of each problem.
HISTORY = 10
# Armijo's sufficient-decrease constant and the most halvings of a step.
ARMIJO = 1e-4
MAX_HALVINGS = 10
# A problem also stops when STALLED_ITERATIONS iterations in a row lower its loss by less
# than this many units of the dtype's resolution, relatively: closer to the optimum the
# line search sees only rounding (float32: 1.2e-6; without this test float32 fits spent
# their last iterations halving steps that could not show a decrease). Looser, 100 ulps
# twice, saved a quarter of the probe seconds with every probe within 0.6 points, and
# flipped Fashion-MNIST 500/class from the 2x2-grid cut to a global one, 4 points worse
# trained (docs/ADVISOR.md § Advise in seconds, third pass): kept at 10 ulps, 3 times.
TOLERANCE_CHANGE_EPS = 10
STALLED_ITERATIONS = 3


@dataclass(frozen=True)
class Problems:
    """B logistic regressions: features (B, n, d), labels (B, n), row weights (B, n) that
    are 1 for a real row and 0 for padding, and each problem's L2 strength (B,)."""

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor
    l2: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        b, n, _ = self.x.shape
        if self.y.shape != (b, n) or self.rows.shape != (b, n) or self.l2.shape != (b,):
            raise ValueError(
                f"x {tuple(self.x.shape)}, y {tuple(self.y.shape)}, rows "
                f"{tuple(self.rows.shape)} and l2 {tuple(self.l2.shape)} do not match"
            )

    @property
    def width(self) -> int:
        """Parameters per problem: the weights (d·C) then the bias (C)."""
        return (self.x.shape[2] + 1) * self.num_classes

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of `theta` (B, width) as weights (B, d, C) and bias (B, C)."""
        b, _, d = self.x.shape
        c = self.num_classes
        return theta[:, : d * c].view(b, d, c), theta[:, d * c :]

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each problem's objective (B,) and its gradient (B, width) at `theta`."""
        w, bias = self.split(theta)
        logits = torch.baddbmm(bias.unsqueeze(1), self.x, w)
        logp = F.log_softmax(logits, dim=2)
        count = self.rows.sum(1).clamp(min=1)
        nll = -logp.gather(2, self.y.unsqueeze(2)).squeeze(2)
        loss = (nll * self.rows).sum(1) / count + 0.5 * self.l2 * (w * w).sum((1, 2))
        # d loss / d logits: (softmax - one-hot) · row weight / rows.
        r = logp.exp_()
        r.scatter_add_(2, self.y.unsqueeze(2), -torch.ones_like(r[:, :, :1]))
        r.mul_((self.rows / count.unsqueeze(1)).unsqueeze(2))
        grad = torch.empty_like(theta)
        gw, gb = self.split(grad)
        torch.baddbmm(self.l2.view(-1, 1, 1) * w, self.x.transpose(1, 2), r, out=gw)
        gb.copy_(r.sum(1))
        return loss, grad


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1)


def _direction(
    grad: torch.Tensor,
    steps: list[torch.Tensor],
    changes: list[torch.Tensor],
    rho: list[torch.Tensor],
) -> torch.Tensor:
    """L-BFGS's two-loop recursion, per problem: an approximation of -H⁻¹·grad. A stored
    pair with rho 0 (curvature not positive for that problem) contributes nothing."""
    q = grad.clone()
    alphas = []
    for s, y, r in zip(reversed(steps), reversed(changes), reversed(rho), strict=True):
        a = r * _dot(s, q)
        q.sub_(a.unsqueeze(1) * y)
        alphas.append(a)
    if steps:
        s, y = steps[-1], changes[-1]
        yy = _dot(y, y)
        gamma = torch.where(yy > 0, _dot(s, y) / yy.clamp(min=1e-30), torch.ones_like(yy))
        q.mul_(gamma.unsqueeze(1))
    for s, y, r, a in zip(steps, changes, rho, reversed(alphas), strict=True):
        beta = r * _dot(y, q)
        q.add_((a - beta).unsqueeze(1) * s)
    return q.neg_()


def in_row_space(problems: Problems) -> tuple[Problems, torch.Tensor]:
    """The same problems on n features instead of d, for features wider than the rows
    (d > n), and the orthonormal bases Q (B, d, n) that map their weights back (W = Q·V).

    The penalty is on the weights, not the bias, so every stationary point has W in the
    span of the rows' features (the gradient is Xᵀ·R + l2·W); with X = (Q·Rᵀ)ᵀ, the
    problem on features X·Q = Rᵀ (B, n, n) has the same objective at V = Qᵀ·W, and L-BFGS
    from zero takes the same steps in either (its updates are sums of gradients, and Q
    keeps inner products). Only the first step's scale and the gradient test, which read
    entries, differ. A probe's features are often 4-6× wider than its rows (a 2×2 grid of
    two stages, 2,048 wide, over 400 images): each iteration then costs that much less."""
    q, r = torch.linalg.qr(problems.x.transpose(1, 2))
    reduced = Problems(
        x=r.transpose(1, 2).contiguous(),
        y=problems.y,
        rows=problems.rows,
        l2=problems.l2,
        num_classes=problems.num_classes,
    )
    return reduced, q


def fit_batched(
    problems: Problems, *, max_iter: int = 100, tolerance_grad: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (B, d, C) and bias (B, C) of every problem, from zero, by L-BFGS with a
    backtracking (Armijo) line search. A problem stops when its largest gradient entry is
    below `tolerance_grad`, when an iteration no longer lowers its loss beyond rounding, or
    after `max_iter` iterations. Features wider than the rows are solved in the rows'
    span (in_row_space)."""
    _, n, d = problems.x.shape
    if d > n:
        reduced, basis = in_row_space(problems)
        v, bias = _fit(reduced, max_iter=max_iter, tolerance_grad=tolerance_grad)
        return torch.bmm(basis, v), bias
    return _fit(problems, max_iter=max_iter, tolerance_grad=tolerance_grad)


def _fit(
    problems: Problems, *, max_iter: int, tolerance_grad: float
) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.zeros(problems.x.shape[0], problems.width, dtype=problems.x.dtype)
    loss, grad = problems.loss_and_grad(theta)
    steps: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    active = grad.abs().amax(1) > tolerance_grad
    tolerance_change = TOLERANCE_CHANGE_EPS * torch.finfo(theta.dtype).eps
    stalled = torch.zeros_like(active, dtype=torch.long)
    for it in range(max_iter):
        if not bool(active.any()):
            break
        direction = _direction(grad, steps, changes, rho) * active.unsqueeze(1)
        slope = _dot(grad, direction)
        # Not a descent direction (lost curvature): steepest descent instead, history reset.
        bad = slope >= 0
        if bool(bad.any()):
            direction = torch.where(bad.unsqueeze(1), -grad * active.unsqueeze(1), direction)
            slope = _dot(grad, direction)
        if it == 0:
            t = (1.0 / grad.abs().sum(1).clamp(min=1e-12)).clamp(max=1.0)
        else:
            t = torch.ones_like(loss)
        new_theta, new_loss, new_grad = _line_search(problems, theta, loss, direction, slope, t)
        s, y = new_theta - theta, new_grad - grad
        sy = _dot(s, y)
        steps.append(s)
        changes.append(y)
        rho.append(torch.where(sy > 1e-10, 1.0 / sy.clamp(min=1e-10), torch.zeros_like(sy)))
        if len(steps) > HISTORY:
            del steps[0], changes[0], rho[0]
        progress = loss - new_loss > tolerance_change * new_loss.abs().clamp(min=1.0)
        stalled = torch.where(progress, 0, stalled + 1)
        theta, loss, grad = new_theta, new_loss, new_grad
        active &= (grad.abs().amax(1) > tolerance_grad) & (stalled < STALLED_ITERATIONS)
    return problems.split(theta)


def _line_search(
    problems: Problems,
    theta: torch.Tensor,
    loss: torch.Tensor,
    direction: torch.Tensor,
    slope: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per problem, the first of t, t/2, t/4, ... that decreases the loss enough (Armijo);
    a problem that finds none keeps its parameters."""
    done = torch.zeros_like(loss, dtype=torch.bool)
    out_theta, out_loss = theta.clone(), loss.clone()
    out_grad = torch.zeros_like(theta)
    for _ in range(MAX_HALVINGS):
        trial = theta + t.unsqueeze(1) * direction
        trial_loss, trial_grad = problems.loss_and_grad(trial)
        ok = ~done & (trial_loss <= loss + ARMIJO * t * slope)
        out_theta[ok], out_loss[ok], out_grad[ok] = trial[ok], trial_loss[ok], trial_grad[ok]
        done |= ok
        if bool(done.all()):
            return out_theta, out_loss, out_grad
        t = torch.where(done, t, t * 0.5)
    _, stuck_grad = problems.loss_and_grad(out_theta)
    out_grad[~done] = stuck_grad[~done]
    return out_theta, out_loss, out_grad

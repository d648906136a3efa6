"""A cross-validated linear probe on frozen features, in torch (no scikit-learn at run time).

Multinomial logistic regression on standardised features with an L2 penalty, fitted
full-batch with L-BFGS. The penalty is `l2 / 2 · ‖W‖²` added to the mean cross-entropy,
with l2 = 1 / n_train by default: the same objective as scikit-learn's
LogisticRegression(C=1) (which minimises ½‖W‖² + C·Σ loss), its documented default.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from graft.advisor.advice import ProbeResult
from graft.advisor.cancel import checkpoint
from graft.training.loop import feature_statistics

MAX_FOLDS = 5


def stratified_folds(labels: Sequence[int], k: int, seed: int = 0) -> list[int]:
    """Fold index of every sample: each class is shuffled (seeded) and dealt round-robin,
    so every fold holds about 1/k of every class."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    fold = [0] * len(labels)
    offset = 0
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            # The offset staggers classes so that small classes do not all land in fold 0.
            fold[i] = (j + offset) % k
        offset += len(idx)
    return fold


def num_folds(labels: Sequence[int]) -> int:
    """k = min(5, smallest class count), at least 2."""
    counts: dict[int, int] = defaultdict(int)
    for y in labels:
        counts[y] += 1
    return max(2, min(MAX_FOLDS, min(counts.values(), default=2)))


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    l2: float | None = None,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (d, C) and bias (C,) of an L2-penalised multinomial logistic regression.

    `x` should be standardised. Runs with gradients enabled whatever the caller's mode."""
    n, d = x.shape
    lam = 1.0 / n if l2 is None else l2
    with torch.enable_grad(), torch.inference_mode(False):
        x = x.detach().clone()
        w = torch.zeros(d, num_classes, dtype=x.dtype, requires_grad=True)
        b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 0.5 * lam * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    features: torch.Tensor,
    labels: Sequence[int],
    *,
    num_classes: int | None = None,
    folds: int | None = None,
    l2: float | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> ProbeResult:
    """k-fold (stratified, seeded) accuracy of a linear classifier on `features` (n, d).

    k defaults to min(5, smallest class count), at least 2. Each fold standardises with its
    training part's mean and standard deviation only. A class with fewer than k images is
    missing from some folds' training parts; those folds count its images as errors, which
    is what a model trained on so few would do too."""
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise ValueError(f"features {tuple(features.shape)} do not match {len(labels)} labels")
    x_all = features.detach().to("cpu", torch.float32)
    y_all = torch.as_tensor(list(labels), dtype=torch.long)
    c = num_classes if num_classes is not None else int(y_all.max()) + 1
    k = folds if folds is not None else num_folds(labels)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    fold = torch.as_tensor(stratified_folds(labels, k, seed))
    accuracies = []
    correct = torch.zeros(len(labels), dtype=torch.bool)
    for f in range(k):
        checkpoint()
        test = fold == f
        train = ~test
        if not bool(test.any()) or not bool(train.any()):
            continue
        x_tr, x_te = x_all[train], x_all[test]
        mean, std = feature_statistics(x_tr)
        w, b = fit_logistic((x_tr - mean) / std, y_all[train], c, l2=l2, max_iter=max_iter)
        pred = (((x_te - mean) / std) @ w + b).argmax(1)
        hit = pred == y_all[test]
        correct[test] = hit
        accuracies.append(float(hit.float().mean()))
    acc = torch.tensor(accuracies, dtype=torch.float64)
    return ProbeResult(
        accuracy=float(acc.mean()),
        std=float(acc.std(unbiased=False)) if len(accuracies) > 1 else 0.0,
        folds=len(accuracies),
        fold_accuracies=tuple(accuracies),
        correct=tuple(bool(c) for c in correct.tolist()),
    )


def paired_sign_test(a: ProbeResult, b: ProbeResult) -> tuple[int, int, float]:
    """Exact one-sided sign (McNemar) test that probe `a` beats probe `b` on the same images
    and folds (same labels and seed): (images only `a` gets right, images only `b` gets
    right, p-value of at least that many wins if both were equally good)."""
    if len(a.correct) != len(b.correct):
        raise ValueError("paired_sign_test needs two probes over the same images")
    wins = sum(1 for x, y in zip(a.correct, b.correct, strict=True) if x and not y)
    losses = sum(1 for x, y in zip(a.correct, b.correct, strict=True) if y and not x)
    n = wins + losses
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0
    return wins, losses, p


def holdout_probe(
    features: torch.Tensor,
    labels: Sequence[int],
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    *,
    num_classes: int,
    l2: float | None = None,
) -> float:
    """Accuracy on `val_idx` of the linear classifier fit on `train_idx` (standardised with
    the training part's statistics), to compare with a pilot fine-tune on the same split."""
    x = features.detach().to("cpu", torch.float32)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    tr = torch.as_tensor(list(train_idx), dtype=torch.long)
    va = torch.as_tensor(list(val_idx), dtype=torch.long)
    mean, std = feature_statistics(x[tr])
    w, b = fit_logistic((x[tr] - mean) / std, y[tr], num_classes, l2=l2)
    pred = (((x[va] - mean) / std) @ w + b).argmax(1)
    return float((pred == y[va]).float().mean())

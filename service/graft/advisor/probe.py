"""A cross-validated linear probe on frozen features, in torch (no scikit-learn at run time).

Multinomial logistic regression on standardised features with an L2 penalty, fitted
full-batch with L-BFGS (graft.advisor.solver: the k folds of a probe at once). The penalty
is `l2 / 2 · ‖W‖²` added to the mean cross-entropy, with l2 = 1 / n_train by default: the
same objective as scikit-learn's LogisticRegression(C=1) (which minimises
½‖W‖² + C·Σ loss), its documented default.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.advisor.advice import ProbeResult
from graft.advisor.cancel import checkpoint
from graft.advisor.solver import Problems, fit_batched
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

    `x` should be standardised."""
    n = x.shape[0]
    problems = Problems(
        x=x.detach().unsqueeze(0),
        y=y.unsqueeze(0),
        rows=torch.ones(1, n, dtype=x.dtype),
        l2=torch.tensor([1.0 / n if l2 is None else l2], dtype=x.dtype),
        num_classes=num_classes,
    )
    w, b = fit_batched(problems, max_iter=max_iter)
    return w[0], b[0]


@dataclass(frozen=True)
class _Folds:
    """The k folds of a probe as one batched problem: fold f's training part standardised
    with its own mean and deviation, padded to the largest part."""

    problems: Problems
    fold: torch.Tensor  # (n,) the fold of every image
    standardization: list[tuple[torch.Tensor, torch.Tensor]]  # (mean, std) per fold


def _folds(
    x: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, k: int, c: int, l2: float | None
) -> _Folds:
    parts = [torch.nonzero(fold != f).squeeze(1) for f in range(k)]
    rows = max(len(p) for p in parts)
    xs = torch.zeros(k, rows, x.shape[1], dtype=x.dtype)
    ys = torch.zeros(k, rows, dtype=torch.long)
    used = torch.zeros(k, rows, dtype=x.dtype)
    standardization = []
    for f, part in enumerate(parts):
        mean, std = feature_statistics(x[part])
        standardization.append((mean, std))
        xs[f, : len(part)] = (x[part] - mean) / std
        ys[f, : len(part)] = y[part]
        used[f, : len(part)] = 1.0
    counts = used.sum(1).clamp(min=1.0)
    strength = 1.0 / counts if l2 is None else torch.full_like(counts, l2)
    return _Folds(Problems(xs, ys, used, strength, c), fold, standardization)


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
    training part's mean and standard deviation only; the k fits run as one batched
    problem (graft.advisor.solver). A class with fewer than k images is missing from some
    folds' training parts; those folds count its images as errors, which is what a model
    trained on so few would do too."""
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise ValueError(f"features {tuple(features.shape)} do not match {len(labels)} labels")
    checkpoint()
    x_all = features.detach().to("cpu", torch.float32)
    y_all = torch.as_tensor(list(labels), dtype=torch.long)
    c = num_classes if num_classes is not None else int(y_all.max()) + 1
    k = folds if folds is not None else num_folds(labels)
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    fold = torch.as_tensor(stratified_folds(labels, k, seed))
    # A fold with no test images (or no training images) is left out, as before batching.
    k_used = [f for f in range(k) if bool((fold == f).any()) and bool((fold != f).any())]
    batch = _folds(x_all, y_all, fold, k, c, l2)
    w, b = fit_batched(batch.problems, max_iter=max_iter)
    accuracies = []
    correct = torch.zeros(len(labels), dtype=torch.bool)
    for f in k_used:
        test = fold == f
        mean, std = batch.standardization[f]
        hit = (((x_all[test] - mean) / std) @ w[f] + b[f]).argmax(1) == y_all[test]
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
    hits = holdout_hits(features, labels, train_idx, val_idx, num_classes=num_classes, l2=l2)
    return float(hits.float().mean())


def holdout_hits(
    features: torch.Tensor,
    labels: Sequence[int],
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    *,
    num_classes: int,
    l2: float | None = None,
) -> torch.Tensor:
    """Which of `val_idx` (bool, in that order) the linear classifier fit on `train_idx`
    gets right (holdout_probe)."""
    x = features.detach().to("cpu", torch.float32)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    tr = torch.as_tensor(list(train_idx), dtype=torch.long)
    va = torch.as_tensor(list(val_idx), dtype=torch.long)
    mean, std = feature_statistics(x[tr])
    w, b = fit_logistic((x[tr] - mean) / std, y[tr], num_classes, l2=l2)
    return (((x[va] - mean) / std) @ w + b).argmax(1) == y[va]

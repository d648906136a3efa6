"""Classification metrics from a validation pass (no scikit-learn at run time)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from graft.domain import ClassMetrics, EvaluationMetrics


def evaluate_predictions(
    scores: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    *,
    probabilities: bool = False,
    loss: float | None = None,
) -> EvaluationMetrics:
    """Metrics of `scores` (N x C logits, or probabilities with `probabilities=True`) against
    integer `targets` (N) for classes named `labels` (C).

    - accuracy and top-k accuracy with k = min(5, C) (so top-5 is 1.0 with five classes);
    - mean cross-entropy `loss` (unweighted, no label smoothing, so that it compares across
      plans), unless the caller passes its own;
    - per class: precision (0 when never predicted), recall (0 without support), support;
    - macro F1 over the classes that occur in the targets or the predictions (a class absent
      from both says nothing about the model; this is scikit-learn's default label set);
    - confusion matrix, row-major: confusion[true * C + predicted].
    """
    n_classes = len(labels)
    scores = scores.detach().float().cpu()
    targets = targets.detach().long().cpu()
    if scores.ndim != 2 or scores.shape[1] != n_classes:
        raise ValueError(f"scores must be N x {n_classes}, got {tuple(scores.shape)}")
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have shape ({scores.shape[0]},)")
    n = scores.shape[0]
    if n == 0:
        return EvaluationMetrics(
            per_class=tuple(ClassMetrics(lb, 0.0, 0.0, 0) for lb in labels),
            confusion=(0,) * (n_classes * n_classes),
            labels=tuple(labels),
        )

    if loss is None:
        log_p = torch.log(scores.clamp_min(1e-12)) if probabilities else scores.log_softmax(1)
        loss = float(F.nll_loss(log_p, targets))
    predicted = scores.argmax(1)
    k = min(5, n_classes)
    topk = scores.topk(k, dim=1).indices
    top5 = float((topk == targets[:, None]).any(1).float().mean())

    confusion = torch.bincount(targets * n_classes + predicted, minlength=n_classes**2).view(
        n_classes, n_classes
    )
    tp = confusion.diag().double()
    support = confusion.sum(1)
    predicted_count = confusion.sum(0)
    precision = torch.where(predicted_count > 0, tp / predicted_count.clamp_min(1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp_min(1), 0.0)
    pr = precision + recall
    f1 = torch.where(pr > 0, 2 * precision * recall / pr.clamp_min(1e-12), 0.0)
    present = (support > 0) | (predicted_count > 0)
    macro_f1 = float(f1[present].mean())

    return EvaluationMetrics(
        accuracy=float(tp.sum() / n),
        top5_accuracy=top5,
        macro_f1=macro_f1,
        loss=float(loss),
        per_class=tuple(
            ClassMetrics(
                label=labels[c],
                precision=float(precision[c]),
                recall=float(recall[c]),
                support=int(support[c]),
            )
            for c in range(n_classes)
        ),
        confusion=tuple(int(x) for x in confusion.flatten()),
        labels=tuple(labels),
    )

"""The numbers of a model report, as JSON-able data (report.json holds them; the figures
and the page draw them): per-epoch curves from the job's progress events, the confusion
matrix normalised by row, per-class precision/recall/F1, the most-confused pairs, and the
label-noise suspects of the validation split. Nothing here draws or touches files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graft.domain import EvaluationMetrics, EventKind, ProgressEvent
from graft.training.validation_outputs import ValidationOutputs

CONFUSED_PAIRS = 10  # the most-confused (true, predicted) pairs listed
SUSPECTS = 12  # validation images with the highest loss shown


@dataclass(frozen=True)
class EpochPoint:
    """One epoch of the curves; None where the job's events do not say."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float
    val_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
        }


def curves(events: Iterable[ProgressEvent]) -> list[EpochPoint]:
    """Loss and accuracy per epoch from a job's events, in sequence order.

    Validation: the EVALUATION event of each epoch (the last one when an attempt that
    lost its lease evaluated an epoch its successor evaluated again). Training accuracy:
    the same event's `train_accuracy` (0, written by releases before it was measured,
    reads as unknown). Training loss: the mean over the epoch's steps, from its STEP
    events, each of which carries the mean loss of the steps since the previous one; a
    step counter that goes back (an attempt resumed mid-epoch) starts the epoch afresh."""
    evaluations: dict[int, ProgressEvent] = {}
    sums: dict[int, tuple[float, int]] = {}
    last_step: dict[int, int] = {}
    for ev in events:
        if ev.kind == EventKind.EVALUATION and ev.metrics is not None:
            evaluations[ev.epoch] = ev
        elif ev.kind == EventKind.STEP and ev.step > 0:
            previous = last_step.get(ev.epoch, 0)
            if ev.step <= previous:  # the epoch started again
                previous, sums[ev.epoch] = 0, (0.0, 0)
            total, steps = sums.get(ev.epoch, (0.0, 0))
            sums[ev.epoch] = (total + ev.loss * (ev.step - previous), steps + ev.step - previous)
            last_step[ev.epoch] = ev.step
    points = []
    for epoch in sorted(evaluations):
        ev = evaluations[epoch]
        assert ev.metrics is not None
        total, steps = sums.get(epoch, (0.0, 0))
        points.append(
            EpochPoint(
                epoch=epoch,
                train_loss=total / steps if steps else None,
                train_accuracy=ev.train_accuracy or None,
                val_loss=ev.metrics.loss,
                val_accuracy=ev.metrics.accuracy,
            )
        )
    return points


def confusion_rows(metrics: EvaluationMetrics) -> tuple[list[list[int]], list[list[float]]]:
    """The confusion matrix (rows: true class, columns: predicted) as counts, and
    normalised by row (each row sums to 1; a class without validation images is all 0)."""
    n = len(metrics.labels)
    counts = [list(metrics.confusion[i * n : (i + 1) * n]) for i in range(n)]
    return counts, [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]


def per_class(metrics: EvaluationMetrics) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class (F1 0 when both are 0)."""
    out = []
    for c in metrics.per_class:
        pr = c.precision + c.recall
        f1 = 2 * c.precision * c.recall / pr if pr > 0 else 0.0
        out.append(
            {
                "label": c.label,
                "precision": c.precision,
                "recall": c.recall,
                "f1": f1,
                "support": c.support,
            }
        )
    return out


def confused_pairs(metrics: EvaluationMetrics, limit: int = CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The (true, predicted) pairs of different classes with the most validation images,
    most first (ties by label order); `share` is the fraction of the true class's images."""
    counts, rows = confusion_rows(metrics)
    labels = metrics.labels
    pairs = [
        (count, i, j)
        for i, row in enumerate(counts)
        for j, count in enumerate(row)
        if i != j and count > 0
    ]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [
        {"true": labels[i], "predicted": labels[j], "count": count, "share": rows[i][j]}
        for count, i, j in pairs[:limit]
    ]


def suspects(
    outputs: ValidationOutputs, labels: Sequence[str], limit: int = SUSPECTS
) -> list[dict[str, Any]]:
    """The validation images the model finds least likely under their own label (highest
    cross-entropy at temperature 1), highest first: where label noise, if any, shows.
    `index` is the image's position in `outputs.samples`."""
    losses = outputs.losses()
    probabilities = outputs.logits.double().softmax(1)
    order = torch.argsort(losses, descending=True, stable=True)[:limit]
    out = []
    for i in order.tolist():
        predicted = int(probabilities[i].argmax())
        out.append(
            {
                "index": i,
                "label": labels[int(outputs.targets[i])],
                "predicted": labels[predicted],
                "loss": float(losses[i]),
                "confidence": float(probabilities[i, predicted]),
            }
        )
    return out

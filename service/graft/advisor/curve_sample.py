"""The learning curve of a large dataset, measured on more images than the Advise sample.

The accuracy estimates extend what the sample measures to the dataset's size along the
probe's learning curve, a power law of its error in the number of training images
(estimates.learning_curve). Fitted on a quarter, half and all of a 500-image sample, the
curve is three noisy points: at Fashion-MNIST 1,000 per class it came out flat and stated
79-86% for a plan that reached 89-91%, twenty times the sample away. So when the dataset
holds more than CURVE_MAX_SCALE times the sample's images per class, the chosen backbone
runs over more of it (up to `advise_max_images` in all, the sample's images first) at the
cut Advise chose, and the curve is fitted on nested stratified subsets of those images,
each scored on the same held-out quarter; the feature-extraction range is its prediction's
90% bootstrap interval, widened by the spread of a validation accuracy
(estimates.validation_range). At Fashion-MNIST 1,000 and 3,000 per class
(2,000 images, 2.8 s more) it predicts 90.1% and 90.8% for the advised cut, which reached
89.0% and 90.1% on all 10,000 test images, where the sample's own curve said 82.6% and
96.0% (docs/ADVISOR.md § The learning curve on more images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graft.advisor.advice import CutChoice
from graft.advisor.estimates import LearningCurve, power_law
from graft.advisor.measure import DecodedSample, select_sample
from graft.advisor.probe import holdout_hits
from graft.data import Sample

# The sample's own curve extrapolates at most this many times its images per class;
# beyond, the curve is measured on more images.
CURVE_MAX_SCALE = 4.0
# The share of the curve's images every subset is scored on, and the nested subsets of
# the rest it is fitted on.
HOLDOUT_FRACTION = 0.25
NESTED_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
# Resamples of the held-out images behind the prediction's interval.
BOOTSTRAP = 400


def extension(
    samples: Sequence[Sample],
    sample: DecodedSample,
    *,
    train_per_class: float,
    num_classes: int,
    max_images: int,
    seed: int,
) -> list[Sample]:
    """The images the curve adds to `sample`, interleaved class by class; none when the
    dataset is within CURVE_MAX_SCALE of the sample per class or the curve would not reach
    twice the sample. The same seeded shuffle as the sample's (select_sample), so the
    sample is a prefix of every class's share and the extension its continuation."""
    per_class = len(sample) / max(1, num_classes)
    if train_per_class <= CURVE_MAX_SCALE * per_class or max_images < 2 * len(sample):
        return []
    wider = select_sample(samples, max_per_class=max_images, max_images=max_images, seed=seed)
    have = {s.path for s in sample.samples}
    return [s for s in wider if s.path not in have]


def cut_columns(
    cut: CutChoice, stage: Sequence[torch.Tensor], grid: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The cut's features from each stage's pooled outputs, as depth.choose_depth joins
    them (globally pooled, or over the grid when the cut reads it)."""
    source = grid if cut.grid > 1 else stage
    return torch.cat([source[s - 1] for s in cut.stages], dim=1)


def nested_curve(
    features: torch.Tensor,
    labels: Sequence[int],
    num_classes: int,
    train_images: int,
    *,
    seed: int = 0,
) -> LearningCurve:
    """The power law of the probe's error fitted on nested prefixes (NESTED_FRACTIONS) of
    the first 1 - HOLDOUT_FRACTION of the rows, each scored on the rest, and extrapolated to
    `train_images`; its 90% interval from BOOTSTRAP resamples of the held-out rows (each
    resample rescoring every subset and refitting the law). The rows come interleaved class
    by class, so every prefix and the held-out tail are stratified."""
    n = len(labels)
    fit_rows = n - max(1, round(HOLDOUT_FRACTION * n))
    held = list(range(fit_rows, n))
    fractions, hits = [], []
    for fraction in NESTED_FRACTIONS:
        rows = max(num_classes, round(fraction * fit_rows))
        fractions.append(rows / fit_rows)
        hits.append(
            holdout_hits(features, labels, list(range(rows)), held, num_classes=num_classes)
        )
    scale = max(1.0, train_images / fit_rows)
    points = [(f, float(h.float().mean())) for f, h in zip(fractions, hits, strict=True)]
    exponent, predicted = power_law(points, fit_rows, scale)
    return LearningCurve(
        exponent,
        tuple(points),
        max(points[-1][1], predicted),
        f"{len(points)} nested subsets of {fit_rows} images, each scored on {len(held)} "
        "others, read at the cut beyond the sample for the curve",
        interval=_bootstrap(fractions, torch.stack(hits).float(), fit_rows, scale, seed),
    )


def _bootstrap(
    fractions: Sequence[float], hits: torch.Tensor, rows: int, scale: float, seed: int
) -> tuple[float, float]:
    """The 5th and 95th percentiles of the accuracy the law predicts at `scale` when the
    held-out images (columns of `hits`, one row per subset) are resampled with
    replacement; each prediction is at least its resample's last point, as above."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(hits.shape[1], (BOOTSTRAP, hits.shape[1]), generator=g)
    accuracy = hits[:, pick].mean(dim=2).T  # (BOOTSTRAP, subsets)
    predictions = []
    for row in accuracy.tolist():
        _, p = power_law(list(zip(fractions, row, strict=True)), rows, scale)
        predictions.append(max(row[-1], p))
    q = torch.quantile(torch.tensor(predictions), torch.tensor([0.05, 0.95]))
    return float(q[0]), float(q[1])

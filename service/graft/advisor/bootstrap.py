"""How sure the similarity is: a bootstrap over the images the signals read.

The similarity is a statistic of the sampled images (the lowest of calibrated signal scores,
graft.advisor.signals). Resampling those images with replacement and measuring again gives
its sampling spread without another forward pass: the logits are kept per image, and each
BatchNorm layer's input is kept summed per image (`ImageMoments`), from which a resample's
moments are weighted sums. All resamples are measured at once, as matrix products of their
draw counts. The interval is the central INTERVAL of RESAMPLES resampled similarities
(percentile bootstrap, seeded). A dataset whose interval straddles the matrix's
SIMILARITY_THRESHOLD is *borderline*: another sample of the same data could have put it in
the other column, so the column alone should not decide its plan (Advise's pilot measures
instead; the rationale says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graft.advisor.signals import (
    SIGNALS,
    ImageNetResponse,
    SignalDefinition,
    combine_scores,
    measure_signals,
)
from graft.plans.matrix import SIMILARITY_THRESHOLD

RESAMPLES = 200
INTERVAL = 0.9


def similarity_interval(
    response: ImageNetResponse,
    definitions: Sequence[SignalDefinition] = SIGNALS,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The central INTERVAL of the similarity over `resamples` bootstrap resamples of the
    response's images, all measured at once by each signal's `resampled` (a test checks it
    equals measuring the resamples one by one); the signals are those the sample itself
    gave. None with fewer than two images or without per-image moments for its BatchNorm
    layers."""
    n = response.num_images
    if n < 2 or len(response.per_image) != len(response.batchnorm):
        return None
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (resamples, n), generator=generator)
    weights = torch.zeros(resamples, n, dtype=torch.float64)
    weights.scatter_add_(1, index, torch.ones_like(weights))
    measured = {s.name for s in measure_signals(response, definitions)}
    scores = []
    for d in definitions:
        values = d.resampled(response, weights) if d.name in measured else None
        if values is not None:
            scores.append(d.calibration.scores(values))
    if not scores:
        return None
    similarity = combine_scores(torch.stack(scores))
    tail = (1.0 - INTERVAL) / 2
    low, high = torch.quantile(similarity, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return float(low), float(high)


def is_borderline(interval: tuple[float, float] | None) -> bool:
    """Whether the interval reaches both sides of SIMILARITY_THRESHOLD."""
    return interval is not None and interval[0] < SIMILARITY_THRESHOLD <= interval[1]

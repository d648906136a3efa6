"""Calibration: how far a model's confidence is from its accuracy, and temperature scaling.

- `expected_calibration_error`: the top-1 confidences are put in `bins` equal-width bins;
  ECE is the mean over bins of |accuracy - mean confidence|, weighted by the bin's share of
  the images (Guo et al., "On Calibration of Modern Neural Networks", 2017, eq. 3).
- `reliability_bins`: the same bins, for a reliability diagram.
- `fit_temperature`: the one scalar T > 0 that minimises the cross-entropy of
  softmax(logits / T) on held-out images (Guo et al. § 4.2). Dividing by T changes no
  argmax, so accuracy stays what it was; only the probabilities move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BINS = 15
# Bounds of the fitted temperature: outside them the validation split is too small or too
# degenerate (e.g. every image right with a huge margin) for the fit to mean anything.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: [lower, upper), its images, their accuracy and mean confidence
    (both 0 for an empty bin)."""

    lower: float
    upper: float
    count: int
    accuracy: float
    confidence: float


def reliability_bins(
    probabilities: torch.Tensor, targets: torch.Tensor, bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """The top-1 confidences of `probabilities` (N x C) against `targets` (N) in `bins`
    equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last bin."""
    if bins < 1:
        raise ValueError("bins must be at least 1")
    probabilities = probabilities.detach().double().cpu()
    targets = targets.detach().long().cpu()
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == targets).double()
    index = (confidence * bins).long().clamp(max=bins - 1)
    out = []
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=count,
                accuracy=float(correct[member].mean()) if count else 0.0,
                confidence=float(confidence[member].mean()) if count else 0.0,
            )
        )
    return out


def expected_calibration_error(
    probabilities: torch.Tensor, targets: torch.Tensor, bins: int = DEFAULT_BINS
) -> float:
    """ECE of `probabilities` (N x C) against `targets` (N); 0 for no images."""
    n = probabilities.shape[0]
    if n == 0:
        return 0.0
    return sum(
        b.count / n * abs(b.accuracy - b.confidence)
        for b in reliability_bins(probabilities, targets, bins)
    )


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T minimising the mean cross-entropy of softmax(logits / T) against
    `targets`, within [MIN_TEMPERATURE, MAX_TEMPERATURE]; 1.0 for no images.

    The loss is convex in 1/T, so a bounded one-dimensional search over log T finds the
    optimum: golden-section search to a relative precision of 1e-4 (about 40 evaluations,
    each one pass over N x C numbers)."""
    if logits.shape[0] == 0:
        return 1.0
    logits = logits.detach().double().cpu()
    targets = targets.detach().long().cpu()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), targets))

    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > 1e-4:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)

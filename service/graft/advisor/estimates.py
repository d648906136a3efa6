"""Advise's accuracy and cost estimates: what each strategy is expected to reach on the
whole dataset, from what was measured on the sample (docs/ADVISOR.md)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft.advisor.advice import SEED, CutChoice, PilotResult, ProbeResult, StrategyEstimate
from graft.advisor.probe import linear_probe, stratified_folds
from graft.domain import Strategy

# Feature extraction replaces the matrix's fine-tuning when its probe is at most this much
# below the pilot fine-tune's accuracy on the same split (it costs a fraction of the time;
# choice.departs).
FE_MARGIN = 0.01

# The largest dataset (images per class) on which feature extraction may replace the
# matrix's fine-tuning: the sizes where frozen features on the measured cut were measured
# to keep up with fine-tuning on all the data, although a pilot on the sample cannot show
# what fine-tuning gains from more. Fashion-MNIST, 10,000 test images (docs/ADVISOR.md §
# Feature extraction on the cut at 1,000 and 3,000 per class): at 1,000 per class Advise's
# own cut (stages 5+6+7, 2x2 grid) 89.0% in 19 s against the advised full fine-tune's 89.1%
# in 112 s (bench/departure_sizes.py); stages 6+7 on the grid 88.7% at 1,000 and 90.1% in
# 59 s at 3,000 against 90.5% in 253 s. Within FE_MARGIN at every point; beyond 3,000
# nothing was measured and the matrix stands.
DEPARTURE_MAX_PER_CLASS = 3000


def fine_tune_range(
    pilot_accuracy: float, pilot_images: int, probe_accuracy: float, extra: float
) -> tuple[float, float]:
    """Accuracy range of a fine-tuning strategy from its pilot: the pilot's accuracy ± its
    binomial standard error on `pilot_images` held-out images, the high end raised by the
    pilot's lead over the probe on the same split and by `extra` (the learning curve's gain
    for the rest of the data). Without the standard error a pilot behind the probe with a
    flat learning curve gave a range of width zero ("74.0% to 74.0%")."""
    p = min(1.0, max(0.0, pilot_accuracy))
    se = math.sqrt(p * (1.0 - p) / pilot_images) if pilot_images > 0 else 0.0
    lead = max(0.0, p - probe_accuracy)
    return max(0.0, p - se), min(1.0, p + max(se, lead + extra))


# The learning curve is fitted on these fractions of the sample (each a stratified,
# seeded subset probed k-fold like the whole), and the whole sample.
CURVE_FRACTIONS = (0.25, 0.5)


@dataclass(frozen=True)
class LearningCurve:
    """The probe's error against the number of training images, fitted as a power law
    err = a · n^-b (a straight line in log-log) on subsets of the sample and all of it,
    extrapolated to the dataset's size: the accuracy it predicts there."""

    exponent: float  # b; 0 when the error did not fall with more images
    points: tuple[tuple[float, float], ...]  # (fraction of the images, probe accuracy)
    predicted: float  # the accuracy at the dataset's size (at least the sample's)
    basis: str = ""  # what it was fitted on, for the estimate's basis
    # The 90% interval of `predicted` when the curve's scores were resampled (curve_sample
    # bootstraps its held-out images); None for the sample's own curve.
    interval: tuple[float, float] | None = None

    def gain(self, full: float) -> float:
        return max(0.0, self.predicted - full)


def learning_curve(
    features: torch.Tensor,
    labels: Sequence[int],
    num_classes: int,
    full: ProbeResult,
    scale: float,
) -> LearningCurve:
    """Probe `CURVE_FRACTIONS` of the sample (`full` is the probe of all of it, already
    measured), fit log(error) against log(images) by least squares, and extrapolate to
    `scale` times the sample. Error, not accuracy, follows a power law in the number of
    training examples (Hestness et al., "Deep learning scaling is predictable,
    empirically", 2017); the linear gain per doubling it replaces was measured 5-13
    points low at Fashion-MNIST 500/class (docs/ADVISOR.md § Accuracy estimates)."""
    n = len(labels)
    points = [(1.0, full.accuracy)]
    for fraction in CURVE_FRACTIONS:
        parts = round(1 / fraction)
        idx = [i for i, f in enumerate(stratified_folds(labels, parts, SEED)) if f == 0]
        sub = [labels[i] for i in idx]
        if min(Counter(sub).values()) < 2 or len(set(sub)) < num_classes:
            continue
        probe = linear_probe(features[idx], sub, num_classes=num_classes, seed=SEED)
        points.append((fraction, probe.accuracy))
    points.sort()
    exponent, predicted = power_law(points, n, scale)
    return LearningCurve(
        exponent,
        tuple(points),
        max(full.accuracy, predicted),
        f"{len(points)} subsets of the sample",
    )


def power_law(points: Sequence[tuple[float, float]], n: int, scale: float) -> tuple[float, float]:
    """(b, accuracy at `scale` times the sample) of err = a · size^-b fitted by least
    squares in log-log to (fraction of the `n` images, accuracy) points; (0, the last
    point's accuracy) when the error does not fall with size or there is nothing to fit.
    An error of 0 counts as half an image's worth (a log needs it above 0)."""
    last = points[-1][1]
    if len(points) < 2 or scale <= 1.0:
        return 0.0, last
    x = [math.log(f) for f, _ in points]
    y = [math.log(max(1.0 - a, 0.5 / (f * n))) for f, a in points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )
    if slope >= 0:
        return 0.0, last
    at_full = my + slope * (math.log(points[-1][0]) - mx)  # fitted log error, last point
    return -slope, 1.0 - math.exp(at_full + slope * math.log(scale))


# z of a two-sided 90% interval: the measured curve's interval is its 5th-95th percentile.
Z90 = 1.645


def validation_range(
    predicted: float, interval: tuple[float, float], num_val: int
) -> tuple[float, float]:
    """Where the validation accuracy a run reports should fall: the expected accuracy's
    interval widened, side by side in quadrature, by the 90% binomial spread of an
    accuracy measured on `num_val` images (2.5 points either way at 87% on 500 images)."""
    p = min(1.0, max(0.0, predicted))
    spread = Z90 * math.sqrt(p * (1.0 - p) / num_val) if num_val > 0 else 0.0
    low = p - math.hypot(max(0.0, p - interval[0]), spread)
    high = p + math.hypot(max(0.0, interval[1] - p), spread)
    return max(0.0, low), min(1.0, high)


def strategy_estimates(
    cut: CutChoice,
    labels: Sequence[int],
    num_classes: int,
    *,
    sample_images: int,
    per_class: float,
    fine_tune: Strategy,
    pilot: PilotResult,
    probe_holdout: float,
    fe_seconds: float,
    ft_seconds: float,
    curve: LearningCurve | None = None,
    num_val: int = 0,
) -> tuple[StrategyEstimate, StrategyEstimate]:
    """Accuracy ranges of feature extraction and of `fine_tune`: measured on the sample
    (`labels`, `sample_images` of them), extended to the dataset's size (`per_class`) by
    the probe's learning curve (a power law of its error in the number of images): `curve`
    when it was measured on more images (curve_sample.py), else fitted on a quarter, half
    and all of the sample."""
    scale = max(1.0, per_class) / max(1.0, sample_images / num_classes)
    if curve is None:
        curve = learning_curve(cut.features, labels, num_classes, cut.probe, scale)
    extra = curve.gain(cut.probe.accuracy)
    fe_acc = cut.probe
    fe_range = (fe_acc.accuracy - fe_acc.std, fe_acc.accuracy + fe_acc.std + extra)
    fe_basis = (
        f"{fe_acc.folds}-fold linear probe of the cut on {sample_images} sampled images "
        f"± its spread over the folds; its learning curve (error ∝ images^-"
        f"{curve.exponent:.2f}, fitted on {curve.basis}) "
        f"adds {100 * extra:.1f} points at the dataset's {scale:.1f}× the images"
    )
    if curve.interval is not None:
        fe_range = validation_range(curve.predicted, curve.interval, num_val)
        fe_basis = (
            f"the linear probe's learning curve on the cut (error ∝ images^-"
            f"{curve.exponent:.2f}, fitted on {curve.basis}), extrapolated to the dataset's "
            f"training images: {100 * curve.predicted:.1f}%, its 90% interval from "
            f"resampling the held-out images, widened by the binomial spread of an accuracy "
            f"measured on the {num_val} validation images"
        )
    ft_low, ft_high = fine_tune_range(pilot.accuracy, pilot.val_images, probe_holdout, extra)
    ft_basis = (
        f"pilot: {pilot.epochs} epochs on {pilot.train_images} sampled images, scored on "
        f"{pilot.val_images}, ± its binomial standard error; the probe's learning curve "
        "for the rest of the data"
    )
    if curve.interval is not None and fe_range[1] > ft_high:
        # A pilot on a few hundred images cannot show what fine-tuning gains from twenty
        # times more: at Fashion-MNIST 500-3,000 per class the full fine-tune reached
        # 88.7-92.2% where its pilot-based range said about 69-82% (docs/ADVISOR.md § Large
        # datasets through the service). Training what feature extraction freezes, on the
        # whole dataset it can reach what the frozen features' curve predicts.
        ft_high = fe_range[1]
        ft_basis += (
            "; its high end raised to feature extraction's on the dataset's learning curve, "
            "which a pilot on the sample cannot see"
        )
    return (
        StrategyEstimate(
            Strategy.FEATURE_EXTRACTION,
            max(0.0, fe_range[0]),
            min(1.0, fe_range[1]),
            fe_seconds,
            fe_basis,
        ),
        StrategyEstimate(fine_tune, ft_low, min(1.0, ft_high), ft_seconds, ft_basis),
    )

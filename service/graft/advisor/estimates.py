"""Advise's accuracy and cost estimates: what each strategy is expected to reach on the
whole dataset, from what was measured on the sample (docs/ADVISOR.md)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from graft.advisor.advice import SEED, CutChoice, PilotResult, ProbeResult, StrategyEstimate
from graft.advisor.probe import linear_probe, stratified_folds
from graft.domain import Strategy

# Feature extraction replaces the matrix's fine-tuning on a small dataset when its probe is
# at most this much below the pilot fine-tune's accuracy on the same split (it costs a
# fraction of the time).
FE_MARGIN = 0.01


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


def learning_curve_gain(
    features: torch.Tensor, labels: Sequence[int], num_classes: int, full: ProbeResult
) -> float:
    """Probe accuracy gained from half the sample to all of it (both k-fold, same seed);
    `full` is the probe of all of it, already measured."""
    half_idx = [i for i, f in enumerate(stratified_folds(labels, 2, SEED)) if f == 0]
    half_labels = [labels[i] for i in half_idx]
    if min(Counter(half_labels).values()) < 2 or len(set(half_labels)) < num_classes:
        return 0.0
    half = linear_probe(features[half_idx], half_labels, num_classes=num_classes, seed=SEED)
    return full.accuracy - half.accuracy


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
) -> tuple[StrategyEstimate, StrategyEstimate]:
    """Accuracy ranges of feature extraction and of `fine_tune`: measured on the sample
    (`labels`, `sample_images` of them), extended to the dataset's size (`per_class`) by
    the probe's own learning curve (its gain from half the sample to all of it, per
    doubling)."""
    gain = learning_curve_gain(cut.features, labels, num_classes, cut.probe)
    doublings = max(0.0, math.log2(max(1.0, per_class) / max(1.0, sample_images / num_classes)))
    extra = max(0.0, gain) * doublings
    fe_acc = cut.probe
    return (
        StrategyEstimate(
            Strategy.FEATURE_EXTRACTION,
            max(0.0, fe_acc.accuracy - fe_acc.std),
            min(1.0, fe_acc.accuracy + fe_acc.std + extra),
            fe_seconds,
            f"{fe_acc.folds}-fold linear probe of the cut on {sample_images} sampled images, "
            f"+{100 * gain:.1f} points per doubling of the data for {doublings:.1f} doublings",
        ),
        StrategyEstimate(
            fine_tune,
            *fine_tune_range(pilot.accuracy, pilot.val_images, probe_holdout, extra),
            ft_seconds,
            f"pilot: {pilot.epochs} epochs on {pilot.train_images} sampled images, scored on "
            f"{pilot.val_images}, ± its binomial standard error; the probe's learning curve "
            "for the rest of the data",
        ),
    )

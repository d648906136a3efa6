"""Advise's accuracy estimates extend the sample's probe to the dataset's size along the
probe's learning curve, a power law of its error (graft.advisor.estimates)."""

from __future__ import annotations

import pytest
import torch

from graft.advisor.estimates import CURVE_FRACTIONS, learning_curve, power_law
from graft.advisor.probe import linear_probe


def test_an_exact_power_law_is_recovered_and_extrapolated() -> None:
    points = [(f, 1.0 - 0.2 * f**-0.5) for f in (0.25, 0.5, 1.0)]
    exponent, predicted = power_law(points, 400, 4.0)
    assert exponent == pytest.approx(0.5)
    assert predicted == pytest.approx(1.0 - 0.2 * 4.0**-0.5)  # 0.9


def test_no_gain_when_the_error_does_not_fall_or_there_is_no_more_data() -> None:
    rising = [(0.25, 0.9), (0.5, 0.88), (1.0, 0.85)]
    assert power_law(rising, 400, 8.0) == (0.0, 0.85)
    assert power_law([(0.5, 0.7), (1.0, 0.8)], 400, 1.0) == (0.0, 0.8)
    assert power_law([(1.0, 0.8)], 400, 8.0) == (0.0, 0.8)


def test_a_perfect_probe_counts_half_an_image_of_error() -> None:
    exponent, predicted = power_law([(0.25, 0.9), (0.5, 1.0), (1.0, 1.0)], 200, 4.0)
    assert exponent > 0 and 0.99 < predicted <= 1.0


def test_the_curve_probes_subsets_of_the_sample() -> None:
    g = torch.Generator().manual_seed(0)
    labels = [i % 4 for i in range(400)]
    x = torch.randn(4, 16, generator=g)[labels] + 2.5 * torch.randn(400, 16, generator=g)
    full = linear_probe(x, labels)
    curve = learning_curve(x, labels, 4, full, scale=10.0)
    assert [f for f, _ in curve.points] == [*CURVE_FRACTIONS, 1.0]
    assert curve.points[-1][1] == full.accuracy
    assert curve.predicted >= full.accuracy and curve.gain(full.accuracy) >= 0.0
    # No more data than the sample: nothing to add.
    assert learning_curve(x, labels, 4, full, scale=1.0).gain(full.accuracy) == 0.0

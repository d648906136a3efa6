"""graft.training.calibration: ECE, reliability bins and the fitted temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graft.training.calibration import (
    MAX_TEMPERATURE,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def test_ece_by_hand() -> None:
    # Two images at confidence 0.95 (one right) and two at 0.65 (both right), 10 bins:
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.65| * 2/4 = 0.4.
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    targets = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx(0.4)
    bins = reliability_bins(probs, targets, bins=10)
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert bins[9].accuracy == pytest.approx(0.5) and bins[9].confidence == pytest.approx(0.95)
    assert bins[0].accuracy == 0.0 and bins[0].confidence == 0.0


def test_confidence_one_falls_in_the_last_bin() -> None:
    bins = reliability_bins(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bins=4)
    assert [b.count for b in bins] == [0, 0, 0, 1]


def test_perfectly_calibrated_model_has_small_ece() -> None:
    # Labels drawn from the model's own probabilities: calibrated by construction.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 5, generator=g) * 2
    probs = logits.softmax(1)
    targets = torch.multinomial(probs, 1, generator=g).squeeze(1)
    assert expected_calibration_error(probs, targets) < 0.02
    # ... so the fitted temperature is close to 1.
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_fit_recovers_the_temperature_labels_were_drawn_at(true_t: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20_000, 10, generator=g) * 3
    targets = torch.multinomial((logits / true_t).softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(logits, targets)
    assert t == pytest.approx(true_t, rel=0.05)

    # The fit minimises the loss: nearby temperatures do worse, and ECE improves.
    def nll(temp: float) -> float:
        return float(F.cross_entropy(logits / temp, targets))

    assert nll(t) <= min(nll(t * 1.1), nll(t / 1.1))
    before = expected_calibration_error(logits.softmax(1), targets)
    after = expected_calibration_error((logits / t).softmax(1), targets)
    assert after < before


def test_fit_is_bounded_and_defined_on_degenerate_input() -> None:
    # Every image right by a huge margin: the loss falls as T -> 0, the fit stops at its
    # bound instead of running away; no images: no scaling.
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    t = fit_temperature(logits, torch.tensor([0, 1]))
    assert 0 < t < 0.06
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) == 1.0
    # Every image wrong: the loss falls as T grows; bounded above.
    assert fit_temperature(logits, torch.tensor([1, 0])) == pytest.approx(MAX_TEMPERATURE, rel=1e-3)
    assert math.isfinite(expected_calibration_error(torch.empty(0, 3), torch.empty(0)))

"""The similarity's bootstrap interval (graft.advisor.bootstrap): per-image BatchNorm sums
rebuild the recorded moments, a resample is measured like the sample, the interval is
seeded and contains the estimate, and borderline means straddling the threshold."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from graft.advisor.bootstrap import is_borderline, similarity_interval
from graft.advisor.signals import (
    SIGNALS,
    BatchNormRecorder,
    ImageNetResponse,
    combine,
    combine_scores,
    measure_signals,
)


def resample(response: ImageNetResponse, index: torch.Tensor) -> ImageNetResponse:
    """The response the images `index` (with repeats) would have given: their logits, and
    every BatchNorm layer's moments over their positions."""
    weights = torch.bincount(index, minlength=response.num_images).double()
    moments = []
    for bn, per_image in zip(response.batchnorm, response.per_image, strict=True):
        n = float(weights.sum()) * per_image.positions
        mean = weights @ per_image.sums / n
        var = (weights @ per_image.sumsq / n - mean**2).clamp_min(0.0)
        moments.append(replace(bn, mean=mean, var=var))
    return replace(response, logits=response.logits[index], batchnorm=moments, per_image=[])


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6)
    ).eval()
    for m in net.modules():  # running statistics unlike the inputs', as a pretrained net's are
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net


def _response(images: torch.Tensor) -> ImageNetResponse:
    net = _net()
    with torch.inference_mode(), BatchNormRecorder(net, grid=4) as rec:
        for batch in images.split(5):  # several batches, as the Advise pass runs
            net(batch)
    logits = torch.randn(len(images), 10, generator=torch.Generator().manual_seed(1))
    return ImageNetResponse("test", 16, logits, rec.moments(), rec.per_image())


def test_per_image_sums_rebuild_the_recorded_moments() -> None:
    images = torch.randn(12, 3, 16, 16)
    response = _response(images)
    assert len(response.per_image) == len(response.batchnorm) == 2
    same = resample(response, torch.arange(12))
    # Both sum float32 activations (per batch, or per image), so they agree to float32's
    # precision, not exactly.
    for a, b in zip(response.batchnorm, same.batchnorm, strict=True):
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.var, b.var, rtol=1e-6, atol=1e-7)
    assert abs(combine(measure_signals(same)) - combine(measure_signals(response))) < 1e-6


def test_a_resample_weighs_repeated_images() -> None:
    images = torch.randn(12, 3, 16, 16)
    response = _response(images)
    index = torch.tensor([0, 0, 0, 5, 7, 7, 1, 2, 3, 4, 4, 11])
    expected = _response(images[index])  # recorded afresh over the repeated images
    got = resample(response, index)
    for a, b in zip(expected.batchnorm, got.batchnorm, strict=True):
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a.var, b.var, rtol=1e-6, atol=1e-6)


def test_the_interval_is_seeded_and_holds_the_estimate() -> None:
    response = _response(
        torch.randn(30, 3, 16, 16) * torch.linspace(0.2, 3, 30)[:, None, None, None]
    )
    similarity = combine(measure_signals(response))
    interval = similarity_interval(response, resamples=100)
    assert interval is not None
    low, high = interval
    assert low <= similarity <= high and low < high
    assert similarity_interval(response, resamples=100) == interval


def test_identical_images_have_no_spread() -> None:
    one = torch.randn(1, 3, 16, 16)
    response = _response(one.expand(10, -1, -1, -1).clone())
    response.logits = response.logits[:1].expand(10, -1).clone()
    interval = similarity_interval(response, resamples=50)
    assert interval is not None
    assert abs(interval[1] - interval[0]) < 1e-9


def test_borderline_means_straddling_the_threshold() -> None:
    assert is_borderline((0.4, 0.6)) and is_borderline((0.45, 0.5))
    assert not is_borderline((0.5, 0.7)) and not is_borderline((0.2, 0.49))
    assert not is_borderline(None)


def test_no_interval_without_per_image_moments() -> None:
    response = _response(torch.randn(6, 3, 16, 16))
    response.per_image = []
    assert similarity_interval(response) is None


def test_all_resamples_at_once_measure_like_one_by_one() -> None:
    response = _response(
        torch.randn(15, 3, 16, 16) * torch.linspace(0.5, 2, 15)[:, None, None, None]
    )
    index = torch.randint(15, (20, 15), generator=torch.Generator().manual_seed(0))
    weights = torch.zeros(20, 15, dtype=torch.float64).scatter_add_(
        1, index, torch.ones(20, 15, dtype=torch.float64)
    )
    one_by_one = torch.tensor([combine(measure_signals(resample(response, i))) for i in index])
    at_once = combine_scores(
        torch.stack(
            [d.calibration.scores(d.resampled(response, weights)) for d in SIGNALS]  # type: ignore[arg-type]
        )
    )
    torch.testing.assert_close(at_once, one_by_one.double(), rtol=1e-6, atol=1e-6)

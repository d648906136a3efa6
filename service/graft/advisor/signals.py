"""Similarity to ImageNet, measured through a pretrained network (docs/ADVISOR.md).

Each signal reads what one forward pass of the pretrained ImageNet network (with its
1000-class head) over the sample recorded — its logits and the moments of every BatchNorm
layer's input — and maps its raw value to a score in [0, 1] (1 = like ImageNet) with two
calibration anchors measured on real images (`bench/calibrate_signals.py`). The
similarity is the lowest of the scores (`combine`). New signals are one more entry in `SIGNALS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import torch
from torch import nn

EPS = 1e-12


@dataclass(frozen=True)
class Signal:
    """One measured similarity signal: the raw value and its score in [0, 1]."""

    name: str
    value: float
    score: float
    description: str


@dataclass(frozen=True)
class BatchNormMoments:
    """Per-channel moments of one BatchNorm layer's input over the sample, next to the
    layer's running statistics (which encode the pretraining data)."""

    name: str
    mean: torch.Tensor
    var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float


@dataclass(frozen=True)
class ImageMoments:
    """One BatchNorm layer's input summed per image (over the positions read): what the
    layer's moments over any resample of the images are made from (advisor/bootstrap.py)."""

    sums: torch.Tensor  # (n, C) float64
    sumsq: torch.Tensor  # (n, C) float64
    positions: int  # positions summed per image


@dataclass
class ImageNetResponse:
    """What the similarity signals read: one forward pass of the pretrained network."""

    backbone: str
    image_size: int
    logits: torch.Tensor  # (n, 1000), float32 on the CPU
    batchnorm: list[BatchNormMoments] = field(default_factory=list)
    per_image: list[ImageMoments] = field(default_factory=list)  # aligned with `batchnorm`

    @property
    def num_images(self) -> int:
        return int(self.logits.shape[0])


class BatchNormRecorder:
    """Forward pre-hooks on every nn.BatchNorm2d of `net` (timm's BatchNormAct2d included)
    that accumulate the per-channel mean and variance of the layer's input while `enabled`,
    on a grid of at most `grid` x `grid` positions per image (0 or less: every position).

    Use as a context manager; the hooks are removed on exit."""

    def __init__(self, net: nn.Module, grid: int = 16) -> None:
        self.grid = grid
        self.layers = [
            (name, m) for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
        ]
        self.enabled = True
        self._count = [0] * len(self.layers)
        self._sum: list[torch.Tensor | None] = [None] * len(self.layers)
        self._sumsq: list[torch.Tensor | None] = [None] * len(self.layers)
        self._image_sums: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._image_sumsq: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self._positions = [0] * len(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BatchNormRecorder:
        for i, (_, m) in enumerate(self.layers):
            self._handles.append(m.register_forward_pre_hook(self._hook(i)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if not self.enabled:
                return
            x = inputs[0].detach()
            # A regular grid of at most GRID x GRID positions per image: the per-channel
            # moments barely change (each is still a mean over thousands of values) and the
            # large early activations are no longer read twice over in full.
            step = max(1, min(x.shape[2], x.shape[3]) // self.grid) if self.grid > 0 else 1
            x = x[:, :, ::step, ::step].float()
            n = x.shape[0] * x.shape[2] * x.shape[3]
            # Per-batch moments in float32 (var_mean is stable), combined across batches in
            # float64 as sums of n·mean and n·(var + mean²).
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            s = (mean.double() * n).cpu()
            sq = ((var.double() + mean.double() ** 2) * n).cpu()
            # Per image too, for the bootstrap: sums over its positions, in float64.
            self._image_sums[i].append(x.sum(dim=(2, 3)).double().cpu())
            self._image_sumsq[i].append((x * x).sum(dim=(2, 3)).double().cpu())
            self._positions[i] = x.shape[2] * x.shape[3]
            prev_s, prev_sq = self._sum[i], self._sumsq[i]
            self._sum[i] = s if prev_s is None else prev_s + s
            self._sumsq[i] = sq if prev_sq is None else prev_sq + sq
            self._count[i] += n

        return hook

    def _recorded(self) -> list[int]:
        return [
            i
            for i, (_, m) in enumerate(self.layers)
            if self._sum[i] is not None and self._count[i] and m.running_mean is not None
        ]

    def per_image(self) -> list[ImageMoments]:
        """Each recorded layer's input summed per image, aligned with `moments()`."""
        return [
            ImageMoments(
                torch.cat(self._image_sums[i]), torch.cat(self._image_sumsq[i]), self._positions[i]
            )
            for i in self._recorded()
        ]

    def moments(self) -> list[BatchNormMoments]:
        out = []
        for i in self._recorded():
            name, m = self.layers[i]
            s, sq, n = self._sum[i], self._sumsq[i], self._count[i]
            assert s is not None and sq is not None and m.running_mean is not None
            assert m.running_var is not None
            mean = s / n
            out.append(
                BatchNormMoments(
                    name=name,
                    mean=mean,
                    var=(sq / n - mean**2).clamp_min(0.0),
                    running_mean=m.running_mean.detach().double().cpu(),
                    running_var=m.running_var.detach().double().cpu(),
                    eps=float(m.eps),
                )
            )
        return out


# --------------------------------------------------------------------------- raw values


def _max_probability(response: ImageNetResponse) -> torch.Tensor:
    return torch.softmax(response.logits.double(), dim=1).max(dim=1).values


def imagenet_confidence(response: ImageNetResponse) -> float | None:
    """Mean over the sample of the largest softmax probability of the 1000-class head."""
    if response.num_images == 0:
        return None
    return float(_max_probability(response).mean())


def imagenet_confidence_resampled(
    response: ImageNetResponse, weights: torch.Tensor
) -> torch.Tensor | None:
    """`imagenet_confidence` of each resample: `weights` (R, n) counts each image's draws."""
    if response.num_images == 0:
        return None
    return weights @ _max_probability(response) / weights.sum(dim=1)


def _log_shift(bn: BatchNormMoments, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log(1 + the mean over channels (the last dimension) of the symmetric KL divergence
    between N(mean, var) and the layer's N(running mean, running var))."""
    vs = var + bn.eps
    vr = bn.running_var + bn.eps
    d2 = (mean - bn.running_mean) ** 2
    sym_kl = 0.5 * (vs / vr + vr / vs - 2.0) + 0.5 * d2 * (1.0 / vs + 1.0 / vr)
    return torch.log1p(sym_kl.mean(dim=-1))


def batchnorm_shift(response: ImageNetResponse) -> float | None:
    """How far the sample's activation statistics are from ImageNet's, over all BatchNorm
    layers: for each layer, the mean over channels of the symmetric KL divergence between
    the Gaussians N(sample mean, sample var) and N(running mean, running var); then the mean
    over layers of log(1 + that). None for a network without BatchNorm."""
    if not response.batchnorm:
        return None
    per_layer = [float(_log_shift(bn, bn.mean, bn.var)) for bn in response.batchnorm]
    return sum(per_layer) / len(per_layer)


def batchnorm_shift_resampled(
    response: ImageNetResponse, weights: torch.Tensor
) -> torch.Tensor | None:
    """`batchnorm_shift` of each resample (`weights` (R, n)), its moments rebuilt from the
    per-image sums; None without them."""
    if not response.batchnorm or len(response.per_image) != len(response.batchnorm):
        return None
    draws = weights.sum(dim=1, keepdim=True)
    per_layer = []
    for bn, image in zip(response.batchnorm, response.per_image, strict=True):
        n = draws * image.positions
        mean = weights @ image.sums / n
        var = (weights @ image.sumsq / n - mean**2).clamp_min(0.0)
        per_layer.append(_log_shift(bn, mean, var))
    return torch.stack(per_layer, dim=1).mean(dim=1)


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Calibration:
    """Two anchors: the raw value that scores 1 (like the natural photos measured) and the
    one that scores 0 (like grayscale glyphs); linear in between, clipped to [0, 1]."""

    like_imagenet: float
    unlike_imagenet: float

    def score(self, value: float) -> float:
        span = self.like_imagenet - self.unlike_imagenet
        return min(1.0, max(0.0, (value - self.unlike_imagenet) / span))

    def scores(self, values: torch.Tensor) -> torch.Tensor:
        """`score` of each value."""
        span = self.like_imagenet - self.unlike_imagenet
        return ((values - self.unlike_imagenet) / span).clamp(0.0, 1.0)


@dataclass(frozen=True)
class SignalDefinition:
    name: str
    description: str
    compute: Callable[[ImageNetResponse], float | None]
    calibration: Calibration
    # The raw value of R resamples of the images at once, from draw counts (R, n): what
    # the bootstrap interval (advisor/bootstrap.py) reads.
    resampled: Callable[[ImageNetResponse, torch.Tensor], torch.Tensor | None]


# Anchors measured with efficientnet_lite0 at its 224 px pretraining resolution; the
# measurements, the command that produced them and the reasons are in docs/ADVISOR.md.
SIGNALS: tuple[SignalDefinition, ...] = (
    SignalDefinition(
        name="imagenet_confidence",
        description=(
            "mean max-softmax probability of the pretrained 1000-class ImageNet head on the "
            "sample (high: the network recognises ImageNet things)"
        ),
        compute=imagenet_confidence,
        calibration=Calibration(like_imagenet=0.40, unlike_imagenet=0.08),
        resampled=imagenet_confidence_resampled,
    ),
    SignalDefinition(
        name="batchnorm_shift",
        description=(
            "mean over BatchNorm layers of log(1 + mean symmetric KL) between the sample's "
            "per-channel activation statistics and the layers' ImageNet running statistics "
            "(low: activations look like ImageNet's)"
        ),
        compute=batchnorm_shift,
        calibration=Calibration(like_imagenet=0.15, unlike_imagenet=1.70),
        resampled=batchnorm_shift_resampled,
    ),
)


def measure_signals(
    response: ImageNetResponse, definitions: Sequence[SignalDefinition] = SIGNALS
) -> list[Signal]:
    """Every signal the response supports, in `definitions` order."""
    out = []
    for d in definitions:
        value = d.compute(response)
        if value is None or not math.isfinite(value):
            continue
        out.append(
            Signal(
                name=d.name,
                value=value,
                score=d.calibration.score(value),
                description=(
                    f"{d.description}; {response.backbone} at {response.image_size} px "
                    f"on {response.num_images} images"
                ),
            )
        )
    return out


def combine(signals: Sequence[Signal]) -> float:
    """The similarity: the lowest of the signals' scores (0.0 when there is none)."""
    if not signals:
        return 0.0
    return float(combine_scores(torch.tensor([[s.score] for s in signals])))


def combine_scores(scores: torch.Tensor) -> torch.Tensor:
    """`combine` over the first dimension of (signals, ...) scores: their minimum. Each
    signal can be fooled in one direction only — the ImageNet head is confidently wrong on
    retinas and the Moon (confidence scores 1.0 and 0.85), stained tissue has ImageNet-like
    BatchNorm statistics (0.68) — so a dataset is like ImageNet only as far as *both* say
    so; their mean called the retina and astronomy sets similar (0.70, 0.64).
    docs/ADVISOR.md § Domains far from photos has the measurements."""
    return scores.amin(dim=0)

"""Similarity to ImageNet, measured through a pretrained network (docs/ADVISOR.md).

Each signal reads what one forward pass of the pretrained ImageNet network (with its
1000-class head) over the sample recorded — its logits and the moments of every BatchNorm
layer's input — and maps its raw value to a score in [0, 1] (1 = like ImageNet) with two
calibration anchors measured on real images (`bench/calibrate_signals.py`). The
similarity is the mean of the scores. New signals are one more entry in `SIGNALS`.
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


@dataclass
class ImageNetResponse:
    """What the similarity signals read: one forward pass of the pretrained network."""

    backbone: str
    image_size: int
    logits: torch.Tensor  # (n, 1000), float32 on the CPU
    batchnorm: list[BatchNormMoments] = field(default_factory=list)

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
            prev_s, prev_sq = self._sum[i], self._sumsq[i]
            self._sum[i] = s if prev_s is None else prev_s + s
            self._sumsq[i] = sq if prev_sq is None else prev_sq + sq
            self._count[i] += n

        return hook

    def moments(self) -> list[BatchNormMoments]:
        out = []
        for i, (name, m) in enumerate(self.layers):
            s, sq, n = self._sum[i], self._sumsq[i], self._count[i]
            if s is None or sq is None or n == 0 or m.running_mean is None:
                continue
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


def imagenet_confidence(response: ImageNetResponse) -> float | None:
    """Mean over the sample of the largest softmax probability of the 1000-class head."""
    if response.num_images == 0:
        return None
    p = torch.softmax(response.logits.double(), dim=1)
    return float(p.max(dim=1).values.mean())


def batchnorm_shift(response: ImageNetResponse) -> float | None:
    """How far the sample's activation statistics are from ImageNet's, over all BatchNorm
    layers: for each layer, the mean over channels of the symmetric KL divergence between
    the Gaussians N(sample mean, sample var) and N(running mean, running var); then the mean
    over layers of log(1 + that). None for a network without BatchNorm."""
    if not response.batchnorm:
        return None
    per_layer = []
    for bn in response.batchnorm:
        vs = bn.var + bn.eps
        vr = bn.running_var + bn.eps
        d2 = (bn.mean - bn.running_mean) ** 2
        sym_kl = 0.5 * (vs / vr + vr / vs - 2.0) + 0.5 * d2 * (1.0 / vs + 1.0 / vr)
        per_layer.append(math.log1p(float(sym_kl.mean())))
    return sum(per_layer) / len(per_layer)


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


@dataclass(frozen=True)
class SignalDefinition:
    name: str
    description: str
    compute: Callable[[ImageNetResponse], float | None]
    calibration: Calibration


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
    """The similarity: the mean of the signals' scores (0.0 when there is none)."""
    if not signals:
        return 0.0
    return sum(s.score for s in signals) / len(signals)

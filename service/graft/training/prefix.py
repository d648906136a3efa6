"""Partial fine-tuning without augmentation: the frozen stages computed once.

Under partial fine-tuning the stages below the trained ones are frozen and in eval mode
(strategies.set_train_mode), so without augmentation every image's output of the last
frozen stage is the same in every epoch. It is computed once for the training and the
validation images, kept in memory, and every epoch then runs only the trained stages and
the head on it: what feature extraction does for the whole body (features.py), here for
the frozen part of it. The weights, the batches (the same shuffled order over the same
number of images) and so the trained model are those of the run without the cache, up to
float rounding; what changes is that no epoch after the first decodes, transforms or runs
the frozen stages again.

It applies when the body is the plain sequence of its stages' modules followed by its
pooling (timm's `forward_head`), which is checked on real images before it is used: the
EfficientNet-Lite backbones are; a network with work between its stages (torchvision's
ResNet: the stem's ReLU and max-pool) is not, and trains as before. And when the cache
fits MAX_CACHE_BYTES; under several ranks (distributed.py) it is not used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from graft.backbones.spec import GraftModel
from graft.data import Sample
from graft.data.transforms import Transform
from graft.domain import Strategy, TrainingPlan
from graft.training.features import compute_features
from graft.training.strategies import frozen_stage_indices

# The frozen stages' outputs kept in memory for a run, at most (training and validation
# images together, float32).
MAX_CACHE_BYTES = 2 * 1024**3
# A body whose stages, run in sequence, differ from its own forward by more than this is
# not a plain sequence.
TOLERANCE = 1e-4


class Suffix(nn.Module):
    """The trained part of a partially fine-tuned model: the modules of its trained stages
    in order, the body's pooling and the head, reading the last frozen stage's output. It
    shares the model's parameters (no copies), so training it trains the model."""

    def __init__(self, model: GraftModel, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(modules)
        self.head = model.head
        self._pool: Callable[[torch.Tensor], torch.Tensor] = model.body.forward_head  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._pool(_run(self.stages, x)))


def _stage_modules(model: GraftModel, stages: Sequence[Sequence[str]]) -> list[nn.Module]:
    return [model.body.get_submodule(name) for stage in stages for name in stage]


def _run(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def why_not(plan: TrainingPlan, distributed: bool) -> str:
    """Why this plan's frozen stages cannot be cached ("" when they can, as far as the plan
    tells: the body and the memory are checked by `split`)."""
    if plan.strategy != Strategy.PARTIAL_FINE_TUNE:
        return "only partial fine-tuning has stages that stay frozen"
    if plan.augmentation:
        return "augmentation changes every image each epoch"
    if distributed:
        return "several ranks train the job"
    return ""


def split(
    model: GraftModel, plan: TrainingPlan, probe: torch.Tensor, images: int
) -> tuple[list[nn.Module], Suffix] | str:
    """The frozen stages' modules and the Suffix that trains, or why not: no frozen stage,
    a body that is not the sequence of its stages (checked on `probe`, a batch of real
    inputs on the model's device), or a cache of `images` outputs over MAX_CACHE_BYTES."""
    frozen = len(frozen_stage_indices(model, plan))
    if frozen == 0:
        return "no stage is frozen"
    if not callable(getattr(model.body, "forward_head", None)):
        return "the body has no separate pooling to run the trained stages into"
    stages = model.spec.stages
    prefix = _stage_modules(model, stages[:frozen])
    suffix = Suffix(model, _stage_modules(model, stages[frozen:]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cut = _run(prefix, probe)
            same = torch.allclose(suffix(cut), model(probe), atol=TOLERANCE, rtol=TOLERANCE)
    finally:
        model.train(was_training)
    if not same:
        return "the body does more than run its stages in sequence"
    per_image = cut[0].numel() * 4
    if per_image * images > MAX_CACHE_BYTES:
        return (
            f"{images} images' outputs of stage {frozen} would take "
            f"{per_image * images / 2**20:,.0f} MiB (at most {MAX_CACHE_BYTES / 2**20:,.0f})"
        )
    return prefix, suffix


def frozen_outputs(
    model: GraftModel,
    prefix: Sequence[nn.Module],
    samples: Sequence[Sample],
    transform: Transform,
    *,
    batch_size: int,
    device: torch.device,
    should_stop: Callable[[], bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the last frozen stage's output, the label) of every sample, in order, on the CPU:
    feature extraction's pass (features.compute_features) with the frozen stages in place
    of the model's features, its inference tensors cloned for training to read."""
    x, y = compute_features(
        model,
        samples,
        transform,
        batch_size=batch_size,
        device=device,
        should_stop=should_stop,
        forward=functools.partial(_run, prefix),
        what="the frozen stages",
    )
    return x.clone(), y.clone()

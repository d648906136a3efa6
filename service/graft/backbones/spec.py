"""The model Graft trains and serves (`GraftModel`) and the pooling it reads features with.

The description of a pretrained backbone (`PretrainedSpec`, `WeightSource`) is plain data
in pretrained.py, importable without torch; it is re-exported here for existing imports.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from graft.backbones.pretrained import (
    MAX_FEATURE_GRID,
    PretrainedSpec,
    WeightSource,
    feature_grid_problem,
    feature_stages_problem,
)

__all__ = [
    "MAX_FEATURE_GRID",
    "GraftModel",
    "PretrainedSpec",
    "WeightSource",
    "feature_grid_problem",
    "feature_stages_problem",
    "global_average_pool",
    "grid_average_pool",
    "pooled_stage_outputs",
]


class _StopForward(Exception):
    """Raised by a forward hook once the last stage wanted has run: nothing above it needs
    computing. Private: pooled_stage_outputs always catches it."""


def global_average_pool(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C) spatial mean; an (N, C) output (a stage that ends after the
    network's own pooling, e.g. MobileNetV3's hidden Linear) is already pooled."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 2:
        return t
    raise RuntimeError(f"a stage output of shape {tuple(t.shape)} is neither NCHW nor NC")


def grid_average_pool(t: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C·grid²): the mean over each cell of a grid×grid partition of the
    map (adaptive average pooling: cells overlap by a row when H or W is not a multiple of
    grid), flattened channel by channel (channel c's cells are columns c·grid² … c·grid² +
    grid² − 1). grid 1 is global_average_pool. An (N, C) output, or a map smaller than the
    grid, repeats its values over the cells, as a 1×1 map would."""
    if grid == 1:
        return global_average_pool(t)
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    if t.ndim == 2:
        t = t[:, :, None, None]
    elif t.ndim != 4:
        raise RuntimeError(f"a stage output of shape {tuple(t.shape)} is neither NCHW nor NC")
    return F.adaptive_avg_pool2d(t, grid).flatten(1)


def pooled_stage_outputs(
    body: nn.Module, output_modules: Sequence[str], x: torch.Tensor, grid: int = 1
) -> list[torch.Tensor]:
    """Average-pooled outputs (N, C·grid²) of the dotted submodules `output_modules` of
    `body` on input `x`, in the order given: globally pooled (N, C) with grid 1, else over a
    grid×grid partition of the map (grid_average_pool). The forward stops right after the
    last of them to run (modules past it are not computed), so `body` returns nothing here.

    Each output is pooled inside its hook, at the moment the module returns: a later
    in-place operation (ResNet's `relu(inplace=True)` on bn1's output, say) cannot change
    what was recorded. Every hook is removed before returning, also on errors. The hooks act
    only in the calling thread: a forward of the same body in another thread meanwhile
    (Predict serialises them per model anyway) is neither recorded nor stopped.
    """
    wanted = list(output_modules)
    owner = threading.get_ident()
    pooled: dict[str, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if threading.get_ident() != owner:
                return
            if name in pooled:
                raise RuntimeError(f"{name} ran twice in one forward: its output is ambiguous")
            pooled[name] = grid_average_pool(output, grid)
            if len(pooled) == len(set(wanted)):
                raise _StopForward

        return hook

    try:
        for name in dict.fromkeys(wanted):
            handles.append(body.get_submodule(name).register_forward_hook(recorder(name)))
        with contextlib.suppress(_StopForward):
            body(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in wanted if n not in pooled]
    if missing:
        raise RuntimeError(f"modules {missing} did not run in the body's forward")
    return [pooled[n] for n in wanted]


class GraftModel(nn.Module):
    """A pretrained network with its classifier cut off (`body`, returning pooled features of
    width `spec.num_features`) and a freshly initialised Linear head grafted on.

    `feature_stages` (1-based, ascending; feature extraction only) cuts the features the
    head reads: the average-pooled outputs of those stages, concatenated in that order —
    pooled globally (`feature_grid` 1, the default), or over a feature_grid × feature_grid
    partition of each map (grid_average_pool), which keeps where in the image a feature
    fired. Empty (the default): the body's own pooled features, `body(x)`.

    The output of stage k is the output of module `stage_outputs[k-1]` of the body: by
    default the last module listed for the stage in `spec.stages`; create_model passes
    another where the network applies a parameter-free activation after that module
    outside every stage (see factory.stage_output_modules).

    State-dict keys are `body.*` and `head.*` (the cut adds none, and the body keeps every
    weight whatever the cut); a registered artifact is exactly this state dict, loaded back
    with `strict=True` into a model built with `pretrained=False` and the same cut.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        spec: PretrainedSpec,
        *,
        feature_stages: Sequence[int] = (),
        stage_outputs: Sequence[str] = (),
        feature_grid: int = 1,
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        self.feature_stages: tuple[int, ...] = tuple(int(s) for s in feature_stages)
        problem = feature_stages_problem(spec, self.feature_stages)
        if problem:
            raise ValueError(f"feature_stages: {problem}")
        self.feature_grid = int(feature_grid)
        problem = feature_grid_problem(self.feature_grid, self.feature_stages)
        if problem:
            raise ValueError(f"feature_grid: {problem}")
        self.stage_outputs: tuple[str, ...] = tuple(stage_outputs) or tuple(
            stage[-1] for stage in spec.stages
        )
        if len(self.stage_outputs) != len(spec.stages):
            raise ValueError(
                f"{len(self.stage_outputs)} stage outputs for {len(spec.stages)} stages"
            )

    def stage_modules(self) -> list[list[nn.Module]]:
        """The body's stages as module lists, input side first (see PretrainedSpec.stages)."""
        return [[self.body.get_submodule(name) for name in stage] for stage in self.spec.stages]

    def pooled_stage_features(
        self, x: torch.Tensor, stages: Sequence[int], grid: int = 1
    ) -> list[torch.Tensor]:
        """For each 1-based stage in `stages`, its average-pooled output: (N, C) pooled
        globally with grid 1, else (N, C·grid²) (grid_average_pool).

        The body runs only as far as the highest stage asked for. ValueError for a stage
        out of range; the order of `stages` is that of the result.
        """
        n = len(self.spec.stages)
        bad = [s for s in stages if not 1 <= s <= n]
        if bad:
            raise ValueError(f"{self.spec.name} has stages 1 to {n}, got {bad}")
        return pooled_stage_outputs(self.body, [self.stage_outputs[s - 1] for s in stages], x, grid)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: `body(x)`, or with a cut, the chosen stages' pooled outputs
        concatenated."""
        if not self.feature_stages:
            return self.body(x)
        return torch.cat(
            self.pooled_stage_features(x, self.feature_stages, self.feature_grid), dim=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

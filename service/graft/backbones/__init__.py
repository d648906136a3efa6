"""The backbone catalog: pretrained CNNs Graft adapts, where their weights come from, and
how a GraftModel is built from one. See docs/BACKBONES.md."""

from graft.backbones.catalog import DEFAULT_BACKBONE
from graft.backbones.factory import (
    build_imagenet_architecture,
    create_imagenet_model,
    create_model,
    import_weights,
    parameter_stages,
    stage_channels,
    stage_output_modules,
)
from graft.backbones.registry import backbone_names, get_spec, list_backbones, register_backbone
from graft.backbones.spec import GraftModel, PretrainedSpec, WeightSource
from graft.backbones.weights import (
    BackboneStatus,
    backbone_status,
    backbone_statuses,
    how_to_provide,
    weights_file_name,
    weights_path,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneStatus",
    "GraftModel",
    "PretrainedSpec",
    "WeightSource",
    "backbone_names",
    "backbone_status",
    "backbone_statuses",
    "build_imagenet_architecture",
    "create_imagenet_model",
    "create_model",
    "get_spec",
    "how_to_provide",
    "import_weights",
    "list_backbones",
    "parameter_stages",
    "register_backbone",
    "stage_channels",
    "stage_output_modules",
    "weights_file_name",
    "weights_path",
]

"""The backbone catalog: pretrained CNNs Graft adapts, where their weights come from, and
how a GraftModel is built from one. See docs/BACKBONES.md.

The catalog, its lookups by name and the spec (`PretrainedSpec`) are plain data and import
without torch, so graft.plans can validate a plan against a backbone in a torch-free
process. Everything that builds, loads or inspects a network (the names in `_LAZY`) is
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from graft.backbones.catalog import DEFAULT_BACKBONE
from graft.backbones.lookup import backbone_names, get_spec, list_backbones, register_backbone
from graft.backbones.pretrained import PretrainedSpec, WeightSource

if TYPE_CHECKING:
    from graft.backbones.factory import (
        build_imagenet_architecture,
        create_imagenet_model,
        create_model,
        import_weights,
        parameter_stages,
        stage_channels,
        stage_output_modules,
    )
    from graft.backbones.spec import GraftModel
    from graft.backbones.weights import (
        BackboneStatus,
        backbone_status,
        backbone_statuses,
        how_to_provide,
        weights_file_name,
        weights_path,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "build_imagenet_architecture",
            "create_imagenet_model",
            "create_model",
            "import_weights",
            "parameter_stages",
            "stage_channels",
            "stage_output_modules",
        ),
        "graft.backbones.factory",
    ),
    "GraftModel": "graft.backbones.spec",
    **dict.fromkeys(
        (
            "BackboneStatus",
            "backbone_status",
            "backbone_statuses",
            "how_to_provide",
            "weights_file_name",
            "weights_path",
        ),
        "graft.backbones.weights",
    ),
}


def __getattr__(name: str) -> Any:
    """The torch-bound names, imported when first asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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

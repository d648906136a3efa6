"""Catalog entries by name: `@register_backbone` records one, the lookups fail fast.

The entries themselves are in `catalog.py`. Like timm's `_registry.py`: each entry is a
no-argument function that returns the `PretrainedSpec`; registration order is catalog order
(what `ListBackbones` shows). (Not to be confused with `graft.registry`, the model registry.)
"""

from __future__ import annotations

from collections.abc import Callable

from graft.backbones.pretrained import PretrainedSpec
from graft.errors import NotFound, quote

SpecFn = Callable[[], PretrainedSpec]

_SPECS: dict[str, PretrainedSpec] = {}


def register_backbone(fn: SpecFn) -> SpecFn:
    """Record the spec `fn()` returns under its `name`. Returns `fn` unchanged.

    The function runs once, at registration: specs are plain data, cheap to build.
    """
    spec = fn()
    if not isinstance(spec, PretrainedSpec):
        raise TypeError(f"{fn.__qualname__} must return a PretrainedSpec, not {type(spec)}")
    if spec.name in _SPECS:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return fn


def list_backbones() -> list[PretrainedSpec]:
    """Every registered backbone, in catalog order."""
    return list(_SPECS.values())


def backbone_names() -> list[str]:
    return list(_SPECS)


def get_spec(name: str) -> PretrainedSpec:
    """The spec of backbone `name`; NotFound (listing the known names) otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        known = ", ".join(_SPECS)
        raise NotFound(f"unknown backbone {quote(name)}; known backbones: {known}") from None

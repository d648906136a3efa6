"""The backbone registry: a decorator records catalog entries, lookups fail fast.

Like timm's `_registry.py`: each entry is a no-argument function that returns the
`PretrainedSpec`; registration order is catalog order (what `ListBackbones` shows).
"""

from __future__ import annotations

from collections.abc import Callable

from graft.backbones.pretrained import PretrainedSpec
from graft.errors import NotFound, quote

SpecFn = Callable[[], PretrainedSpec]

_REGISTRY: dict[str, PretrainedSpec] = {}


def register_backbone(fn: SpecFn) -> SpecFn:
    """Record the spec `fn()` returns under its `name`. Returns `fn` unchanged.

    The function runs once, at registration: specs are plain data, cheap to build.
    """
    spec = fn()
    if not isinstance(spec, PretrainedSpec):
        raise TypeError(f"{fn.__qualname__} must return a PretrainedSpec, not {type(spec)}")
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return fn


def list_backbones() -> list[PretrainedSpec]:
    """Every registered backbone, in catalog order."""
    return list(_REGISTRY.values())


def backbone_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> PretrainedSpec:
    """The spec of backbone `name`; NotFound (listing the known names) otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise NotFound(f"unknown backbone {quote(name)}; known backbones: {known}") from None

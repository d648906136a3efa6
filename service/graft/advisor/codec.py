"""The Advice as versioned JSON: what the advisor lane stores as an ADVISE task's result
and the API decodes to answer the RPC. The lane thus speaks the domain, not protobuf (the
layer rules in docs/ARCHITECTURE.md: no advisor or training module imports graft.api).

The payload is `{"version": VERSION, "advice": {...}}`: every field of `Advice` and of
the dataclasses inside it, enums as their ints, tuples as lists. The encoding follows the
dataclasses' type hints, so a field added to one of them travels without a change here; a
field whose type has no JSON form fails loudly at encode time, except the ones in
`_LOCAL_ONLY`, which stay in the process that measured them.

A payload with a missing field decodes to the field's default (an older lane's answer); a
payload of another version is refused, so a server and a worker of different releases
fail clearly instead of answering with a wrong advice.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any

import torch

from graft.advisor.advice import Advice, CutChoice
from graft.errors import FailedPrecondition

VERSION = 1

# Fields measured for the advisor's own decisions that do not cross the process boundary,
# with the value they decode to: the chosen cut's features on the sample (a tensor).
_LOCAL_ONLY: dict[tuple[type, str], Any] = {
    (CutChoice, "features"): lambda: torch.empty(0),
}


def advice_to_json(advice: Advice) -> str:
    """`advice` as a versioned JSON document."""
    return json.dumps({"version": VERSION, "advice": _encode(advice)}, sort_keys=True)


def advice_from_json(text: str) -> Advice:
    """The Advice `advice_to_json` wrote. Raises FailedPrecondition on another version."""
    doc = json.loads(text)
    version = doc.get("version") if isinstance(doc, dict) else None
    if version != VERSION:
        raise FailedPrecondition(
            f"the advisor answered in advice format version {version!r}; this server reads "
            f"version {VERSION}: run a server and workers of the same release"
        )
    advice = _decode(Advice, doc["advice"])
    assert isinstance(advice, Advice)
    return advice


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            f.name: _encode(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if (cls, f.name) not in _LOCAL_ONLY
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"advice_to_json: no JSON form for {type(value).__name__}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float:
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp):
            raise TypeError(f"advice_from_json: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"advice_from_json: cannot decode a {tp!r}")


def _decode_dataclass(cls: type, value: dict[str, Any]) -> Any:
    hints = _hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if (cls, f.name) in _LOCAL_ONLY:
            kw[f.name] = _LOCAL_ONLY[cls, f.name]()
        elif f.name in value:
            kw[f.name] = _decode(hints[f.name], value[f.name])
    return cls(**kw)

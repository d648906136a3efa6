"""Build catalog backbones: the ImageNet network, and the GraftModel with a new head.

Head swap by description (timm's `_builder.load_pretrained` + `reset_classifier`): build
the architecture as published (1000 classes, random init), load the pretrained state dict
strictly, replace the module named `spec.classifier` by nn.Identity so the body returns
pooled features, and graft a freshly initialised nn.Linear(num_features, num_classes).
Any missing, unexpected or mis-shaped key is logged and refused, never passed over.

With a feature cut (`feature_stages`, feature extraction only) the head reads the pooled
outputs of chosen stages instead; its width is the sum of their channel counts
(`stage_channels`).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from graft.artifacts import write_artifact
from graft.backbones.convert import is_lukemelas_layout, lukemelas_to_timm
from graft.backbones.lookup import get_spec
from graft.backbones.spec import (
    GraftModel,
    PretrainedSpec,
    feature_grid_problem,
    feature_stages_problem,
    pooled_stage_outputs,
)
from graft.backbones.weights import (
    hash_prefix,
    how_to_provide,
    load_weights_file,
    read_state_dict,
    sha256_file,
    weights_file_name,
    weights_path,
)
from graft.errors import FailedPrecondition, GraftError, InvalidArgument

log = logging.getLogger(__name__)


def build_imagenet_architecture(spec: PretrainedSpec) -> nn.Module:
    """The network of `spec` with its 1000-class classifier, randomly initialised, in the
    exact structure of the pretrained file (Inception v3 still has its AuxLogits)."""
    library, _, arch = spec.architecture.partition(":")
    if library == "timm":
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=spec.num_imagenet_classes)
    if library == "torchvision":
        import torchvision.models

        kwargs: dict[str, object] = {"weights": None, "num_classes": spec.num_imagenet_classes}
        if arch == "inception_v3":
            # The official file has the auxiliary classifier; transform_input=True is what
            # torchvision sets with those weights (they expect inputs in [-1, 1], and it
            # converts ImageNet-normalised inputs to that). init_weights=False skips the slow
            # truncated-normal init that the loaded weights overwrite anyway.
            kwargs.update(aux_logits=True, init_weights=False, transform_input=True)
        module: nn.Module = getattr(torchvision.models, arch)(**kwargs)
        return module
    raise ValueError(f"{spec.name}: unknown architecture library in {spec.architecture!r}")


def _finish(net: nn.Module, spec: PretrainedSpec) -> nn.Module:
    """Structural changes after loading: drop Inception's auxiliary classifier (training
    only) so that the network always returns a plain tensor."""
    if spec.architecture == "torchvision:inception_v3":
        net.aux_logits = False  # type: ignore[assignment]
        net.AuxLogits = None  # type: ignore[assignment]
    return net


def _fit_state_dict(
    net: nn.Module, state_dict: Mapping[str, torch.Tensor], spec: PretrainedSpec
) -> dict[str, torch.Tensor]:
    """The state dict renamed to `net`'s layout; raises ValueError (after logging the
    missing, unexpected and mis-shaped keys) unless it fits `net` exactly."""
    sd = dict(state_dict)
    if is_lukemelas_layout(sd):
        blocks = getattr(net, "blocks", None)
        if not isinstance(blocks, nn.Sequential):
            raise ValueError(f"an EfficientNet (lukemelas) state dict does not fit {spec.name}")
        sd = lukemelas_to_timm(sd, [len(stage) for stage in blocks])  # type: ignore[arg-type]
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mis_shaped = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        log.error(
            "weights do not fit %s (%s): missing keys %s; unexpected keys %s; wrong shapes %s",
            spec.name,
            spec.architecture,
            missing,
            unexpected,
            mis_shaped,
        )

        def head(items: list[str]) -> str:
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

        problems = [
            f"{len(keys)} {what}: {head(keys)}"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", mis_shaped),
            )
            if keys
        ]
        raise ValueError(f"not {spec.architecture} weights: " + "; ".join(problems))
    return sd


def _load_pretrained(net: nn.Module, spec: PretrainedSpec, path: Path) -> None:
    try:
        state_dict = load_weights_file(path)
        fitted = _fit_state_dict(net, state_dict, spec)
    except Exception as e:
        raise FailedPrecondition(
            f"the weights file {path} of backbone {spec.name!r} cannot be used ({e}); "
            f"replace it: {how_to_provide(spec)}"
        ) from e
    net.load_state_dict(fitted, strict=True)
    log.info("loaded %s weights from %s", spec.name, path)


def _require_weights(spec: PretrainedSpec, weights_dir: Path | None) -> Path:
    path = weights_path(spec, weights_dir)
    if path is None:
        raise FailedPrecondition(
            f"no pretrained weights for backbone {spec.name!r} on this host; to provide "
            f"them: {how_to_provide(spec, weights_dir)}"
        )
    return path


def _replace_module(net: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = dotted.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def stage_output_modules(spec: PretrainedSpec) -> tuple[str, ...]:
    """Per stage, the dotted body module whose output is "the output of the stage".

    The last module listed for the stage, except where the network then applies a
    parameter-free activation outside every stage: there the stage's output is read after
    that activation, as the network itself goes on with it. In the catalog this is only
    torchvision's ResNet stem (conv1, bn1, then the top-level `relu`, used nowhere else).
    timm's bn1/bn2 are BatchNormAct2d with the activation inside; torchvision's
    Conv2dNormActivation, Inception's BasicConv2d and every other stage end in a module that
    includes its activation, in a pooling layer, or (ConvNeXt's stem) in a LayerNorm that
    the next stage reads as it is.
    """
    outputs = [stage[-1] for stage in spec.stages]
    if spec.architecture in ("torchvision:resnet18", "torchvision:resnet50"):
        outputs[0] = "relu"
    return tuple(outputs)


# Channel counts per stage depend on the architecture only: measured once per process.
_STAGE_CHANNELS: dict[str, tuple[int, ...]] = {}
_STAGE_CHANNELS_LOCK = threading.Lock()
# Big enough for every catalog entry (Inception v3 needs 75 px), small enough to be cheap.
_PROBE_SIZE = 96


@torch.inference_mode()
def _measure_stage_channels(body: nn.Module, spec: PretrainedSpec) -> tuple[int, ...]:
    """Per-stage widths of `body`, by one forward of a blank image in eval mode (so no
    BatchNorm statistic moves; the body's train/eval modes are restored after)."""
    modes = {m: m.training for m in body.modules()}
    body.eval()
    try:
        size = min(spec.input_size, _PROBE_SIZE)
        x = torch.zeros(1, 3, size, size)
        pooled = pooled_stage_outputs(body, stage_output_modules(spec), x)
    finally:
        for m, training in modes.items():
            m.training = training
    return tuple(int(p.shape[1]) for p in pooled)


def _stage_channels_of(body: nn.Module, spec: PretrainedSpec) -> tuple[int, ...]:
    with _STAGE_CHANNELS_LOCK:
        channels = _STAGE_CHANNELS.get(spec.name)
        if channels is None:
            channels = _STAGE_CHANNELS[spec.name] = _measure_stage_channels(body, spec)
    return channels


def stage_channels(name: str) -> tuple[int, ...]:
    """Channel count of each stage's output (input side first) of backbone `name`: the
    width of its pooled features in a feature cut. Measured once per process on a
    randomly initialised network. NotFound for an unknown name."""
    spec = get_spec(name)
    with _STAGE_CHANNELS_LOCK:
        channels = _STAGE_CHANNELS.get(spec.name)
    if channels is not None:
        return channels
    return _stage_channels_of(_finish(build_imagenet_architecture(spec), spec), spec)


def create_imagenet_model(name: str, weights_dir: Path | None = None) -> nn.Module:
    """The pretrained network with its original ImageNet classifier, in eval mode.

    FailedPrecondition (saying how to provide them) when the weights are not here."""
    spec = get_spec(name)
    path = _require_weights(spec, weights_dir)
    net = build_imagenet_architecture(spec)
    _load_pretrained(net, spec, path)
    return _finish(net, spec).eval()


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights_dir: Path | None = None,
    feature_stages: Sequence[int] = (),
    feature_grid: int = 1,
) -> GraftModel:
    """Backbone `name` with its classifier cut off and a fresh Linear head of `num_classes`.

    pretrained=False builds the same structure with random init (for tests, and to load a
    registered artifact into). `feature_stages` (1-based, ascending) cuts the features the
    head reads to those stages' pooled outputs, concatenated (see GraftModel), pooled over
    a `feature_grid` × `feature_grid` partition of each map (0 or 1: globally, so a plan's
    field passes as it is); the head's width is then the sum of their channel counts times
    feature_grid². NotFound for an unknown name; InvalidArgument (on `num_classes`,
    `plan.feature_stages` or `plan.feature_grid`) for a bad argument;
    FailedPrecondition when the pretrained weights are not here (the message says how to
    provide them).
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise InvalidArgument.of("num_classes", f"must be at least 1, got {num_classes}")
    cut = tuple(int(s) for s in feature_stages)
    problem = feature_stages_problem(spec, cut)
    if problem:
        raise InvalidArgument.of("plan.feature_stages", problem)
    grid = int(feature_grid) or 1
    problem = feature_grid_problem(grid, cut)
    if problem:
        raise InvalidArgument.of("plan.feature_grid", problem)
    path = _require_weights(spec, weights_dir) if pretrained else None
    net = build_imagenet_architecture(spec)
    if path is not None:
        _load_pretrained(net, spec, path)
    body = _finish(net, spec)
    old = _replace_module(body, spec.classifier, nn.Identity())
    if not isinstance(old, nn.Linear) or old.in_features != spec.num_features:
        raise RuntimeError(
            f"catalog bug: {spec.name}.{spec.classifier} is {old!r}, "
            f"not a Linear on {spec.num_features} features"
        )
    width = spec.num_features
    if cut:
        # Measured on this body before the head exists, so that the head's initialisation
        # draws from the seeded RNG exactly as without a cut.
        channels = _stage_channels_of(body, spec)
        width = sum(channels[s - 1] for s in cut) * grid * grid
    head = nn.Linear(width, num_classes)
    return GraftModel(
        body,
        head,
        spec,
        feature_stages=cut,
        stage_outputs=stage_output_modules(spec),
        feature_grid=grid,
    )


def parameter_stages(model: GraftModel) -> dict[str, int]:
    """Body parameter name → index of the stage that holds it (input side first).

    Raises ValueError when a body parameter is in no stage or in two: the spec's stages
    must cover the body exactly once (freezing by stage relies on it)."""
    stage_of: dict[str, int] = {}
    for index, stage in enumerate(model.spec.stages):
        for module_name in stage:
            module = model.body.get_submodule(module_name)
            for pname, _ in module.named_parameters():
                full = f"{module_name}.{pname}"
                if full in stage_of:
                    raise ValueError(f"{full} is in stages {stage_of[full]} and {index}")
                stage_of[full] = index
    uncovered = [n for n, _ in model.body.named_parameters() if n not in stage_of]
    if uncovered:
        raise ValueError(f"{model.spec.name}: parameters in no stage: {uncovered[:5]}")
    return stage_of


def import_weights(name: str, file: Path, weights_dir: Path) -> Path:
    """Check a weight file and copy it into `weights_dir` under the spec's file name.

    Checks, in order: the sha256 (against `spec.weights.sha256` when the catalog knows it,
    else against the hash prefix in the official file name, torch hub's convention); that
    the file is a state dict readable with `weights_only=True`; that it loads strictly into
    the architecture. InvalidArgument says which check failed. Returns the new path.
    """
    spec = get_spec(name)
    file = Path(file)
    if not file.is_file():
        raise InvalidArgument.of("file", f"{file} is not a file")
    target_name = weights_file_name(spec)
    digest = sha256_file(file)
    expected = spec.weights.sha256.lower()
    prefix = hash_prefix(target_name)
    if expected and digest != expected:
        raise InvalidArgument.of(
            "file",
            f"sha256 of {file} is {digest}, but the official {target_name} of {spec.name} "
            f"has {expected}: not the right file",
        )
    if not expected and prefix and not digest.startswith(prefix):
        raise InvalidArgument.of(
            "file",
            f"sha256 of {file} is {digest}, but the official {target_name} of {spec.name} "
            f"starts with {prefix}: not the right file",
        )
    if not expected and not prefix:
        log.warning("no known hash for %s weights; accepting %s unverified", spec.name, file)
    try:
        state_dict = read_state_dict(file)
        _fit_state_dict(build_imagenet_architecture(spec), state_dict, spec)
    except GraftError:
        raise
    except Exception as e:
        raise InvalidArgument.of("file", f"{file} is not usable for {spec.name}: {e}") from e

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    dest = weights_dir / target_name
    if dest.exists() and dest.resolve() == file.resolve():
        return dest
    # Durably, with its sha256 beside it: workers on other hosts read it from the shared
    # artifacts and check it (load_weights_file).
    write_artifact(dest, lambda tmp: shutil.copyfile(file, tmp))
    log.info("imported %s weights %s (sha256 %s) to %s", spec.name, file, digest, dest)
    return dest

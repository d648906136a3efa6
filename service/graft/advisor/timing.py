"""How fast a candidate's pretrained network runs on the Advise sample: images per second
at the plan's batch and image size, and where its forward time goes stage by stage (for
measure_backbone, docs/ADVISOR.md)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from graft.backbones.spec import PretrainedSpec

# Batches timed for images/s: at least TIMING_BATCHES, more (up to TIMING_MAX_BATCHES)
# until TIMING_MIN_SECONDS have passed. The fastest batch counts (as timeit does): slower
# repeats measure other processes competing for the cores, not the network.
TIMING_BATCHES = 3
TIMING_MAX_BATCHES = 10
TIMING_MIN_SECONDS = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(
    net: nn.Module,
    spec: PretrainedSpec,
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> tuple[float, tuple[float, ...], bool]:
    """(images/s, forward-time share of each stage, whether that share was measured).

    Batches of `batch_size` (images repeated to fill one; see TIMING_BATCHES) run with
    timing hooks on every stage module; the fastest batch gives images/s, and each stage's
    fastest time over the batches gives its share."""
    n = len(images)
    if n == 0:
        return 0.0, _parameter_fractions(net, spec), False
    idx = [i % n for i in range(batch_size)]
    x = torch.stack([transform(images[i]) for i in idx]).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    net(x)  # warm-up at exactly this shape (allocator, kernel selection)
    try:
        stages = [[net.get_submodule(name) for name in stage] for stage in spec.stages]
    except AttributeError:
        stages = []
    spent = [0.0] * len(stages)
    starts: dict[int, float] = {}

    def pre(module: nn.Module, inputs: object) -> None:
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def post_for(i: int) -> Callable[[nn.Module, object, object], None]:
        def post(module: nn.Module, inputs: object, output: object) -> None:
            _sync(device)
            spent[i] += time.perf_counter() - starts.pop(id(module))

        return post

    handles = []
    for i, modules in enumerate(stages):
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post_for(i)))
    best = float("inf")
    best_stage = [float("inf")] * len(stages)
    timed_from = time.perf_counter()
    try:
        for i in range(TIMING_MAX_BATCHES):
            if i >= TIMING_BATCHES and time.perf_counter() - timed_from >= TIMING_MIN_SECONDS:
                break
            spent[:] = [0.0] * len(stages)
            _sync(device)
            t0 = time.perf_counter()
            net(x)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
            best_stage = [min(a, b) for a, b in zip(best_stage, spent, strict=True)]
    finally:
        for h in handles:
            h.remove()
    ips = batch_size / max(best, 1e-9)
    total = sum(best_stage)
    if not stages or total <= 0:
        return ips, _parameter_fractions(net, spec), False
    return ips, tuple(t / total for t in best_stage), True


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
    way the trainer runs it (a TensorDataset through a shuffling DataLoader, a linear head,
    AdamW, cross-entropy) followed by an evaluation pass: measured on the sample's
    features of the chosen cut, for the time estimate."""
    x = features.detach().float()
    y = torch.as_tensor(list(labels), dtype=torch.long)
    if len(x) == 0:
        return 0.0
    head = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=max(1, batch_size), shuffle=True)
    with torch.enable_grad(), torch.inference_mode(False):
        t0 = time.perf_counter()
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(head(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for xb, _ in DataLoader(TensorDataset(x, y), batch_size=max(1, batch_size)):
                head(xb)
        seconds = time.perf_counter() - t0
    return seconds / (2 * len(x))

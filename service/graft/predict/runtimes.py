"""How a loaded model computes: eager PyTorch, frozen TorchScript or ONNX Runtime
(graft.predict.exported), or the model on a GPU (graft.predict.device), chosen per model at
load by measuring each on this machine.

Why measure instead of hard-coding one: on CPU the answer depends on the model, the batch
size and the threads (docs/PREDICT.md has the figures). On this project's 2-core machine,
EfficientNet-Lite0 at 64 px, one thread: ONNX Runtime 1.2 ms at batch 1 and ~1,000 img/s at
batch 8-32, frozen TorchScript 3.4 ms and ~700 img/s, eager channels_last 5.8 ms and ~550
img/s. torch.compile is not a candidate: inductor took 33 s to compile one batch shape here
(every new batch size recompiles, or `dynamic=True` compiled nothing in 10 minutes) and
then ran at 518 img/s, slower than TorchScript.

A candidate is served only if it answers like eager on a verification batch: the same top-1
(unless eager's own top two are closer than the tolerance) and every probability within
PROB_TOLERANCE. Any candidate that fails to build, to verify or later to run falls back to
eager, which is always available.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from graft.backbones import GraftModel
from graft.predict.device import DeviceRuntime
from graft.predict.exported import OnnxRuntime, TorchScriptRuntime
from graft.predict.tolerance import PROB_TOLERANCE

log = logging.getLogger(__name__)

RUNTIMES = ("cuda-fp16", "cuda", "onnxruntime", "torchscript", "eager")


class Runtime(Protocol):
    """A forward pass: a normalised float batch (N, 3, H, W) in, float32 logits (N, C) out.
    Safe to call from several runner threads at once."""

    name: str

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class EagerRuntime:
    """The model itself, channels_last, under inference_mode: the reference and fallback."""

    name = "eager"

    def __init__(self, model: GraftModel) -> None:
        self.model = model.eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch.contiguous(memory_format=torch.channels_last)).float()


@dataclass(frozen=True)
class Trial:
    """What measuring one runtime at load found. `per_image_ms`: wall time per image at
    batch 1 and at the largest batch (best of a few runs); `score_ms` their geometric
    mean, which the choice minimises (the fastest at both ends of the batch range)."""

    runtime: str
    served: bool = False
    refused: str = ""  # why it is not a candidate (build error, answers differ)
    max_prob_diff: float = 0.0
    batch1_ms: float = math.inf
    batch_ms: float = math.inf
    batch: int = 0

    @property
    def score_ms(self) -> float:
        return math.sqrt(self.batch1_ms * self.batch_ms / max(1, self.batch))

    def describe(self) -> str:
        if self.refused:
            return f"{self.runtime}: refused ({self.refused})"
        return (
            f"{self.runtime}: {self.batch1_ms:.2f} ms at batch 1, {self.batch_ms:.1f} ms at "
            f"batch {self.batch}, max |dp| {self.max_prob_diff:.1e}"
        )


def build_runtime(
    name: str, model: GraftModel, example: torch.Tensor, threads: int, max_batch: int = 32
) -> Runtime:
    """The runtime `name` for `model` (ValueError for an unknown name; whatever the export
    raises when it cannot be built). `example` gives the image shape; `max_batch` the
    largest batch a CUDA runtime captures a graph for."""
    if name == "eager":
        return EagerRuntime(model)
    if name == "torchscript":
        return TorchScriptRuntime(model, example)
    if name == "onnxruntime":
        return OnnxRuntime(model, example, threads)
    if name == "cuda":
        return DeviceRuntime(model, torch.device("cuda"), None, example, max_batch)
    if name == "cuda-fp16":
        return DeviceRuntime(model, torch.device("cuda"), torch.float16, example, max_batch)
    raise ValueError(f"unknown Predict runtime {name!r}; expected one of {RUNTIMES}")


def verification_batch(image_size: int, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth seeded images (low-resolution noise upsampled, roughly unit variance like
    normalised photos) for checking a runtime at load, where no real images are at hand.
    Real photos are checked in tests/unit/test_predict_runtimes.py."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 8, 8, generator=g)
    return nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear")


def compare(
    reference: torch.Tensor, logits: torch.Tensor, tolerance: float = PROB_TOLERANCE
) -> tuple[bool, float]:
    """Whether `logits` answer like `reference` (same top-1 wherever the reference's own
    top two differ by more than the tolerance) and the largest probability difference."""
    p, q = torch.softmax(reference, dim=1), torch.softmax(logits, dim=1)
    diff = float((p - q).abs().max()) if p.numel() else 0.0
    top2 = p.topk(min(2, p.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * tolerance
    same_top1 = bool(torch.equal(p.argmax(1)[clear], q.argmax(1)[clear]))
    return same_top1 and diff <= tolerance, diff


def _best_ms(runtime: Runtime, batch: torch.Tensor, repeats: int) -> float:
    runtime(batch)  # warm-up: first-call allocation and specialisation
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime(batch)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def measure(
    name: str, model: GraftModel, image_size: int, threads: int, batch: int, repeats: int = 3
) -> tuple[Runtime | None, Trial]:
    """Build runtime `name`, check it against eager and time it at batch 1 and `batch`."""
    check = verification_batch(image_size)
    if name.startswith("cuda") and not torch.cuda.is_available():
        return None, Trial(name, refused="no CUDA device")
    try:
        # A copy to export or trace: the model itself may be serving in other threads.
        runtime = build_runtime(
            name, model if name == "eager" else copy.deepcopy(model), check, threads, batch
        )
        with torch.inference_mode():
            reference = model(check.contiguous(memory_format=torch.channels_last)).float()
        same, diff = compare(
            reference, runtime(check), getattr(runtime, "tolerance", PROB_TOLERANCE)
        )
        if not same:
            return None, Trial(name, refused=f"answers differ from eager (max |dp| {diff:.1e})")
        big = verification_batch(image_size, n=batch, seed=1)
        one_ms = _best_ms(runtime, check[:1], repeats)
        batch_ms = _best_ms(runtime, big, repeats)
    except Exception as exc:  # any failure to build or run refuses this runtime only
        log.info("Predict runtime %s unavailable: %s", name, exc)
        return None, Trial(name, refused=f"{type(exc).__name__}: {str(exc)[:200]}")
    return runtime, Trial(name, False, "", diff, one_ms, batch_ms, batch)


def choose_runtime(
    model: GraftModel,
    image_size: int,
    names: Sequence[str],
    threads: int,
    batch: int,
    known: str | None = None,
) -> tuple[Runtime, list[Trial]]:
    """The fastest of `names` that answers like eager (eager itself when none does), with
    what each measurement found; each has run at batch 1 and `batch` by then (warm). With
    `known` (the runtime measured fastest for the same architecture before), only that one
    is built and checked, unless it fails: a new version of a model costs one export."""
    if known is not None and known in names:
        runtime, trial = measure(known, model, image_size, threads, batch)
        if runtime is not None:
            return runtime, [dataclasses.replace(trial, served=True)]
    chosen: tuple[Runtime, Trial] | None = None
    trials: list[Trial] = []
    for name in dict.fromkeys(names):
        runtime, trial = measure(name, model, image_size, threads, batch)
        trials.append(trial)
        if runtime is not None and (chosen is None or trial.score_ms < chosen[1].score_ms):
            chosen = (runtime, trial)
    if chosen is None:
        runtime, trial = measure("eager", model, image_size, threads, batch)
        chosen = (runtime or EagerRuntime(model), trial)
        trials.append(trial)
    trials = [dataclasses.replace(t, served=True) if t is chosen[1] else t for t in trials]
    return chosen[0], trials

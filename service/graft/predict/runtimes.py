"""How a loaded model computes: eager PyTorch, frozen TorchScript or ONNX Runtime, chosen
per model at load by measuring each on this machine.

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

import contextlib
import copy
import dataclasses
import io
import logging
import math
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from graft.backbones import GraftModel

log = logging.getLogger(__name__)

RUNTIMES = ("cuda-fp16", "cuda", "onnxruntime", "torchscript", "eager")
# Largest difference in any class probability allowed between a runtime and eager. Measured
# differences are ~1e-6 (float32 reassociation: folded BatchNorm, fused kernels).
PROB_TOLERANCE = 1e-4
# The same for reduced-precision autocast, by type: float16 keeps 11 bits of mantissa,
# bfloat16 8 (it moved the ImageNet classifier's probabilities on the test photos by 1.4e-2
# on CPU). Served only where top-1 is the same (wherever eager's own top two are further
# apart than this) and no probability moves by more than this.
REDUCED_PROB_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


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


class DeviceRuntime:
    """The model on an accelerator (a copy on `device`, channels_last), in float32 or under
    autocast to `dtype` (float16 on CUDA: tensor cores; bfloat16 works on CPU too, which is
    how the tests check this path on a machine without a GPU). Batches arrive on the CPU
    and logits go back to it; `.cpu()` waits for the device, so timings are true.

    On CUDA the forward pass is captured as CUDA graphs, one per batch size bucket (powers
    of two up to `max_batch`, a batch padded up to its bucket): a small model at Predict's
    sizes is bound by kernel launches, not arithmetic. EfficientNet-Lite0 launches ~150
    kernels per forward, and on the lent H200 (a gVisor sandbox, where each launch is slow)
    the eager forward took 22 ms at batch 1 and 23 ms at batch 16 (docs/PREDICT.md, "On a
    GPU"); a graph replays them with one launch. Replays take turns under a lock (each
    graph has one input and one output buffer). Where capture fails the runtime runs
    eagerly on the device, and says so in the log.

    Float32 on CUDA means TF32 in cuDNN's convolutions (PyTorch's default): 10 bits of
    mantissa, like float16, so it has float16's tolerance; it moved the probabilities by
    4e-4 to 1.5e-3 on the H200."""

    def __init__(
        self,
        model: GraftModel,
        device: torch.device,
        dtype: torch.dtype | None,
        example: torch.Tensor | None = None,
        max_batch: int = 32,
    ) -> None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        self.device, self.dtype = device, dtype
        self.name = device.type + ("" if dtype is None else "-" + _DTYPE_NAMES[dtype])
        if dtype is not None:
            self.tolerance = REDUCED_PROB_TOLERANCE[dtype]
        elif device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            self.tolerance = REDUCED_PROB_TOLERANCE[torch.float16]
        else:
            self.tolerance = PROB_TOLERANCE
        self.model = model.eval().to(device).to(memory_format=torch.channels_last)
        self._graphs: dict[int, _CapturedForward] = {}
        self._replay = threading.Lock()
        if device.type == "cuda" and example is not None:
            self._capture(tuple(example.shape[1:]), max_batch)

    @property
    def graphed(self) -> bool:
        return bool(self._graphs)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.model(x).float()
        # No autocast cache: a graph must not keep casts made at capture as live tensors.
        with torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False):
            return self.model(x).float()

    def _capture(self, image_shape: tuple[int, ...], max_batch: int) -> None:
        sizes = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
        try:
            with torch.inference_mode():
                for size in sizes:
                    self._graphs[size] = _CapturedForward(self._forward, size, image_shape)
        except Exception as exc:  # the eager path still answers: a slower runtime, not none
            log.warning("CUDA graphs unavailable for %s (%s); runs eagerly", self.name, exc)
            self._graphs.clear()
        else:
            log.info("%s: CUDA graphs captured for batch sizes %s", self.name, sizes)

    def _bucket(self, batch: torch.Tensor) -> _CapturedForward | None:
        for size, graph in self._graphs.items():  # ascending
            if len(batch) <= size:
                return graph if graph.fits(batch) else None
        return None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        graph = self._bucket(batch)
        if graph is not None:
            with self._replay:
                return graph.run(batch)
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._forward(x).cpu()


class _CapturedForward:
    """One CUDA graph of `forward` at batch `size`: a static input buffer the caller's batch
    is copied into (the rest of it left as it was: every row is computed on its own in eval
    mode) and the static output the graph writes. Capture needs `forward` warmed up on a
    side stream first (cuDNN picks its algorithms, the allocator its blocks)."""

    def __init__(self, forward: Any, size: int, image_shape: tuple[int, ...]) -> None:
        self.size = size
        self.input = torch.zeros((size, *image_shape), device="cuda").contiguous(
            memory_format=torch.channels_last
        )
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                forward(self.input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: runner threads serving other models may launch work meanwhile.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output: torch.Tensor = forward(self.input)

    def fits(self, batch: torch.Tensor) -> bool:
        return tuple(batch.shape[1:]) == tuple(self.input.shape[1:])

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        n = len(batch)
        with torch.inference_mode():  # the buffers were made under it
            self.input[:n].copy_(batch)
            self.graph.replay()
            return self.output[:n].cpu()


_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class TorchScriptRuntime:
    """torch.jit.trace + torch.jit.freeze (BatchNorm folded into the convolutions, weights
    inlined as constants), channels_last. A feature cut traces as what it ran: the body up
    to the last stage it reads, then the pooling."""

    name = "torchscript"

    def __init__(self, model: GraftModel, example: torch.Tensor) -> None:
        example = example.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _quiet():
            self.module = torch.jit.freeze(torch.jit.trace(model, example).eval())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = self.module(batch.contiguous(memory_format=torch.channels_last))
            return out.float()


class OnnxRuntime:
    """The model exported to ONNX (the TorchScript-based exporter; opset 17, dynamic batch)
    and run by ONNX Runtime's CPU provider, `threads` intra-op threads per call. One
    InferenceSession serves every runner: its `run` is thread-safe and releases the GIL."""

    name = "onnxruntime"

    def __init__(self, model: GraftModel, example: torch.Tensor, threads: int) -> None:
        import onnxruntime as ort  # optional at import time: a missing package is a refusal

        buf = io.BytesIO()
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                _exportable(model),
                (example.contiguous(),),
                buf,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads must not spin: the cores are shared with decode and gRPC.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            buf.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.contiguous().numpy()
        (logits,) = self.session.run(["logits"], {"images": x})
        return torch.from_numpy(logits).float()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Tracing and export warn about Python control flow they record as constants (the
    # feature cut's hooks, the static image size): expected here, and verified below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class _StopForward(Exception):
    """Raised by _ExportableCut's hook once the last stage it reads has run."""


def _static_grid_pool(t: torch.Tensor, grid: int) -> torch.Tensor:
    """graft.backbones.spec.grid_average_pool written with slices and means over sizes
    fixed at export (the image size is), which ONNX export can express: torch's exporter
    refuses adaptive_avg_pool2d here because it loses the spatial sizes. Same cells as
    adaptive pooling (start floor(i·H/g), end ceil((i+1)·H/g)), same channel-major order."""
    if t.ndim == 2:
        return t.repeat_interleave(grid * grid, dim=1)
    h, w = int(t.shape[2]), int(t.shape[3])
    cells = []
    for i in range(grid):
        for j in range(grid):
            rows = slice(i * h // grid, -(-(i + 1) * h // grid))
            cols = slice(j * w // grid, -(-(j + 1) * w // grid))
            cells.append(t[:, :, rows, cols].mean(dim=(2, 3)))
    return torch.stack(cells, dim=2).flatten(1)


class _ExportableCut(nn.Module):
    """A GraftModel whose features are cut over a grid, as ONNX export can trace it: the
    same stage outputs (recorded by forward hooks, the forward stopped after the last) pooled
    by _static_grid_pool. Only export uses it; verification compares it with the model."""

    def __init__(self, model: GraftModel) -> None:
        super().__init__()
        self.model = model
        self.names = [model.stage_outputs[s - 1] for s in model.feature_stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wanted = list(dict.fromkeys(self.names))
        owner = threading.get_ident()
        pooled: dict[str, torch.Tensor] = {}

        def recorder(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                if threading.get_ident() != owner:
                    return  # a forward of the same body in another thread
                pooled[name] = _static_grid_pool(output, self.model.feature_grid)
                if len(pooled) == len(wanted):
                    raise _StopForward

            return hook

        body = self.model.body
        handles = [body.get_submodule(n).register_forward_hook(recorder(n)) for n in wanted]
        try:
            with contextlib.suppress(_StopForward):
                body(x)
        finally:
            for handle in handles:
                handle.remove()
        out: torch.Tensor = self.model.head(torch.cat([pooled[n] for n in self.names], dim=1))
        return out


def _exportable(model: GraftModel) -> nn.Module:
    if not (model.feature_stages and model.feature_grid > 1):
        return model
    # eval() matters: export restores the mode it found, recursively, so a wrapper left in
    # training mode would put the model's BatchNorm into training mode after export.
    return _ExportableCut(model).eval()


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

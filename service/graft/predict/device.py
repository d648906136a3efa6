"""Predict's accelerator runtime: the model on a device (CUDA, or the CPU under bfloat16
autocast, which is how the tests check this path without a GPU), with the forward pass
captured as CUDA graphs where it can be. graft.predict.runtimes measures it beside the
others; docs/PREDICT.md ("On a GPU") has the figures from a lent H200.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from graft.backbones import GraftModel
from graft.predict.tolerance import PROB_TOLERANCE, REDUCED_PROB_TOLERANCE

log = logging.getLogger("graft.predict.runtimes")  # the name its log lines always had


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

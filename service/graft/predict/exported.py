"""Predict's exported CPU runtimes: frozen TorchScript and ONNX Runtime, and the module a
feature-cut model is exported as (its stage outputs pooled with fixed slices). Each is
checked against eager at load by graft.predict.runtimes. graft.export publishes the same
ONNX export and frozen trace as files (ExportModel).
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from graft.backbones import GraftModel


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


ONNX_INPUT, ONNX_OUTPUT = "images", "logits"  # the tensors' names (graft.export documents them)
ONNX_OPSET = 17


def onnx_bytes(model: GraftModel, example: torch.Tensor) -> bytes:
    """`model` exported to ONNX by the TorchScript-based exporter: input ONNX_INPUT
    (batch, 3, H, W) float32 with H, W those of `example` and the batch dynamic, output
    ONNX_OUTPUT (batch, classes) logits; opset ONNX_OPSET. A feature cut exports as
    _ExportableCut. Predict serves it (OnnxRuntime) and graft.export publishes it."""
    buf = io.BytesIO()
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            _exportable(model),
            (example.contiguous(),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    return buf.getvalue()


def onnx_session(model: bytes | str, threads: int) -> Any:
    """An ONNX Runtime CPU InferenceSession for `model` (the bytes, or a file's path),
    `threads` intra-op threads per call."""
    import onnxruntime as ort  # optional at import time: a missing package is a refusal

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads must not spin: the cores are shared with decode and gRPC.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    """The model exported to ONNX (onnx_bytes: opset 17, dynamic batch) and run by ONNX
    Runtime's CPU provider, `threads` intra-op threads per call. One InferenceSession
    serves every runner: its `run` is thread-safe and releases the GIL."""

    name = "onnxruntime"

    def __init__(self, model: GraftModel, example: torch.Tensor, threads: int) -> None:
        self.session = onnx_session(onnx_bytes(model, example), threads)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.contiguous().numpy()
        (logits,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})
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

"""Each export format written into a folder and checked from the very file written: ONNX
(Predict's own export, graft.predict.exported.onnx_bytes, checked with onnx.checker and run
with ONNX Runtime), TorchScript (Predict's frozen trace, saved with torch.jit.save and
loaded back with torch.jit.load) and a Triton model repository (the same ONNX file, a
config.pbtxt whose tensors are read from the ONNX graph itself, and the label file).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from graft import errors
from graft.artifacts import write_artifact
from graft.backbones import GraftModel
from graft.export.recipe import Tensors, readme, recipe_json
from graft.export.verify import CheckImages, verify
from graft.predict.exported import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    TorchScriptRuntime,
    onnx_bytes,
    onnx_session,
)
from graft.registry import ModelCard

TRITON_MAX_BATCH = 32  # Predict's default largest batch (graft.predict.batching.BatchPolicy)
TRITON_LABELS = "labels.txt"
TRITON_VERSION = "1"


@dataclass(frozen=True)
class Source:
    """What every format is made from: the model as Predict builds it, its card, the check
    images and the model's own logits on them, and the batch it is traced with."""

    model: GraftModel
    card: ModelCard
    images: CheckImages
    reference: torch.Tensor  # the PyTorch model's logits on images.batch
    example: torch.Tensor  # two images: the batch axis is traced as a batch


@dataclass(frozen=True)
class Built:
    files: list[tuple[str, str]]  # (path relative to the folder, sha256), in sending order
    verification: str


def build(fmt: str, source: Source, folder: Path, checkpoint: Callable[[], None]) -> Built:
    """Write export `fmt` of `source` into `folder` (and check it)."""
    if fmt == "onnx":
        files, line, tensors = _onnx(source, folder, "model.onnx")
        prefix = ""
    elif fmt == "torchscript":
        files, line = _torchscript(source, folder)
        tensors = Tensors("images", "logits", len(source.card.labels))
        prefix = ""
    elif fmt == "triton":
        prefix = f"{source.card.name}/"
        files, line, tensors = _onnx(source, folder, f"{prefix}{TRITON_VERSION}/model.onnx")
        checkpoint()
        files = _triton(source, folder, prefix) + files
    else:
        raise errors.InvalidArgument.of("format", f"unknown export format {fmt!r}")
    checkpoint()
    for name, text in (
        ("preprocessing.json", recipe_json(source.card, tensors, fmt)),
        ("README.txt", readme(source.card, tensors, fmt, line)),
    ):
        files.append((prefix + name, _write_text(folder / (prefix + name), text)))
    return Built(files, line)


def _write_text(path: Path, text: str) -> str:
    return write_artifact(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _onnx(
    source: Source, folder: Path, relative: str
) -> tuple[list[tuple[str, str]], str, Tensors]:
    import onnxruntime as ort

    data = onnx_bytes(source.model, source.example)
    graph = onnx.load_model_from_string(data)
    onnx.checker.check_model(graph, full_check=True)  # structure, opset and shape inference
    path = folder / relative
    digest = write_artifact(path, lambda tmp: tmp.write_bytes(data))
    session = onnx_session(str(path), torch.get_num_threads())  # the file to be published

    def run(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: batch.contiguous().numpy()})
        return torch.from_numpy(logits)

    line = verify(
        f"ONNX Runtime {ort.__version__} (onnx.checker passed)",
        source.images,
        source.reference,
        run,
        source.card.temperature,
    )
    (input_name, _), (output_name, output_dims) = graph_io(graph)
    return [(relative, digest)], line, Tensors(input_name, output_name, int(output_dims[-1]))


def _torchscript(source: Source, folder: Path) -> tuple[list[tuple[str, str]], str]:
    module = TorchScriptRuntime(source.model, source.example).module
    path = folder / "model.pt"
    with warnings.catch_warnings():
        # torch 2.14 deprecates TorchScript for torch.export; it saves and loads as before
        # (docs/EXPORTS.md).
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        digest = write_artifact(path, lambda tmp: torch.jit.save(module, str(tmp)))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = loaded(batch.contiguous())
            return out

    line = verify(
        f"TorchScript (torch.jit.load, torch {torch.__version__})",
        source.images,
        source.reference,
        run,
        source.card.temperature,
    )
    return [("model.pt", digest)], line


def graph_io(graph: Any) -> tuple[tuple[str, list[int | str]], tuple[str, list[int | str]]]:
    """((input name, dims), (output name, dims)) of a one-input, one-output ONNX graph; a
    dimension is its size, or its symbolic name when it has none (the batch axis)."""
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    outputs = list(graph.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"expected one input and one output, got {len(inputs)}/{len(outputs)}")

    def dims(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return (inputs[0].name, dims(inputs[0])), (outputs[0].name, dims(outputs[0]))


def _triton(source: Source, folder: Path, prefix: str) -> list[tuple[str, str]]:
    graph = onnx.load(
        str(folder / prefix / TRITON_VERSION / "model.onnx"), load_external_data=False
    )
    (input_name, input_dims), (output_name, output_dims) = graph_io(graph)
    if isinstance(input_dims[0], int) or isinstance(output_dims[0], int):
        raise ValueError("the ONNX model's first axis is not a dynamic batch axis")
    bad = [label for label in source.card.labels if "\n" in label or "\r" in label]
    if bad:
        raise errors.FailedPrecondition(
            f"labels {bad!r} hold a line break, which Triton's label file cannot: export "
            "to onnx or torchscript, whose labels are in preprocessing.json"
        )
    config = triton_config(
        source.card.name, input_name, input_dims[1:], output_name, output_dims[1:]
    )
    labels = "".join(f"{label}\n" for label in source.card.labels)
    return [
        (f"{prefix}config.pbtxt", _write_text(folder / prefix / "config.pbtxt", config)),
        (f"{prefix}{TRITON_LABELS}", _write_text(folder / prefix / TRITON_LABELS, labels)),
    ]


def triton_config(
    name: str,
    input_name: str,
    input_dims: list[int | str],
    output_name: str,
    output_dims: list[int | str],
    max_batch_size: int = TRITON_MAX_BATCH,
) -> str:
    """config.pbtxt for an ONNX classifier: dims without the batch axis (max_batch_size
    > 0 makes it implicit), the label file on the output, dynamic batching on."""

    def shape(dims: list[int | str]) -> str:
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(f"Triton needs fixed sizes past the batch axis, got {dims}")
        return ", ".join(str(d) for d in dims)

    return f"""\
# Triton Inference Server model configuration, written by Graft (docs/EXPORTS.md).
# Input: RGB float32 NCHW, made as preprocessing.json (beside this file) says; output: logits.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ {shape(input_dims)} ]
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: TYPE_FP32
    dims: [ {shape(output_dims)} ]
    label_filename: "{TRITON_LABELS}"
  }}
]
dynamic_batching {{ }}
"""

"""What is written beside every export so that it answers as Predict does without Graft:
`preprocessing.json` (the exact recipe from image file to input tensor, and from output to
probabilities) and a short `README.txt` on running it. tests/integration/test_exports.py
applies the recipe with Pillow and numpy alone and gets Predict's answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from graft.data.transforms import interpolation_mode
from graft.registry import ModelCard

RECIPE_SCHEMA = "graft.export.preprocessing/1"


@dataclass(frozen=True)
class Tensors:
    """The exported model's input and output as a caller sees them."""

    input_name: str  # the ONNX input's name; TorchScript takes the tensor positionally
    output_name: str
    classes: int


def resize_shorter_side(image_size: int, crop_pct: float) -> int:
    """graft.data.transforms.resize_size, from the card's numbers."""
    return max(image_size, round(image_size / (crop_pct if crop_pct > 0 else 1.0)))


def recipe(card: ModelCard, tensors: Tensors, fmt: str) -> dict[str, Any]:
    """preprocessing.json's content for the version `card` describes."""
    pre = card.preprocessing
    size, shorter = pre.image_size, resize_shorter_side(pre.image_size, pre.crop_pct)
    interpolation_mode(pre.interpolation)  # a name Predict knows (ValueError otherwise)
    return {
        "schema": RECIPE_SCHEMA,
        "model": {"name": card.name, "version": card.version, "backbone": card.backbone},
        "format": fmt,
        "input": {
            "name": tensors.input_name,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", 3, size, size],
            "channel_order": "RGB",
        },
        "image_size": size,
        "decode": (
            "decode the file fully, first frame of an animation, EXIF orientation applied, "
            "converted to 8-bit RGB (grayscale, palette, CMYK and 16-bit images converted; "
            "transparent pixels composited onto white)"
        ),
        "resize": {
            "shorter_side": shorter,
            "longer_side": "int(shorter_side * longer / shorter), truncated",
            "interpolation": pre.interpolation,
            "how": "Pillow Image.resize((width, height), resample) on the RGB image, "
            "as torchvision.transforms.Resize(shorter_side) does on a PIL image",
            "crop_pct": pre.crop_pct,
        },
        "center_crop": {
            "size": size,
            "top": "int(round((height - size) / 2))",
            "left": "int(round((width - size) / 2))",
            "note": "Python's round (halves to even), as torchvision.transforms.CenterCrop",
        },
        "to_float": "uint8 value / 255, float32",
        "mean": list(pre.mean),
        "std": list(pre.std),
        "normalize": "(x[c] - mean[c]) / std[c] for each channel c, in float32",
        "output": {
            "name": tensors.output_name,
            "shape": ["batch", tensors.classes],
            "kind": "logits",
            "probabilities": "softmax(logits / temperature) over the classes",
        },
        "temperature": card.temperature,
        "labels": list(card.labels),
    }


def recipe_json(card: ModelCard, tensors: Tensors, fmt: str) -> str:
    return json.dumps(recipe(card, tensors, fmt), indent=2) + "\n"


_RUN = {
    "onnx": """\
    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    # batch: a numpy float32 array (N, 3, {size}, {size}) made as preprocessing.json says
    logits = session.run(["{output}"], {{"{input}": batch}})[0]""",
    "torchscript": """\
    import torch
    model = torch.jit.load("model.pt", map_location="cpu").eval()
    # batch: a numpy float32 array (N, 3, {size}, {size}) made as preprocessing.json says
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()""",
    "triton": """\
    The folder the export was written to is a Triton Inference Server model repository
    holding one model, "{name}" (this folder):
        tritonserver --model-repository=/path/to/the/export/folder
    Send "{input}" as FP32 [N, 3, {size}, {size}] (N up to
    max_batch_size in config.pbtxt); "{output}" comes back as logits, one column per line of
    labels.txt. Triton's classification extension (class_count) ranks the logits; divide by
    the temperature and take the softmax for Predict's probabilities.""",
}


def readme(card: ModelCard, tensors: Tensors, fmt: str, verification: str) -> str:
    """README.txt: what the export is, how to make its input and run it, how it was checked."""
    pre = card.preprocessing
    size, shorter = pre.image_size, resize_shorter_side(pre.image_size, pre.crop_pct)
    run = _RUN[fmt].format(
        output=tensors.output_name, input=tensors.input_name, size=size, name=card.name
    )
    return f"""\
Model {card.name}, version {card.version}, exported by Graft as {fmt}.
Backbone {card.backbone}, {len(card.labels)} classes.

Input: one float32 tensor, NCHW, shape (N, 3, {size}, {size}), RGB, made from each image as
preprocessing.json says: resize the shorter side to {shorter} px ({pre.interpolation}),
centre-crop {size} x {size}, divide by 255, subtract mean and divide by std per channel.
Output: logits (N, {tensors.classes}); column i is labels[i] of preprocessing.json.
Probabilities as Predict gives them: softmax(logits / {card.temperature:g}).

Run it:
{run}

Checked before it was published: {verification}.
"""

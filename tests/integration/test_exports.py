"""ExportModel on the real `graft serve` (its advisor worker makes the export) through a
real gRPC channel, on a model really trained on Fashion-MNIST with a feature cut (the
harder export: stage outputs pooled over a grid): every format's files answer as Predict
does on held-out images when the input is made by preprocessing.json's recipe, applied here
with Pillow and numpy alone (no Graft code); the CLI writes and prints the export; a second
export reuses the worker's files; a bad format and an unknown model answer clearly. Models
without a cut, every format, are tests/unit/test_exports.py's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import graft_client
from graft.cli import main as cli_main
from graft_client import pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from tests.integration.conftest import RunningServer
from tests.unit.test_exports import check_triton_repository

pytestmark = [pytest.mark.slow, pytest.mark.pretrained]

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
HELD_OUT_PER_CLASS = 4


@pytest.fixture(scope="module")
def trained(server: RunningServer, fashion: dict[str, Path]) -> str:
    """Frozen features of stages 3 and 5, each pooled over a 2x2 grid, and a trained head."""
    client = server.client()
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_FEATURE_EXTRACTION,
        epochs=1,
        image_size=32,
        feature_stages=[3, 5],
        feature_grid=2,
    )
    job = client.wait(client.start_fine_tune("exported", str(fashion["train"]), plan=plan).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    card = json.loads(client.get_model("exported").card_json)
    assert card["plan"]["feature_stages"] == [3, 5] and card["plan"]["feature_grid"] == 2
    return "exported"


@pytest.fixture(scope="module")
def held_out(fashion: dict[str, Path]) -> list[Path]:
    by_class = sorted({p.parent for p in fashion["test"].rglob("*.png")})
    return [p for d in by_class for p in sorted(d.glob("*.png"))[:HELD_OUT_PER_CLASS]]


def make_input(recipe: dict[str, Any], path: Path) -> np.ndarray:
    """One image as preprocessing.json says, with Pillow and numpy only: (3, S, S) float32."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    width, height = image.size
    shorter = recipe["resize"]["shorter_side"]
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    image = image.resize(size, RESAMPLE[recipe["resize"]["interpolation"]])
    crop = recipe["center_crop"]["size"]
    top, left = round((size[1] - crop) / 2), round((size[0] - crop) / 2)  # halves to even
    x = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    x = (x - np.float32(recipe["mean"])) / np.float32(recipe["std"])
    assert recipe["input"]["layout"] == "NCHW" and recipe["input"]["channel_order"] == "RGB"
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def predict_probabilities(
    server: RunningServer, name: str, labels: list[str], images: list[Path]
) -> np.ndarray:
    """Predict's probabilities through the channel, one column per label."""
    response = server.client().predict(name, images, top_k=len(labels))
    columns = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(images), len(labels)))
    for row, prediction in enumerate(response.predictions):
        for c in prediction.classes:
            out[row, columns[c.label]] = c.score
    return out


def assert_reproduces_predict(
    server: RunningServer,
    name: str,
    recipe: dict[str, Any],
    images: list[Path],
    run: Callable[[np.ndarray], np.ndarray],
) -> float:
    """The export run on the recipe's input answers as Predict: same top-1 and every
    probability within 1e-4. Returns the largest difference."""
    batch = np.stack([make_input(recipe, p) for p in images])
    logits = torch.from_numpy(run(batch))
    mine = torch.softmax(logits / recipe["temperature"], dim=1).numpy()
    served = predict_probabilities(server, name, recipe["labels"], images)
    assert (mine.argmax(1) == served.argmax(1)).all()
    diff = float(np.abs(mine - served).max())
    assert diff < 1e-4, diff
    return diff


def onnx_runner(path: Path, recipe: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output, input_name = recipe["output"]["name"], recipe["input"]["name"]
    return lambda batch: session.run([output], {input_name: batch})[0]


def test_the_cli_exports_onnx_that_reproduces_predict(
    server: RunningServer,
    trained: str,
    held_out: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "onnx"
    argv = ["export", trained, "--format", "onnx", "--out", str(out), "--target", server.target]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"exported {trained}:1 as onnx into {out}" in printed
    for name in ("model.onnx", "preprocessing.json", "README.txt"):
        assert name in printed and (out / name).is_file()
    assert "verification: ONNX Runtime" in printed
    assert "validation images of the version: same top-1" in printed
    recipe = json.loads((out / "preprocessing.json").read_text())
    diff = assert_reproduces_predict(
        server, trained, recipe, held_out, onnx_runner(out / "model.onnx", recipe)
    )
    print(f"ONNX Runtime vs Predict on {len(held_out)} held-out images: max |dp| {diff:.1e}")


def test_torchscript_export_reproduces_predict(
    server: RunningServer, trained: str, held_out: list[Path], tmp_path: Path
) -> None:
    manifest = server.client().export_model(trained, "torchscript", tmp_path)
    assert [f.path for f in manifest.files] == ["model.pt", "preprocessing.json", "README.txt"]
    assert manifest.format == pb.EXPORT_FORMAT_TORCHSCRIPT
    module = torch.jit.load(str(tmp_path / "model.pt"), map_location="cpu").eval()
    recipe = json.loads((tmp_path / "preprocessing.json").read_text())

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = module(torch.from_numpy(batch)).numpy()
            return out

    diff = assert_reproduces_predict(server, trained, recipe, held_out, run)
    print(f"TorchScript vs Predict on {len(held_out)} held-out images: max |dp| {diff:.1e}")


def test_triton_repository_parses_with_tritons_schema_and_reproduces_predict(
    server: RunningServer, trained: str, held_out: list[Path], tmp_path: Path
) -> None:
    manifest = server.client().export_model(trained, "triton", tmp_path / "repo")
    recipe = json.loads((tmp_path / "repo" / trained / "preprocessing.json").read_text())
    check_triton_repository(tmp_path / "repo", trained, recipe["labels"], tmp_path)
    assert manifest.files[0].path == f"{trained}/config.pbtxt"
    model = tmp_path / "repo" / trained / "1" / "model.onnx"
    diff = assert_reproduces_predict(server, trained, recipe, held_out, onnx_runner(model, recipe))
    print(f"Triton's model.onnx (ONNX Runtime) vs Predict: max |dp| {diff:.1e}")


def test_a_second_export_reuses_the_workers_files(
    server: RunningServer, trained: str, tmp_path: Path
) -> None:
    client = server.client()
    first = client.export_model(trained, "onnx", tmp_path / "a")
    on_server = server.data_dir / "exports" / "default" / trained / "1" / "onnx" / "model.onnx"
    before = on_server.stat()
    second = client.export_model(f"{trained}:1", "onnx", tmp_path / "b")
    assert second == first
    after = on_server.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (
        tmp_path / "b" / "model.onnx"
    ).read_bytes()


def test_a_bad_format_and_an_unknown_model_answer_clearly(
    server: RunningServer, trained: str, tmp_path: Path
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)
        for fmt in (pb.EXPORT_FORMAT_UNSPECIFIED, 99):
            request = pb.ExportModelRequest(model=pb.ModelRef(name=trained), format=fmt)  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as bad:
                list(stub.ExportModel(request, timeout=30))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is not an export format: use EXPORT_FORMAT_ONNX" in str(bad.value.details())
    with pytest.raises(graft_client.NotFound, match="no-such-model"):
        server.client().export_model("no-such-model", "onnx", tmp_path)
    with pytest.raises(graft_client.NotFound):
        server.client().export_model(f"{trained}:99", "onnx", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written for a refused export

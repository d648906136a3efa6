"""The exporter (graft.export) on random-init EfficientNet-Lite0 models at 32 px, registered
as a worker registers them, with a training job whose dataset is real Fashion-MNIST images:
each format is written, checked against the PyTorch model on the version's validation
images, and answers like it when run the way a user runs it (ONNX Runtime, torch.jit.load
in a process that cannot import Graft, Triton's own config schema); feature cuts export
too; an export is reused while its files verify, made again when they do not, and refused
when it disagrees with the model. Then the SDK's checks of the stream it receives."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import torch

import graft.export.formats as formats
from graft import errors
from graft.api.exports import CHUNK_BYTES, _file_chunks
from graft.artifacts import CorruptArtifact
from graft.backbones import DEFAULT_BACKBONE, create_model, get_spec
from graft.config import Config
from graft.data import scan_dataset
from graft.domain import DatasetRef, ModelRef, Strategy, TrainingPlan
from graft.export.exporter import run_export
from graft.export.layout import ExportedFile, exports_root
from graft.export.recipe import Tensors, readme, recipe
from graft.export.verify import agreement, check_images
from graft.predict.model import LoadedModel, build_model
from graft.registry import (
    Calibration,
    DatasetSummary,
    ModelCard,
    ModelRegistry,
    Preprocessing,
)
from graft.store import JobStore, open_store
from graft_client import Client, DataLoss, InvalidArgument, pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from graft_devtools.datasets import write_fashion_mnist_folder

SIZE = 32
CLASSES = (1, 7, 8, 9)
TRITON_PROTO = Path(__file__).resolve().parents[1] / "data" / "triton" / "model_config.proto"


@dataclasses.dataclass
class Setup:
    config: Config
    store: JobStore
    dataset: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("exports")
    root = tmp / "datasets"
    dataset = write_fashion_mnist_folder(root / "fm", per_class=12, classes=CLASSES, split="test")
    config = Config(data_dir=tmp / "data", data_roots=(root,))
    store = open_store(config)
    yield Setup(config, store, dataset)
    store.close()


def register(
    setup: Setup, name: str, *, feature_stages: tuple[int, ...] = (), grid: int = 0
) -> None:
    """A random-init model registered as trained by a job on the Fashion-MNIST folder,
    with a validation split of a quarter, as the worker registers a trained version."""
    scanned = scan_dataset(setup.dataset)
    plan = TrainingPlan(
        backbone=DEFAULT_BACKBONE,
        strategy=Strategy.FEATURE_EXTRACTION,
        image_size=SIZE,
        validation_fraction=0.25,
        seed=3,
        feature_stages=feature_stages,
        feature_grid=grid,
    )
    job, _ = setup.store.create_job(
        model_name=name,
        dataset=DatasetRef(uri=str(setup.dataset)),
        plan=plan,
        request_id=uuid.uuid4().hex,
    )
    torch.manual_seed(len(name))
    model = create_model(
        DEFAULT_BACKBONE,
        len(scanned.classes),
        pretrained=False,
        feature_stages=feature_stages,
        feature_grid=grid or 1,
    )
    spec = get_spec(DEFAULT_BACKBONE)
    card = ModelCard(
        backbone=DEFAULT_BACKBONE,
        architecture=spec.architecture,
        labels=tuple(scanned.classes),
        preprocessing=Preprocessing.from_spec(spec, SIZE),
        plan=plan,
        job_id=job.job_id,
        dataset=DatasetSummary(scanned.fingerprint, len(scanned.samples), 0, scanned.counts()),
    )
    ModelRegistry(setup.store, setup.config.registry_dir).register(
        name=name, state_dict=model.state_dict(), card=card
    )


def export(setup: Setup, name: str, fmt: str) -> tuple[Path, dict[str, Any]]:
    """Export version 1 of `name`; the export's folder and the task's answer."""
    request = {"model": {"name": name, "version": 1, "tenant": "default"}, "format": fmt}
    result = run_export(setup.config, setup.store, request)
    return exports_root(setup.config.artifacts_root) / result["folder"], result


def loaded(setup: Setup, name: str) -> LoadedModel:
    registry = ModelRegistry(setup.store, setup.config.registry_dir)
    return build_model(*registry.load(ModelRef(name, 1)))


def real_batch(setup: Setup, model: LoadedModel) -> torch.Tensor:
    """Fashion-MNIST test images the models never saw, made as Predict makes them."""
    files = sorted(setup.dataset.rglob("*.png"))[::5]
    return model.preprocess.to_batch([model.preprocess.decode(p.read_bytes()) for p in files])


def reference(model: LoadedModel, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.model(batch.contiguous(memory_format=torch.channels_last)).float()


def assert_answers_alike(expected: torch.Tensor, got: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert torch.equal(got.argmax(1), expected.argmax(1))
    diff = (torch.softmax(got, 1) - torch.softmax(expected, 1)).abs().max()
    assert diff < 1e-4, diff


def onnx_logits(path: Path, batch: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])


def manifest_paths(result: dict[str, Any]) -> list[str]:
    return [f["path"] for f in result["record"]["files"]]


@pytest.fixture(scope="module")
def plain(setup: Setup) -> str:
    register(setup, "plain")
    return "plain"


@pytest.fixture(scope="module")
def cut(setup: Setup) -> str:
    # Stages 2 and 3 pooled over a 2x2 grid: the static-slice pooling ONNX needs, and a
    # trace that stops early.
    register(setup, "cut", feature_stages=(2, 3), grid=2)
    return "cut"


# --- the version's validation images ----------------------------------------------------


def test_checks_run_on_the_versions_validation_images_else_say_why_not(
    setup: Setup, plain: str
) -> None:
    model = loaded(setup, plain)
    _, _, card = ModelRegistry(setup.store, setup.config.registry_dir).load(ModelRef(plain, 1))
    images = check_images(setup.config, setup.store, card, "default", model.preprocess)
    # A quarter of each class's 12 images validates: 3 of each of the 4 classes.
    assert images.real and images.source == "12 validation images of the version"
    assert images.batch.shape == (12, 3, SIZE, SIZE)
    gone = dataclasses.replace(card, job_id="no-such-job")
    fallback = check_images(setup.config, setup.store, gone, "default", model.preprocess)
    assert not fallback.real and "synthetic" in fallback.source
    assert "job 'no-such-job' not found" in fallback.source


# --- each format ------------------------------------------------------------------------


def test_onnx_export_is_checked_and_answers_like_the_model(setup: Setup, plain: str) -> None:
    folder, result = export(setup, plain, "onnx")
    assert manifest_paths(result) == ["model.onnx", "preprocessing.json", "README.txt"]
    assert not result["reused"]
    verification = result["record"]["verification"]
    assert "onnx.checker passed" in verification
    assert "on 12 validation images of the version: same top-1 12/12" in verification
    graph = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    (name, dims), (out_name, out_dims) = formats.graph_io(graph)
    assert (name, dims, out_name, out_dims) == (
        "images",
        ["batch", 3, SIZE, SIZE],
        "logits",
        ["batch", 4],
    )
    model = loaded(setup, plain)
    batch = real_batch(setup, model)
    assert_answers_alike(reference(model, batch), onnx_logits(folder / "model.onnx", batch))
    assert_answers_alike(reference(model, batch[:1]), onnx_logits(folder / "model.onnx", batch[:1]))
    recipe = json.loads((folder / "preprocessing.json").read_text())
    assert recipe["input"] == {
        "name": "images",
        "dtype": "float32",
        "layout": "NCHW",
        "shape": ["batch", 3, SIZE, SIZE],
        "channel_order": "RGB",
    }
    assert recipe["labels"] == list(model.labels) and recipe["temperature"] == 1.0
    assert recipe["resize"]["shorter_side"] == 37  # round(32 / 0.875)
    assert recipe["output"]["kind"] == "logits"
    assert "onnxruntime" in (folder / "README.txt").read_text()


TORCHSCRIPT_USER = """
import sys
import numpy as np
import torch
for blocked in ("graft", "graft_client", "timm"):
    sys.modules[blocked] = None  # any import of them fails: the file needs none
model = torch.jit.load(sys.argv[1], map_location="cpu").eval()
with torch.no_grad():
    out = model(torch.from_numpy(np.load(sys.argv[2])))
np.save(sys.argv[3], out.numpy())
"""


def test_torchscript_export_loads_without_graft_and_answers_like_the_model(
    setup: Setup, plain: str, tmp_path: Path
) -> None:
    folder, result = export(setup, plain, "torchscript")
    assert manifest_paths(result) == ["model.pt", "preprocessing.json", "README.txt"]
    assert "TorchScript (torch.jit.load" in result["record"]["verification"]
    model = loaded(setup, plain)
    batch = real_batch(setup, model)
    np.save(tmp_path / "batch.npy", batch.numpy())
    subprocess.run(
        [sys.executable, "-c", TORCHSCRIPT_USER, str(folder / "model.pt"),
         str(tmp_path / "batch.npy"), str(tmp_path / "out.npy")],
        check=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    assert_answers_alike(reference(model, batch), got)


def triton_schema(tmp: Path) -> Any:
    """Triton's ModelConfig message, compiled from its vendored schema."""
    from grpc_tools import protoc

    out = tmp / "triton_pb"
    out.mkdir()
    args = ["protoc", f"-I{TRITON_PROTO.parent}", f"--python_out={out}", str(TRITON_PROTO)]
    assert protoc.main(args) == 0
    sys.path.insert(0, str(out))
    try:
        import model_config_pb2
    finally:
        sys.path.remove(str(out))
    return model_config_pb2


def check_triton_repository(folder: Path, name: str, labels: list[str], tmp: Path) -> Any:
    """Parse config.pbtxt with Triton's schema and check it against the ONNX graph and the
    label file; the parsed config."""
    from google.protobuf import text_format

    schema = triton_schema(tmp)
    config = text_format.Parse((folder / name / "config.pbtxt").read_text(), schema.ModelConfig())
    graph = onnx.load(str(folder / name / "1" / "model.onnx"))
    (input_name, input_dims), (output_name, output_dims) = formats.graph_io(graph)
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert input_dims[0] == output_dims[0] == "batch"  # Triton's implicit batch axis
    [inp], [out] = config.input, config.output
    assert (inp.name, list(inp.dims)) == (input_name, input_dims[1:])
    assert (out.name, list(out.dims)) == (output_name, output_dims[1:])
    assert inp.data_type == out.data_type == schema.TYPE_FP32
    assert inp.format == schema.ModelInput.FORMAT_NCHW
    assert (folder / name / out.label_filename).read_text().splitlines() == labels
    return config


def test_triton_repository_parses_with_tritons_schema_and_names_the_onnx_tensors(
    setup: Setup, plain: str, tmp_path: Path
) -> None:
    folder, result = export(setup, plain, "triton")
    assert manifest_paths(result) == [
        "plain/config.pbtxt",
        "plain/labels.txt",
        "plain/1/model.onnx",
        "plain/preprocessing.json",
        "plain/README.txt",
    ]
    model = loaded(setup, plain)
    check_triton_repository(folder, plain, list(model.labels), tmp_path)
    batch = real_batch(setup, model)
    assert_answers_alike(reference(model, batch), onnx_logits(folder / "plain/1/model.onnx", batch))


def test_a_feature_cut_model_exports_to_every_format(
    setup: Setup, cut: str, tmp_path: Path
) -> None:
    model = loaded(setup, cut)
    assert model.model.feature_stages == (2, 3) and model.model.feature_grid == 2
    batch = real_batch(setup, model)
    expected = reference(model, batch)
    folder, result = export(setup, cut, "onnx")
    assert "same top-1 12/12" in result["record"]["verification"]
    assert_answers_alike(expected, onnx_logits(folder / "model.onnx", batch))
    folder, _ = export(setup, cut, "torchscript")
    scripted = torch.jit.load(str(folder / "model.pt"), map_location="cpu")
    with torch.no_grad():
        assert_answers_alike(expected, scripted(batch))
    folder, _ = export(setup, cut, "triton")
    check_triton_repository(folder, cut, list(model.labels), tmp_path)
    assert_answers_alike(expected, onnx_logits(folder / "cut/1/model.onnx", batch))


# --- the cache, and refusals ---------------------------------------------------------------


def test_an_export_is_reused_while_it_verifies_and_made_again_when_not(
    setup: Setup, cut: str
) -> None:
    folder, first = export(setup, cut, "onnx")
    onnx_file = folder / "model.onnx"
    before = onnx_file.stat()
    again_folder, again = export(setup, cut, "onnx")
    assert again_folder == folder and again["reused"] and again["record"] == first["record"]
    assert (onnx_file.stat().st_ino, onnx_file.stat().st_mtime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
    )
    # One byte changed on disk: the export is made again, not served.
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    _, remade = export(setup, cut, "onnx")
    assert not remade["reused"]
    assert remade["record"]["files"][0]["sha256"] == first["record"]["files"][0]["sha256"]
    assert onnx_file.stat().st_ino != before.st_ino  # a new folder, renamed into place


def test_an_export_that_answers_unlike_the_model_is_refused_and_not_published(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(setup, "wrong", feature_stages=(2,))
    real_onnx_bytes = formats.onnx_bytes

    def other_weights(model: Any, example: torch.Tensor) -> bytes:
        other = copy.deepcopy(model)  # the model itself must stay as it is: it is the reference
        with torch.no_grad():
            other.head.weight.add_(torch.randn_like(other.head.weight))
        return real_onnx_bytes(other, example)

    monkeypatch.setattr(formats, "onnx_bytes", other_weights)
    with pytest.raises(errors.FailedPrecondition, match="export refused, nothing was published"):
        export(setup, "wrong", "onnx")
    root = exports_root(setup.config.artifacts_root)
    assert not (root / "default" / "wrong").exists()
    assert list((root / ".staging").iterdir()) == []


def test_bad_format_and_unknown_model_answer_clearly(setup: Setup, plain: str) -> None:
    with pytest.raises(errors.InvalidArgument) as bad:
        export(setup, plain, "pickle")
    assert bad.value.violations[0].field == "format"
    assert "onnx, torchscript, triton" in bad.value.message
    with pytest.raises(errors.NotFound):
        export(setup, "no-such-model", "onnx")


# --- the SDK's checks of what it receives ----------------------------------------------


class ScriptedExport(pb_grpc.AdaptationServiceServicer):
    """ExportModel answering with a fixed stream of chunks."""

    def __init__(self, chunks: list[pb.ExportModelChunk]) -> None:
        self.chunks = chunks

    def ExportModel(self, request: Any, context: Any) -> Iterator[pb.ExportModelChunk]:
        yield from self.chunks


def _stream(
    files: dict[str, bytes], *, lie_about: str = "", path: str = ""
) -> list[pb.ExportModelChunk]:
    manifest = pb.ExportManifest(model=pb.ModelRef(name="m", version=1), verification="ok")
    chunks = []
    for name, data in files.items():
        digest = hashlib.sha256(b"other" if name == lie_about else data).hexdigest()
        manifest.files.append(pb.ArtifactFile(path=path or name, size=len(data), sha256=digest))
        chunks.append(pb.ExportModelChunk(path=path or name, offset=0, data=data))
    return [pb.ExportModelChunk(manifest=manifest), *chunks]


def _export_from(chunks: list[pb.ExportModelChunk], out: Path) -> pb.ExportManifest:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_AdaptationServiceServicer_to_server(ScriptedExport(chunks), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=10) as client:
            return client.export_model("m:1", "onnx", out)
    finally:
        server.stop(None)


def test_the_sdk_writes_what_the_manifest_lists_and_refuses_anything_else(tmp_path: Path) -> None:
    files = {"model.onnx": b"\x08\x07" * 1000, "sub/README.txt": b"hello\n"}
    manifest = _export_from(_stream(files), tmp_path / "good")
    assert [f.path for f in manifest.files] == list(files)
    assert (tmp_path / "good" / "sub" / "README.txt").read_bytes() == b"hello\n"
    with pytest.raises(DataLoss, match="the manifest says"):
        _export_from(_stream(files, lie_about="model.onnx"), tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.onnx").exists()
    assert [p.name for p in (tmp_path / "bad").iterdir()] == []  # no temporary file left
    with pytest.raises(DataLoss, match="unsafe path"):
        _export_from(_stream({"x": b"x"}, path="../escape"), tmp_path / "evil")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(InvalidArgument, match="unknown export format 'pickle'"):
        Client("127.0.0.1:1").export_model("m", "pickle", tmp_path / "fmt")  # refused locally


# --- the API's reading of the worker's files -------------------------------------------


class _Pool:
    """What _file_chunks needs of Services: blocking calls run for it (here, inline)."""

    async def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


def _read_all(entry: ExportedFile, root: Path) -> list[pb.ExportModelChunk]:
    async def collect() -> list[pb.ExportModelChunk]:
        return [c async for c in _file_chunks(_Pool(), root, entry)]  # type: ignore[arg-type]

    return asyncio.run(collect())


def test_the_api_sends_a_file_in_chunks_and_refuses_one_that_changed(tmp_path: Path) -> None:
    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
    (tmp_path / "model.onnx").write_bytes(data)
    entry = ExportedFile("model.onnx", len(data), hashlib.sha256(data).hexdigest(), "x")
    chunks = _read_all(entry, tmp_path)
    assert [c.offset for c in chunks] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES]
    assert b"".join(c.data for c in chunks) == data and {c.path for c in chunks} == {"model.onnx"}
    (tmp_path / "empty.txt").write_bytes(b"")
    empty = ExportedFile("empty.txt", 0, hashlib.sha256(b"").hexdigest(), "text/plain")
    assert [(c.offset, c.data) for c in _read_all(empty, tmp_path)] == [(0, b"")]
    (tmp_path / "model.onnx").write_bytes(data[:-1] + b"\x00")  # changed after it was recorded
    with pytest.raises(CorruptArtifact, match="artifact corrupted"):
        _read_all(entry, tmp_path)
    with pytest.raises(errors.Unavailable, match="gone from the server"):
        _read_all(dataclasses.replace(entry, path="gone.onnx"), tmp_path)


def test_the_recipe_carries_the_cards_temperature(setup: Setup, plain: str) -> None:
    _, _, card = ModelRegistry(setup.store, setup.config.registry_dir).load(ModelRef(plain, 1))
    fitted = Calibration(2.5, True, 0.2, 0.1, 1.0, 0.9, 12, 10)
    tensors = Tensors("images", "logits", 4)

    def temperature(calibration: Calibration | None) -> float:
        with_it = dataclasses.replace(card, calibration=calibration)
        return float(recipe(with_it, tensors, "onnx")["temperature"])

    assert temperature(None) == 1.0
    assert temperature(fitted) == 2.5
    assert temperature(dataclasses.replace(fitted, applied=False)) == 1.0  # Predict ignores it
    text = readme(dataclasses.replace(card, calibration=fitted), tensors, "triton", "checked")
    assert "softmax(logits / 2.5)" in text and "tritonserver --model-repository" in text
    # The check compares probabilities at the temperature Predict uses.
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    moved = logits + torch.tensor([[0.0, 0.01], [0.0, 0.0]])
    at_1, at_100 = agreement(logits, moved, 1.0), agreement(logits, moved, 100.0)
    assert at_1.max_prob_diff > at_100.max_prob_diff > 0

"""Every bad request gets its own status code and a message a person can act on; none
becomes INTERNAL. A real gRPC server (in this process, on port 0) and the real SDK over a
real channel: what is checked here is the servicer's validation, which needs no process
boundary. Where the trainer lane's answer is the point (a dataset it cannot train on, a
model to Predict with), a Worker runs the queued job in this process, as `graft serve`'s
worker process would. Worker crashes, lease expiry and signals are tests/integration's
slow tests and tests/deploy/test_processes.py."""

from __future__ import annotations

import io
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from graft.config import Config
from graft.observability.metrics import ServerMetrics
from graft.server import BackgroundServer
from graft_client import (
    Client,
    FailedPrecondition,
    GraftError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    job_error,
    pb,
)
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.integration.conftest import CLASSES


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """The API server with `graft serve`'s defaults and one data root, no worker process
    (jobs stay queued until `work_off`), an advisor lane in a thread (Advise, uploads), and
    eager Predict (no runtime export measured in the background: what a bad image gets does
    not depend on the runtime, tests/unit/test_predict_runtimes.py covers those)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    data_root = tmp / "datasets"
    data_root.mkdir()
    config = Config(
        data_dir=tmp / "graft-data",
        data_roots=(data_root,),
        embedded_worker=False,
        predict_runtimes=("eager",),
    )
    with BackgroundServer(config, advisor=True) as running:
        yield running


@pytest.fixture(scope="module")
def data_root(api_server: BackgroundServer) -> Path:
    return api_server.config.data_roots[0]


@pytest.fixture(scope="module")
def client(api_server: BackgroundServer) -> Iterator[Client]:
    with Client(api_server.target, timeout=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def fashion(data_root: Path) -> dict[str, Path]:
    """A small real dataset inside the server's data root, plus held-out test images."""
    train = write_fashion_mnist_folder(
        data_root / "fashion-train", per_class=40, classes=CLASSES, split="train"
    )
    test = write_fashion_mnist_folder(
        data_root / "fashion-test", per_class=15, classes=CLASSES, split="test"
    )
    return {"train": train, "test": test}


@pytest.fixture(scope="module")
def work_off(api_server: BackgroundServer) -> Iterator[Callable[[], None]]:
    """Runs every queued job to its end with a real Worker (the trainer lane) in this
    process, on the server's store and data roots."""
    from graft.worker import Worker

    config = api_server.config
    worker = Worker(config, "in-process-trainer")

    def run() -> None:
        while (job := worker.store.claim_job(worker.worker_id, config.lease_seconds)) is not None:
            worker.run_job(job)

    try:
        yield run
    finally:
        worker.store.close()


def _fields(exc: GraftError) -> set[str]:
    return {field for field, _ in exc.field_violations}


def _incidents(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "incident" in r.getMessage()]


def test_dataset_outside_data_roots(client: Client, data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.advise(str(tmp_path))
    assert "dataset.uri" in _fields(err.value)
    assert str(data_root) in err.value.message  # says which roots are allowed


def test_dataset_missing(client: Client, data_root: Path) -> None:
    with pytest.raises(NotFound):
        client.advise(str(data_root / "nope"))


def test_dataset_ref_empty(client: Client) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.start_fine_tune("m", "")
    assert any(f.startswith("dataset") for f in _fields(err.value))


def test_single_class_and_empty_datasets(
    client: Client, data_root: Path, fashion: dict[str, Path], work_off: Callable[[], None]
) -> None:
    one = data_root / "one-class"
    shutil.copytree(next(fashion["train"].iterdir()), one / "only")
    # The dataset is scanned by the worker: the job is queued, then fails with the status
    # the server would once have answered with.
    queued = client.start_fine_tune("m", str(one))
    assert queued.state == pb.JOB_STATE_QUEUED
    work_off()
    job = client.wait(queued.job_id, timeout=60)
    assert job.state == pb.JOB_STATE_FAILED
    error = job_error(job)
    assert isinstance(error, FailedPrecondition) and "class" in error.message
    with pytest.raises(FailedPrecondition) as err:
        client.advise(str(one))  # Advise still answers with the error itself
    assert "class" in err.value.message
    empty = data_root / "no-images" / "a"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(FailedPrecondition):
        client.advise(str(empty.parent))


def test_bad_model_name(client: Client, fashion: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.start_fine_tune("bad name/..", str(fashion["train"]))
    assert _fields(err.value) == {"model_name"}


def test_bad_plan_fields(client: Client, fashion: dict[str, Path]) -> None:
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, epochs=-1)
    with pytest.raises(InvalidArgument) as err:
        client.start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "plan.epochs" in _fields(err.value)
    plan = pb.TrainingPlan(backbone="no_such_net", strategy=pb.STRATEGY_FEATURE_EXTRACTION)
    with pytest.raises(InvalidArgument) as err:
        client.start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "plan.backbone" in _fields(err.value)
    for bad in (
        pb.TrainingPlan(strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, feature_stages=[4]),
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[10]),
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[5, 3]),
    ):
        with pytest.raises(InvalidArgument) as err:
            client.start_fine_tune("m", str(fashion["train"]), plan=bad)
        assert _fields(err.value) == {"plan.feature_stages"}, err.value
    for bad in (
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_grid=2),  # no cut
        pb.TrainingPlan(
            strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[6], feature_grid=5
        ),
    ):
        with pytest.raises(InvalidArgument) as err:
            client.start_fine_tune("m", str(fashion["train"]), plan=bad)
        assert _fields(err.value) == {"plan.feature_grid"}, err.value


def test_backbone_without_weights(client: Client, fashion: dict[str, Path]) -> None:
    plan = pb.TrainingPlan(backbone="resnet18", strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1)
    with pytest.raises(FailedPrecondition) as err:
        client.start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "graft backbones import" in err.value.message


def test_jobs_unknown_and_malformed(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_job("0" * 32)
    with pytest.raises(InvalidArgument) as err:
        client.get_job("not-a-job")
    assert _fields(err.value) == {"job_id"}
    with pytest.raises(NotFound):
        list(client.stream_progress("f" * 32))
    with pytest.raises(NotFound):
        client.cancel_job("1" * 32)


def test_predict_errors(client: Client) -> None:
    with pytest.raises(NotFound) as err:
        client.predict("no-such-model", [b"x"])
    assert "no-such-model" in err.value.message
    with pytest.raises(InvalidArgument):
        client.predict(pb.ModelRef(name=""), [b"x"])  # the server's own check
    with pytest.raises(ResourceExhausted):
        client.predict("no-such-model", [b"x"] * 1000)


def test_model_alias_errors(client: Client) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.set_model_alias("m", "bad alias!", 1)
    assert _fields(err.value) == {"alias"}
    with pytest.raises(NotFound):
        client.set_model_alias("no-such-model", "production", 1)


def test_declared_statistics_validated(client: Client) -> None:
    advice = client.advise(
        "",
        declared=pb.DeclaredStatistics(num_classes=5, images_per_class=2000, similarity_hint=0.9),
    )
    assert advice.quadrant == pb.QUADRANT_LARGE_SIMILAR
    assert advice.plan.strategy == pb.STRATEGY_PARTIAL_FINE_TUNE
    with pytest.raises(InvalidArgument) as err:
        client.advise("", declared=pb.DeclaredStatistics(num_classes=1, images_per_class=10))
    assert "declared.num_classes" in _fields(err.value)
    for field, value in (("max_images_per_class", 51), ("max_images", 1), ("max_images", -1)):
        with pytest.raises(InvalidArgument) as err:
            client.advise("/nowhere", **{field: value})  # type: ignore[arg-type]
        assert _fields(err.value) == {field}, err.value


def test_undecodable_image_fails_only_its_entry(
    client: Client, fashion: dict[str, Path], work_off: Callable[[], None]
) -> None:
    """Needs a registered model: trains a one-epoch feature-extraction model first."""
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1, image_size=32)
    queued = client.start_fine_tune("tiny", str(fashion["train"]), plan=plan)
    work_off()
    job = client.wait(queued.job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    good = io.BytesIO()
    Image.new("L", (28, 28), 128).save(good, format="PNG")
    response = client.predict("tiny", [good.getvalue(), b"definitely not an image"])
    assert len(response.predictions[0].classes) > 0 and response.predictions[0].error.code == 0
    assert not response.predictions[1].classes
    assert response.predictions[1].error.code == 3  # INVALID_ARGUMENT, for that image alone
    with pytest.raises(FailedPrecondition):
        client.cancel_job(job.job_id)  # already finished


# ------------------------------------------------------------------ hostile files over gRPC
# The corpus itself is tests/unit/test_hostile_files.py; here a few of its inputs go through
# a real channel, to pin the status codes a caller sees and that none is an incident.


def _tree(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*")}


def test_hostile_uploads_are_invalid_argument(
    api_server: BackgroundServer,
    client: Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.unit.test_hostile_files import cve_2025_4517_tar, good_entries, patch_zip, zip_of

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    plain = zip_of(good_entries())
    archives = {
        "chain.tar": cve_2025_4517_tar(outside),
        "bomb.zip": zip_of(good_entries() | {"cat/zeros.png": bytes(20 << 20)}),
        "slip.zip": zip_of(good_entries() | {"../../evil.png": b"x"}),
        "encrypted.zip": patch_zip(plain, 6, 8, 0x1),
        "method.zip": patch_zip(plain, 8, 10, 99),
        "cut.tgz": b"\x1f\x8b\x08\x00" + bytes(30),
    }
    data_dir = api_server.config.data_dir
    before = _tree(data_dir)
    for name, data in archives.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidArgument) as err:
            client.upload_dataset(tmp_path / name)
        assert _fields(err.value) == {"chunk"}, (name, err.value.message)
    assert _tree(outside) == {"secret.png"}
    # nothing kept of a rejected upload (the store's own files aside)
    after = {p for p in _tree(data_dir) - before if not p.startswith("graft.sqlite3")}
    assert not {p for p in after if "uploads/" in p or "extracted/" in p}, after
    assert not _incidents(caplog)


def test_hostile_dataset_uris_get_specific_codes(
    client: Client, data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (data_root / "loop").symlink_to("loop")
    for uri in ("ds\0/x", "x" * 300, "y" * 100_000, "loop"):
        with pytest.raises(InvalidArgument) as err:
            client.advise(uri)
        assert _fields(err.value) == {"dataset.uri"}
        assert len(err.value.message) < 300  # quoted short, never echoed whole
    assert not _incidents(caplog)


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[BackgroundServer, ServerMetrics]]:
    config = Config(data_dir=tmp_path / "data", embedded_worker=False, max_upload_bytes=50_000)
    metrics = ServerMetrics()
    with BackgroundServer(config, metrics, advisor=True) as running:
        yield running, metrics


def _handled(metrics: ServerMetrics, code: str) -> float:
    labels = {
        "grpc_type": "client_stream",
        "grpc_service": "graft.v1.AdaptationService",
        "grpc_method": "UploadDataset",
        "grpc_code": code,
    }
    return metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


def test_oversized_and_cancelled_uploads_are_no_incidents(
    in_process: tuple[BackgroundServer, ServerMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    running, metrics = in_process
    stub = pb_grpc.AdaptationServiceStub(grpc.insecure_channel(running.target))

    def oversized() -> Iterator[pb.UploadDatasetRequest]:
        yield pb.UploadDatasetRequest(filename="big.zip", chunk=bytes(30_000))
        yield pb.UploadDatasetRequest(chunk=bytes(30_000))

    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadDataset(oversized(), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        release = threading.Event()

        def stalled() -> Iterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(filename="slow.zip", chunk=b"PK")
            release.wait(10)

        call = stub.UploadDataset.future(stalled(), timeout=30)
        deadline = time.monotonic() + 10
        while not list(running.config.uploads_dir.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server has the first chunk
        call.cancel()
        release.set()
        while _handled(metrics, "Canceled") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert call.cancelled()
    assert _handled(metrics, "ResourceExhausted") == 1
    assert _handled(metrics, "Canceled") == 1
    assert _handled(metrics, "Internal") == 0
    assert not any("incident" in r.getMessage() for r in caplog.records)
    assert list(running.config.uploads_dir.iterdir()) == []  # nothing kept of either

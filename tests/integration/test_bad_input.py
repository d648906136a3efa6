"""Every bad request gets its own status code and a message a person can act on; none
becomes INTERNAL. Real server process, real SDK."""

from __future__ import annotations

import io
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from graft.config import Config
from graft.observability.metrics import ServerMetrics
from graft.server import BackgroundServer
from graft_client import (
    FailedPrecondition,
    GraftError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    job_error,
    pb,
)
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from tests.integration.conftest import RunningServer

pytestmark = pytest.mark.slow


def _fields(exc: GraftError) -> set[str]:
    return {field for field, _ in exc.field_violations}


def test_dataset_outside_data_roots(server: RunningServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        server.client().advise(str(tmp_path))
    assert "dataset.uri" in _fields(err.value)
    assert str(server.data_root) in err.value.message  # says which roots are allowed


def test_dataset_missing(server: RunningServer) -> None:
    with pytest.raises(NotFound):
        server.client().advise(str(server.data_root / "nope"))


def test_dataset_ref_empty(server: RunningServer) -> None:
    with pytest.raises(InvalidArgument) as err:
        server.client().start_fine_tune("m", "")
    assert any(f.startswith("dataset") for f in _fields(err.value))


def test_single_class_and_empty_datasets(server: RunningServer, fashion: dict[str, Path]) -> None:
    one = server.data_root / "one-class"
    shutil.copytree(next(fashion["train"].iterdir()), one / "only")
    client = server.client()
    # The dataset is scanned by the worker: the job is queued, then fails with the status
    # the server would once have answered with.
    job = client.wait(client.start_fine_tune("m", str(one)).job_id, timeout=60)
    assert job.state == pb.JOB_STATE_FAILED
    error = job_error(job)
    assert isinstance(error, FailedPrecondition) and "class" in error.message
    with pytest.raises(FailedPrecondition) as err:
        client.advise(str(one))  # Advise still answers with the error itself
    assert "class" in err.value.message
    empty = server.data_root / "no-images" / "a"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(FailedPrecondition):
        server.client().advise(str(empty.parent))


def test_bad_model_name(server: RunningServer, fashion: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgument) as err:
        server.client().start_fine_tune("bad name/..", str(fashion["train"]))
    assert _fields(err.value) == {"model_name"}


def test_bad_plan_fields(server: RunningServer, fashion: dict[str, Path]) -> None:
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, epochs=-1)
    with pytest.raises(InvalidArgument) as err:
        server.client().start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "plan.epochs" in _fields(err.value)
    plan = pb.TrainingPlan(backbone="no_such_net", strategy=pb.STRATEGY_FEATURE_EXTRACTION)
    with pytest.raises(InvalidArgument) as err:
        server.client().start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "plan.backbone" in _fields(err.value)
    for bad in (
        pb.TrainingPlan(strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, feature_stages=[4]),
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[10]),
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[5, 3]),
    ):
        with pytest.raises(InvalidArgument) as err:
            server.client().start_fine_tune("m", str(fashion["train"]), plan=bad)
        assert _fields(err.value) == {"plan.feature_stages"}, err.value
    for bad in (
        pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_grid=2),  # no cut
        pb.TrainingPlan(
            strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[6], feature_grid=5
        ),
    ):
        with pytest.raises(InvalidArgument) as err:
            server.client().start_fine_tune("m", str(fashion["train"]), plan=bad)
        assert _fields(err.value) == {"plan.feature_grid"}, err.value


def test_backbone_without_weights(server: RunningServer, fashion: dict[str, Path]) -> None:
    plan = pb.TrainingPlan(backbone="resnet18", strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1)
    with pytest.raises(FailedPrecondition) as err:
        server.client().start_fine_tune("m", str(fashion["train"]), plan=plan)
    assert "graft backbones import" in err.value.message


def test_jobs_unknown_and_malformed(server: RunningServer) -> None:
    client = server.client()
    with pytest.raises(NotFound):
        client.get_job("0" * 32)
    with pytest.raises(InvalidArgument) as err:
        client.get_job("not-a-job")
    assert _fields(err.value) == {"job_id"}
    with pytest.raises(NotFound):
        list(client.stream_progress("f" * 32))
    with pytest.raises(NotFound):
        client.cancel_job("1" * 32)


def test_predict_errors(server: RunningServer) -> None:
    client = server.client()
    with pytest.raises(NotFound) as err:
        client.predict("no-such-model", [b"x"])
    assert "no-such-model" in err.value.message
    with pytest.raises(InvalidArgument):
        client.predict(pb.ModelRef(name=""), [b"x"])  # the server's own check
    with pytest.raises(ResourceExhausted):
        client.predict("no-such-model", [b"x"] * 1000)


def test_model_alias_errors(server: RunningServer) -> None:
    client = server.client()
    with pytest.raises(InvalidArgument) as err:
        client.set_model_alias("m", "bad alias!", 1)
    assert _fields(err.value) == {"alias"}
    with pytest.raises(NotFound):
        client.set_model_alias("no-such-model", "production", 1)


def test_declared_statistics_validated(server: RunningServer) -> None:
    client = server.client()
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
    server: RunningServer, fashion: dict[str, Path]
) -> None:
    """Needs a registered model: trains a one-epoch feature-extraction model first."""
    client = server.client()
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1, image_size=32)
    job = client.wait(client.start_fine_tune("tiny", str(fashion["train"]), plan=plan).job_id)
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


def test_hostile_uploads_are_invalid_argument(server: RunningServer, tmp_path: Path) -> None:
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
    before = _tree(server.data_dir)
    client = server.client()
    for name, data in archives.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidArgument) as err:
            client.upload_dataset(tmp_path / name)
        assert _fields(err.value) == {"chunk"}, (name, err.value.message)
    assert _tree(outside) == {"secret.png"}
    # nothing kept of a rejected upload (the store's own files aside)
    after = {p for p in _tree(server.data_dir) - before if not p.startswith("graft.sqlite3")}
    assert not {p for p in after if "uploads/" in p or "extracted/" in p}, after
    assert "incident" not in server.log()


def test_hostile_dataset_uris_get_specific_codes(server: RunningServer) -> None:
    (server.data_root / "loop").symlink_to("loop")
    client = server.client()
    for uri in ("ds\0/x", "x" * 300, "y" * 100_000, "loop"):
        with pytest.raises(InvalidArgument) as err:
            client.advise(uri)
        assert _fields(err.value) == {"dataset.uri"}
        assert len(err.value.message) < 300  # quoted short, never echoed whole
    assert "incident" not in server.log()


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

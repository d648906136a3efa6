"""ListJobs and ListModels through a real channel: pages bounded in size and followed by
tokens (every row once, in order, none skipped by rows added meanwhile), tokens bound to
their list and filter, and no confusion matrix in lists or progress events (a 1,000-class
model made ListModels 4 MB a version), while GetJob / GetModel keep it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest
import torch

from graft.api import paging
from graft.backbones import get_spec
from graft.config import Config
from graft.domain import ClassMetrics, DatasetRef, EvaluationMetrics, JobState, TrainingPlan
from graft.registry import ModelCard, ModelRegistry, Preprocessing
from graft.server import BackgroundServer
from graft_client import Client, InvalidArgument, pb

N_CLASSES = 300  # a 90,000-entry confusion matrix: ~0.5 MB a copy on the wire


def _metrics() -> EvaluationMetrics:
    labels = tuple(f"c{i}" for i in range(N_CLASSES))
    return EvaluationMetrics(
        accuracy=0.5,
        per_class=tuple(ClassMetrics(label, 0.5, 0.5, 2) for label in labels),
        confusion=tuple(range(N_CLASSES * N_CLASSES)),
        labels=labels,
    )


def _card() -> ModelCard:
    spec = get_spec("efficientnet_lite0")
    return ModelCard(
        backbone=spec.name,
        labels=_metrics().labels,
        preprocessing=Preprocessing.from_spec(spec, spec.input_size),
        plan=TrainingPlan(backbone=spec.name),
        job_id=uuid.uuid4().hex,  # a job of its own: a job registers one version of a name
        metrics=_metrics(),
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundServer, Client]]:
    data = tmp_path_factory.mktemp("lists")
    config = Config(data_dir=data, metrics_port=0, predict_runtimes=("eager",))
    with BackgroundServer(config) as server, Client(server.target) as client:
        store = server.services.store
        registry = ModelRegistry(store, config.registry_dir)
        for name, versions in (("alpha", 3), ("beta", 2), ("gamma", 1)):
            for _ in range(versions):
                registry.register(name=name, state_dict={"w": torch.zeros(1)}, card=_card())
        for i in range(7):
            job, _ = store.create_job(
                model_name=f"m{i}", dataset=DatasetRef(uri="/x"), plan=TrainingPlan(), request_id=""
            )
            if i % 2:
                store.request_cancel(job.job_id)  # queued: cancelled at once
        yield server, client


def _call(client: Client, method: str, request: object) -> object:
    return getattr(client._stub, method)(request, timeout=10)


def test_list_jobs_pages_cover_every_job_once_newest_first(
    served: tuple[BackgroundServer, Client],
) -> None:
    server, client = served
    everything = [j.job_id for j in server.services.store.list_jobs(limit=1000)]
    seen: list[str] = []
    request = pb.ListJobsRequest(limit=3)
    pages = 0
    while True:
        response = _call(client, "ListJobs", request)
        assert isinstance(response, pb.ListJobsResponse) and len(response.jobs) <= 3
        seen += [j.job_id for j in response.jobs]
        pages += 1
        if pages == 1:  # a job created after the first page never shifts the later ones
            server.services.store.create_job(
                model_name="late", dataset=DatasetRef(uri="/x"), plan=TrainingPlan(), request_id=""
            )
        if not response.next_page_token:
            break
        request = pb.ListJobsRequest(limit=3, page_token=response.next_page_token)
    assert seen == everything and pages == 3
    # The SDK follows the tokens when asked for more than a page.
    assert len(client.list_jobs(limit=5)) == 5


def test_a_token_only_works_for_its_own_list_and_filter(
    served: tuple[BackgroundServer, Client],
) -> None:
    _, client = served
    first = _call(client, "ListJobs", pb.ListJobsRequest(limit=2, state=pb.JOB_STATE_QUEUED))
    assert isinstance(first, pb.ListJobsResponse) and first.next_page_token
    cases = [
        ("ListJobs", pb.ListJobsRequest(page_token=first.next_page_token)),  # other filter
        ("ListModels", pb.ListModelsRequest(page_token=first.next_page_token)),  # other list
        ("ListJobs", pb.ListJobsRequest(page_token="not a token")),
        # Well-formed JSON with the right digest, a cursor of the wrong type.
        ("ListJobs", pb.ListJobsRequest(page_token=paging.encode("jobs", 0, "x"))),
        ("ListModels", pb.ListModelsRequest(page_token=paging.encode("models", "", [1, 2, 3]))),
        ("ListModels", pb.ListModelsRequest(page_size=5000)),
    ]
    for method, request in cases:
        with pytest.raises(grpc.RpcError) as err:
            _call(client, method, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
    # The SDK raises the typed error for the same.
    with pytest.raises(InvalidArgument):
        client._call(
            client._stub.ListJobs, pb.ListJobsRequest(page_token="%%%"), client._deadline(None)
        )
    queued = [j for j in client.list_jobs(state="queued", limit=100)]
    assert queued and all(j.state == JobState.QUEUED for j in queued)


def test_list_models_pages_by_versions_and_the_sdk_joins_them(
    served: tuple[BackgroundServer, Client],
) -> None:
    _, client = served
    pages: list[list[tuple[str, list[int]]]] = []
    token = ""
    while True:
        response = _call(client, "ListModels", pb.ListModelsRequest(page_size=2, page_token=token))
        assert isinstance(response, pb.ListModelsResponse)
        pages.append([(m.name, [v.version for v in m.versions]) for m in response.models])
        token = response.next_page_token
        if not token:
            break
    assert pages == [
        [("alpha", [1, 2])],
        [("alpha", [3]), ("beta", [1])],
        [("beta", [2]), ("gamma", [1])],
    ]
    joined = [(m.name, [v.version for v in m.versions]) for m in client.list_models()]
    assert joined == [("alpha", [1, 2, 3]), ("beta", [1, 2]), ("gamma", [1])]
    assert [m.name for m in client.list_models("b")] == ["beta"]


def test_confusion_matrices_ride_only_where_one_thing_is_fetched(
    served: tuple[BackgroundServer, Client],
) -> None:
    _, client = served
    listed = _call(client, "ListModels", pb.ListModelsRequest())
    assert isinstance(listed, pb.ListModelsResponse)
    for model in listed.models:
        for v in model.versions:
            assert len(v.metrics.labels) == N_CLASSES and len(v.metrics.per_class) == N_CLASSES
            assert not v.metrics.confusion and '"confusion"' not in v.card_json
    one = client.get_model("alpha", 2)
    assert len(one.metrics.confusion) == N_CLASSES * N_CLASSES
    assert '"confusion"' not in one.card_json  # metrics.confusion is the one copy
    # Listed, a version grows with the class count only (labels, per-class figures): a
    # fraction of what it is with its matrix, at 300 classes.
    sizes = [v.ByteSize() for m in listed.models for v in m.versions]
    print(f"version listed: {max(sizes)} bytes; fetched: {one.ByteSize()} bytes")
    assert len(sizes) == 6 and max(sizes) * 3 < one.ByteSize()


def test_progress_events_and_listed_jobs_carry_no_confusion_matrix(
    served: tuple[BackgroundServer, Client],
) -> None:
    from graft.api import convert
    from graft.domain import EventKind, ProgressEvent

    event = ProgressEvent(
        kind=EventKind.EVALUATION, state=JobState.RUNNING, metrics=_metrics(), epoch=1
    )
    assert not convert.event_to_pb(event).metrics.confusion
    assert len(convert.event_to_pb(event).metrics.per_class) == N_CLASSES
    # A job with metrics: listed without the matrix, fetched with it.
    server, client = served
    store = server.services.store
    job = store.list_jobs(limit=1000)[-1]
    with store._tx(write=True) as c:
        c.execute(
            "UPDATE jobs SET metrics_json = ? WHERE job_id = ?",
            (json.dumps(_metrics().to_dict()), job.job_id),
        )
    listed = [j for j in client.list_jobs(limit=1000) if j.job_id == job.job_id]
    assert listed and len(listed[0].metrics.per_class) == N_CLASSES
    assert not listed[0].metrics.confusion
    assert len(client.get_job(job.job_id).metrics.confusion) == N_CLASSES * N_CLASSES

"""API keys and tenants, through a real in-process grpc.aio server and the SDK: a call
without a valid key is UNAUTHENTICATED, health and reflection answer without one, a revoked
key is refused from the next call on, and one tenant sees none of another's jobs, models or
uploads (NOT_FOUND, in the words a missing one gets); an admin key sees every tenant."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

import graft_client
from graft.api.auth import admin_scrapes
from graft.apikeys import bearer_token, hash_token, new_token
from graft.config import Config
from graft.domain import (
    DEFAULT_TENANT,
    DatasetRef,
    JobState,
    ModelRef,
    Strategy,
    TrainingPlan,
)
from graft.errors import NotFound, Unauthenticated
from graft.observability.metrics import serve_metrics
from graft.server import BackgroundServer
from graft.store import JobStore, SqliteJobStore
from graft_client import Client, pb
from tests.helpers import register_random_model

PLAN = {"strategy": pb.STRATEGY_FEATURE_EXTRACTION, "epochs": 1}
MISSING_JOB = "f" * 32


def _dataset(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((8, 8, 3), 40 * i + (100 if label == "b" else 0), np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def new_key(store: JobStore, tenant: str, *, admin: bool = False) -> tuple[str, str]:
    """(key_id, token) of a fresh key, created as `graft keys create` does."""
    key_id, token = new_token()
    store.add_api_key(key_id, hash_token(token), tenant, admin=admin)
    return key_id, token


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 40, 200)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """Authentication on (forced: the host is loopback), no trainer (jobs stay queued), an
    in-process advisor lane (uploads are checked), eager Predict (no runtime export)."""
    tmp = tmp_path_factory.mktemp("auth")
    data = tmp / "data"
    register_random_model(data, "flowers", labels=("rose", "tulip"), tenant="acme")
    register_random_model(data, "flowers", labels=("cat", "dog"), tenant="globex")
    register_random_model(data, "legacy", labels=("x", "y"))  # the default tenant's
    register_random_model(data, "flowers", labels=("oak", "elm"))  # and a third "flowers"
    _dataset(tmp / "datasets" / "two")
    config = Config(
        data_dir=data,
        data_roots=(tmp / "datasets",),
        embedded_worker=False,
        auth="on",
        predict_runtimes=("eager",),
    )
    with BackgroundServer(config, advisor=True) as running:
        yield running


@pytest.fixture(scope="module")
def keys(server: BackgroundServer) -> dict[str, str]:
    store = server.services.store
    return {
        "acme": new_key(store, "acme")[1],
        "globex": new_key(store, "globex")[1],
        "admin": new_key(store, "ops", admin=True)[1],
    }


@pytest.fixture(scope="module")
def acme_things(server: BackgroundServer, keys: dict[str, str]) -> dict[str, str]:
    """What tenant acme owns: a queued job (with a request id) and an upload."""
    root = Path(server.config.data_roots[0]) / "two"
    with Client(server.target, api_key=keys["acme"]) as acme:
        job = acme.start_fine_tune("flowers", root, plan=PLAN, request_id="acme-1")
        upload = acme.upload_dataset(root)
    return {"job_id": job.job_id, "dataset_id": upload.dataset_id}


def _code(call: object) -> grpc.StatusCode:
    assert callable(call)
    with pytest.raises(graft_client.GraftError) as info:
        call()
    return info.value.code


# --- unauthenticated ---------------------------------------------------------------------


def test_no_key_a_bad_key_or_a_wrong_scheme_is_unauthenticated(server: BackgroundServer) -> None:
    with Client(server.target) as anonymous:
        with pytest.raises(graft_client.Unauthenticated, match="requires an API key"):
            anonymous.list_jobs()
        with pytest.raises(graft_client.Unauthenticated):  # streams too
            list(anonymous.stream_progress(MISSING_JOB, reconnect=False))
    forged = Client(server.target, api_key="graft_" + "A" * 43)
    with forged, pytest.raises(graft_client.Unauthenticated, match="unknown or revoked"):
        forged.list_models()
    basic = [("authorization", "Basic dXNlcjpwYXNz")]
    with Client(server.target, metadata=basic) as wrong_scheme:
        assert _code(wrong_scheme.list_backbones) == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_answer_without_a_key(server: BackgroundServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert reply.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,  # no health monitor in-process
        )
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "graft.v1.AdaptationService" in names


def test_a_revoked_key_is_refused_from_the_next_call_on(server: BackgroundServer) -> None:
    key_id, token = new_key(server.services.store, "acme")
    with Client(server.target, api_key=token) as client:
        client.list_jobs()
        # Revoked through another store object on the same file: what `graft keys revoke`
        # does from another process. No cache stands between it and the next call.
        other = SqliteJobStore(server.config.store_path)
        other.revoke_api_key(key_id)
        other.close()
        with pytest.raises(graft_client.Unauthenticated, match="unknown or revoked"):
            client.list_jobs()


def test_metrics_can_require_an_admin_key(server: BackgroundServer) -> None:
    """`metrics_auth`: /metrics answers 401 but to a valid admin key (off by default)."""
    store = server.services.store
    port = serve_metrics(server.metrics.registry, 0, "127.0.0.1", admin_scrapes(store))
    admin_id, admin = new_key(store, "ops", admin=True)

    def scrape(token: str | None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert b"# TYPE grpc_server_handled_total counter" in reply.read()
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    assert scrape(admin) == 200
    assert scrape(None) == 401
    assert scrape(new_key(store, "acme")[1]) == 401  # a tenant's key is not enough
    store.revoke_api_key(admin_id)
    assert scrape(admin) == 401


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("x", "y"), ("authorization", b"bearer  abc ")]) == "abc"
    for bad in ([], [("authorization", "abc")], [("authorization", "Bearer ")]):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)
    with pytest.raises(Unauthenticated, match="more than one"):
        bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")])


# --- tenants -----------------------------------------------------------------------------


def test_another_tenants_jobs_are_not_found(
    server: BackgroundServer, keys: dict[str, str], acme_things: dict[str, str]
) -> None:
    job_id = acme_things["job_id"]
    with Client(server.target, api_key=keys["globex"]) as globex:
        for call in (globex.get_job, globex.cancel_job):
            with pytest.raises(graft_client.NotFound) as theirs:
                call(job_id)
            with pytest.raises(graft_client.NotFound) as missing:
                call(MISSING_JOB)
            # Word for word what a job that does not exist gets: nothing leaks.
            assert theirs.value.message.replace(job_id, "ID") == missing.value.message.replace(
                MISSING_JOB, "ID"
            )
        with pytest.raises(graft_client.NotFound):
            list(globex.stream_progress(job_id, reconnect=False))
        assert [j.job_id for j in globex.list_jobs()] == []
        # Request ids are per tenant: acme's does not return acme's job to globex.
        root = Path(server.config.data_roots[0]) / "two"
        mine = globex.start_fine_tune("flowers", root, plan=PLAN, request_id="acme-1")
        assert mine.job_id != job_id and mine.tenant == "globex"
    with Client(server.target, api_key=keys["acme"]) as acme:
        job = acme.get_job(job_id)
        assert job.tenant == "acme" and job.state == pb.JOB_STATE_QUEUED
        assert [j.job_id for j in acme.list_jobs()] == [job_id]
        assert acme.cancel_job(job_id).state == pb.JOB_STATE_CANCELLED


def test_another_tenants_uploads_are_not_found(
    server: BackgroundServer, keys: dict[str, str], acme_things: dict[str, str]
) -> None:
    dataset_id = acme_things["dataset_id"]
    with Client(server.target, api_key=keys["globex"]) as globex:
        with pytest.raises(graft_client.NotFound, match="no uploaded dataset"):
            globex.start_fine_tune("stolen", dataset_id=dataset_id, plan=PLAN)
        with pytest.raises(graft_client.NotFound, match="no uploaded dataset"):
            globex.advise(dataset_id=dataset_id)
    with Client(server.target, api_key=keys["acme"]) as acme:
        job = acme.start_fine_tune("flowers", dataset_id=dataset_id, plan=PLAN)
        assert job.dataset.dataset_id == dataset_id
    assert server.services.store.get_upload(dataset_id).tenant == "acme"


def test_model_names_are_per_tenant_and_another_tenants_are_not_found(
    server: BackgroundServer, keys: dict[str, str]
) -> None:
    with Client(server.target, api_key=keys["acme"]) as acme:
        (model,) = acme.list_models()
        assert (model.name, model.tenant, [v.version for v in model.versions]) == (
            "flowers",
            "acme",
            [1],
        )
        assert list(acme.get_model("flowers").labels) == ["rose", "tulip"]
        assert acme.set_model_alias("flowers", "production", 1).aliases == ["production"]
        for name, call in (
            ("legacy", lambda: acme.get_model("legacy")),  # the default tenant's
            ("legacy", lambda: acme.predict("legacy", [_png()])),
            ("legacy", lambda: acme.set_model_alias("legacy", "production", 1)),
            # Naming another tenant takes an admin key; without one it does not exist.
            ("flowers", lambda: acme.get_model(pb.ModelRef(name="flowers", tenant="globex"))),
            ("flowers", lambda: acme.set_model_alias("flowers", "x", 1, tenant="globex")),
        ):
            with pytest.raises(graft_client.NotFound, match=f"model '{name}' not found$"):
                call()
    with Client(server.target, api_key=keys["globex"]) as globex:
        (model,) = globex.list_models()
        assert model.tenant == "globex" and model.versions[0].aliases == []  # acme's alias


def test_an_admin_key_sees_every_tenant(
    server: BackgroundServer, keys: dict[str, str], acme_things: dict[str, str]
) -> None:
    with Client(server.target, api_key=keys["admin"]) as admin:
        assert acme_things["job_id"] in {j.job_id for j in admin.list_jobs()}
        assert admin.get_job(acme_things["job_id"]).tenant == "acme"
        models = [(m.tenant, m.name) for m in admin.list_models()]
        assert models == [  # by name, then tenant; one Model per tenant
            ("acme", "flowers"),
            (DEFAULT_TENANT, "flowers"),
            ("globex", "flowers"),
            (DEFAULT_TENANT, "legacy"),
        ]
        ref = pb.ModelRef(name="flowers", version=1, tenant="globex")
        assert list(admin.get_model(ref).labels) == ["cat", "dog"]
        moved = admin.set_model_alias("flowers", "reviewed", 1, tenant="globex")
        assert moved.tenant == "globex" and moved.aliases == ["reviewed"]
        with pytest.raises(graft_client.NotFound):  # its own tenant has no "flowers"
            admin.get_model("flowers")


def test_predict_serves_each_tenant_its_own_model_of_a_shared_name(
    server: BackgroundServer, keys: dict[str, str]
) -> None:
    for tenant, labels in (("acme", {"rose", "tulip"}), ("globex", {"cat", "dog"})):
        with Client(server.target, api_key=keys[tenant]) as client:
            answer = client.predict("flowers", [_png()], top_k=2)
            assert answer.model.tenant == tenant
            assert {c.label for c in answer.predictions[0].classes} == labels


def test_predict_never_answers_with_another_tenants_model(
    server: BackgroundServer, keys: dict[str, str]
) -> None:
    """With the default tenant's "flowers" loaded and its reference cached first, another
    tenant's "flowers" is still its own (the Predict engine keys both caches by tenant)."""
    default = new_key(server.services.store, DEFAULT_TENANT)[1]
    with Client(server.target, api_key=default) as client:  # loads the default's "flowers"
        answer = client.predict("flowers", [_png()], top_k=2)
        assert {c.label for c in answer.predictions[0].classes} == {"oak", "elm"}
    with Client(server.target, api_key=keys["acme"]) as acme:
        answer = acme.predict("flowers", [_png()], top_k=2)
    assert answer.model.tenant == "acme"
    assert {c.label for c in answer.predictions[0].classes} == {"rose", "tulip"}


# --- defaults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "auth", "enabled"),
    [
        ("127.0.0.1", "auto", False),  # the embedded default
        ("localhost", "auto", False),
        ("::1", "auto", False),
        ("[::1]", "auto", False),
        ("0.0.0.0", "auto", True),
        ("10.1.2.3", "auto", True),
        ("graft.internal", "auto", True),
        ("127.0.0.1", "on", True),
        ("0.0.0.0", "off", False),
    ],
)
def test_auth_is_off_on_loopback_and_on_elsewhere_by_default(
    host: str, auth: str, enabled: bool
) -> None:
    assert Config(host=host, auth=auth).auth_enabled is enabled


def test_bad_security_config_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        Config(auth="yes")
    with pytest.raises(ValueError, match="both"):
        Config(tls_cert="server.pem")
    with pytest.raises(ValueError, match="mTLS"):
        Config(tls_client_ca="ca.pem")
    with pytest.raises(ValueError, match="cannot be open"):
        Config(auth_open_services=("graft.v1.AdaptationService",))


def test_which_services_are_open_is_configurable(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, auth="on", auth_open_services=("grpc.health.v1.Health",))
    with BackgroundServer(config) as running, grpc.insecure_channel(running.target) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = new_key(running.services.store, "acme")[1]
        (answer,) = stub.ServerReflectionInfo(
            iter([request]), timeout=10, metadata=[("authorization", f"Bearer {token}")]
        )
        assert answer.list_services_response.service


def test_the_embedded_default_needs_no_key(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "datasets" / "two")
    config = Config(data_dir=tmp_path / "data", data_roots=(root.parent,), embedded_worker=False)
    with BackgroundServer(config) as running, Client(running.target) as client:
        job = client.start_fine_tune("flowers", root, plan=PLAN)
        assert job.tenant == DEFAULT_TENANT
        assert [j.job_id for j in client.list_jobs()] == [job.job_id]


def test_the_worker_registers_a_jobs_model_in_the_jobs_tenant(tmp_path: Path) -> None:
    """A worker acts for the job's tenant: the version lands in that tenant's namespace
    (and its registry folder), invisible under the same name elsewhere."""
    from graft.worker import Worker

    root = tmp_path / "datasets" / "two"
    for label, shade in (("a", 30), ("b", 220)):
        (root / label).mkdir(parents=True)
        for i in range(8):
            colour = (shade, shade - 20 + 5 * i, 90)
            Image.new("RGB", (16, 16), colour).save(root / label / f"{i}.png")
    config = Config(data_dir=tmp_path / "data", data_roots=(root.parent,), device="cpu")
    worker = Worker(config, "w1")
    try:
        plan = TrainingPlan(
            strategy=Strategy.FEATURE_EXTRACTION, epochs=1, image_size=32, batch_size=8
        )
        job, _ = worker.store.create_job(
            model_name="flowers",
            dataset=DatasetRef(uri=str(root)),
            plan=plan,
            request_id="",
            plan_resolved=False,
            tenant="acme",
        )
        claimed = worker.store.claim_job("w1", 60)
        assert claimed is not None and claimed.tenant == "acme"
        worker.run_job(claimed)
        done = worker.store.get_job(job.job_id)
        assert done.state == JobState.SUCCEEDED, done.error
        version = worker.store.resolve_model(ModelRef("flowers", tenant="acme"))
        assert (version.version, version.job_id, version.tenant) == (1, job.job_id, "acme")
        assert (
            Path(version.artifact_dir)
            == (config.registry_dir / ".tenants" / "acme" / "flowers" / "1").resolve()
        )
        with pytest.raises(NotFound):
            worker.store.resolve_model(ModelRef("flowers"))  # the default tenant has none
        _, tensors, card = worker.registry.load(ModelRef("flowers", tenant="acme"))
        assert tensors and card.job_id == job.job_id
    finally:
        worker.store.close()

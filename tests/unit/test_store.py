"""The JobStore contract: every implementation must pass every test here.

To add an implementation, add one `pytest.param` to IMPLEMENTATIONS: a function of the
test's request and tmp_path returning a picklable opener, `opener(clock=...) -> JobStore`,
where each call opens a new store object (its own connections) on the same, initially
empty database. Openers must be picklable because the multi-process test sends them to
spawned children. PostgreSQL runs on a real server that the tests start themselves
(tests/postgres.py), a fresh database per test.
"""

from __future__ import annotations

import functools
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graft.config import Config
from graft.domain import (
    DEFAULT_TENANT,
    ClassMetrics,
    DatasetRef,
    EvaluationMetrics,
    EventKind,
    JobState,
    ModelRef,
    ModelVersion,
    ProgressEvent,
    Strategy,
    TaskKind,
    TrainingPlan,
)
from graft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from graft.store import ApiKey, JobStore, SqliteJobStore, open_store
from graft.store.postgres import PostgresJobStore
from graft.store.sqlite import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION

Opener = Callable[..., JobStore]

T0 = 1_700_000_000.0


class FakeClock:
    """A clock tests move by hand, so lease expiry needs no sleeping."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return functools.partial(SqliteJobStore, tmp_path / "graft.sqlite3")


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return functools.partial(PostgresJobStore, request.getfixturevalue("postgres_url"))


IMPLEMENTATIONS = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    factory: Callable[[pytest.FixtureRequest, Path], Opener] = request.param
    return factory(request, tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(opener: Opener, clock: FakeClock) -> Iterator[JobStore]:
    s = opener(clock=clock)
    yield s
    s.close()


PLAN = TrainingPlan(backbone="tiny", strategy=Strategy.PARTIAL_FINE_TUNE, epochs=3, seed=7)
DATA = DatasetRef(uri="/data/flowers")


def new_job(store: JobStore, request_id: str = "", name: str = "flowers") -> str:
    job, created = store.create_job(model_name=name, dataset=DATA, plan=PLAN, request_id=request_id)
    assert created
    return job.job_id


def metrics() -> EvaluationMetrics:
    return EvaluationMetrics(
        accuracy=0.9,
        macro_f1=0.85,
        loss=0.3,
        per_class=(ClassMetrics("a", 1.0, 0.8, 5), ClassMetrics("b", 0.8, 1.0, 4)),
        confusion=(4, 1, 0, 4),
        labels=("a", "b"),
    )


def step(i: int, message: str = "") -> ProgressEvent:
    return ProgressEvent(
        kind=EventKind.STEP, state=JobState.RUNNING, step=i, loss=1.0 / (i + 1), message=message
    )


# --- jobs -----------------------------------------------------------------------------


def test_is_a_job_store(store: JobStore) -> None:
    assert isinstance(store, JobStore)


def test_create_job_queues_it_with_event_1(store: JobStore, clock: FakeClock) -> None:
    job, created = store.create_job(
        model_name="flowers", dataset=DATA, plan=PLAN, request_id="r1", config_json='{"a": 1}'
    )
    assert created
    assert len(job.job_id) == 32
    assert job.state == JobState.QUEUED
    assert (job.model_name, job.dataset, job.plan, job.request_id) == ("flowers", DATA, PLAN, "r1")
    assert job.create_time == T0
    assert job.start_time is None and job.end_time is None
    assert job.attempts == 0 and job.last_sequence == 1
    assert store.get_job(job.job_id) == job
    assert store.get_job_config(job.job_id) == '{"a": 1}'

    (event,) = store.events_after(job.job_id, 0)
    assert (event.sequence, event.kind, event.state) == (1, EventKind.STATE, JobState.QUEUED)
    assert (event.job_id, event.time) == (job.job_id, T0)


def test_create_job_is_idempotent_on_request_id(store: JobStore, clock: FakeClock) -> None:
    first, created = store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="r")
    clock.advance(5)
    again, created_again = store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="r")
    assert created and not created_again
    assert again == first
    assert len(store.events_after(first.job_id, 0)) == 1
    assert len(store.list_jobs()) == 1
    # The same request_id with another request is refused, not answered with the first job.
    for model, dataset, plan in [
        ("other", DATA, PLAN),
        ("m", DatasetRef(dataset_id="u1"), PLAN),
        ("m", DATA, TrainingPlan()),
    ]:
        with pytest.raises(AlreadyExists, match="request_id 'r' was used for another request"):
            store.create_job(model_name=model, dataset=dataset, plan=plan, request_id="r")
    assert len(store.list_jobs()) == 1

    # An empty request_id never deduplicates.
    a, _ = store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="")
    b, _ = store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="")
    assert a.job_id != b.job_id
    assert len(store.list_jobs()) == 3


def test_get_job_unknown_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.get_job("nope")
    with pytest.raises(NotFound):
        store.get_job_config("nope")


def test_list_jobs_newest_first_with_filter_and_limit(store: JobStore, clock: FakeClock) -> None:
    ids = []
    for _ in range(4):
        ids.append(new_job(store))
        clock.advance(1)
    store.claim_job("w", 30)  # the oldest
    assert [j.job_id for j in store.list_jobs()] == ids[::-1]
    assert [j.job_id for j in store.list_jobs(limit=2)] == ids[:1:-1]
    assert [j.job_id for j in store.list_jobs(JobState.QUEUED)] == ids[:0:-1]
    assert [j.job_id for j in store.list_jobs(JobState.RUNNING)] == ids[:1]
    assert store.list_jobs(JobState.SUCCEEDED) == []


def test_claim_takes_oldest_queued_first(store: JobStore, clock: FakeClock) -> None:
    ids = [new_job(store) for _ in range(3)]
    clock.advance(2)
    job = store.claim_job("w1", 30)
    assert job is not None and job.job_id == ids[0]
    assert job.state == JobState.RUNNING
    assert (job.lease_owner, job.lease_expires, job.attempts) == ("w1", T0 + 32, 1)
    assert job.start_time == T0 + 2
    assert job.last_sequence == 2
    event = store.events_after(job.job_id, 1)[0]
    assert (event.sequence, event.kind, event.state) == (2, EventKind.STATE, JobState.RUNNING)
    assert "w1" in event.message and "attempt 1" in event.message

    claimed = [store.claim_job("w2", 30), store.claim_job("w3", 30)]
    assert [j.job_id for j in claimed if j] == ids[1:]
    assert store.claim_job("w4", 30) is None


def test_expired_lease_is_reclaimed_as_attempt_2(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    first = store.claim_job("w1", 10)
    assert first is not None
    clock.advance(9)
    assert store.claim_job("w2", 10) is None  # still leased
    clock.advance(2)  # w1 crashed: its lease lapsed
    second = store.claim_job("w2", 10)
    assert second is not None and second.job_id == job_id
    assert (second.state, second.lease_owner, second.attempts) == (JobState.RUNNING, "w2", 2)
    assert second.start_time == first.start_time  # kept from the first attempt
    assert second.lease_expires == T0 + 21
    last = store.events_after(job_id, 2)[0]
    assert last.state == JobState.RUNNING and "w2" in last.message and "attempt 2" in last.message

    # The crashed worker's zombie can neither renew nor finish.
    assert store.renew_lease(job_id, "w1", 10) is False
    with pytest.raises(FailedPrecondition, match="w1"):
        store.finish_job(job_id, "w1", JobState.SUCCEEDED)
    assert store.finish_job(job_id, "w2", JobState.SUCCEEDED).state == JobState.SUCCEEDED


def test_release_hands_the_job_back_first_in_line(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    later = new_job(store)
    assert store.claim_job("w1", 10) is not None
    with pytest.raises(FailedPrecondition, match="w2"):
        store.release_job(job_id, "w2", "stopping")
    released = store.release_job(job_id, "w1", "worker stopping after epoch 2")
    assert (released.state, released.lease_owner) == (JobState.QUEUED, "")
    last = store.events_after(job_id, 0)[-1]
    assert last.state == JobState.QUEUED and "w1" in last.message and "epoch 2" in last.message
    assert store.queue_depth() == 2
    assert store.renew_lease(job_id, "w1", 10) is False  # no longer w1's
    again = store.claim_job("w2", 10)  # oldest first: the released job before `later`
    assert again is not None and (again.job_id, again.attempts) == (job_id, 2)
    assert store.claim_job("w3", 10).job_id == later  # type: ignore[union-attr]


def test_renew_lease(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    store.claim_job("w1", 10)
    assert store.renew_lease(job_id, "w2", 10) is False
    clock.advance(8)
    assert store.renew_lease(job_id, "w1", 10) is True
    assert store.get_job(job_id).lease_expires == T0 + 18
    clock.advance(8)  # past the first expiry, within the renewed one
    assert store.claim_job("w2", 10) is None
    assert store.renew_lease("nope", "w1", 10) is False
    store.finish_job(job_id, "w1", JobState.FAILED, error="boom")
    assert store.renew_lease(job_id, "w1", 10) is False  # ended


def test_cancel_queued_job_ends_it_at_once(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    clock.advance(3)
    job = store.request_cancel(job_id)
    assert job.state == JobState.CANCELLED
    assert job.end_time == T0 + 3
    last = store.events_after(job_id, 1)
    assert [(e.sequence, e.kind, e.state) for e in last] == [
        (2, EventKind.STATE, JobState.CANCELLED)
    ]
    assert store.claim_job("w", 10) is None
    with pytest.raises(FailedPrecondition, match="already ended"):
        store.request_cancel(job_id)
    with pytest.raises(NotFound):
        store.request_cancel("nope")


def test_cancel_running_job_asks_the_worker(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job("w1", 10)
    job = store.request_cancel(job_id)
    assert (job.state, job.cancel_requested) == (JobState.RUNNING, True)
    store.request_cancel(job_id)  # asking twice changes nothing
    assert store.get_job(job_id).last_sequence == job.last_sequence
    assert store.renew_lease(job_id, "w1", 10)  # the worker polls, sees the flag, stops
    done = store.finish_job(job_id, "w1", JobState.CANCELLED)
    assert done.state == JobState.CANCELLED and done.end_time is not None
    final = store.events_after(job_id, done.last_sequence - 1)[0]
    assert (final.kind, final.state) == (EventKind.STATE, JobState.CANCELLED)
    with pytest.raises(FailedPrecondition):
        store.request_cancel(job_id)


def test_cancel_pending_when_lease_expires_cancels_instead_of_reclaiming(
    store: JobStore, clock: FakeClock
) -> None:
    doomed = new_job(store)
    waiting = new_job(store)
    store.claim_job("w1", 10)
    store.request_cancel(doomed)
    clock.advance(11)  # w1 died before it could stop
    job = store.claim_job("w2", 10)
    assert job is not None and job.job_id == waiting
    ended = store.get_job(doomed)
    assert (ended.state, ended.attempts) == (JobState.CANCELLED, 1)
    final = store.events_after(doomed, ended.last_sequence - 1)[0]
    assert (final.kind, final.state) == (EventKind.STATE, JobState.CANCELLED)


def test_finish_job(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    with pytest.raises(FailedPrecondition):  # queued: nobody holds it
        store.finish_job(job_id, "w1", JobState.SUCCEEDED)
    store.claim_job("w1", 10)
    with pytest.raises(FailedPrecondition, match="w2"):
        store.finish_job(job_id, "w2", JobState.SUCCEEDED)
    with pytest.raises(InvalidArgument):
        store.finish_job(job_id, "w1", JobState.RUNNING)
    clock.advance(4)
    m = metrics()
    job = store.finish_job(job_id, "w1", JobState.SUCCEEDED, model_version=3, metrics=m)
    assert (job.state, job.model_version, job.metrics, job.end_time) == (
        JobState.SUCCEEDED,
        3,
        m,
        T0 + 4,
    )
    assert store.get_job(job_id) == job
    final = store.events_after(job_id, 0)[-1]
    assert (final.sequence, final.kind, final.state) == (3, EventKind.STATE, JobState.SUCCEEDED)
    assert final.metrics == m and "version 3" in final.message
    with pytest.raises(FailedPrecondition):  # twice
        store.finish_job(job_id, "w1", JobState.FAILED)
    with pytest.raises(FailedPrecondition, match="ended"):  # the log is closed
        store.append_event(job_id, step(1))


def test_finish_failed_records_error(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job("w1", 10)
    job = store.finish_job(job_id, "w1", JobState.FAILED, error="CUDA out of memory")
    assert (job.state, job.error) == (JobState.FAILED, "CUDA out of memory")
    assert "CUDA out of memory" in store.events_after(job_id, 0)[-1].message


def test_counters(store: JobStore, clock: FakeClock) -> None:
    assert store.queue_depth() == 0
    assert store.oldest_queued_age(T0) == 0.0
    a = new_job(store)
    clock.advance(10)
    new_job(store)
    new_job(store)
    assert store.queue_depth() == 3
    assert store.oldest_queued_age(T0 + 25) == 25.0
    store.claim_job("w", 30)  # a
    assert store.oldest_queued_age(T0 + 25) == 15.0
    store.finish_job(a, "w", JobState.FAILED, error="x")
    counts = store.count_jobs_by_state()
    assert counts == {
        JobState.QUEUED: 2,
        JobState.RUNNING: 0,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 1,
        JobState.CANCELLED: 0,
    }
    store.set_skipped_files(a, 4)
    assert store.get_job(a).skipped_files == 4
    with pytest.raises(NotFound):
        store.set_skipped_files("nope", 1)


def test_threads_share_one_store_without_double_claims(store: JobStore) -> None:
    ids = {new_job(store) for _ in range(20)}
    claimed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        try:
            while (job := store.claim_job(worker, 30)) is not None:
                with lock:
                    claimed.append(job.job_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(claimed) == sorted(ids)


# --- events ---------------------------------------------------------------------------


def test_append_event_assigns_sequence_time_and_state(store: JobStore, clock: FakeClock) -> None:
    job_id = new_job(store)
    store.claim_job("w", 30)
    clock.advance(1.5)
    m = metrics()
    stored = store.append_event(
        job_id,
        ProgressEvent(
            kind=EventKind.EVALUATION,
            state=JobState.UNSPECIFIED,  # filled from the job
            sequence=99,  # ignored: the store numbers events
            epoch=2,
            total_epochs=3,
            metrics=m,
            eta_seconds=12.5,
            train_accuracy=0.875,
        ),
    )
    assert stored.train_accuracy == 0.875  # kept, and read back below (events_after)
    assert (stored.sequence, stored.job_id, stored.time) == (3, job_id, T0 + 1.5)
    assert stored.state == JobState.RUNNING
    assert store.events_after(job_id, 2) == [stored]
    assert store.get_job(job_id).last_sequence == 3
    with pytest.raises(NotFound):
        store.append_event("nope", step(0))


def test_events_after_pages(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job("w", 30)
    for i in range(10):
        store.append_event(job_id, step(i))
    seen: list[int] = []
    after = 0
    while page := store.events_after(job_id, after, limit=4):
        assert len(page) <= 4
        seen += [e.sequence for e in page]
        after = page[-1].sequence
    assert seen == list(range(1, 13))
    assert [e.step for e in store.events_after(job_id, 2)] == list(range(10))
    assert store.events_after(job_id, 12) == []
    assert store.events_after("nope", 0) == []


def _append_many(opener: Opener, job_id: str, worker: int, n: int, go: Any) -> None:
    """Child process body: open the store afresh and append n events as fast as it can."""
    store = opener()
    go.wait(30)
    for i in range(n):
        store.append_event(job_id, step(i, message=f"{worker}:{i}"))
    store.close()


def test_sequences_stay_contiguous_across_processes(opener: Opener, store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job("w", 300)
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(opener, job_id, w, 50, go)) for w in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    events = store.events_after(job_id, 0, limit=10_000)
    assert [e.sequence for e in events] == list(range(1, 203))
    assert store.get_job(job_id).last_sequence == 202
    for w in range(4):  # each process's own events kept their order
        mine = [e.message for e in events if e.message.startswith(f"{w}:")]
        assert mine == [f"{w}:{i}" for i in range(50)]


# --- workers --------------------------------------------------------------------------


def test_worker_heartbeats_upsert(store: JobStore, clock: FakeClock) -> None:
    store.heartbeat_worker("w1", 100, "host-a", {"device": "cpu"})
    store.heartbeat_worker("w0", 200, "host-b", {})
    clock.advance(5)
    store.heartbeat_worker("w1", 101, "host-a", {"device": "cuda:0", "job": "j"})
    workers = store.list_workers()
    assert [w.worker_id for w in workers] == ["w0", "w1"]
    w1 = workers[1]
    assert (w1.pid, w1.host, w1.last_heartbeat) == (101, "host-a", T0 + 5)
    assert w1.info == {"device": "cuda:0", "job": "j"}


# --- registry metadata ----------------------------------------------------------------


def add_version(store: JobStore, name: str = "flowers", job_id: str = "") -> ModelVersion:
    """A new version of `name`, from a job of its own unless `job_id` is given."""
    return store.add_model_version(
        name=name,
        job_id=job_id or uuid.uuid4().hex,
        backbone="tiny",
        labels=("a", "b"),
        sha256="ab" * 32,
        card={"preprocessing": {"size": 64}},
        artifact_dir=f"/reg/{name}",
        metrics=metrics(),
    )


def test_a_job_registers_one_version_of_a_name(store: JobStore) -> None:
    """An attempt of a job that registered already (its worker died or lost its lease
    before finishing it) gets the version registered before: nothing added, nothing
    published. Another name, or an empty job id, is a new version."""
    published: list[int] = []

    def publish(mv: ModelVersion) -> str:
        published.append(mv.version)
        return f"/reg/flowers/{mv.version}"

    def register(name: str = "flowers", job_id: str = "job-a") -> ModelVersion:
        return store.add_model_version(
            name=name,
            job_id=job_id,
            backbone="tiny",
            labels=("a",),
            sha256="cd" * 32,
            card={},
            artifact_dir="/reg",
            metrics=None,
            publish=publish,
        )

    first = register()
    store.set_alias("flowers", "live", first.version)
    again = register()
    assert again.version == first.version == 1 and published == [1]
    assert again.aliases == ["live"] and again.artifact_dir == "/reg/flowers/1"
    assert [mv.version for mv in store.list_models("flowers")["flowers"]] == [1]
    assert register(job_id="job-b").version == 2
    assert register(name="other").version == 1
    assert register(job_id="").version == 3 and register(job_id="").version == 4


def test_model_versions_count_from_1(store: JobStore, clock: FakeClock) -> None:
    versions = [add_version(store, job_id=f"j{i}") for i in range(3)]
    assert [v.version for v in versions] == [1, 2, 3]
    v2 = store.get_model_version("flowers", 2)
    assert v2 == versions[1]
    assert (v2.job_id, v2.backbone, v2.labels, v2.metrics) == ("j1", "tiny", ("a", "b"), metrics())
    assert v2.card == {
        "preprocessing": {"size": 64},
        "name": "flowers",
        "version": 2,
        "sha256": "ab" * 32,
        "create_time": T0,
    }
    assert add_version(store, name="other").version == 1  # numbering is per name
    assert store.count_model_versions() == 4


def test_model_not_found_messages(store: JobStore) -> None:
    with pytest.raises(NotFound, match="model 'x' not found"):
        store.get_model_version("x", 1)
    with pytest.raises(NotFound, match="model 'x' not found"):
        store.resolve_model(ModelRef("x"))
    with pytest.raises(NotFound, match="model 'x' not found"):
        store.resolve_model(ModelRef("x", alias="production"))
    with pytest.raises(NotFound, match="model 'x' not found"):
        store.set_alias("x", "production", 1)
    add_version(store, "x")
    with pytest.raises(NotFound, match="model 'x' has no version 2"):
        store.get_model_version("x", 2)
    with pytest.raises(NotFound, match="model 'x' has no version 2"):
        store.resolve_model(ModelRef("x", version=2))
    with pytest.raises(NotFound, match="model 'x' has no alias 'production'"):
        store.resolve_model(ModelRef("x", alias="production"))
    with pytest.raises(NotFound, match="model 'x' has no version 5"):
        store.set_alias("x", "production", 5)
    with pytest.raises(InvalidArgument):
        store.set_alias("x", "", 1)


def test_aliases_and_resolution(store: JobStore) -> None:
    for _ in range(3):
        add_version(store)
    assert store.resolve_model(ModelRef("flowers")).version == 3
    assert store.resolve_model(ModelRef("flowers", version=1)).version == 1

    mv = store.set_alias("flowers", "production", 1)
    assert (mv.version, mv.aliases) == (1, ["production"])
    store.set_alias("flowers", "staging", 1)
    assert store.get_model_version("flowers", 1).aliases == ["production", "staging"]
    assert store.resolve_model(ModelRef("flowers", alias="production")).version == 1

    moved = store.set_alias("flowers", "production", 2)  # moves, not duplicates
    assert moved.aliases == ["production"]
    assert store.get_model_version("flowers", 1).aliases == ["staging"]
    assert store.resolve_model(ModelRef("flowers", alias="production")).version == 2
    # version wins over alias
    assert store.resolve_model(ModelRef("flowers", version=3, alias="production")).version == 3


def test_list_models_by_prefix(store: JobStore) -> None:
    for name in ("flowers", "flowers-v2", "flowers", "birds", "flo_wers"):
        add_version(store, name)
    store.set_alias("flowers", "production", 2)
    everything = store.list_models()
    assert list(everything) == ["birds", "flo_wers", "flowers", "flowers-v2"]
    flowers = store.list_models("flowers")
    assert list(flowers) == ["flowers", "flowers-v2"]
    assert [(v.version, v.aliases) for v in flowers["flowers"]] == [(1, []), (2, ["production"])]
    assert list(store.list_models("flo_")) == ["flo_wers"]  # '_' is not a wildcard
    assert store.list_models("zebra") == {}


def test_model_versions_page_in_byte_order_of_names(store: JobStore) -> None:
    """Names sort by their bytes ('Z' < '_' < 'a'), whatever the database's collation
    (the PostgreSQL tests' default is ICU English, which would say '_x', 'alpha', 'Zeta');
    pages follow that order and cover every version once."""
    for name in ("alpha", "Zeta", "_x", "alpha", "Zeta"):
        add_version(store, name)
    store.add_model_version(
        name="alpha", job_id="j", backbone="b", labels=["x"], sha256="s", card={},
        artifact_dir="", metrics=None, tenant="acme",
    )  # fmt: skip
    store.set_alias("Zeta", "production", 2)
    assert list(store.list_models()) == ["Zeta", "_x", "alpha"]
    expected = [
        ("Zeta", DEFAULT_TENANT, 1),
        ("Zeta", DEFAULT_TENANT, 2),
        ("_x", DEFAULT_TENANT, 1),
        ("alpha", "acme", 1),
        ("alpha", DEFAULT_TENANT, 1),
        ("alpha", DEFAULT_TENANT, 2),
    ]
    seen, after = [], None
    while True:
        page, after = store.list_model_versions_page(limit=4, after=after)
        seen += [(v.name, v.tenant, v.version) for v in page]
        assert len(page) <= 4
        if after is None:
            break
    assert seen == expected
    first, _ = store.list_model_versions_page(limit=2)
    assert first[1].aliases == ["production"]
    mine, cursor = store.list_model_versions_page("al", tenant=DEFAULT_TENANT, limit=5)
    assert [(v.name, v.version) for v in mine] == [("alpha", 1), ("alpha", 2)] and cursor is None


def test_jobs_page_newest_first_by_cursor(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(5)]
    store.request_cancel(ids[1])
    pages, before = [], 0
    while True:
        page, before = store.list_jobs_page(limit=2, before=before)
        pages.append([j.job_id for j in page])
        if not before:
            break
    assert pages == [ids[:2:-1], ids[2:0:-1], ids[:1]]
    queued, _ = store.list_jobs_page(JobState.QUEUED, limit=10)
    assert [j.job_id for j in queued] == [i for i in ids[::-1] if i != ids[1]]


def test_publish_runs_inside_the_transaction(store: JobStore) -> None:
    calls: list[ModelVersion] = []

    def publish(mv: ModelVersion) -> str:
        calls.append(mv)
        return f"/published/{mv.name}/{mv.version}"

    mv = store.add_model_version(
        name="m",
        job_id="j",
        backbone="b",
        labels=["x"],
        sha256="s",
        card={},
        artifact_dir="/ignored",
        metrics=None,
        publish=publish,
    )
    assert calls[0].version == 1 and calls[0].card["version"] == 1
    assert mv.artifact_dir == "/published/m/1"
    assert store.get_model_version("m", 1).artifact_dir == "/published/m/1"

    def broken(mv: ModelVersion) -> str:
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.add_model_version(
            name="m",
            job_id="j2",
            backbone="b",
            labels=["x"],
            sha256="s",
            card={},
            artifact_dir="",
            metrics=None,
            publish=broken,
        )
    assert store.count_model_versions() == 1  # nothing committed
    assert add_version(store, "m").version == 2  # and the number was not burnt


# --- uploads --------------------------------------------------------------------------


def test_uploads(store: JobStore, clock: FakeClock) -> None:
    with pytest.raises(NotFound, match="u1"):
        store.get_upload("u1")
    store.add_upload("u1", "/up/u1", 1234, "f1")
    store.add_upload("u1", "/up/u1", 1234, "f1")  # same contents again: fine
    with pytest.raises(AlreadyExists):
        store.add_upload("u1", "/up/u1b", 99, "f2")
    up = store.get_upload("u1")
    assert (up.dataset_id, up.path, up.size_bytes, up.fingerprint, up.create_time) == (
        "u1",
        "/up/u1",
        1234,
        "f1",
        T0,
    )


# --- two store objects, lifecycle ------------------------------------------------------


def test_two_store_objects_see_each_others_writes(opener: Opener, clock: FakeClock) -> None:
    server, worker = opener(clock=clock), opener(clock=clock)
    try:
        job_id = new_job(server)
        claimed = worker.claim_job("w1", 30)
        assert claimed is not None and claimed.job_id == job_id
        assert server.get_job(job_id).state == JobState.RUNNING
        worker.append_event(job_id, step(0))
        assert [e.sequence for e in server.events_after(job_id, 0)] == [1, 2, 3]
        server.request_cancel(job_id)
        assert worker.get_job(job_id).cancel_requested
        mv = add_version(worker)
        assert server.resolve_model(ModelRef("flowers")) == mv
        worker.heartbeat_worker("w1", 1, "h", {})
        assert [w.worker_id for w in server.list_workers()] == ["w1"]
    finally:
        server.close()
        worker.close()


def test_ping_and_close(opener: Opener) -> None:
    s = opener()
    s.ping()
    s.close()
    with pytest.raises(Unavailable):
        s.ping()
    with pytest.raises(Unavailable):
        s.get_job("x")


# --- SQLite specifics -----------------------------------------------------------------


# --- plans completed by the worker, failure details, progress polling -----------------


def test_a_job_queued_before_its_plan_is_resolved(store: JobStore) -> None:
    job, _ = store.create_job(
        model_name="m", dataset=DATA, plan=TrainingPlan(), request_id="", advise_first=True,
        plan_resolved=False,
    )  # fmt: skip
    assert job.advise_first and not job.plan_resolved
    claimed = store.claim_job("w1", 30)
    assert claimed is not None and claimed.job_id == job.job_id
    with pytest.raises(FailedPrecondition, match="does not hold"):
        store.set_job_plan(job.job_id, "w2", PLAN)
    done = store.set_job_plan(job.job_id, "w1", PLAN)
    assert done.plan_resolved and done.plan == PLAN and done.advise_first
    assert store.get_job(job.job_id).plan == PLAN
    assert new_job(store) and store.get_job(new_job(store)).plan_resolved  # the default


def test_a_failure_keeps_its_kind_and_field_violations(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim_job("w1", 30)
    detail = {"kind": "InvalidArgument", "message": "m", "violations": [["dataset.uri", "x"]]}
    job = store.finish_job(job_id, "w1", JobState.FAILED, error="m", error_detail=detail)
    assert job.error == "m" and job.error_detail == detail
    assert store.get_job(job_id).error_detail == detail
    assert store.get_job(new_job(store)).error_detail == {}


def test_job_progress_and_active_counts(store: JobStore) -> None:
    a, b = new_job(store, name="m"), new_job(store, name="m")
    new_job(store, name="other")
    store.append_event(a, step(1))
    progress = store.job_progress([a, b, "0" * 32])
    assert progress == {a: (2, JobState.QUEUED), b: (1, JobState.QUEUED)}
    store.request_cancel(b)
    assert store.job_progress([b]) == {b: (2, JobState.CANCELLED)}
    with pytest.raises(ResourceExhausted, match="1 jobs queued or running") as full:
        store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="r", max_active=1)
    assert full.value.retry_after > 0
    store.request_cancel(a)
    job, created = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r", max_active=1
    )
    again, twice = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r", max_active=1
    )  # the retry of a request is answered, not refused
    assert created and not twice and again.job_id == job.job_id
    many = [new_job(store, name=f"n{i}") for i in range(1200)]  # past one IN (...) chunk
    assert len(store.job_progress(many)) == 1200


# --- tasks ----------------------------------------------------------------------------


def test_tasks_are_claimed_oldest_first_by_kind(store: JobStore, clock: FakeClock) -> None:
    first = store.create_task(TaskKind.ADVISE, {"n": 1})
    upload = store.create_task(TaskKind.CHECK_UPLOAD, {"n": 2})
    second = store.create_task(TaskKind.ADVISE, {"n": 3}, deadline=T0 + 100)
    assert first.state == JobState.QUEUED and first.request == {"n": 1}
    assert store.claim_task("w", 11, 30, [TaskKind.CHECK_UPLOAD]).task_id == upload.task_id
    claimed = store.claim_task("w", 12, 30, [TaskKind.ADVISE])
    assert claimed is not None and claimed.task_id == first.task_id
    assert claimed.state == JobState.RUNNING and claimed.worker_pid == 12
    assert claimed.lease_owner == "w" and claimed.start_time == T0
    assert store.claim_task("w", 12, 30, [TaskKind.ADVISE]).task_id == second.task_id
    assert store.claim_task("w", 12, 30, [TaskKind.ADVISE, TaskKind.CHECK_UPLOAD]) is None
    assert store.count_tasks(TaskKind.ADVISE, [JobState.RUNNING]) == 2


def test_task_results_and_errors(store: JobStore) -> None:
    ok, bad = store.create_task(TaskKind.ADVISE, {}), store.create_task(TaskKind.ADVISE, {})
    store.claim_task("w", 1, 30, [TaskKind.ADVISE])
    store.claim_task("w", 1, 30, [TaskKind.ADVISE])
    with pytest.raises(FailedPrecondition, match="does not hold"):
        store.finish_task(ok.task_id, "other", JobState.SUCCEEDED)
    done = store.finish_task(ok.task_id, "w", JobState.SUCCEEDED, result={"answer": [1, 2]})
    assert done.state == JobState.SUCCEEDED and done.result == {"answer": [1, 2]}
    detail = {"kind": "FailedPrecondition", "message": "one class"}
    failed = store.finish_task(bad.task_id, "w", JobState.FAILED, error_detail=detail)
    assert store.get_task(bad.task_id).error_detail == detail == failed.error_detail
    assert store.task_states([ok.task_id, bad.task_id, "x"]) == {
        ok.task_id: JobState.SUCCEEDED,
        bad.task_id: JobState.FAILED,
    }
    with pytest.raises(NotFound):
        store.get_task("x")


def test_a_cancelled_or_late_task_is_never_started_and_stops_running(
    store: JobStore, clock: FakeClock
) -> None:
    queued = store.create_task(TaskKind.ADVISE, {})
    assert store.cancel_task(queued.task_id).state == JobState.CANCELLED  # at once
    late = store.create_task(TaskKind.ADVISE, {}, deadline=T0 + 5)
    running = store.create_task(TaskKind.ADVISE, {}, deadline=T0 + 60)
    clock.advance(10)
    claimed = store.claim_task("w", 1, 30, [TaskKind.ADVISE])  # `late` is abandoned
    assert claimed is not None and claimed.task_id == running.task_id
    assert store.get_task(late.task_id).state == JobState.CANCELLED
    assert store.renew_task_lease(running.task_id, "w", 30)
    assert not store.renew_task_lease(running.task_id, "other", 30)
    store.cancel_task(running.task_id)
    assert store.get_task(running.task_id).cancel_requested
    assert not store.renew_task_lease(running.task_id, "w", 30)  # the worker stops
    past = store.create_task(TaskKind.ADVISE, {}, deadline=T0 + 20)
    store.claim_task("w", 1, 30, [TaskKind.ADVISE])
    clock.advance(15)
    assert not store.renew_task_lease(past.task_id, "w", 30)  # its deadline passed


def test_a_task_whose_worker_died_is_claimed_again(store: JobStore, clock: FakeClock) -> None:
    task = store.create_task(TaskKind.CHECK_UPLOAD, {})
    store.claim_task("w1", 1, 30, [TaskKind.CHECK_UPLOAD])
    assert store.claim_task("w2", 2, 30, [TaskKind.CHECK_UPLOAD]) is None
    clock.advance(31)
    again = store.claim_task("w2", 2, 30, [TaskKind.CHECK_UPLOAD])
    assert again is not None and again.task_id == task.task_id and again.lease_owner == "w2"


def test_ended_tasks_are_deleted_after_an_hour(store: JobStore, clock: FakeClock) -> None:
    old = store.create_task(TaskKind.ADVISE, {})
    store.cancel_task(old.task_id)
    clock.advance(3601)
    store.create_task(TaskKind.ADVISE, {})
    with pytest.raises(NotFound):
        store.get_task(old.task_id)


def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    """A store written by the previous release opens with its jobs intact."""
    path = tmp_path / "graft.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO jobs (job_id, model_name, plan_json, state, create_time)"
            " VALUES ('a', 'm', '{}', 1, 1.0)"
        )
    store = SqliteJobStore(path)
    job = store.get_job("a")
    assert job.plan_resolved and not job.advise_first and job.error_detail == {}
    assert store.create_task(TaskKind.ADVISE, {}).state == JobState.QUEUED
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_sqlite_file_is_wal_with_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "graft.sqlite3"
    s = open_store(Config(data_dir=path.parent))
    assert isinstance(s, SqliteJobStore) and s.path == path
    job_id = new_job(s)
    s.close()
    again = SqliteJobStore(path)  # reopening an existing file is a no-op for the schema
    assert again.get_job(job_id).state == JobState.QUEUED
    again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "graft.sqlite3"
    SqliteJobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(FailedPrecondition, match="upgrade Graft"):
        SqliteJobStore(path)


def test_sqlite_unreachable_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable):
        SqliteJobStore(tmp_path / "missing-dir" / "graft.sqlite3")


def test_sqlite_lock_held_too_long_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "graft.sqlite3"
    s = SqliteJobStore(path, busy_timeout_s=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="locked"):
            new_job(s)
        assert s.list_jobs() == []  # reads go on under WAL while a writer holds the lock
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    new_job(s)  # and the store recovers once the lock is free
    s.close()


def test_close_waits_for_transactions_in_other_threads(tmp_path: Path) -> None:
    """close() while other threads are mid-transaction (a server shutting down while its
    store pool still runs a cancelled Advise's cancel_task) must not close a connection in
    use: that crashes the interpreter inside SQLite. The busy threads finish, later calls
    get Unavailable."""
    store = SqliteJobStore(tmp_path / "graft.sqlite3")
    task = store.create_task(TaskKind.ADVISE, {})
    errors: list[BaseException] = []
    done = {"ok": 0, "refused": 0}
    start = threading.Barrier(5)

    def hammer() -> None:
        start.wait()
        while True:
            try:
                store.cancel_task(task.task_id)
                store.get_task(task.task_id)
                done["ok"] += 1
            except Unavailable:
                done["refused"] += 1
                return
            except BaseException as e:  # anything else is a bug; report it
                errors.append(e)
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.05)
    store.close()
    for t in threads:
        t.join(10)
    assert not errors
    assert done["ok"] > 0 and done["refused"] == 4


# --- tenants and API keys ---------------------------------------------------------------


def test_jobs_are_confined_to_their_tenant(store: JobStore) -> None:
    mine, _ = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r1", tenant="acme"
    )
    theirs, _ = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r1", tenant="globex"
    )
    legacy = new_job(store)  # no tenant given: the default one
    assert mine.job_id != theirs.job_id  # request ids are per tenant
    assert (mine.tenant, theirs.tenant) == ("acme", "globex")
    assert store.get_job(legacy).tenant == DEFAULT_TENANT
    again, created = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r1", tenant="acme"
    )
    assert (again.job_id, created) == (mine.job_id, False)
    assert store.get_job(mine.job_id, "acme").job_id == mine.job_id
    assert store.get_job(mine.job_id).job_id == mine.job_id  # None: any tenant
    with pytest.raises(NotFound, match=f"job '{mine.job_id}' not found"):
        store.get_job(mine.job_id, "globex")
    with pytest.raises(NotFound):
        store.request_cancel(mine.job_id, "globex")
    assert store.get_job(mine.job_id).state == JobState.QUEUED  # untouched
    assert [j.job_id for j in store.list_jobs(tenant="acme")] == [mine.job_id]
    assert [j.job_id for j in store.list_jobs(JobState.QUEUED, tenant="globex")] == [theirs.job_id]
    assert len(store.list_jobs()) == 3
    assert store.request_cancel(mine.job_id, "acme").state == JobState.CANCELLED


def test_active_job_limit_counts_per_tenant(store: JobStore) -> None:
    for tenant in ("acme", "globex"):
        store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="", tenant=tenant)
    with pytest.raises(ResourceExhausted):
        store.create_job(
            model_name="m", dataset=DATA, plan=PLAN, request_id="", max_active=1, tenant="acme"
        )


def test_model_names_are_per_tenant(store: JobStore) -> None:
    def add(tenant: str) -> ModelVersion:
        return store.add_model_version(
            name="flowers",
            job_id=uuid.uuid4().hex,
            backbone="tiny",
            labels=(tenant,),
            sha256="ab" * 32,
            card={},
            artifact_dir="/reg",
            metrics=None,
            tenant=tenant,
        )

    assert [add("acme").version, add("acme").version, add("globex").version] == [1, 2, 1]
    assert add_version(store).tenant == DEFAULT_TENANT  # a third "flowers", version 1
    assert store.get_model_version("flowers", 2, "acme").labels == ("acme",)
    with pytest.raises(NotFound, match="model 'flowers' has no version 2"):
        store.get_model_version("flowers", 2, "globex")
    with pytest.raises(NotFound, match="model 'flowers' not found"):
        store.resolve_model(ModelRef("flowers", tenant="initech"))
    assert store.resolve_model(ModelRef("flowers", tenant="acme")).version == 2
    assert store.resolve_model(ModelRef("flowers")).tenant == DEFAULT_TENANT
    store.set_alias("flowers", "production", 1, tenant="globex")
    assert store.resolve_model(ModelRef("flowers", alias="production", tenant="globex")).labels == (
        "globex",
    )
    with pytest.raises(NotFound, match="no alias 'production'"):
        store.resolve_model(ModelRef("flowers", alias="production", tenant="acme"))
    with pytest.raises(NotFound):
        store.set_alias("flowers", "production", 2, tenant="globex")
    assert [v.tenant for v in store.list_models(tenant="acme")["flowers"]] == ["acme", "acme"]
    everyone = store.list_models("flo")["flowers"]
    assert [(v.tenant, v.version, v.aliases) for v in everyone] == [
        ("acme", 1, []),
        ("acme", 2, []),
        (DEFAULT_TENANT, 1, []),
        ("globex", 1, ["production"]),
    ]
    assert store.list_models(tenant="initech") == {}
    assert store.count_model_versions() == 4


def test_uploads_belong_to_a_tenant(store: JobStore) -> None:
    store.add_upload("u1", "/up/u1", 10, "f1", tenant="acme")
    store.add_upload("u1", "/up/u1", 10, "f1", tenant="acme")  # the same again: fine
    with pytest.raises(AlreadyExists):
        store.add_upload("u1", "/up/u1", 10, "f1", tenant="globex")
    assert store.get_upload("u1", "acme").tenant == "acme"
    assert store.get_upload("u1").tenant == "acme"
    with pytest.raises(NotFound, match="dataset 'u1' not found"):
        store.get_upload("u1", "globex")
    store.add_upload("u2", "/up/u2", 10, "f2")
    assert store.get_upload("u2").tenant == DEFAULT_TENANT


def test_api_keys_are_kept_by_hash_and_revoked(store: JobStore, clock: FakeClock) -> None:
    with pytest.raises(NotFound):
        store.api_key_by_hash("00" * 32)
    first = store.add_api_key("k1", "aa" * 32, "acme", name="pipeline")
    clock.advance(1)
    store.add_api_key("k2", "bb" * 32, "ops", admin=True)
    assert first == ApiKey("k1", "acme", False, "pipeline", T0)
    assert store.api_key_by_hash("aa" * 32) == first
    assert store.api_key_by_hash("bb" * 32).admin
    with pytest.raises(AlreadyExists):
        store.add_api_key("k1", "cc" * 32, "acme")
    with pytest.raises(AlreadyExists):
        store.add_api_key("k3", "aa" * 32, "acme")
    clock.advance(1)
    revoked = store.revoke_api_key("k1")
    assert revoked.revoke_time == T0 + 2
    clock.advance(1)
    assert store.revoke_api_key("k1").revoke_time == T0 + 2  # again: unchanged
    assert store.api_key_by_hash("aa" * 32).revoke_time == T0 + 2  # the caller refuses it
    assert [(k.key_id, k.revoke_time is None) for k in store.list_api_keys()] == [
        ("k1", False),
        ("k2", True),
    ]
    with pytest.raises(NotFound, match="'k9'"):
        store.revoke_api_key("k9")


def test_sqlite_migrates_a_version_2_file_to_tenants(tmp_path: Path) -> None:
    """A store written before tenants opens with every row in the default tenant, request
    ids and model names still unique there, and API keys available."""
    path = tmp_path / "graft.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in (*_SCHEMA, *_MIGRATIONS[1]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        conn.execute(
            "INSERT INTO jobs (job_id, model_name, plan_json, request_id, state, create_time)"
            " VALUES ('a', 'm', '{}', 'r1', 1, 1.0)"
        )
        conn.execute(
            "INSERT INTO model_versions (name, version, create_time, job_id, backbone,"
            " labels_json, sha256, card_json, artifact_dir) VALUES"
            " ('m', 1, 1.0, 'a', 'tiny', '[\"x\"]', 'ab', '{}', '/reg/m/1')"
        )
        conn.execute("INSERT INTO model_aliases (name, alias, version) VALUES ('m', 'prod', 1)")
        conn.execute(
            "INSERT INTO uploads (dataset_id, path, size_bytes, fingerprint, create_time)"
            " VALUES ('u', '/up/u', 1, 'f', 1.0)"
        )
    store = SqliteJobStore(path)
    assert store.get_job("a", DEFAULT_TENANT).request_id == "r1"
    job, created = store.create_job(model_name="m", dataset=DATA, plan=PLAN, request_id="r1")
    assert (job.job_id, created) == ("a", False)  # the old request id still answers
    _, created = store.create_job(
        model_name="m", dataset=DATA, plan=PLAN, request_id="r1", tenant="acme"
    )
    assert created
    mv = store.resolve_model(ModelRef("m", alias="prod"))
    assert (mv.tenant, mv.version, mv.aliases, mv.labels) == (DEFAULT_TENANT, 1, ["prod"], ("x",))
    assert add_version(store, "m").version == 2
    # The aliases' foreign key survived the rebuild (and points at the renamed table).
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(
            "INSERT INTO model_aliases (tenant, name, alias, version)"
            " VALUES ('default', 'm', 'x', 9)"
        )
    assert store.get_upload("u").tenant == DEFAULT_TENANT
    store.add_api_key("k", "aa" * 32, "acme")
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


# --- upload quotas, use and expiry ------------------------------------------------------


def upload_job(store: JobStore, dataset_id: str, tenant: str = "acme") -> str:
    job, _ = store.create_job(
        model_name="flowers",
        dataset=DatasetRef(dataset_id=dataset_id),
        plan=PLAN,
        request_id="",
        tenant=tenant,
    )
    return job.job_id


def test_the_upload_quota_counts_archives_and_extracted_copies_per_tenant(
    store: JobStore,
) -> None:
    store.add_upload("u1", "/up/u1", 600, "f1", "acme", filename="a.zip", quota_bytes=1000)
    with pytest.raises(ResourceExhausted, match="600 of 1000 bytes"):
        store.add_upload("u2", "/up/u2", 500, "f2", "acme", quota_bytes=1000)
    with pytest.raises(NotFound):
        store.get_upload("u2")  # refused: not recorded
    store.add_upload("u3", "/up/u3", 500, "f3", "globex", quota_bytes=1000)  # its own quota
    assert store.set_upload_extracted("u1", 300, 1000).extracted_bytes == 300
    with pytest.raises(ResourceExhausted):
        store.set_upload_extracted("u1", 500, 1000)  # 600 + 500 > 1000
    up = store.get_upload("u1")
    assert (up.filename, up.size_bytes, up.extracted_bytes, up.stored_bytes) == (
        "a.zip",
        600,
        300,
        900,
    )
    assert store.upload_usage("acme") == 900
    assert store.upload_usage("globex") == 500
    assert store.upload_usage("nobody") == 0
    assert store.upload_usage() == 1400
    store.add_upload("u4", "/up/u4", 10**12, "f4", "acme")  # quota 0: none
    with pytest.raises(NotFound):
        store.set_upload_extracted("missing", 1)


def test_uploads_are_listed_newest_first_with_their_last_use(
    store: JobStore, clock: FakeClock
) -> None:
    store.add_upload("u1", "/up/u1", 1, "f1", "acme")
    clock.advance(10)
    store.add_upload("u2", "/up/u2", 1, "f2", "acme")
    store.add_upload("u3", "/up/u3", 1, "f3", "globex")
    assert [u.dataset_id for u in store.list_uploads("acme")] == ["u2", "u1"]
    assert [u.dataset_id for u in store.list_uploads("acme", limit=1)] == ["u2"]
    assert {u.dataset_id for u in store.list_uploads()} == {"u1", "u2", "u3"}
    assert store.list_uploads("nobody") == []
    assert store.get_upload("u1").last_used == T0
    clock.advance(100)
    store.touch_upload("u1")
    store.touch_upload("missing")  # nothing to touch: nothing happens
    assert store.get_upload("u1").last_used == T0 + 110
    assert store.get_upload("u1").create_time == T0


def test_deleting_an_upload_is_per_tenant_and_refused_while_it_is_in_use(
    store: JobStore,
) -> None:
    store.add_upload("u1", "/up/u1", 7, "f1", "acme")
    store.set_upload_extracted("u1", 3)
    for tenant in ("globex", DEFAULT_TENANT):
        with pytest.raises(NotFound, match="'u1' not found"):
            store.delete_upload("u1", tenant)
    job_id = upload_job(store, "u1")
    with pytest.raises(FailedPrecondition, match=f"job {job_id} \\(queued\\)"):
        store.delete_upload("u1", "acme")
    store.request_cancel(job_id)  # queued: cancelled at once
    deleted = store.delete_upload("u1", "acme")
    assert (deleted.dataset_id, deleted.tenant, deleted.stored_bytes) == ("u1", "acme", 10)
    with pytest.raises(NotFound):
        store.get_upload("u1")
    with pytest.raises(NotFound):
        store.delete_upload("u1")

    store.add_upload("u2", "/up/u2", 1, "f2", "acme")
    check = store.create_task(TaskKind.CHECK_UPLOAD, {"dataset_id": "u2"})
    with pytest.raises(FailedPrecondition, match="its upload check"):
        store.delete_upload("u2")  # an admin (no tenant) is refused too
    assert store.delete_upload("u2", force=True).dataset_id == "u2"  # its failed check
    store.cancel_task(check.task_id)

    store.add_upload("u3", "/up/u3", 1, "f3", "acme")
    advice = {"advise_request": {"dataset": {"dataset_id": "u3"}}}
    task = store.create_task(TaskKind.ADVISE, advice)
    with pytest.raises(FailedPrecondition, match="an Advise in progress"):
        store.delete_upload("u3", "acme")
    store.cancel_task(task.task_id)  # queued: cancelled at once
    store.delete_upload("u3", "acme")


def test_expiry_spares_uploads_in_use_or_used_lately(store: JobStore, clock: FakeClock) -> None:
    for name in ("old", "queued", "running", "advised", "trained", "touched"):
        store.add_upload(name, f"/up/{name}", 1, name, "acme")
    upload_job(store, "queued")
    running = upload_job(store, "running")
    assert store.claim_job("w", 30).job_id != running  # the older "queued" job first
    assert store.claim_job("w", 30).job_id == running
    store.create_task(TaskKind.ADVISE, {"advise_request": {"dataset": {"dataset_id": "advised"}}})
    trained = upload_job(store, "trained")
    clock.advance(50)
    store.request_cancel(trained)  # the job that used it ended at T0 + 50
    clock.advance(50)
    store.touch_upload("touched")  # named by a new job or Advise at T0 + 100

    expired = store.expire_uploads(T0 + 40)
    assert [u.dataset_id for u in expired] == ["old"]
    assert expired[0].tenant == "acme"
    assert store.get_upload("trained").last_used == T0 + 50  # the job's end counts as use
    assert [u.dataset_id for u in store.expire_uploads(T0 + 60)] == ["trained"]
    assert [u.dataset_id for u in store.expire_uploads(T0 + 100)] == []  # not before
    assert [u.dataset_id for u in store.expire_uploads(T0 + 1000)] == ["touched"]
    left = {u.dataset_id for u in store.list_uploads()}
    assert left == {"queued", "running", "advised"}  # in use: kept past any age


def test_active_datasets_are_those_of_queued_and_running_jobs(store: JobStore) -> None:
    assert store.active_datasets() == []
    new_job(store)  # DATA, a uri
    ended = upload_job(store, "u1")
    upload_job(store, "u2")
    new_job(store, name="other")  # the same uri again: listed once
    store.request_cancel(ended)
    assert sorted(store.active_datasets(), key=lambda r: (r.uri, r.dataset_id)) == [
        DatasetRef(dataset_id="u2"),
        DATA,
    ]


def test_uploads_recorded_before_quotas_get_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "graft.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in (*_SCHEMA, *_MIGRATIONS[1], *_MIGRATIONS[2], *_MIGRATIONS[3]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (4)")
        conn.execute(
            "INSERT INTO uploads (dataset_id, path, size_bytes, fingerprint, create_time, tenant)"
            " VALUES ('u', '/up/u', 5, 'f', 1.0, 'acme')"
        )
    store = SqliteJobStore(path)
    up = store.get_upload("u", "acme")
    assert (up.last_used, up.extracted_bytes, up.filename, up.stored_bytes) == (1.0, 0, "", 5)
    assert store.upload_usage("acme") == 5
    store.close()

"""What the PostgreSQL store does beyond the contract suite (tests/unit/test_store.py runs
that against it too): migrations, refusals, errors, claims under real concurrency, the
database's clock and NOTIFY. On a real server the tests start (tests/postgres.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import psycopg
import pytest

from graft.config import Config
from graft.domain import DatasetRef, JobState, TaskKind, TrainingPlan
from graft.errors import FailedPrecondition, Unavailable
from graft.store import open_store
from graft.store.postgres import SCHEMA_VERSION, PostgresJobStore, schema
from tests.postgres import PostgresServer, free_port

pytestmark = pytest.mark.postgres

DATA = DatasetRef(uri="/data/flowers")


def new_job(store: PostgresJobStore, name: str = "m") -> str:
    job, _ = store.create_job(model_name=name, dataset=DATA, plan=TrainingPlan(), request_id="")
    return job.job_id


def sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# --- schema ---------------------------------------------------------------------------


def test_open_store_chooses_postgres_by_url(postgres_url: str) -> None:
    store = open_store(Config(store_url=postgres_url))
    assert isinstance(store, PostgresJobStore)
    store.close()
    with pytest.raises(ValueError, match="postgresql:// URL"):
        Config(store_url="mysql://u:secret@h/db")
    with pytest.raises(ValueError, match="u:\\*\\*\\*@h"):  # the password is not repeated
        Config(store_url="mysql://u:secret@h/db")


def test_an_empty_database_gets_every_migration(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database(empty=True)
    assert sql(url, "SELECT to_regclass('jobs')") == [(None,)]
    PostgresJobStore(url).close()
    assert sql(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    PostgresJobStore(url).close()  # opening again changes nothing
    assert sql(url, "SELECT count(*) FROM schema_version") == [(1,)]


def test_an_older_schema_is_upgraded_in_place(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by this release, opened by a release with one more migration:
    the step runs once, the rows stay, the version moves."""
    with PostgresJobStore(postgres_url) as store:
        job_id = new_job(store)
    step = (
        "ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 5",
        "CREATE INDEX jobs_priority ON jobs (priority, seq)",
    )
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, step])
    with PostgresJobStore(postgres_url) as store:
        assert store.get_job(job_id).state == JobState.QUEUED
        new_job(store)
    assert sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]
    assert sql(postgres_url, "SELECT priority FROM jobs ORDER BY seq") == [(5,), (5,)]


def test_a_newer_schema_is_refused_naming_both_versions(postgres_url: str) -> None:
    sql(postgres_url, "UPDATE schema_version SET version = %s", SCHEMA_VERSION + 1)
    with pytest.raises(FailedPrecondition) as refused:
        PostgresJobStore(postgres_url)
    message = refused.value.message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"understands ({SCHEMA_VERSION})" in message and "upgrade Graft" in message
    assert sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


def test_concurrent_starts_on_an_empty_database_do_not_race(
    postgres_server: PostgresServer,
) -> None:
    """Without the migration's advisory lock, CREATE TABLE of two starting processes
    collide ("duplicate key value violates unique constraint pg_type_typname_nsp_index")."""
    url = postgres_server.new_database(empty=True)
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            PostgresJobStore(url).close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sql(url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


# --- errors ---------------------------------------------------------------------------


def test_a_role_that_may_not_create_the_schema_is_told_so(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database(empty=True)
    role = "reader_" + url.rsplit("/", 1)[1]  # roles are the cluster's: one per database
    postgres_server.execute(f"CREATE ROLE {role} LOGIN")
    sql(url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL 15's default
    reader = url.replace("postgresql://postgres@", f"postgresql://{role}@")
    with pytest.raises(FailedPrecondition, match="cannot apply its schema: permission denied"):
        PostgresJobStore(reader)
    assert sql(url, "SELECT to_regclass('schema_version')") == [(None,)]  # nothing half-made


def test_an_unreachable_server_is_unavailable_at_once() -> None:
    url = f"postgresql://graft:secret@127.0.0.1:{free_port()}/graft"  # nobody listens
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as refused:
        PostgresJobStore(url)
    assert time.monotonic() - t0 < 5
    assert "secret" not in refused.value.message and "graft:***@" in refused.value.message


def test_a_dropped_database_is_unavailable_and_a_killed_connection_replaced(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database()
    store = PostgresJobStore(url, timeout_s=2)  # how long a call waits for a connection
    try:
        job_id = new_job(store)
        # The server ends every session of the store (a failover, a restart): the pool
        # checks a connection before handing it out and replaces a dead one.
        sql(
            postgres_server.url(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            url.rsplit("/", 1)[1],
        )
        assert store.get_job(job_id).state == JobState.QUEUED
        postgres_server.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="job store postgresql://"):
            store.get_job(job_id)
        assert time.monotonic() - t0 < 10
    finally:
        store.close()


# --- claims under concurrency ---------------------------------------------------------


def test_a_claim_skips_a_job_another_transaction_holds(postgres_url: str) -> None:
    """SKIP LOCKED: a claim passes over the job a slow claimer has locked, at once."""
    with PostgresJobStore(postgres_url) as store:
        first, second = new_job(store), new_job(store)
        with psycopg.connect(postgres_url) as other:  # a transaction, left open
            other.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (first,))
            t0 = time.monotonic()
            job = store.claim_job("w1", 30)
            assert job is not None and job.job_id == second
            assert time.monotonic() - t0 < 2  # passed over, not waited for
            assert store.claim_job("w2", 30) is None
        job = store.claim_job("w2", 30)  # released: claimable again
        assert job is not None and job.job_id == first


def test_many_threads_with_their_own_stores_never_claim_a_job_twice(postgres_url: str) -> None:
    with PostgresJobStore(postgres_url) as store:
        ids = {new_job(store) for _ in range(120)}
    claimed: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(worker: str) -> None:
        try:
            with PostgresJobStore(postgres_url) as mine:
                start.wait()
                while (job := mine.claim_job(worker, 30)) is not None:
                    claimed.append(job.job_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(claimed) == sorted(ids)  # each once: no job twice, none left behind
    assert sql(postgres_url, "SELECT DISTINCT attempts FROM jobs") == [(1,)]


def _claim_all(url: str, worker: str, go: Any, out: Any) -> None:
    """Child process body: claim until the queue is empty; report what it got."""
    with PostgresJobStore(url) as store:
        go.wait(30)
        got = []
        while (job := store.claim_job(worker, 30)) is not None:
            got.append(job.job_id)
    out.put((worker, got))


def test_processes_never_claim_a_job_twice(postgres_url: str) -> None:
    with PostgresJobStore(postgres_url) as store:
        ids = {new_job(store) for _ in range(90)}
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_all, args=(postgres_url, f"p{i}", go, out)) for i in range(3)
    ]
    for p in procs:
        p.start()
    go.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    claimed = [job_id for got in results.values() for job_id in got]
    assert sorted(claimed) == sorted(ids)
    owners = dict(sql(postgres_url, "SELECT job_id, lease_owner FROM jobs"))
    assert all(owners[job_id] == worker for worker, got in results.items() for job_id in got)
    # One RUNNING event per job: nobody's claim was rolled back into another's.
    assert sql(postgres_url, "SELECT DISTINCT last_sequence FROM jobs") == [(2,)]


# --- the database's clock -------------------------------------------------------------


def test_times_are_the_database_clock_unless_a_clock_is_given(postgres_url: str) -> None:
    faked = PostgresJobStore(postgres_url, clock=lambda: 1000.0)
    real = PostgresJobStore(postgres_url)
    try:
        ((db_now,),) = sql(postgres_url, "SELECT extract(epoch FROM now())::float8")
        job = real.get_job(new_job(real))
        assert abs(job.create_time - db_now) < 5
        claimed = real.claim_job("w", 30)
        assert claimed is not None and claimed.start_time is not None
        assert claimed.lease_expires == claimed.start_time + 30  # one transaction, one time
        assert faked.get_job(new_job(faked)).create_time == 1000.0
        # The fake time is the faking store's transaction's alone.
        assert abs(real.get_job(new_job(real)).create_time - db_now) < 5
        task = real.create_task(TaskKind.ADVISE, {})
        assert abs(task.create_time - db_now) < 5
    finally:
        faked.close()
        real.close()


# --- notifications --------------------------------------------------------------------


def test_changes_are_notified_to_subscribers_of_any_store(postgres_url: str) -> None:
    server, worker = PostgresJobStore(postgres_url), PostgresJobStore(postgres_url)
    heard: list[str] = []
    arrived = threading.Condition()

    def hear(key: str) -> None:
        with arrived:
            heard.append(key)
            arrived.notify_all()

    def wait_for(key: str) -> bool:
        with arrived:
            return arrived.wait_for(lambda: key in heard, timeout=5)

    try:
        stop = server.subscribe_changes(hear)
        job_id = new_job(worker)  # event 1: QUEUED
        assert wait_for(job_id)
        task = worker.create_task(TaskKind.ADVISE, {})
        worker.claim_task("w", 1, 30, [TaskKind.ADVISE])
        worker.finish_task(task.task_id, "w", JobState.SUCCEEDED)
        assert wait_for(task.task_id)
        stop()
        heard.clear()
        later = new_job(worker)
        time.sleep(0.5)
        assert later not in heard  # unsubscribed
    finally:
        server.close()
        worker.close()


def test_the_listener_reconnects_and_says_changes_may_have_been_missed(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.new_database()
    heard: list[str] = []
    arrived = threading.Condition()

    def hear(key: str) -> None:
        with arrived:
            heard.append(key)
            arrived.notify_all()

    with PostgresJobStore(url) as server, PostgresJobStore(url) as worker:
        server.subscribe_changes(hear)
        killed = sql(
            postgres_server.url(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND query LIKE 'LISTEN%%'",
            url.rsplit("/", 1)[1],
        )
        assert killed == [(True,)]  # the listener's connection, and only it
        with arrived:
            assert arrived.wait_for(lambda: "" in heard, timeout=10)  # back, and says so
        job_id = new_job(worker)
        with arrived:
            assert arrived.wait_for(lambda: job_id in heard, timeout=5)

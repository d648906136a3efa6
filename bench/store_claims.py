"""Claim latency and claim throughput of the job store, PostgreSQL against SQLite in the same
run (docs/SCALING.md § Measured).

For each store: the latency of `claim_job` taking jobs off the head of a queue of --queue
jobs; the latency of a job's whole store cycle (create_job, claim_job, finish_job); and the
jobs per second that K concurrent claimers (threads, then processes; one store object
each, as separate workers have) get through a queue of --jobs jobs, each claimer claiming
and finishing until the queue is empty (every job checked claimed exactly once).

Stores: SQLite as Graft opens it (WAL, synchronous=NORMAL: a power cut may lose the last
commits, never corrupt the file); PostgreSQL as it ships (fsync on, synchronous_commit on:
a commit is on disk when it returns); and PostgreSQL with synchronous_commit off, the
durability SQLite's setting gives. PostgreSQL is a throwaway server this bench starts
(tests/postgres.py, on loopback), set back to durable settings. Every figure is printed
with its ratio to SQLite's, measured here in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/store_claims.py
    OMP_NUM_THREADS=2 .venv/bin/python bench/store_claims.py --queue 200 --claims 100 \
        --cycles 100 --jobs 100 --claimers 1,4   # quick
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

# The repository root, for tests/postgres.py's server (run as a script, bench/ is sys.path[0]).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graft.domain import DatasetRef, JobState, TrainingPlan
from graft.store import JobStore
from graft.store.postgres import PostgresJobStore
from graft.store.sqlite import SqliteJobStore
from tests.postgres import PostgresServer, start_postgres

DATA = DatasetRef(uri="/data/bench")
PLAN = TrainingPlan(backbone="efficientnet_lite0", epochs=1)
LEASE_SECONDS = 30.0
# PostgreSQL's shipped durability; tests/postgres.py turns it off for speed.
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


@dataclass
class Backend:
    """A store kind: `fresh()` is the location of an empty store, `open(location)` opens it
    (in any process: both are plain strings)."""

    name: str
    fresh: Callable[[], str]


def open_store(location: str) -> JobStore:
    if location.startswith("postgresql://"):
        return PostgresJobStore(location)
    return SqliteJobStore(Path(location))


def create_jobs(store: JobStore, n: int) -> list[float]:
    """Queue n jobs; the seconds each create_job took."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        store.create_job(model_name="bench", dataset=DATA, plan=PLAN, request_id="")
        times.append(time.perf_counter() - t0)
    return times


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100)."""
    ordered = sorted(samples)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def measure_claims(store: JobStore, queue: int, claims: int) -> dict[str, float]:
    """Latency of create_job, and of claim_job off the head of a queue of `queue` jobs."""
    creates = create_jobs(store, queue)
    times = []
    for _ in range(claims):
        t0 = time.perf_counter()
        job = store.claim_job("bench-claimer", LEASE_SECONDS)
        times.append(time.perf_counter() - t0)
        assert job is not None
    return {
        "create p50": percentile(creates, 50),
        "claim p50": percentile(times, 50),
        "claim p99": percentile(times, 99),
    }


def measure_cycles(store: JobStore, cycles: int) -> dict[str, float]:
    """Latency of one job's whole store cycle: create, claim, finish."""
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        store.create_job(model_name="bench", dataset=DATA, plan=PLAN, request_id="")
        job = store.claim_job("bench-cycle", LEASE_SECONDS)
        assert job is not None
        store.finish_job(job.job_id, "bench-cycle", JobState.SUCCEEDED)
        times.append(time.perf_counter() - t0)
    return {"cycle p50": percentile(times, 50), "cycle p99": percentile(times, 99)}


def drain(store: JobStore, worker: str) -> list[str]:
    """Claim and finish until the queue is empty; the jobs this claimer got."""
    got = []
    while (job := store.claim_job(worker, LEASE_SECONDS)) is not None:
        store.finish_job(job.job_id, worker, JobState.SUCCEEDED)
        got.append(job.job_id)
    return got


def _claimer_process(location: str, worker: str, ready: Any, go: Any, out: Any) -> None:
    """A claimer in a process of its own (spawned: nothing inherited but its arguments)."""
    store = open_store(location)
    ready.put(worker)
    go.wait(60)
    got = drain(store, worker)
    out.put((worker, time.perf_counter(), got))
    store.close()


def run_threads(location: str, k: int) -> tuple[float, list[str]]:
    """K claimer threads, one store object each; (wall seconds, the jobs claimed)."""
    stores = [open_store(location) for _ in range(k)]
    go = threading.Barrier(k + 1)
    results: list[list[str]] = [[] for _ in range(k)]

    def body(i: int) -> None:
        go.wait(60)
        results[i] = drain(stores[i], f"t{i}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    go.wait(60)
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for s in stores:
        s.close()
    return wall, [job for got in results for job in got]


def run_processes(location: str, k: int) -> tuple[float, list[str]]:
    """K claimer processes, started and connected before the clock starts."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_claimer_process, args=(location, f"p{i}", ready, go, out))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"a claimer process exited with {p.exitcode}"
    # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process on the host.
    wall = max(done for _, done, _ in results) - t0
    return wall, [job for _, _, got in results for job in got]


def measure_throughput(
    location: str, jobs: int, mode: str, k: int, run: Callable[[str, int], tuple[float, list[str]]]
) -> dict[str, float]:
    """Jobs per second through claim + finish with K claimers at once (threads or processes)."""
    with_store(location, lambda s: create_jobs(s, jobs))
    wall, claimed = run(location, k)
    assert len(claimed) == len(set(claimed)) == jobs, (location, mode, k)
    return {f"jobs/s, K={k} {mode}": jobs / wall}


def with_store(location: str, use: Callable[[JobStore], Any]) -> Any:
    store = open_store(location)
    try:
        return use(store)
    finally:
        store.close()


@dataclass
class Results:
    """Each figure's samples (one per repeat) by backend name, in the order measured."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, backend: str, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            self.samples.setdefault(backend, {}).setdefault(key, []).append(value)

    def median(self, backend: str, key: str) -> float:
        return statistics.median(self.samples[backend][key])

    def print_table(self, baseline: str) -> None:
        names = list(self.samples)
        header = ["figure", *names, *(f"{n} / {baseline}" for n in names if n != baseline)]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for key in self.samples[baseline]:
            cells = [key, *(fmt(key, self.median(n, key)) for n in names)]
            base = self.median(baseline, key)
            cells += [f"{self.median(n, key) / base:.2f}×" for n in names if n != baseline]
            print("| " + " | ".join(cells) + " |")


def fmt(key: str, value: float) -> str:
    return f"{value:.0f}" if key.startswith("jobs/s") else f"{value * 1000:.2f} ms"


def postgres_backends(server: PostgresServer) -> list[Backend]:
    """PostgreSQL as shipped, and with synchronous_commit off (per database)."""
    for name, value in DURABLE.items():
        server.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    server.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)  # the reload reaches the backends asynchronously
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for name, value in DURABLE.items():
            shown = conn.execute(f"SHOW {name}").fetchone()
            assert shown is not None and shown[0] == value, (name, shown)

    def asynchronous() -> str:
        url = server.new_database()
        name = urlsplit(url).path.lstrip("/")
        server.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        return url

    return [
        Backend("postgresql", server.new_database),
        Backend("postgresql async", asynchronous),
    ]


def sqlite_backend(root: Path) -> Backend:
    counter = iter(range(1_000_000))
    return Backend("sqlite", lambda: str(root / f"store-{next(counter)}.sqlite3"))


def throughput_at(
    location: str, *, jobs: int, mode: str, k: int, run: Callable[[str, int], Any]
) -> dict[str, float]:
    return measure_throughput(location, jobs, mode, k, run)


def phases(args: argparse.Namespace) -> list[Callable[[str], dict[str, float]]]:
    """Each measurement, as a function of a fresh store's location."""
    out: list[Callable[[str], dict[str, float]]] = [
        lambda loc: with_store(loc, lambda s: measure_claims(s, args.queue, args.claims)),
        lambda loc: with_store(loc, lambda s: measure_cycles(s, args.cycles)),
    ]
    for mode, run in (("threads", run_threads), ("processes", run_processes)):
        for k in args.claimers:
            out.append(functools.partial(throughput_at, jobs=args.jobs, mode=mode, k=k, run=run))
    return out


def measure_all(backends: list[Backend], args: argparse.Namespace) -> Results:
    """Every phase on every backend, back to back, --repeat times: a change in the host's
    load hits all backends alike, and each figure is the median of its repeats."""
    results = Results()
    for repeat in range(args.repeat):
        started = time.perf_counter()
        for phase in phases(args):
            for backend in backends:
                results.add(backend.name, phase(backend.fresh()))
        took = time.perf_counter() - started
        print(f"  round {repeat + 1}/{args.repeat}: {took:.1f} s", flush=True)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=2000, help="queued jobs claims start on")
    parser.add_argument("--claims", type=int, default=500, help="claims timed off that queue")
    parser.add_argument("--cycles", type=int, default=500, help="create-claim-finish cycles")
    parser.add_argument("--jobs", type=int, default=400, help="jobs the K claimers drain")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument(
        "--claimers",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[1, 2, 4, 8],
        help="comma-separated K values (default 1,2,4,8)",
    )
    args = parser.parse_args()
    assert args.claims <= args.queue, "--claims must not exceed --queue"
    return args


def fsync_seconds(root: Path, n: int = 200) -> float:
    """The median time to write 8 KiB and fdatasync it here: what a durable commit waits for."""
    times = []
    fd = os.open(root / "fsync-probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"\0" * 8192)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return statistics.median(times)


def describe(server: PostgresServer, root: Path) -> None:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    print(
        f"PostgreSQL {row[0] if row else '?'} on 127.0.0.1 (durable: {DURABLE});"
        f" SQLite {__import__('sqlite3').sqlite_version} (WAL, synchronous=NORMAL) in {root}"
    )
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" 8 KiB write + fdatasync here: {fsync_seconds(root) * 1000:.2f} ms,"
        f" load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> int:
    args = parse_args()
    server = start_postgres()
    if isinstance(server, str):
        print(server, file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="graft-store-bench-") as tmp:
            root = Path(tmp)
            describe(server, root)
            results = measure_all([sqlite_backend(root), *postgres_backends(server)], args)
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            print(
                f"\nqueue {args.queue}, {args.claims} claims timed; {args.cycles} cycles;"
                f" {args.jobs} jobs per throughput run; medians of {args.repeat} rounds\n"
            )
            results.print_table(baseline="sqlite")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

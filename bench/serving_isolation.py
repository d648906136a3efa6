"""Predict latency and throughput alone vs while Advise calls and a training job run,
through the real service, as ratios measured in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/serving_isolation.py [--seconds 20] [--threads 4]
        [--advise-calls 4] [--job-epochs 8] [--per-class 100] [--keep]

Starts `graft serve` (embedded trainer and advisor worker processes) on a free port in a
temporary folder, writes a Fashion-MNIST train set (4 classes) and trains a small
feature-extraction model (64 px) to serve. Then three windows of closed-loop Predict from
`--threads` client threads, one 28x28 PNG per request, `--seconds` each:

1. alone: nothing else runs in the service;
2. under load: `--advise-calls` concurrent Advise calls on the train set (a thread each)
   and one partial fine-tune job run; the Predict window opens once the job is RUNNING;
3. alone, after: once the Advise calls and the job have ended (how far "alone" drifts
   within one run, e.g. from other processes on the host).

Prints p50/p99 latency, images/s and errors of each window and the ratios to "alone",
how long the Advise calls and the job took and how much of the loaded window they covered,
and the CPU seconds each process used in each window (/proc/<pid>/stat utime+stime): the
API server (which runs Predict), the trainer and advisor workers, this bench's client
threads, and every other process on the host (/proc/stat busy time minus those). On 2
cores the windows share the CPUs, so latency under load measures CPU contention too; what
isolation promises is that the heavy work runs in the workers and Predict keeps
answering without errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _serving import (
    PredictStats,
    Served,
    cpu_seconds,
    error_name,
    machine_busy_seconds,
    percentile,
    run_predict_load,
    serving,
    train_model,
)

from graft_client import GraftError, pb
from graft_devtools.datasets import write_fashion_mnist_folder

CLASSES = (1, 7, 8, 9)  # trouser, sneaker, bag, ankle boot
MODEL = "isolation"
# one Predict window: stats, wall seconds, CPU seconds per process, (start, end) monotonic
Phase = tuple[PredictStats, float, dict[str, float], tuple[float, float]]


@dataclass
class Span:
    """One piece of background work: when it started and ended (monotonic) and how."""

    label: str
    start: float
    end: float | None = None
    outcome: str = "running"

    def covered(self, w0: float, w1: float) -> float:
        end = time.monotonic() if self.end is None else self.end
        return max(0.0, min(end, w1) - max(self.start, w0))


class BackgroundLoad:
    """`advise_calls` Advise calls (a thread and a channel each) and one fine-tune job,
    followed with StreamProgress until it ends."""

    def __init__(self, served: Served, train: Path, advise_calls: int, plan: pb.TrainingPlan):
        self.served, self.train, self.plan = served, train, plan
        self.advise = [Span(f"advise {i + 1}", 0.0) for i in range(advise_calls)]
        self.job = Span("fine-tune job", 0.0)  # start: when the job turned RUNNING
        self.submitted = 0.0
        self.job_id = ""
        self._threads: list[threading.Thread] = []

    def _advise(self, span: Span) -> None:
        with self.served.client() as client:
            span.start = time.monotonic()
            try:
                client.advise(str(self.train))
                span.outcome = "OK"
            except GraftError as error:
                span.outcome = error_name(error)
            span.end = time.monotonic()

    def _follow(self) -> None:
        with self.served.client() as client:
            job = client.wait(self.job_id, timeout=3600)
            self.job.end = time.monotonic()
            self.job.outcome = pb.JobState.Name(job.state)

    def start(self) -> None:
        client = self.served.client()
        self.submitted = time.monotonic()
        job = client.start_fine_tune(f"{MODEL}-load", str(self.train), plan=self.plan)
        self.job_id = job.job_id
        self._threads = [threading.Thread(target=self._follow, daemon=True)]
        self._threads += [
            threading.Thread(target=self._advise, args=(s,), daemon=True) for s in self.advise
        ]
        for thread in self._threads:
            thread.start()
        while client.get_job(self.job_id).state == pb.JOB_STATE_QUEUED:
            time.sleep(0.1)
        self.job.start = time.monotonic()
        client.close()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def cpu_snapshot(served: Served) -> dict[str, float]:
    """CPU seconds so far of each process, and of the whole machine as "other processes"
    (the difference is taken after subtracting two snapshots)."""
    pids = served.worker_pids()
    return {
        "server": cpu_seconds(served.pid),
        "trainer": cpu_seconds(pids["trainer"]),
        "advisor": cpu_seconds(pids["advisor"]),
        "bench clients": cpu_seconds(os.getpid()),
        "other processes": machine_busy_seconds(),
    }


def measured_phase(served: Served, images: list[bytes], args: argparse.Namespace) -> Phase:
    pids = served.worker_pids()
    before = cpu_snapshot(served)
    w0 = time.monotonic()
    stats, wall = run_predict_load(served.target, MODEL, images, args.threads, args.seconds)
    w1 = time.monotonic()
    after = cpu_snapshot(served)
    if served.worker_pids() != pids:
        print(f"worker pids changed during the window: {pids} -> {served.worker_pids()}")
    cpu = {k: after[k] - before[k] for k in before}
    ours = sum(v for k, v in cpu.items() if k != "other processes")
    cpu["other processes"] = max(0.0, cpu["other processes"] - ours)  # tick rounding
    return stats, wall, cpu, (w0, w1)


def figures(stats: PredictStats, wall: float) -> tuple[float, float, float]:
    """img/s, p50 ms, p99 ms."""
    p50, p99 = (percentile(stats.latencies, q) * 1e3 for q in (50, 99))
    return stats.images / wall, p50, p99


def report(phases: dict[str, Phase], load: BackgroundLoad) -> None:
    print("\n| phase | window s | requests | img/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for label, (stats, wall, _, _) in phases.items():
        rate, p50, p99 = figures(stats, wall)
        errors = sum(stats.errors.values())
        print(
            f"| {label} | {wall:.1f} | {len(stats.latencies)} | {rate:.1f} | {p50:.1f} | "
            f"{p99:.1f} | {errors} {dict(stats.errors) if errors else ''}|"
        )
    base = figures(*phases["alone"][:2])
    for label in ("under load", "alone, after"):
        ratio = [x / b for x, b in zip(figures(*phases[label][:2]), base, strict=True)]
        print(f"| {label} / alone | | | {ratio[0]:.2f}x | {ratio[1]:.2f}x | {ratio[2]:.2f}x | |")
    names = list(phases["alone"][2])
    print("\n| CPU seconds in the window | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, (_, wall, cpu, _) in phases.items():
        cells = " | ".join(f"{v:.1f} ({v / wall:.2f} cores)" for v in cpu.values())
        print(f"| {label} | {cells} |")
    w0, w1 = phases["under load"][3]
    print("\nbackground work (times from its start; coverage of the loaded window):")
    for span in [*load.advise, load.job]:
        assert span.end is not None
        start = load.submitted if span is load.job else span.start
        print(
            f"  {span.label}: {span.end - start:.1f} s, {span.outcome}, "
            f"covered {span.covered(w0, w1) / (w1 - w0):.0%} of the window"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="each Predict window")
    parser.add_argument("--threads", type=int, default=4, help="Predict client threads")
    parser.add_argument("--advise-calls", type=int, default=4)
    parser.add_argument("--job-epochs", type=int, default=8, help="the loading fine-tune job")
    parser.add_argument("--per-class", type=int, default=100, help="train images per class")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder and log")
    args = parser.parse_args()

    with serving("graft-isolation-", keep=args.keep) as served:
        train = write_fashion_mnist_folder(
            served.root / "train", per_class=args.per_class, classes=CLASSES
        )
        test = write_fashion_mnist_folder(
            served.root / "test", per_class=25, classes=CLASSES, split="test"
        )
        images = [p.read_bytes() for p in sorted(test.rglob("*.png"))]
        t0 = time.perf_counter()
        with served.client() as client:
            served_plan = pb.TrainingPlan(
                backbone="efficientnet_lite0", strategy=pb.STRATEGY_FEATURE_EXTRACTION,
                epochs=3, image_size=64,
            )  # fmt: skip
            train_model(client, MODEL, train, served_plan)
        print(f"model to serve trained in {time.perf_counter() - t0:.0f} s", flush=True)
        run_predict_load(served.target, MODEL, images, args.threads, 3)  # warm-up

        phases: dict[str, Phase] = {}
        phases["alone"] = measured_phase(served, images, args)
        print(f"alone: {phases['alone'][0].images} images", flush=True)

        load_plan = pb.TrainingPlan(
            backbone="efficientnet_lite0", strategy=pb.STRATEGY_PARTIAL_FINE_TUNE,
            trainable_stages=3, epochs=args.job_epochs, image_size=64,
        )  # fmt: skip
        load = BackgroundLoad(served, train, args.advise_calls, load_plan)
        load.start()
        phases["under load"] = measured_phase(served, images, args)
        print(f"under load: {phases['under load'][0].images} images", flush=True)
        print("waiting for the Advise calls and the job to end ...", flush=True)
        load.join()
        # the same window again once the load is over: how much "alone" drifted in the run
        phases["alone, after"] = measured_phase(served, images, args)
        report(phases, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())

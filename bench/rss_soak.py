"""The API server's resident memory (RSS) over a long mixed load, through the real service.

    OMP_NUM_THREADS=2 .venv/bin/python bench/rss_soak.py [--minutes 10] [--warmup-minutes 1]
        [--sample-seconds 5] [--keep]

Starts `graft serve` (embedded trainer and advisor worker processes) on a free port in a
temporary folder, writes a Fashion-MNIST train set (4 classes) and trains a small
feature-extraction model (64 px) to serve, then runs for `--minutes`, all at once:

- closed-loop Predict of that model from `--predict-threads` threads (one 28x28 PNG each);
- `--followers` StreamProgress followers, each repeatedly opening a stream on a finished
  job (replayed to its end) and on the running job if any (read ~2 s, then closed);
- a GetJob / ListJobs / ListModels loop;
- a small Advise (`max_images=40`) every `--advise-every` seconds;
- a small fine-tune job (feature extraction, 2 epochs, 30 images per class) every
  `--job-every` seconds, followed by a Predict with the version it registered (so the
  Predict model cache loads new versions and evicts old ones).

Before the clock starts, `--prefill-versions` (3) such versions are trained and predicted
with, so the Predict model cache (4 versions by default) is already full: while it fills,
RSS grows by one loaded model (~60 MiB) per version, which is its bound, not a leak.

Samples the server process's VmRSS (/proc/<pid>/status) every `--sample-seconds` and prints
RSS at the end of the warm-up vs at the end, the min and max after warm-up, the growth in
%, the least-squares slope after warm-up, and what the load did (calls, errors, latency).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

from _serving import (
    PredictLoad,
    PredictStats,
    Served,
    error_name,
    percentile,
    rss_mib,
    serving,
    train_model,
)

from graft_client import GraftError, pb
from graft_devtools.datasets import write_fashion_mnist_folder

CLASSES = (1, 7, 8, 9)  # trouser, sneaker, bag, ankle boot
MODEL = "soak"
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
SMALL_PLAN = pb.TrainingPlan(
    backbone="efficientnet_lite0", strategy=pb.STRATEGY_FEATURE_EXTRACTION,
    epochs=2, image_size=64,
)  # fmt: skip


class MixedLoad:
    """Everything but Predict's closed loop: followers, admin calls, Advise, jobs. Each
    kind of call counts its outcomes in `counts` ("kind ok", "kind CODE", ...)."""

    def __init__(self, served: Served, small: Path, finished_job: str, args: argparse.Namespace):
        self.served, self.small, self.args = served, small, args
        self.finished_job = finished_job
        self.running_job = ""
        self.job_ids = [finished_job]
        self.counts: Counter[str] = Counter()
        self.advise_seconds: list[float] = []
        self.job_seconds: list[float] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        targets = [self._admin, self._advise, self._jobs]
        targets += [self._follow] * args.followers
        self._threads = [threading.Thread(target=t, daemon=True) for t in targets]

    def _count(self, kind: str, outcome: BaseException | str = "ok") -> None:
        if isinstance(outcome, BaseException):
            outcome = error_name(outcome)
        with self._lock:
            self.counts[f"{kind} {outcome}"] += 1

    def _follow(self) -> None:
        with self.served.client() as client:
            while not self.stop.is_set():
                for job_id in (self.finished_job, self.running_job):
                    if not job_id:
                        continue
                    after = random.choice((0, 0, 3))
                    events = client.stream_progress(job_id, after, reconnect=False, timeout=2.0)
                    try:
                        with closing(events):
                            for _ in events:
                                self._count("stream event")
                        self._count("stream", "ended")
                    except GraftError as error:
                        if error.code.name == "DEADLINE_EXCEEDED":  # how a live one is closed
                            self._count("stream", "closed by deadline")
                        else:
                            self._count("stream", error)
                self.stop.wait(0.2)

    def _admin(self) -> None:
        with self.served.client() as client:
            while not self.stop.is_set():
                for kind, call in (
                    ("GetJob", lambda: client.get_job(random.choice(self.job_ids))),
                    ("ListJobs", lambda: client.list_jobs(limit=50)),
                    ("ListModels", lambda: client.list_models()),
                ):
                    try:
                        call()
                        self._count(kind)
                    except GraftError as error:
                        self._count(kind, error)
                self.stop.wait(0.1)

    def _advise(self) -> None:
        with self.served.client() as client:
            while not self.stop.wait(self.args.advise_every):
                t0 = time.monotonic()
                try:
                    client.advise(str(self.small), max_images=40)
                    self._count("Advise")
                    self.advise_seconds.append(time.monotonic() - t0)
                except GraftError as error:
                    self._count("Advise", error)

    def _jobs(self) -> None:
        images = sorted(self.small.rglob("*.png"))[:5]
        with self.served.client() as client:
            while not self.stop.wait(self.args.job_every):
                t0 = time.monotonic()
                try:
                    job = client.start_fine_tune(f"{MODEL}-ft", str(self.small), plan=SMALL_PLAN)
                except GraftError as error:
                    self._count("StartFineTune", error)
                    continue
                self.running_job = job.job_id
                self.job_ids.append(job.job_id)
                while job.state not in TERMINAL and not self.stop.wait(1.0):
                    job = client.get_job(job.job_id)
                self.running_job = ""
                if job.state not in TERMINAL:
                    client.cancel_job(job.job_id)  # the soak is over
                    break
                self._count("job", pb.JobState.Name(job.state))
                self.job_seconds.append(time.monotonic() - t0)
                if job.state == pb.JOB_STATE_SUCCEEDED:
                    try:
                        client.predict(f"{MODEL}-ft:{job.model.version}", images, top_k=1)
                        self._count("Predict new version")
                    except GraftError as error:
                        self._count("Predict new version", error)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(300)


def soak(served: Served, args: argparse.Namespace) -> None:
    train = write_fashion_mnist_folder(
        served.root / "train", per_class=args.per_class, classes=CLASSES
    )
    small = write_fashion_mnist_folder(served.root / "small", per_class=30, classes=CLASSES)
    test = write_fashion_mnist_folder(
        served.root / "test", per_class=25, classes=CLASSES, split="test"
    )
    images = [p.read_bytes() for p in sorted(test.rglob("*.png"))]
    with served.client() as client:
        plan = pb.TrainingPlan(
            backbone="efficientnet_lite0", strategy=pb.STRATEGY_FEATURE_EXTRACTION,
            epochs=3, image_size=64,
        )  # fmt: skip
        base_job = train_model(client, MODEL, train, plan)
        client.predict(MODEL, images[:1])
        # Fill the Predict model cache first (4 versions by default: the served model and
        # 3 more), so each of the load's new versions evicts one, as on a server that has
        # run for a while; the served model, used last, is not the one evicted.
        for _ in range(args.prefill_versions):
            job = train_model(client, f"{MODEL}-ft", small, SMALL_PLAN)
            client.predict(f"{MODEL}-ft:{job.model.version}", images[:1])
        client.predict(MODEL, images[:1])
    rss_start = rss_mib(served.pid)
    print(
        f"model trained, {args.prefill_versions} more versions loaded; "
        f"server RSS before the load {rss_start:.1f} MiB",
        flush=True,
    )

    predict = PredictLoad(served.target, MODEL, images, args.predict_threads).start()
    mixed = MixedLoad(served, small, base_job.job_id, args)
    mixed.start()
    samples: list[tuple[float, float]] = []  # (seconds since the load began, RSS MiB)
    t0 = time.monotonic()
    next_print = 60.0
    while (elapsed := time.monotonic() - t0) < args.minutes * 60:
        samples.append((elapsed, rss_mib(served.pid)))
        if elapsed >= next_print:
            print(f"{elapsed / 60:4.1f} min: server RSS {samples[-1][1]:.1f} MiB", flush=True)
            next_print += 60
        time.sleep(args.sample_seconds)
    samples.append((time.monotonic() - t0, rss_mib(served.pid)))
    stats = predict.stop()
    mixed.join()
    report(rss_start, samples, args.warmup_minutes * 60, stats, mixed)


def report(
    rss_start: float,
    samples: list[tuple[float, float]],
    warmup: float,
    stats: PredictStats,
    mixed: MixedLoad,
) -> None:
    after = [(t, r) for t, r in samples if t >= warmup]
    warm, end = after[0][1], after[-1][1]
    rss = [r for _, r in after]
    n = len(after)
    mean_t, mean_r = sum(t for t, _ in after) / n, sum(rss) / n
    slope = sum((t - mean_t) * (r - mean_r) for t, r in after) / max(
        1e-9, sum((t - mean_t) ** 2 for t, _ in after)
    )
    print(f"\nserver RSS (MiB), {len(samples)} samples over {samples[-1][0] / 60:.1f} min:")
    print("| before load | end of warm-up | end | min after warm-up | max after warm-up | growth |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {rss_start:.1f} | {warm:.1f} (t={after[0][0]:.0f} s) | {end:.1f} | {min(rss):.1f} | "
        f"{max(rss):.1f} | {(end - warm) / warm:+.1%} (max {(max(rss) - warm) / warm:+.1%}) |"
    )
    peak_t, peak = max(samples, key=lambda sample: sample[1])
    print(f"slope after warm-up: {slope * 60:+.2f} MiB/min; max {peak:.1f} MiB at t={peak_t:.0f} s")
    minutes = range(int(samples[-1][0] // 60) + 1)
    by_minute = [next(r for t, r in samples if t >= 60 * m) for m in minutes]
    print("RSS at each minute:", " ".join(f"{r:.0f}" for r in [*by_minute, end]))
    p50, p99 = percentile(stats.latencies, 50) * 1e3, percentile(stats.latencies, 99) * 1e3
    print(
        f"\nPredict: {len(stats.latencies)} ok, errors {dict(stats.errors) or 0}, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print("other calls:", ", ".join(f"{k}: {v}" for k, v in sorted(mixed.counts.items())))
    for label, values in (("Advise", mixed.advise_seconds), ("fine-tune job", mixed.job_seconds)):
        if values:
            print(f"{label}: {len(values)} done, median {percentile(values, 50):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="length of the mixed load")
    parser.add_argument("--warmup-minutes", type=float, default=1)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--predict-threads", type=int, default=3)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--advise-every", type=float, default=30, help="seconds between")
    parser.add_argument("--job-every", type=float, default=60, help="seconds between jobs")
    parser.add_argument("--per-class", type=int, default=100, help="served model's images")
    parser.add_argument(
        "--prefill-versions",
        type=int,
        default=3,
        help="versions loaded before the load (the served model + 3 fill the default cache of 4)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's folder and log")
    args = parser.parse_args()
    with serving("graft-soak-", keep=args.keep) as served:
        soak(served, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

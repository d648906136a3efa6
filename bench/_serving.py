"""What the serving benches share: `graft serve` (with its trainer and advisor worker
processes) in a temporary folder, the pids of those processes, their CPU time and memory
from /proc, a Predict load from client threads, and percentiles.

Not a bench itself: bench/serving_isolation.py and bench/rss_soak.py import it. The server
is started by bench/demo_strategies.py's `start_server` (port 0, metrics on free ports,
traffic only to 127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from demo_strategies import start_server

from graft_client import Client, GraftError, pb

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    """A running `graft serve`: its process, a client to it, and its folders."""

    process: subprocess.Popen[bytes]
    target: str
    tmp: Path  # holds server.log, graft-data/ and datasets/
    root: Path  # the server's --data-root, where datasets are written

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.tmp / "server.log"

    def client(self, timeout: float = 600) -> Client:
        return Client(self.target, timeout=timeout)

    def worker_pids(self) -> dict[str, int]:
        """Lane ("trainer", "advisor") -> pid of the server's worker child for it."""
        pids: dict[str, int] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                for lane in ("trainer", "advisor"):
                    if "graft.worker" in cmdline and f"worker-config-{lane}" in cmdline:
                        pids[lane] = int(pid)
        return pids


@contextmanager
def serving(prefix: str, keep: bool = False) -> Iterator[Served]:
    """`graft serve` in a fresh temporary folder; SIGTERM when the block ends. The folder
    (server log included) is removed unless `keep`, or the block raised."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"server folder: {tmp} (log: {tmp / 'server.log'})", flush=True)
    failed = True
    proc, target = start_server(tmp, tmp / "datasets")
    try:
        served = Served(proc, target, tmp, tmp / "datasets")
        served.client().wait_for_server(60)
        yield served
        failed = False
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            print("graft serve did not exit within 120 s of SIGTERM; killed", flush=True)
        if code != 0:
            print(f"graft serve exited with {code}", flush=True)
        if keep or failed or code != 0:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state, field 3 of stat(5)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat), whoever used them."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:7]) - idle) / CLK_TCK  # user..softirq; guest is counted in user


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) of a process in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def error_name(error: BaseException) -> str:
    """A short name for a failed call: the gRPC code of a GraftError, else the type."""
    return error.code.name if isinstance(error, GraftError) else type(error).__name__


def train_model(client: Client, name: str, train: Path, plan: pb.TrainingPlan) -> pb.Job:
    """Train `plan` on `train` and wait; a job that did not succeed ends the bench."""
    job = client.wait(client.start_fine_tune(name, str(train), plan=plan).job_id, timeout=3600)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"training {name} ended {pb.JobState.Name(job.state)}: {job.error}")
    return job


@dataclass
class PredictStats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    errors: Counter[str] = field(default_factory=Counter)
    images: int = 0


class PredictLoad:
    """Closed-loop Predict from `threads` client threads (a channel each), one image per
    request, cycling through `images`, until stop(). Thread-safe counters per thread."""

    def __init__(
        self,
        target: str,
        model: str,
        images: Sequence[bytes],
        threads: int,
        pause: float = 0.0,
    ) -> None:
        self.target, self.model, self.images, self.pause = target, model, images, pause
        self._stop = threading.Event()
        self._stats = [PredictStats() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, index: int) -> None:
        stats = self._stats[index]
        with Client(self.target, timeout=120) as client:
            i = index
            while not self._stop.is_set():
                image = self.images[i % len(self.images)]
                i += len(self._threads)
                t0 = time.perf_counter()
                try:
                    response = client.predict(self.model, [image], top_k=1)
                except GraftError as error:
                    stats.errors[error_name(error)] += 1
                else:
                    stats.latencies.append(time.perf_counter() - t0)
                    stats.images += 1
                    if response.predictions[0].HasField("error"):
                        stats.errors["image error"] += 1
                if self.pause:
                    self._stop.wait(self.pause)

    def start(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> PredictStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(130)
        total = PredictStats()
        for stats in self._stats:
            total.latencies += stats.latencies
            total.errors.update(stats.errors)
            total.images += stats.images
        return total


def run_predict_load(
    target: str, model: str, images: Sequence[bytes], threads: int, seconds: float
) -> tuple[PredictStats, float]:
    """PredictLoad for `seconds`: its stats and the wall time it ran."""
    t0 = time.perf_counter()
    load = PredictLoad(target, model, images, threads).start()
    time.sleep(seconds)
    stats = load.stop()
    return stats, time.perf_counter() - t0

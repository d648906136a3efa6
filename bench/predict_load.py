"""Graft's Predict under closed-loop load, against the raw batched forward of the same model
on the same runtime, measured in the same run (docs/PREDICT.md has the figures).

    .venv/bin/python bench/predict_load.py [--seconds 10] [--concurrency 1 4 16 64]
        [--image-size 64] [--max-batch 32] [--runners 0] [--runtimes onnxruntime ...]
        [--feature-stages 3,5 --feature-grid 2] [--server-cpus 0-3]

What it does: writes Fashion-MNIST train and test folders, starts the server in a separate
process (`graft.server.run_server`, what `graft serve` runs, with its worker processes;
a separate process so the client does not share the server's GIL), trains a feature
extraction model on tf_efficientnet_lite0 through the API and points the alias
`production` at it. Then:

- raw: this process loads the same artifact, measures the runtimes as the server does and,
  with the fastest, times the bare forward pass: batch 1 (p50 of single calls: the latency
  floor) and the batched limit (`runners` threads each looping forward passes of
  `max_batch` images, the way the server's runners run; also one runner with all the
  threads, to show why the server uses single-thread runners);
- Graft: for each concurrency c, c closed-loop callers (grpc.aio, one channel, one PNG of
  the test set per request, `production`) for `--seconds` after a warm-up; img/s, p50 and
  p99 latency, errors, and the server's own mean forward batch and queue wait (scraped from
  its /metrics). Ratio: img/s over the raw batched limit.

`--server-cpus` pins the server process (and the raw measurement, which must have the
same cores) to those CPUs and the callers to the others: the layout of a server whose
clients are elsewhere, which a many-core machine can show and a 2-core one cannot.

Targets (issue 11): at c=64 at least 0.8 of the raw batched limit; at c=1 p50 within raw
batch-1 latency + 2 ms; no errors. The machine's load average is printed with each row:
other processes on the machine lower every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import torch

from graft.config import Config
from graft.domain import ModelRef
from graft.predict.model import LoadedModel, build_model
from graft.predict.runtimes import RUNTIMES, Runtime, build_runtime
from graft.predict.settings import PredictSettings, available_cpus
from graft.registry import ModelRegistry
from graft.store import open_store
from graft_client import Client, pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc
from graft_devtools.datasets import write_fashion_mnist_folder

MODEL = "bench"
SERVER = (
    "import dataclasses, json, sys\n"
    "from graft.config import Config\n"
    "from graft.server import run_server\n"
    "d = json.loads(sys.argv[1])\n"
    "c = dataclasses.replace(Config.from_dict(d), predict_runtimes=tuple(d['predict_runtimes']))\n"
    "sys.exit(run_server(c))\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_cpus(text: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def start_server(
    tmp: Path, config: dict[str, object], cpus: set[int] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """The server process (logs in tmp/server.log), pinned to `cpus` if given; returns it
    and its gRPC target."""
    data_dir = Path(str(config["data_dir"]))
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    ready = data_dir / "server.json"
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"server failed:\n{(tmp / 'server.log').read_text()}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{json.loads(ready.read_text())['port']}"


def train(client: Client, root: Path, args: argparse.Namespace) -> None:
    folder = write_fashion_mnist_folder(root / "train", per_class=args.per_class, split="train")
    plan = pb.TrainingPlan(
        backbone="efficientnet_lite0",
        strategy=pb.STRATEGY_FEATURE_EXTRACTION,
        epochs=args.epochs,
        image_size=args.image_size,
        feature_stages=[int(s) for s in args.feature_stages.split(",") if s],
        feature_grid=args.feature_grid,
    )
    t0 = time.perf_counter()
    job = client.wait(client.start_fine_tune(MODEL, str(folder), plan=plan).job_id, timeout=3600)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"training failed: {job.error}")
    client.set_model_alias(MODEL, "production", job.model.version)
    print(f"trained {MODEL} ({time.perf_counter() - t0:.0f} s, val acc {job.metrics.accuracy:.3f})")


def wait_for_runtime(log_path: Path, timeout: float = 300) -> str:
    """The server's log line naming the runtime it chose for the model (and the trials)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log_path.read_text(errors="replace").splitlines():
            if "serves with" in line:
                return str(json.loads(line).get("message", line)) if line.startswith("{") else line
        time.sleep(0.2)
    raise SystemExit(f"the server chose no runtime within {timeout:.0f} s; see {log_path}")


# -- raw -----------------------------------------------------------------------------------


@dataclass
class Raw:
    runtime: str
    batch1_ms: float  # p50 of single forward passes at batch 1
    limit: float  # img/s: `runners` threads x forward passes of max_batch
    one_runner: float  # img/s: one runner with every thread
    trials: list[str] = field(default_factory=list)


def _loop(runtime: Runtime, batch: torch.Tensor, threads: int, seconds: float) -> int:
    torch.set_num_threads(threads)
    runtime(batch)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        runtime(batch)
        n += len(batch)
    return n


def parallel_img_s(runtime: Runtime, batch: torch.Tensor, runners: int, threads: int) -> float:
    """The best of three 2-second runs of `runners` threads looping forward passes: the
    limit (a shared machine only ever lowers a run)."""
    best = 0.0
    for _ in range(3):
        counts = [0] * runners

        def run(i: int, counts: list[int] = counts) -> None:
            counts[i] = _loop(runtime, batch, threads, 2.0)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(runners)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, sum(counts) / (time.perf_counter() - t0))
    return best


def raw_forward(data_dir: Path, settings: PredictSettings, png: bytes) -> Raw:
    config = Config(data_dir=data_dir)
    store = open_store(config)
    try:
        version, state, card = ModelRegistry(store, config.registry_dir).load(ModelRef(MODEL))
    finally:
        store.close()
    loaded: LoadedModel = build_model(version, state, card, settings.policy)
    torch.set_num_threads(settings.threads_per_runner)
    loaded.choose_runtime(settings)
    pre, runtime = loaded.preprocess, loaded.runtime
    one = pre.to_batch([pre.decode(png)])
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        runtime(one)
        times.append(time.perf_counter() - t0)
    batch = pre.to_batch([pre.decode(png)] * settings.policy.max_batch)
    limit = parallel_img_s(runtime, batch, settings.runners, settings.threads_per_runner)
    cores = settings.runners * settings.threads_per_runner
    wide = build_runtime(runtime.name, loaded.model, batch[:2], cores)
    one_runner = parallel_img_s(wide, batch, 1, cores)
    trials = [t.describe() for t in loaded.trials]
    return Raw(runtime.name, float(np.median(times)) * 1000, limit, one_runner, trials)


# -- Graft under load ----------------------------------------------------------------------


@dataclass
class Level:
    concurrency: int
    img_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    forward_batch: float
    queue_ms: float
    server_cpu_ms: float  # CPU time of the server process per image (all its threads)
    client_cpu_ms: float  # CPU time of this process (the callers) per image
    load: float


async def closed_loop(
    target: str, images: list[bytes], concurrency: int, seconds: float, warmup: float
) -> tuple[list[float], int, dict[str, int]]:
    """c callers, each sending its next request when the last returns; latencies of calls
    started inside the window, completions inside it, errors by status code."""
    ref = pb.ModelRef(name=MODEL, alias="production")
    requests = [pb.PredictRequest(model=ref, images=[pb.Image(data=d)], top_k=1) for d in images]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AdaptationServiceStub(channel)
        start = time.perf_counter() + warmup
        end = start + seconds

        async def caller(i: int) -> None:
            nonlocal done
            j = i
            while (t0 := time.perf_counter()) < end:
                try:
                    await stub.Predict(requests[j % len(requests)], timeout=60)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                t1 = time.perf_counter()
                if t0 >= start:
                    latencies.append(t1 - t0)
                if start <= t1 <= end:
                    done += 1
                j += concurrency

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return latencies, done, errors


def scrape(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    wanted = re.compile(
        r"^(graft_predict_forward_batch_size_(?:sum|count)"
        r'|graft_predict_stage_seconds_(?:sum|count)\{stage="queue"\}) (\S+)$'
    )
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = wanted.match(line)
        if m:
            out[m.group(1).split("{")[0]] = float(m.group(2))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_level(
    target: str, served: tuple[int, int], images: list[bytes], c: int, args: argparse.Namespace
) -> Level:
    pid, metrics_port = served
    before, cpu0, mine0 = scrape(metrics_port), cpu_seconds(pid), time.process_time()
    latencies, done, errors = asyncio.run(closed_loop(target, images, c, args.seconds, args.warmup))
    after, cpu1, mine1 = scrape(metrics_port), cpu_seconds(pid), time.process_time()
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    forwards = d.get("graft_predict_forward_batch_size_count", 0.0)
    queued = d.get("graft_predict_stage_seconds_count", 0.0)
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return Level(
        concurrency=c,
        img_s=done / args.seconds,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        errors=errors,
        forward_batch=d.get("graft_predict_forward_batch_size_sum", 0.0) / max(1.0, forwards),
        queue_ms=1000 * d.get("graft_predict_stage_seconds_sum", 0.0) / max(1.0, queued),
        server_cpu_ms=1000 * (cpu1 - cpu0) / max(1, len(latencies)),
        client_cpu_ms=1000 * (mine1 - mine0) / max(1, len(latencies)),
        load=os.getloadavg()[0],
    )


# -- report --------------------------------------------------------------------------------


def report(raw: Raw, levels: list[Level], settings: PredictSettings, pinned: bool) -> bool:
    print(f"\nruntime measured in this process: {'; '.join(raw.trials)}")
    head = "what | img/s | p50 ms | p99 ms | ratio to raw | mean forward batch | queue ms"
    tail = "server CPU ms/img | client CPU ms/img | CPU ceiling img/s | errors | load avg"
    print(f"\n| {head} | {tail} |\n{'|---' * 12}|")
    r, t = settings.runners, settings.threads_per_runner
    b = settings.policy.max_batch
    cores = settings.runners * settings.threads_per_runner if pinned else available_cpus()
    rows = [
        (f"raw {raw.runtime}, batch 1, one call at a time", 1000 / raw.batch1_ms, raw.batch1_ms),
        (f"raw {raw.runtime}, batch {b}, {r} runner(s) x {t} thread(s)", raw.limit, None),
        (f"raw {raw.runtime}, batch {b}, 1 runner x {r * t} threads", raw.one_runner, None),
    ]
    for what, img_s, p50 in rows:
        p50_text = f"{p50:.2f}" if p50 else ""
        print(f"| {what} | {img_s:.0f} | {p50_text} | | {img_s / raw.limit:.2f} | | | | | | | |")
    for lv in levels:
        errors = sum(lv.errors.values())
        print(
            f"| Graft Predict, c={lv.concurrency} | {lv.img_s:.0f} | {lv.p50_ms:.2f} | "
            f"{lv.p99_ms:.2f} | {lv.img_s / raw.limit:.2f} | {lv.forward_batch:.1f} | "
            f"{lv.queue_ms:.2f} | {lv.server_cpu_ms:.2f} | {lv.client_cpu_ms:.2f} | "
            f"{cores * 1000 / (lv.server_cpu_ms + (0 if pinned else lv.client_cpu_ms)):.0f} | "
            f"{errors}{' ' + str(lv.errors) if errors else ''} | "
            f"{lv.load:.1f} |"
        )
    print(
        f"\nCPU ceiling: what {cores} core(s) could do if the server"
        f"{'' if pinned else ' and the callers'} spent only the CPU per image measured at "
        "that level and nothing else ran."
    )
    by_c = {lv.concurrency: lv for lv in levels}
    checks = []
    if 64 in by_c:
        checks.append(("c=64 >= 0.8 x raw batched", by_c[64].img_s >= 0.8 * raw.limit))
    if 1 in by_c:
        checks.append(("c=1 p50 <= raw batch-1 + 2 ms", by_c[1].p50_ms <= raw.batch1_ms + 2))
    checks.append(("no errors", all(not lv.errors for lv in levels)))
    print("\n" + "\n".join(f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in checks))
    return all(ok for _, ok in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--per-class", type=int, default=30, help="training images per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--feature-stages", default="", help="e.g. 3,5: a feature cut")
    parser.add_argument("--feature-grid", type=int, default=0)
    parser.add_argument("--max-batch", type=int, default=Config.predict_max_batch)
    parser.add_argument("--max-delay-ms", type=float, default=Config.predict_max_delay_ms)
    parser.add_argument("--runners", type=int, default=0, help="0: one per core")
    parser.add_argument("--threads-per-runner", type=int, default=0)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument(
        "--server-cpus", default="", help="e.g. 0-3: pin the server there, callers elsewhere"
    )
    args = parser.parse_args()
    server_cpus = parse_cpus(args.server_cpus)
    if server_cpus and not server_cpus < os.sched_getaffinity(0):
        raise SystemExit(f"--server-cpus must leave CPUs for the callers: {sorted(server_cpus)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(len(server_cpus) or available_cpus()))

    with tempfile.TemporaryDirectory(prefix="graft-predict-load-") as name:
        tmp = Path(name)
        config = {
            "data_dir": str(tmp / "graft-data"),
            "data_roots": [str(tmp / "datasets")],
            "port": 0,
            "metrics_port": _free_port(),
            "worker_metrics_port": 0,
            "predict_max_batch": args.max_batch,
            "predict_max_delay_ms": args.max_delay_ms,
            "predict_runners": args.runners,
            "predict_threads_per_runner": args.threads_per_runner,
            "predict_runtimes": args.runtimes,
        }
        settings = PredictSettings.from_config(
            Config.from_dict(config), cpus=len(server_cpus) or None
        )
        print(f"load average at start: {os.getloadavg()}; settings: {settings}")
        if server_cpus:
            print(f"server and raw on CPUs {sorted(server_cpus)}, callers on the others")
        proc, target = start_server(tmp, config, server_cpus)
        try:
            return run(tmp, proc, target, config, settings, args, server_cpus)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)


def run(
    tmp: Path,
    proc: subprocess.Popen[bytes],
    target: str,
    config: dict[str, object],
    settings: PredictSettings,
    args: argparse.Namespace,
    server_cpus: set[int],
) -> int:
    with Client(target, timeout=600) as client:
        client.wait_for_server(60)
        train(client, tmp / "datasets", args)
        test = write_fashion_mnist_folder(tmp / "test", per_class=20, split="test")
        images = [p.read_bytes() for p in sorted(test.rglob("*.png"))]
        np.random.default_rng(0).shuffle(images)
        client.predict(f"{MODEL}@production", images[:1])  # loads; the runtime follows
    print(f"server: {wait_for_runtime(tmp / 'server.log')}")
    everywhere = os.sched_getaffinity(0)
    if server_cpus:  # threads started from here on inherit the main thread's mask
        os.sched_setaffinity(0, server_cpus)
    raw = raw_forward(Path(str(config["data_dir"])), settings, images[0])
    if server_cpus:
        os.sched_setaffinity(0, everywhere - server_cpus)
    levels = []
    for c in args.concurrency:
        served = (proc.pid, int(str(config["metrics_port"])))
        levels.append(measure_level(target, served, images, c, args))
        print(f"c={c}: {levels[-1]}", flush=True)
    ok = report(raw, levels, settings, pinned=bool(server_cpus))
    print(f"load average at end: {os.getloadavg()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

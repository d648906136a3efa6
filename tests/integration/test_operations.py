"""Operations, with the real things: a real Prometheus server (Debian's `prometheus`) scrapes
a real `graft serve` and its worker with deploy/'s scrape config and alert rules; SIGTERM
during a Predict burst and during training drains, hands the job back, and exits 0."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import graft_client
from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.integration.conftest import CLASSES, RunningServer, start_server, stop_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, tmp: Path, server_port: int, worker_port: int) -> None:
        """deploy/prometheus/prometheus.yml with its targets pointed at this test's ports
        and a 1 s scrape interval; the alert rules file as shipped."""
        config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(REPO / "deploy/prometheus" / f) for f in config["rule_files"]]
        ports = {"graft-server": server_port, "graft-worker": worker_port}
        jobs = {job["job_name"] for job in config["scrape_configs"]}
        assert jobs == set(ports), jobs
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no prometheus:\n{self.log.read_text()}") from None
                time.sleep(0.3)

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        body = http_json(f"{self.url}/api/v1/query?{q}")
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 30) -> None:
        """Until `expr` is `expected` (scrapes are 1 s apart); fails with the last value."""
        deadline = time.monotonic() + timeout
        while (got := self.value(expr)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} = {got}, expected {expected}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, Prometheus]]:
    tmp = tmp_path_factory.mktemp("observed")
    server_port, worker_port = free_port(), free_port()
    running = start_server(
        tmp,
        "--metrics-port",
        str(server_port),
        "--worker-metrics-port",
        str(worker_port),
    )
    prometheus = Prometheus(tmp, server_port, worker_port)
    # Prometheus applies new targets a few seconds after it starts: scraping both before the
    # test begins means the series have history (rates) and nothing is missed.
    prometheus.wait_for('up{job="graft-server"}', 1)
    prometheus.wait_for('up{job="graft-worker"}', 1)
    try:
        yield running, prometheus
    finally:
        prometheus.stop()
        assert stop_server(running) == 0, running.log()[-5000:]


def test_prometheus_scrapes_server_and_worker(
    observed: tuple[RunningServer, Prometheus],
) -> None:
    server, prom = observed
    train = write_fashion_mnist_folder(
        server.data_root / "fashion-train", per_class=30, classes=CLASSES, split="train"
    )
    test = write_fashion_mnist_folder(
        server.data_root / "fashion-test", per_class=5, classes=CLASSES, split="test"
    )
    images = sorted(test.rglob("*.png"))[:5]
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_PARTIAL_FINE_TUNE, epochs=3, image_size=32, batch_size=16
    )
    with server.client() as client:
        job = client.start_fine_tune("observed", str(train), plan=plan)
        events = list(client.stream_progress(job.job_id))
        final = client.get_job(job.job_id)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final
        for _ in range(7):
            result = client.predict("observed", images)
            assert all(not p.HasField("error") for p in result.predictions)
        mixed = client.predict("observed", [*images[:4], b"not an image"])
        assert mixed.predictions[4].HasField("error")

    predict = 'grpc_method="Predict",grpc_service="graft.v1.AdaptationService"'
    prom.wait_for(f'grpc_server_handled_total{{{predict},grpc_code="OK",grpc_type="unary"}}', 8)
    assert prom.value(f"grpc_server_started_total{{{predict}}}") == 8
    assert prom.value(f"grpc_server_msg_received_total{{{predict}}}") == 8
    assert prom.value(f"grpc_server_msg_sent_total{{{predict}}}") == 8
    assert prom.value(f"grpc_server_handling_seconds_count{{{predict}}}") == 8
    stream = 'grpc_method="StreamProgress",grpc_type="server_stream"'
    assert prom.value(f"sum(grpc_server_msg_sent_total{{{stream}}})") == len(events)
    assert prom.value(f'grpc_server_handled_total{{{stream},grpc_code="OK"}}') == 1

    # Predict's own series: 39 good images and 1 bad one in 8 requests, 1 model load.
    assert prom.value('graft_predict_images_total{outcome="ok"}') == 39
    assert prom.value('graft_predict_images_total{outcome="error"}') == 1
    assert prom.value("graft_predict_batch_size_count") == 8
    assert prom.value("graft_predict_batch_size_sum") == 40
    for stage in ("decode", "queue", "inference", "postprocess"):
        assert prom.value(f'graft_predict_stage_seconds_count{{stage="{stage}"}}') == 8
    assert prom.value('graft_predict_stage_seconds_count{stage="load"}') == 1
    assert prom.value("graft_model_cache_misses_total") == 1
    assert prom.value("graft_model_cache_hits_total") == 7
    assert prom.value("graft_model_cache_evictions_total") == 0
    assert prom.value("graft_loaded_models") == 1

    # The store's view and the build.
    assert prom.value('graft_jobs{state="succeeded"}') == 1
    assert prom.value('graft_jobs{state="running"}') == 0
    assert prom.value("graft_queue_depth") == 0
    assert prom.value("graft_oldest_queued_job_age_seconds") == 0
    assert prom.value("graft_registry_model_versions") == 1
    assert prom.value("graft_workers_ready") == 2  # the embedded trainer and advisor
    assert prom.value("graft_store_up") == 1
    build = prom.query("graft_build_info")
    assert len(build) == 1 and build[0]["metric"]["version"] and build[0]["value"][1] == "1"

    # The worker's endpoint: throughput seen while training, timings, the job's outcome.
    prom.wait_for("graft_worker_epoch_seconds_count", 3)
    train_images = 4 * 30 - 4 * 6  # the stratified 20% validation split leaves 24 of 120
    assert prom.value("graft_worker_training_images_total") == 3 * train_images
    assert prom.value("graft_worker_training_images_per_second") > 0  # the last step's
    rate = prom.value("rate(graft_worker_training_images_total[5m])")
    assert rate is not None and rate > 0, prom.query("graft_worker_training_images_total[5m]")
    assert prom.value("graft_worker_epoch_seconds_count") == 3
    assert prom.value("graft_worker_checkpoint_seconds_count") == 3
    assert prom.value("graft_worker_step_seconds_count") == 3 * 6  # ceil(96 / 16) a epoch
    done = 'strategy="partial_fine_tune",outcome="succeeded"'
    assert prom.value(f"graft_worker_job_duration_seconds_count{{{done}}}") == 1
    assert prom.value("graft_worker_ready") == 1
    assert prom.value("time() - graft_worker_last_heartbeat_timestamp_seconds") < 30
    assert prom.value('up{job="graft-server"}') == 1
    assert prom.value('up{job="graft-worker"}') == 1

    # deploy/'s alert rules are loaded, evaluated, and quiet on a healthy service.
    rules = http_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
    alerts = {r["name"]: r for g in rules for r in g["rules"] if r["type"] == "alerting"}
    for name in (
        "GraftWorkerDown",
        "GraftQueueBackingUp",
        "GraftJobFailureRate",
        "GraftPredictErrorRate",
        "GraftPredictLatencyHigh",
    ):
        assert name in alerts, sorted(alerts)
        assert alerts[name]["health"] != "err", alerts[name]
        assert alerts[name]["state"] == "inactive", alerts[name]


def test_sigterm_drains_predicts_and_hands_the_running_job_back(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--grace-seconds", "5")
    train = write_fashion_mnist_folder(
        server.data_root / "fashion-train", per_class=30, classes=CLASSES, split="train"
    )
    images = sorted(train.rglob("*.png"))[:4]
    with server.client() as client:
        quick = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=1, image_size=32)
        ready = client.wait(client.start_fine_tune("served", str(train), plan=quick).job_id)
        assert ready.state == pb.JOB_STATE_SUCCEEDED, ready
        long = pb.TrainingPlan(
            strategy=pb.STRATEGY_PARTIAL_FINE_TUNE,
            epochs=20,  # still running when SIGTERM comes; it resumes on the next server
            image_size=32,
            batch_size=16,
            early_stopping_patience=100,
        )
        job_id = client.start_fine_tune("long", str(train), plan=long).job_id
        for event in client.stream_progress(job_id):  # until epoch 1 is evaluated
            if event.kind == pb.EVENT_KIND_EVALUATION:
                break

    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def burst() -> None:
        with graft_client.Client(server.target, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.predict("served", images)
                    outcomes.append((time.monotonic(), "OK"))
                except graft_client.GraftError as exc:
                    outcomes.append((time.monotonic(), type(exc).__name__))
                    if isinstance(exc, graft_client.Unavailable):
                        return

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while sum(o == "OK" for _, o in outcomes) < 8:  # a burst under way, the model loaded
        assert time.monotonic() < deadline, outcomes
        time.sleep(0.05)
    sigterm_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(90)
    stop.set()
    for t in threads:
        t.join(30)
    log = server.log()
    assert code == 0, log[-5000:]
    before = [o for t, o in outcomes if t < sigterm_at]
    after = [o for t, o in outcomes if t >= sigterm_at]
    assert before and set(before) == {"OK"}, outcomes
    assert set(after) <= {"OK", "Unavailable"}, after  # nothing else, ever

    # The worker stopped at a checkpoint and handed the job back; a new server resumes it.
    again = start_server(tmp_path)
    try:
        with again.client() as client:
            final = client.wait(job_id, timeout=300)
            assert final.state == pb.JOB_STATE_SUCCEEDED, final
            events = list(client.stream_progress(job_id))
    finally:
        assert stop_server(again) == 0, again.log()[-5000:]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    messages = [e.message for e in events]
    released = [m for m in messages if "released by worker" in m]
    assert len(released) == 1 and "checkpoint of epoch" in released[0], messages
    resumed = [m for m in messages if "resumed from checkpoint" in m]
    assert resumed, messages
    evaluated = [e.epoch for e in events if e.kind == pb.EVENT_KIND_EVALUATION]
    assert evaluated == list(range(1, 21)), evaluated  # every epoch once: none lost, none redone

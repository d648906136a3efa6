"""`graft serve --store postgresql://...` for real: the server and its embedded worker
processes share a PostgreSQL store (no SQLite file anywhere), a job trains, its progress
streams without gap (the watcher woken by NOTIFY), its model registers and answers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.integration.conftest import CLASSES, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_server_and_workers_share_a_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--store", postgres_url)
    try:
        train = write_fashion_mnist_folder(
            server.data_root / "train", per_class=10, classes=CLASSES, split="train"
        )
        client = server.client()
        plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=2, image_size=32)
        job = client.start_fine_tune("shared", str(train), plan=plan)
        events = list(client.stream_progress(job.job_id))
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].state == pb.JOB_STATE_SUCCEEDED, events[-1].message
        assert client.get_job(job.job_id).model.version == 1
        image = next(train.rglob("*.png"))
        assert client.predict("shared", [image]).predictions[0].classes
    finally:
        assert stop_server(server) == 0, server.log()[-5000:]
    assert not list(server.data_dir.glob("graft.sqlite3*"))  # the store is elsewhere
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT model_name, state FROM jobs").fetchall()
        workers = conn.execute("SELECT count(*) FROM workers").fetchone()
    assert rows == [("shared", pb.JOB_STATE_SUCCEEDED)]
    assert workers == (2,)  # the trainer and the advisor lanes' heartbeats

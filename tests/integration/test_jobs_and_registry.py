"""Jobs and the registry through the real server: cancel within a step, uploads, aliases,
model cards, the backbone catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from graft_client import pb
from tests.integration.conftest import RunningServer

pytestmark = pytest.mark.slow


def test_cancel_stops_a_running_job_within_a_step(
    server: RunningServer, fashion: dict[str, Path]
) -> None:
    client = server.client()
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_FULL_FINE_TUNE, epochs=20, batch_size=8, image_size=64
    )
    job = client.start_fine_tune("to-cancel", str(fashion["train"]), plan=plan)
    events = client.stream_progress(job.job_id)
    cancelled_after = None
    seen: list[pb.ProgressEvent] = []
    for event in events:
        seen.append(event)
        if cancelled_after is None and event.kind == pb.EVENT_KIND_STEP:
            assert client.cancel_job(job.job_id).cancel_requested
            cancelled_after = (event.epoch, event.step, time.monotonic())
    assert cancelled_after is not None
    assert seen[-1].state == pb.JOB_STATE_CANCELLED
    # No evaluation of a later epoch, and the job ended within seconds, not epochs.
    assert time.monotonic() - cancelled_after[2] < 15
    later = [e for e in seen if e.kind == pb.EVENT_KIND_EVALUATION and e.epoch > cancelled_after[0]]
    assert later == []
    final = client.get_job(job.job_id)
    assert final.state == pb.JOB_STATE_CANCELLED and not final.model.name
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))


def test_upload_then_train_alias_and_predict(
    server: RunningServer, fashion: dict[str, Path], tmp_path: Path
) -> None:
    client = server.client()
    upload = client.upload_dataset(fashion["train"])
    assert upload.images == 160 and upload.classes == 4 and upload.skipped_files == 0

    plan = pb.TrainingPlan(strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=3, image_size=64)
    v1 = client.wait(
        client.start_fine_tune("uploaded", dataset_id=upload.dataset_id, plan=plan).job_id
    )
    v2 = client.wait(
        client.start_fine_tune("uploaded", dataset_id=upload.dataset_id, plan=plan).job_id
    )
    assert (v1.state, v2.state) == (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_SUCCEEDED)
    assert (v1.model.version, v2.model.version) == (1, 2)

    model = client.set_model_alias("uploaded", "production", 1)
    assert "production" in model.aliases
    image = next(fashion["test"].rglob("*.png"))
    assert client.predict("uploaded@production", [image]).model.version == 1
    assert client.predict("uploaded", [image]).model.version == 2  # newest
    client.set_model_alias("uploaded", "production", 2)  # aliases move
    assert client.predict("uploaded", [image], alias="production").model.version == 2

    card = json.loads(client.get_model("uploaded", version=1).card_json)
    assert card["job_id"] == v1.job_id
    assert card["labels"] == ["ankle-boot", "bag", "sneaker", "trouser"]
    assert card["preprocessing"]["image_size"] == 64
    assert card["dataset"]["fingerprint"] and len(card["sha256"]) == 64
    assert card["plan"]["strategy"] == pb.STRATEGY_FEATURE_EXTRACTION
    jobs = {j.job_id for j in client.list_jobs(state=pb.JOB_STATE_SUCCEEDED)}
    assert {v1.job_id, v2.job_id} <= jobs


def test_backbone_catalog(server: RunningServer) -> None:
    backbones = {b.name: b for b in server.client().list_backbones()}
    default = backbones["efficientnet_lite0"]
    assert default.ready and default.is_default and default.num_stages == 9
    assert not backbones["resnet50"].ready
    assert "graft backbones import" in backbones["resnet50"].weights
    # File names, never the server's folders (the venv, the data dir, the hub cache).
    for b in backbones.values():
        for folder in (str(server.data_dir), "site-packages", str(Path.home()), "/tmp/"):
            assert folder not in b.weights, (b.name, b.weights)

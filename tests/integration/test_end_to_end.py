"""The whole service through the SDK: advise → train with the plan → follow progress →
predict on held-out images → find the model in the registry. And a worker killed with
SIGKILL mid-job: the job resumes from its checkpoint and the progress log stays continuous."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from graft_client import pb
from tests.integration.conftest import RunningServer

pytestmark = [pytest.mark.slow, pytest.mark.pretrained]


def _held_out(test_dir: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in test_dir.rglob("*.png"))
    return paths, [p.parent.name for p in paths]


def test_advise_train_follow_predict(server: RunningServer, fashion: dict[str, Path]) -> None:
    client = server.client()
    uri = str(fashion["train"])

    advice = client.advise(uri)
    assert advice.quadrant in (pb.QUADRANT_SMALL_DIFFERENT, pb.QUADRANT_SMALL_SIMILAR)
    assert advice.report.total_images == 160
    assert 0.0 <= advice.similarity <= 1.0
    assert advice.plan.backbone == advice.backbones[0].backbone  # the best-ranked one
    # The plan's feature cut and its pooling grid are the ones reported for its backbone.
    top = advice.backbones[0]
    assert top.feature_grid in (1, 2) and top.feature_stages
    if advice.plan.strategy == pb.STRATEGY_FEATURE_EXTRACTION:
        assert advice.plan.feature_grid == (top.feature_grid if top.feature_grid > 1 else 0)
    assert "40" in advice.rationale  # quotes the measured images per class
    # Asked again, the same data and options answer from the advice cache, unmeasured.
    t0 = time.perf_counter()
    cached = client.advise(uri)
    print(f"repeated Advise: {time.perf_counter() - t0:.3f} s (from the cache)")
    assert cached.from_cache and not advice.from_cache
    cached.from_cache = False
    assert cached == advice
    # The caller may bound the measured sample below the server's limits.
    small = client.advise(uri, max_images=40, candidate_backbones=["efficientnet_lite0"])
    assert "frozen features of 40 sampled images" in small.rationale
    assert small.report.total_images == 160  # the report still covers the whole dataset

    plan = pb.TrainingPlan()
    plan.CopyFrom(advice.plan)
    plan.epochs = min(plan.epochs, 3)  # keep the test short; everything else as advised
    job = client.start_fine_tune("fashion", uri, plan=plan, request_id="e2e-1")
    again = client.start_fine_tune("fashion", uri, plan=plan, request_id="e2e-1")
    assert again.job_id == job.job_id  # idempotent on request_id

    events = list(client.stream_progress(job.job_id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].state == pb.JOB_STATE_QUEUED
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED
    kinds = {e.kind for e in events}
    assert {pb.EVENT_KIND_STATE, pb.EVENT_KIND_STEP, pb.EVENT_KIND_EVALUATION} <= kinds
    steps = [e for e in events if e.kind == pb.EVENT_KIND_STEP]
    assert all(e.images_per_second > 0 and e.loss > 0 for e in steps)

    # Replaying from the middle gives exactly the rest.
    middle = events[len(events) // 2].sequence
    replay = list(client.stream_progress(job.job_id, after_sequence=middle))
    assert [e.sequence for e in replay] == list(range(middle + 1, len(events) + 1))

    finished = client.get_job(job.job_id)
    assert finished.state == pb.JOB_STATE_SUCCEEDED
    assert finished.model.name == "fashion" and finished.model.version == 1

    paths, truth = _held_out(fashion["test"])
    response = client.predict("fashion", paths, top_k=2)
    assert response.model.version == 1
    predicted = [p.classes[0].label for p in response.predictions]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.2f} (chance 0.25)"
    assert all(len(p.classes) == 2 for p in response.predictions)

    names = {m.name: m for m in client.list_models()}
    assert "fashion" in names and names["fashion"].versions[0].job_id == job.job_id

    # StartFineTune without a plan advises through the same cache: nothing measured again.
    unplanned = client.start_fine_tune("fashion-advised", uri)
    messages: list[str] = []
    for event in client.stream_progress(unplanned.job_id):
        if event.kind == pb.EVENT_KIND_MESSAGE:
            messages.append(event.message)
            if "advice cache" in event.message:
                client.cancel_job(unplanned.job_id)  # the rest is the training tested above
    assert any("read from the advice cache" in m for m in messages), messages


def test_worker_killed_mid_job_resumes_from_checkpoint(
    server: RunningServer, fashion: dict[str, Path]
) -> None:
    client = server.client()
    # Enough epochs that the job is still running when the stream shows epoch 2 started.
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_PARTIAL_FINE_TUNE,
        trainable_stages=2,
        epochs=10,
        image_size=64,
        early_stopping_patience=100,
    )
    job = client.start_fine_tune("resumed", str(fashion["train"]), plan=plan)

    seen: list[pb.ProgressEvent] = []
    killed_at = 0
    for event in client.stream_progress(job.job_id):
        seen.append(event)
        if not killed_at and event.kind == pb.EVENT_KIND_STEP and event.epoch >= 2:
            # A step of epoch 2: epoch 1's checkpoint was written before it began.
            os.kill(server.worker_pid(), signal.SIGKILL)
            killed_at = event.sequence
    assert killed_at, "the job never reached its second epoch"

    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].state == pb.JOB_STATE_SUCCEEDED
    after_kill = seen[killed_at:]
    assert any("attempt 2" in e.message for e in after_kill), [e.message for e in after_kill]
    assert any("resumed" in e.message.lower() for e in after_kill)
    # The resumed run starts after the checkpointed epoch, not from scratch.
    resumed_epochs = [e.epoch for e in after_kill if e.kind == pb.EVENT_KIND_EVALUATION]
    assert resumed_epochs and min(resumed_epochs) >= 2
    assert client.get_job(job.job_id).attempts == 2


def test_feature_extraction_with_a_stage_cut_serves_with_that_cut(
    server: RunningServer, fashion: dict[str, Path]
) -> None:
    client = server.client()
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_FEATURE_EXTRACTION, feature_stages=[6, 7], image_size=64
    )
    job = client.wait(client.start_fine_tune("cut", str(fashion["train"]), plan=plan).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert list(job.plan.feature_stages) == [6, 7]
    card = json.loads(client.get_model("cut").card_json)
    assert card["plan"]["feature_stages"] == [6, 7]
    paths, truth = _held_out(fashion["test"])
    predicted = [p.classes[0].label for p in client.predict("cut", paths).predictions]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.2f} (chance 0.25)"

    # The same cut pooled over a 2x2 grid: through the API, the card and Predict.
    plan.feature_grid = 2
    job = client.wait(client.start_fine_tune("grid", str(fashion["train"]), plan=plan).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert job.plan.feature_grid == 2
    card = json.loads(client.get_model("grid").card_json)
    assert card["plan"]["feature_stages"] == [6, 7] and card["plan"]["feature_grid"] == 2
    predicted = [p.classes[0].label for p in client.predict("grid", paths).predictions]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.2f} (chance 0.25)"

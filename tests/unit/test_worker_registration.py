"""A job's model is registered once, even when its worker dies between registering the
version and finishing the job (SIGKILL, a lost lease): the next attempt, on any worker,
finds the version the job registered and ends the job with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from graft.config import Config
from graft.domain import DatasetRef, JobState, Strategy, TrainingPlan
from graft.worker import Worker


class Killed(BaseException):
    """The worker process dying: nothing after it runs (not an Exception run_job catches)."""


def test_a_worker_killed_after_registering_does_not_register_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "datasets" / "two"
    for label, shade in (("a", 30), ("b", 220)):
        (root / label).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (shade, shade - 20 + 5 * i, 90)).save(
                root / label / f"{i}.png"
            )
    config = Config(
        data_dir=tmp_path / "data",
        artifacts_dir=tmp_path / "shared",
        data_roots=(root.parent,),
        device="cpu",
    )
    first, second = Worker(config, "w1"), Worker(config, "w2")
    try:
        plan = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION, epochs=1, image_size=32)
        job, _ = first.store.create_job(
            model_name="flowers",
            dataset=DatasetRef(uri=str(root)),
            plan=plan,
            request_id="",
            plan_resolved=False,
        )
        claimed = first.store.claim_job("w1", 0.2)
        assert claimed is not None

        def killed(*args: object, **kwargs: object) -> None:
            raise Killed

        monkeypatch.setattr(first.store, "finish_job", killed)
        with pytest.raises(Killed):
            first.run_job(claimed)  # registered version 1, died before finishing the job
        assert [mv.job_id for mv in second.store.list_models("flowers")["flowers"]] == [job.job_id]

        again = None
        while again is None:  # w1's 0.2 s lease runs out
            again = second.store.claim_job("w2", 60)
        assert (again.job_id, again.attempts) == (job.job_id, 2)
        second.run_job(again)
        done = second.store.get_job(job.job_id)
        assert (done.state, done.model_version) == (JobState.SUCCEEDED, 1), done.error
        versions = second.store.list_models("flowers")["flowers"]
        assert [(mv.version, mv.job_id) for mv in versions] == [(1, job.job_id)]
        assert not (config.checkpoints_dir / job.job_id).exists()  # cleaned up once, at the end
    finally:
        first.store.close()
        second.store.close()

"""CompareModels and SetModelAlias's guard through the real server, its worker and the
SDK, on versions really trained on real Fashion-MNIST images (docs/COMPARE.md).

Two versions of one model, trained by the server (feature extraction at 64 px, seconds
each) on one split: `good` (2 epochs) and `bad` (a head learning rate too small to learn
anything in its one epoch: near chance). A baseline whose split differs is registered
beside them, untrained, with a card that says so (a baseline needs no training job)."""

from __future__ import annotations

import io
import json
import math
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from google.rpc import error_details_pb2

from graft import cli
from graft.backbones import DEFAULT_BACKBONE, create_model, get_spec
from graft.config import Config
from graft.data import scan_dataset, split_dataset
from graft.domain import JobState, Strategy, TaskKind, TrainingPlan
from graft.registry import DatasetSummary, ModelCard, ModelRegistry, Preprocessing
from graft.store import open_store
from graft_client import FailedPrecondition, NotFound, pb
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.helpers import register_random_model
from tests.integration.conftest import CLASSES, RunningServer

pytestmark = pytest.mark.slow

NAME = "fm"
FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
HELD_OUT = 32  # 20% (the default validation fraction) of 40 images in each of 4 classes


@dataclass
class Versions:
    good: int
    bad: int
    folder: Path  # what both trained on


def _train(server: RunningServer, folder: Path, **plan: float) -> int:
    client = server.client()
    fields = {"strategy": pb.STRATEGY_FEATURE_EXTRACTION, "image_size": 64, "seed": 0, **plan}
    job = client.wait(client.start_fine_tune(NAME, str(folder), plan=fields).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    return job.model.version


@pytest.fixture(scope="module")
def versions(server: RunningServer) -> Versions:
    folder = write_fashion_mnist_folder(
        server.data_root / "fm", per_class=40, classes=CLASSES, split="train"
    )
    good = _train(server, folder, epochs=2)
    bad = _train(server, folder, epochs=1, head_learning_rate=1e-7)
    return Versions(good, bad, folder)


def _register_untrained(
    server: RunningServer, labels: list[str], fingerprint: str, seed: int
) -> int:
    """A version of NAME registered outside training (random weights) whose card says it
    trained on the dataset `fingerprint` split with `seed`."""
    config = Config(data_dir=server.data_dir)
    store = open_store(config)
    try:
        spec = get_spec(DEFAULT_BACKBONE)
        model = create_model(DEFAULT_BACKBONE, len(labels), pretrained=False)
        plan = TrainingPlan(
            backbone=DEFAULT_BACKBONE,
            strategy=Strategy.FEATURE_EXTRACTION,
            image_size=64,
            validation_fraction=0.2,
            seed=seed,
        )
        card = ModelCard(
            backbone=DEFAULT_BACKBONE,
            architecture=spec.architecture,
            labels=tuple(labels),
            preprocessing=Preprocessing.from_spec(spec, 64),
            plan=plan,
            job_id=uuid.uuid4().hex,
            dataset=DatasetSummary(fingerprint, 160, 0, dict.fromkeys(labels, 40)),
        )
        registry = ModelRegistry(store, config.registry_dir)
        return registry.register(name=NAME, state_dict=model.state_dict(), card=card).version
    finally:
        store.close()


def _compare_tasks(server: RunningServer) -> int:
    """COMPARE tasks the store has seen finish."""
    store = open_store(Config(data_dir=server.data_dir))
    try:
        return store.count_tasks(TaskKind.COMPARE, FINISHED)
    finally:
        store.close()


def _card(server: RunningServer, version: int) -> dict:
    return json.loads(server.client().get_model(NAME, version=version).card_json)


def _served_probabilities(
    server: RunningServer, version: int, files: list[Path], labels: list[str]
) -> np.ndarray:
    """What Predict serves for `files`: every class's probability, in `labels` order."""
    response = server.client().predict(
        pb.ModelRef(name=NAME, version=version), files, top_k=len(labels)
    )
    out = np.zeros((len(files), len(labels)))
    for i, prediction in enumerate(response.predictions):
        assert not prediction.HasField("error")
        for score in prediction.classes:
            out[i, labels.index(score.label)] = score.score
    return out


def _independent_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Accuracy, per-class recall, mean cross-entropy and 15-bin ECE, computed here."""
    predicted = probs.argmax(1)
    correct = predicted == targets
    out = {
        "accuracy": float(correct.mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1)).mean()),
    }
    for c in range(probs.shape[1]):
        out[f"recall/{c}"] = float(correct[targets == c].mean())
    confidence = probs.max(1)
    bins = np.minimum((confidence * 15).astype(int), 14)
    out["ece"] = sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - confidence[bins == b].mean())
        for b in range(15)
        if (bins == b).any()
    )
    return out


def test_the_comparison_is_an_evaluation_of_both_on_the_candidates_held_out_images(
    server: RunningServer, versions: Versions
) -> None:
    client = server.client()
    r = client.compare_models(f"{NAME}:{versions.bad}", f"{NAME}:{versions.good}")
    assert (r.baseline.version, r.candidate.version) == (versions.bad, versions.good)

    # The held-out images, made here as training made them: the card's fraction and seed.
    card = _card(server, versions.good)
    _, held_out = split_dataset(
        scan_dataset(versions.folder), card["plan"]["validation_fraction"], card["plan"]["seed"]
    )
    assert r.images == len(held_out) == HELD_OUT
    labels = list(card["labels"])
    targets = np.array([s.label for s in held_out])
    files = [s.path for s in held_out]

    # Each version's metrics are those of what Predict serves for the same images.
    answered = {"baseline": r.baseline_metrics, "candidate": r.candidate_metrics}
    ece = next(d for d in r.deltas if d.metric == "ece")
    for side, version in (("baseline", versions.bad), ("candidate", versions.good)):
        want = _independent_metrics(_served_probabilities(server, version, files, labels), targets)
        got = answered[side]
        assert got.accuracy == pytest.approx(want["accuracy"], abs=1e-9), side
        assert got.loss == pytest.approx(want["loss"], rel=1e-3, abs=1e-4), side
        assert getattr(ece, side) == pytest.approx(want["ece"], abs=1e-3), side
        assert [c.label for c in got.per_class] == labels
        for c, label in enumerate(labels):
            assert got.per_class[c].recall == pytest.approx(want[f"recall/{c}"], abs=1e-9), label
    # ... and the accuracies the training of each measured on this same split.
    assert r.candidate_metrics.accuracy == pytest.approx(card["metrics"]["accuracy"], abs=1e-9)
    bad_card = _card(server, versions.bad)
    assert r.baseline_metrics.accuracy == pytest.approx(bad_card["metrics"]["accuracy"], abs=1e-9)
    assert r.candidate_metrics.accuracy > r.baseline_metrics.accuracy + 0.3  # really trained

    assert [d.metric for d in r.deltas] == [
        "accuracy", "top5_accuracy", "macro_f1", "loss", "ece",
        *(f"recall/{label}" for label in labels),
    ]  # fmt: skip
    for d in r.deltas:
        assert d.delta == pytest.approx(d.candidate - d.baseline, abs=1e-12)
        assert d.higher_is_better == (d.metric not in ("loss", "ece"))
    by_name = {d.metric: d for d in r.deltas}
    assert by_name["accuracy"].candidate == r.candidate_metrics.accuracy
    assert by_name["macro_f1"].baseline == r.baseline_metrics.macro_f1
    assert by_name[f"recall/{labels[0]}"].candidate == r.candidate_metrics.per_class[0].recall
    assert r.candidate_not_worse
    assert f"{HELD_OUT} held-out images" in r.split and "clean held-out comparison" in r.split
    assert "CAVEAT" not in r.split


def test_the_split_caveat_when_the_baselines_split_differs(
    server: RunningServer, versions: Versions
) -> None:
    card = _card(server, versions.good)
    other = _register_untrained(server, card["labels"], card["dataset"]["fingerprint"], seed=1)
    r = server.client().compare_models(f"{NAME}:{other}", f"{NAME}:{versions.good}")
    assert r.images == HELD_OUT  # the candidate's split, whatever the baseline's
    assert "CAVEAT" in r.split and "not a clean held-out comparison" in r.split
    assert f"{NAME}:{other} trained with a different split (seed 1, not 0)" in r.split


def test_the_guard_refuses_a_worse_version_with_the_figures(
    server: RunningServer, versions: Versions
) -> None:
    client = server.client()
    before = _compare_tasks(server)
    # A new alias: nothing to compare with.
    assert client.set_model_alias(NAME, "production", versions.good, guard=True).version == (
        versions.good
    )
    assert _compare_tasks(server) == before

    with pytest.raises(FailedPrecondition) as caught:
        client.set_model_alias(NAME, "production", versions.bad, guard=True)
    assert _compare_tasks(server) == before + 1
    # Both trained on the split compared on: their cards have the same figures.
    good_acc = _card(server, versions.good)["metrics"]["accuracy"]
    bad_acc = _card(server, versions.bad)["metrics"]["accuracy"]
    figures = f"delta {bad_acc - good_acc:+.4f}"
    message = caught.value.message
    assert f"(accuracy {good_acc:.4f})" in message and f"(accuracy {bad_acc:.4f})" in message
    assert figures in message and f"on {HELD_OUT} held-out images" in message
    [failure] = [
        d for d in caught.value.details if isinstance(d, error_details_pb2.PreconditionFailure)
    ]
    [violation] = failure.violations
    assert violation.type == "NOT_WORSE" and violation.subject == f"{NAME}:{versions.bad}"
    assert figures in violation.description
    assert client.get_model(NAME, alias="production").version == versions.good  # not moved

    # Without the guard: no comparison, and the alias moves.
    assert client.set_model_alias(NAME, "production", versions.bad).version == versions.bad
    assert _compare_tasks(server) == before + 1
    # A better version passes the guard, after a comparison; the version it is on needs none.
    assert client.set_model_alias(NAME, "production", versions.good, guard=True).version == (
        versions.good
    )
    assert _compare_tasks(server) == before + 2
    client.set_model_alias(NAME, "production", versions.good, guard=True)
    assert _compare_tasks(server) == before + 2


def test_unknown_versions_are_not_found(server: RunningServer, versions: Versions) -> None:
    client = server.client()
    with pytest.raises(NotFound):
        client.compare_models(f"{NAME}:99", f"{NAME}:{versions.good}")
    with pytest.raises(NotFound):
        client.compare_models(f"{NAME}:{versions.good}", f"{NAME}@nowhere")
    with pytest.raises(NotFound):
        client.set_model_alias(NAME, "production", 99, guard=True)


def test_versions_that_cannot_be_compared_fail_their_precondition(
    server: RunningServer, versions: Versions
) -> None:
    client = server.client()
    before = _compare_tasks(server)
    register_random_model(server.data_dir, "ab", labels=("a", "b"), image_size=32)
    with pytest.raises(FailedPrecondition, match="only the baseline has 'a', 'b'"):
        client.compare_models("ab:1", f"{NAME}:{versions.good}")
    with pytest.raises(FailedPrecondition, match="no training job"):
        client.compare_models("ab:1", "ab:1")
    # The candidate's dataset is gone (here: moved away), then back.
    aside = versions.folder.with_name("fm-aside")
    versions.folder.rename(aside)
    try:
        with pytest.raises(FailedPrecondition, match=r"the dataset fm:\d+ trained on .* is gone"):
            client.compare_models(f"{NAME}:{versions.bad}", f"{NAME}:{versions.good}")
    finally:
        aside.rename(versions.folder)
    assert _compare_tasks(server) == before  # each refused before a worker was asked


def test_the_command_line(server: RunningServer, versions: Versions) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main([*argv, "--target", server.target])
        return code, out.getvalue(), err.getvalue()

    code, out, err = run("models", "compare", NAME, str(versions.bad), str(versions.good))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"{NAME}: version {versions.good} (candidate) against version {versions.bad} "
        f"(baseline) on {HELD_OUT} held-out images"
    )
    assert lines[1].split() == ["METRIC", f"V{versions.bad}", f"V{versions.good}", "DELTA"]
    accuracy = lines[2].split()
    assert accuracy[0] == "accuracy" and accuracy[-1] == "better"
    assert math.isclose(float(accuracy[3]), float(accuracy[2]) - float(accuracy[1]), abs_tol=2e-4)
    assert "candidate not worse: yes" in out and f"split: {HELD_OUT} held-out images" in out

    code, _, err = run("models", "alias", NAME, "canary", str(versions.good))
    assert code == 0, err
    code, _, err = run("models", "alias", NAME, "canary", str(versions.bad), "--guard")
    assert code == 2 and "FAILED_PRECONDITION" in err and f"refusing to move {NAME}@canary" in err

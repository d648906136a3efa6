"""Comparing versions, the parts that need no server (docs/COMPARE.md): the deltas, the
guard's rule, the split's words and caveats, the answer's JSON and protobuf forms, the
guard's error with its google.rpc.PreconditionFailure detail, the CLI's version words, and
the worker's evaluation (graft.compare.run) on real images with real registered models."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import torch
from google.rpc import code_pb2, error_details_pb2

from graft import errors
from graft.api import convert
from graft.api.errors import to_rpc_status
from graft.backbones import DEFAULT_BACKBONE, create_model, get_spec
from graft.cli.compare import version_ref
from graft.compare.result import (
    VERSION,
    Comparison,
    MetricDelta,
    SplitSource,
    correct,
    guard_refusal,
    label_difference,
    metric_deltas,
    split_text,
)
from graft.compare.run import run_comparison
from graft.config import Config
from graft.domain import ClassMetrics, EvaluationMetrics, ModelRef, Strategy, TrainingPlan
from graft.registry import DatasetSummary, ModelCard, ModelRegistry, Preprocessing
from graft.store import open_store
from graft_client.v1 import adaptation_pb2 as pb
from graft_devtools.datasets import write_fashion_mnist_folder


def _metrics(confusion: tuple[int, ...], labels: tuple[str, ...] = ("a", "b")) -> EvaluationMetrics:
    """Metrics whose accuracy and recalls follow from `confusion` (row-major)."""
    n = len(labels)
    rows = [confusion[i * n : (i + 1) * n] for i in range(n)]
    total = sum(confusion)
    right = sum(rows[i][i] for i in range(n))
    return EvaluationMetrics(
        accuracy=right / total,
        top5_accuracy=1.0,
        macro_f1=0.5 + right / (10 * total),
        loss=1.0 - right / (2 * total),
        per_class=tuple(
            ClassMetrics(lb, 0.5, rows[i][i] / max(1, sum(rows[i])), sum(rows[i]))
            for i, lb in enumerate(labels)
        ),
        confusion=confusion,
        labels=labels,
    )


def _comparison(
    baseline: EvaluationMetrics, candidate: EvaluationMetrics, data_changed: bool = False
) -> Comparison:
    return Comparison(
        baseline=ModelRef("pets", 1, tenant="acme"),
        candidate=ModelRef("pets", 2, tenant="acme"),
        baseline_metrics=baseline,
        candidate_metrics=candidate,
        baseline_ece=0.12,
        candidate_ece=0.05,
        images=sum(candidate.confusion),
        split="20 held-out images: ...",
        candidate_data_changed=data_changed,
    )


# --------------------------------------------------------------------------- the rules


def test_deltas_are_candidate_minus_baseline_in_a_fixed_order() -> None:
    base, cand = _metrics((6, 4, 3, 7)), _metrics((9, 1, 2, 8))
    deltas = metric_deltas(base, cand, 0.2, 0.05)
    assert [d.metric for d in deltas] == [
        "accuracy", "top5_accuracy", "macro_f1", "loss", "ece", "recall/a", "recall/b",
    ]  # fmt: skip
    by = {d.metric: d for d in deltas}
    assert by["accuracy"] == MetricDelta("accuracy", 0.65, 0.85, True)
    assert by["accuracy"].delta == pytest.approx(0.2)
    assert by["loss"].delta == pytest.approx(cand.loss - base.loss) and by["loss"].delta < 0
    assert by["ece"] == MetricDelta("ece", 0.2, 0.05, False)
    assert (by["recall/a"].baseline, by["recall/a"].candidate) == (0.6, 0.9)
    assert [d.higher_is_better for d in deltas] == [True, True, True, False, False, True, True]


def test_recalls_follow_the_candidates_labels_and_skip_the_ones_the_baseline_lacks() -> None:
    base = _metrics((5, 0, 0, 0, 5, 0, 0, 0, 5), ("c", "b", "a"))
    cand = _metrics((4, 1, 0, 5), ("a", "b"))
    recalls = [d for d in metric_deltas(base, cand, 0, 0) if d.metric.startswith("recall/")]
    assert [(d.metric, d.baseline, d.candidate) for d in recalls] == [
        ("recall/a", 1.0, 0.8),
        ("recall/b", 1.0, 1.0),
    ]


def test_not_worse_counts_images_and_a_tie_passes() -> None:
    base = _metrics((6, 4, 3, 7))  # 13 of 20 right
    assert _comparison(base, _metrics((7, 3, 4, 6))).candidate_not_worse  # 13: a tie
    assert _comparison(base, _metrics((10, 0, 2, 8))).candidate_not_worse  # 18
    assert not _comparison(base, _metrics((6, 4, 4, 6))).candidate_not_worse  # 12
    # Counted from the confusion matrix, not from float accuracies that differ in the last bit.
    nudged = dataclasses.replace(_metrics((7, 3, 4, 6)), accuracy=0.65 - 1e-12)
    assert _comparison(base, nudged).candidate_not_worse
    # Without a confusion matrix: the accuracy times the images.
    assert correct(dataclasses.replace(base, confusion=()), 20) == 13


def test_label_difference_names_what_only_one_side_has() -> None:
    assert label_difference(("a", "b"), ("b", "a")) == ""
    assert label_difference(("a", "b"), ("a", "c")) == (
        "only the baseline has 'b'; only the candidate has 'c'"
    )
    many = tuple(f"x{i:02d}" for i in range(10))
    assert label_difference(many, ()).endswith("'x07' and 2 more")


# ------------------------------------------------------------------------- the split


def _split(**changes: object) -> str:
    same = SplitSource("f" * 64, 0.2, 0)
    kwargs: dict = {
        "baseline": "pets:1",
        "candidate": "pets:2",
        "where": "/data/pets",
        "images": 40,
        "baseline_split": same,
        "candidate_split": same,
        "explicit": False,
        "fingerprint_now": "f" * 64,
    }
    kwargs.update(changes)
    return split_text(**kwargs)


def test_the_same_split_is_clean() -> None:
    text = _split()
    assert text.startswith("40 held-out images: pets:2's validation split of /data/pets")
    assert "20% of each class, seed 0" in text and "a clean held-out comparison" in text
    assert "CAVEAT" not in text


@pytest.mark.parametrize(
    ("baseline", "says"),
    [
        (SplitSource("f" * 64, 0.2, 7), "seed 7, not 0"),
        (SplitSource("f" * 64, 0.3, 0), "validation fraction 0.3, not 0.2"),
        (SplitSource("e" * 64, 0.2, 0), f"dataset fingerprint {'e' * 12}, not {'f' * 12}"),
        (SplitSource("", 0.2, 0), "its card does not record the dataset it trained on"),
    ],
)
def test_a_baseline_split_that_differs_is_a_caveat(baseline: SplitSource, says: str) -> None:
    text = _split(baseline_split=baseline)
    assert f"CAVEAT: pets:1 trained with a different split ({says}), so it may have" in text
    assert text.endswith("This is not a clean held-out comparison.")


def test_a_split_the_dataset_names_is_the_same_whatever_the_seed() -> None:
    text = _split(baseline_split=SplitSource("f" * 64, 0.5, 9), explicit=True)
    assert "the images the dataset marks as validation" in text and "CAVEAT" not in text
    text = _split(baseline_split=SplitSource("e" * 64, 0.5, 9), explicit=True)
    assert "CAVEAT" in text and "seed" not in text.split("CAVEAT")[1]


def test_a_dataset_changed_since_the_candidate_trained_is_a_caveat() -> None:
    text = _split(fingerprint_now="d" * 64)
    assert f"the dataset changed since pets:2 trained (fingerprint {'f' * 12} then" in text
    assert "not a clean held-out comparison" in text


# --------------------------------------------------------------------- the answer's forms


def test_the_comparison_round_trips_through_its_json() -> None:
    c = _comparison(_metrics((6, 4, 3, 7)), _metrics((9, 1, 2, 8)), data_changed=True)
    for f in dataclasses.fields(c):  # every field set, so the round trip covers each
        assert getattr(c, f.name) not in ("", 0, 0.0, None, False), f.name
    assert Comparison.from_json(c.to_json()) == c
    with pytest.raises(errors.FailedPrecondition, match="format version 99"):
        Comparison.from_json({**c.to_json(), "version": 99})
    assert c.to_json()["version"] == VERSION


def test_the_response_carries_every_field() -> None:
    """Fails when CompareModelsResponse or MetricDelta gains a field the conversion leaves
    unset."""
    c = _comparison(_metrics((6, 4, 3, 7)), _metrics((9, 1, 2, 8)))
    response = convert.comparison_to_pb(c)
    present = {f.name for f, _ in response.ListFields()}
    assert present == {f.name for f in pb.CompareModelsResponse.DESCRIPTOR.fields}
    assert response.baseline == pb.ModelRef(name="pets", version=1, tenant="acme")
    assert list(response.candidate_metrics.confusion) == [9, 1, 2, 8]
    accuracy = response.deltas[0]
    assert {f.name for f, _ in accuracy.ListFields()} == {
        f.name for f in pb.MetricDelta.DESCRIPTOR.fields
    }
    assert (accuracy.metric, accuracy.delta) == ("accuracy", pytest.approx(0.2))
    assert len(response.deltas) == len(c.deltas) and response.images == 20


def test_the_guard_refusal_has_the_figures_and_a_precondition_failure_detail() -> None:
    c = _comparison(_metrics((9, 1, 2, 8)), _metrics((6, 4, 3, 7)))
    exc = guard_refusal(c, "production")
    assert exc is not None and exc.message.startswith(
        "refusing to move pets@production from version 1 to version 2: on 20 held-out images "
        "version 2 is right on 13 (accuracy 0.6500), version 1 on 17 (accuracy 0.8500): "
        "delta -0.2000. "
    )
    assert (
        "Promote a version that is not worse, or set the alias without guard" in exc.message
        and exc.message.endswith("Split: 20 held-out images: ...")
    )
    status = to_rpc_status(exc)
    assert status.code == code_pb2.FAILED_PRECONDITION and status.message == exc.message
    [detail] = status.details
    failure = error_details_pb2.PreconditionFailure()
    assert detail.Unpack(failure)
    [v] = failure.violations
    assert (v.type, v.subject) == ("NOT_WORSE", "pets:2") and "delta -0.2000" in v.description
    # Across the store (a worker's error) the violations travel too.
    again = errors.error_from_dict(errors.error_to_dict(exc))
    assert isinstance(again, errors.FailedPrecondition) and again.violations == exc.violations
    plain = errors.error_from_dict(errors.error_to_dict(errors.FailedPrecondition("no")))
    assert isinstance(plain, errors.FailedPrecondition) and plain.violations == []
    assert not to_rpc_status(plain).details


def test_the_guard_lets_a_version_that_is_not_worse_through_unless_its_data_changed() -> None:
    worse, better = _metrics((6, 4, 3, 7)), _metrics((9, 1, 2, 8))
    assert guard_refusal(_comparison(worse, better), "production") is None
    assert guard_refusal(_comparison(worse, worse), "production") is None  # a tie
    # The candidate's data changed since it trained: its figures cannot vouch for it.
    exc = guard_refusal(_comparison(worse, better, data_changed=True), "production")
    assert exc is not None and "version 2 is right on 17 (accuracy 0.8500)" in exc.message
    assert "The dataset version 2 trained on changed since" in exc.message
    [v] = exc.violations
    assert (v.type, v.subject) == ("HELD_OUT_CHANGED", "pets:2")


def test_the_command_lines_version_words() -> None:
    assert version_ref("pets", "2") == pb.ModelRef(name="pets", version=2)
    assert version_ref("pets", "production") == pb.ModelRef(name="pets", alias="production")
    assert version_ref("pets", "@canary") == pb.ModelRef(name="pets", alias="canary")


# ------------------------------------------------------------- the worker's evaluation


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, list[str]]:
    """Two versions of "pets" in a real store and registry, random-init at 32 px, whose
    cards say they trained with a 20% validation split: version 2 is version 1 with its
    classes in reverse order (the head's rows and the labels both reversed), so the two
    compute the same classifier."""
    root = tmp_path_factory.mktemp("compare")
    folder = write_fashion_mnist_folder(root / "pets", per_class=10, classes=(1, 7, 8))
    labels = sorted(p.name for p in folder.iterdir())
    config = Config(data_dir=root / "data", data_roots=(root,))
    store = open_store(config)
    spec = get_spec(DEFAULT_BACKBONE)
    torch.manual_seed(0)
    model = create_model(DEFAULT_BACKBONE, len(labels), pretrained=False)
    state = model.state_dict()
    assert {"head.weight", "head.bias"} <= state.keys()
    reversed_state = dict(state)
    for key in ("head.weight", "head.bias"):
        reversed_state[key] = state[key].flip(0)
    try:
        for weights, order in ((state, labels), (reversed_state, labels[::-1])):
            plan = TrainingPlan(
                backbone=DEFAULT_BACKBONE,
                strategy=Strategy.FEATURE_EXTRACTION,
                image_size=32,
                validation_fraction=0.2,
                seed=3,
            )
            card = ModelCard(
                backbone=DEFAULT_BACKBONE,
                architecture=spec.architecture,
                labels=tuple(order),
                preprocessing=Preprocessing.from_spec(spec, 32),
                plan=plan,
                job_id=uuid.uuid4().hex,
                dataset=DatasetSummary("f" * 64, 30, 0, dict.fromkeys(labels, 10)),
            )
            ModelRegistry(store, config.registry_dir).register(
                name="pets", state_dict=weights, card=card
            )
    finally:
        store.close()
    return config, folder, labels


def _request(folder: Path, baseline: int, candidate: int) -> dict:
    return {
        "baseline": {"name": "pets", "version": baseline, "tenant": "default"},
        "candidate": {"name": "pets", "version": candidate, "tenant": "default"},
        "dataset": {"uri": str(folder), "dataset_id": ""},
    }


def test_a_baseline_with_its_classes_in_another_order_is_compared_class_by_class(
    registered: tuple[Config, Path, list[str]],
) -> None:
    config, folder, labels = registered
    store = open_store(config)
    try:
        c = Comparison.from_json(
            run_comparison(config, store, _request(folder, 2, 1), torch.device("cpu"))
        )
    finally:
        store.close()
    assert c.images == 6  # 20% of 10 images, in each of 3 classes
    assert c.baseline_metrics.labels == c.candidate_metrics.labels == tuple(labels)
    assert c.baseline_metrics.confusion == c.candidate_metrics.confusion
    assert c.baseline_metrics.loss == pytest.approx(c.candidate_metrics.loss, abs=1e-5)
    assert all(d.delta == pytest.approx(0, abs=1e-5) for d in c.deltas)
    assert c.candidate_not_worse
    # The card's fingerprint is not the folder's: the candidate's data changed, it says.
    assert "the dataset changed since pets:1 trained" in c.split and c.candidate_data_changed


def test_a_dataset_that_is_gone_or_changed_fails_its_precondition(
    registered: tuple[Config, Path, list[str]], tmp_path: Path
) -> None:
    config, folder, _ = registered
    store = open_store(config)
    try:
        gone = {
            **_request(folder, 1, 2),
            "dataset": {"uri": str(folder) + "-gone", "dataset_id": ""},
        }
        with pytest.raises(errors.FailedPrecondition, match=r"trained on \(.*-gone\) is gone"):
            run_comparison(config, store, gone, torch.device("cpu"))
        deleted = {**gone, "dataset": {"uri": "", "dataset_id": "deleted-upload"}}
        with pytest.raises(
            errors.FailedPrecondition,
            match="trained on \\(upload deleted-upload\\) is gone: no uploaded dataset",
        ):
            run_comparison(config, store, deleted, torch.device("cpu"))
        fewer = folder.with_name("fewer")
        fewer.mkdir(exist_ok=True)
        for label in sorted(p.name for p in folder.iterdir())[:2]:
            (fewer / label).mkdir(exist_ok=True)
            for image in sorted((folder / label).iterdir())[:4]:
                (fewer / label / image.name).write_bytes(image.read_bytes())
        changed = {**_request(folder, 1, 2), "dataset": {"uri": str(fewer), "dataset_id": ""}}
        with pytest.raises(errors.FailedPrecondition, match="has other classes now"):
            run_comparison(config, store, changed, torch.device("cpu"))
    finally:
        store.close()

"""The model card (graft.registry.card): one typed, versioned shape that the worker writes
and Predict reads. Cards already stored must keep loading; a card this release cannot
serve as trained is refused with FailedPrecondition naming the field; a field added to the
dataclasses without its JSON handling fails the full round trip."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from graft.backbones import get_spec
from graft.data import Sample, ScannedDataset
from graft.domain import (
    ClassMetrics,
    DatasetRef,
    EvaluationMetrics,
    Job,
    JobState,
    ModelRef,
    Strategy,
    TrainingPlan,
)
from graft.errors import FailedPrecondition
from graft.registry import (
    CARD_FILE,
    CARD_VERSION,
    Calibration,
    DatasetSummary,
    ModelCard,
    ModelRegistry,
    Preprocessing,
    TrainingSummary,
)
from graft.store import SqliteJobStore
from graft.training.loop import TrainResult
from graft.worker import model_card

# A card.json exactly as the worker wrote it before the card was typed (captured from a
# one-epoch feature-extraction job run by graft.training.worker.Worker, as the worker was
# then named; the store's card_json holds the same). Cards like it sit in existing
# registries and must still load.
STORED_CARD: dict[str, Any] = {
    "architecture": "timm:tf_efficientnet_lite0",
    "backbone": "efficientnet_lite0",
    "create_time": 1796001278.6229446,
    "dataset": {
        "counts": {"a": 8, "b": 8},
        "fingerprint": "88692f878f158ada8f68c5c57cc963c78e6a204bbea11275ab7554a71e123ab9",
        "images": 16,
        "skipped_files": 0,
    },
    "job_id": "9468ddbc01a84f32817bdb78f81f28ac",
    "labels": ["a", "b"],
    "metrics": {
        "accuracy": 0.25,
        "confusion": [1, 1, 2, 0],
        "labels": ["a", "b"],
        "loss": 0.7079206705093384,
        "macro_f1": 0.2,
        "per_class": [
            {"label": "a", "precision": 0.3333333333333333, "recall": 0.5, "support": 2},
            {"label": "b", "precision": 0.0, "recall": 0.0, "support": 2},
        ],
        "top5_accuracy": 1.0,
    },
    "name": "flowers",
    "plan": {
        "augmentation": False,
        "backbone": "efficientnet_lite0",
        "base_learning_rate": 0.0,
        "batch_size": 8,
        "class_weighting": False,
        "early_stopping_patience": 0,
        "epochs": 1,
        "feature_grid": 0,
        "feature_stages": [],
        "head_learning_rate": 0.003,
        "head_warmup_epochs": 0,
        "image_size": 32,
        "label_smoothing": 0.0,
        "seed": 0,
        "strategy": 3,
        "trainable_stages": 0,
        "validation_fraction": 0.2,
        "warmup_epochs": 0.0,
        "weight_decay": 0.05,
    },
    "preprocessing": {
        "crop_pct": 0.875,
        "image_size": 32,
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
    "sha256": "39665a9149ababf91b635a76a1e8d9b5e8471885882a003f6f75c46f133fcbd4",
    "training": {
        "attempts": 1,
        "best_epoch": 1,
        "device": "cpu",
        "epochs_run": 1,
        "resumed_from_epoch": 0,
        "train_seconds": 0.5978022089984734,
    },
    "version": 1,
    "weights_file": "model.safetensors",
}


def full_card() -> ModelCard:
    """A card with every field, nested ones included, away from its default."""
    return ModelCard(
        backbone="mobilenetv3_large_100",
        labels=("cat", "dog", "emu"),
        preprocessing=Preprocessing(96, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3), "bilinear", 0.95),
        plan=TrainingPlan(
            backbone="mobilenetv3_large_100",
            strategy=Strategy.PARTIAL_FINE_TUNE,
            trainable_stages=2,
            head_learning_rate=0.01,
            base_learning_rate=0.001,
            epochs=7,
            batch_size=16,
            image_size=96,
            augmentation=True,
            class_weighting=True,
            early_stopping_patience=3,
            seed=42,
            weight_decay=0.01,
            label_smoothing=0.1,
            warmup_epochs=0.5,
            head_warmup_epochs=1,
            validation_fraction=0.25,
            feature_stages=(3, 5),
            feature_grid=2,
        ),
        job_id="job-full",
        architecture="timm:mobilenetv3_large_100",
        metrics=EvaluationMetrics(
            accuracy=0.9,
            top5_accuracy=1.0,
            macro_f1=0.85,
            loss=0.3,
            per_class=(ClassMetrics("cat", 0.9, 0.8, 10), ClassMetrics("dog", 0.7, 0.6, 5)),
            confusion=(8, 2, 1, 4),
            labels=("cat", "dog"),
        ),
        dataset=DatasetSummary("f" * 64, 120, 3, {"cat": 50, "dog": 40, "emu": 30}),
        training=TrainingSummary(7, 5, 2, 12.5, "cuda:0", 2),
        weights_file="model.safetensors",
        calibration=Calibration(1.7, True, 0.12, 0.03, 0.61, 0.48, 40, 15, "held-out ECE fell"),
        name="pets",
        version=4,
        sha256="a" * 64,
        create_time=1_700_000_000.5,
    )


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _assert_nothing_default(value: object) -> None:
    """Every field of `value` and of the dataclasses in it differs from its default (a
    field without one counts as set), so the round trip below covers every field."""
    assert dataclasses.is_dataclass(value) and not isinstance(value, type)
    defaults = _defaults(type(value))
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        where = f"{type(value).__name__}.{f.name}"
        assert f.name not in defaults or v != defaults[f.name], f"{where} is at its default"
        assert v not in ("", 0, 0.0, (), None, {}), f"{where} is empty"
        if dataclasses.is_dataclass(v):
            _assert_nothing_default(v)


def test_a_fully_populated_card_round_trips_through_json() -> None:
    """Fails when a field is added to ModelCard (or a part of it) without its JSON form:
    the fixture must set it, and to_dict / from_dict must carry it."""
    card = full_card()
    _assert_nothing_default(card)
    text = json.dumps(card.to_dict(), sort_keys=True)
    assert ModelCard.from_dict(json.loads(text)) == card
    assert json.loads(text)["card_version"] == CARD_VERSION


def test_a_stored_card_of_the_current_worker_still_loads() -> None:
    card = ModelCard.from_dict(copy.deepcopy(STORED_CARD))
    assert (card.name, card.version, card.backbone) == ("flowers", 1, "efficientnet_lite0")
    assert card.labels == ("a", "b") and card.job_id == STORED_CARD["job_id"]
    assert card.preprocessing == Preprocessing(
        32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875
    )
    assert card.plan.strategy == Strategy.FEATURE_EXTRACTION and card.plan.image_size == 32
    assert card.metrics is not None and card.metrics.confusion == (1, 1, 2, 0)
    assert card.dataset == DatasetSummary(
        STORED_CARD["dataset"]["fingerprint"], 16, 0, {"a": 8, "b": 8}
    )
    assert card.training is not None and card.training.device == "cpu"
    assert card.weights_file == "model.safetensors" and card.sha256 == STORED_CARD["sha256"]
    # Written again, it is the same document plus the format's version: nothing is lost.
    assert json.loads(json.dumps(card.to_dict())) == {**STORED_CARD, "card_version": CARD_VERSION}


def test_the_worker_writes_the_shape_it_always_wrote() -> None:
    """graft.worker.model_card gives the stored card's keys, all the way down."""
    spec = get_spec("efficientnet_lite0")
    plan = TrainingPlan(
        backbone=spec.name, strategy=Strategy.FEATURE_EXTRACTION, epochs=1, image_size=32
    )
    job = Job("j1", "flowers", DatasetRef(uri="/d"), plan, "", JobState.RUNNING, 0.0, attempts=1)
    samples = [
        Sample(Path(f"/d/{c}/{i}.png"), label) for label, c in enumerate("ab") for i in range(8)
    ]
    dataset = ScannedDataset(Path("/d"), ["a", "b"], samples, [], "fp", (16, 16), {"RGB": 16})
    result = TrainResult(
        model=cast(Any, None),
        metrics=EvaluationMetrics(accuracy=0.5, labels=("a", "b")),
        epochs_run=1,
        best_epoch=1,
        resumed_from_epoch=0,
        train_seconds=0.5,
    )
    card = model_card(job, plan, dataset, result, torch.device("cpu"))
    assert card.preprocessing == Preprocessing.from_spec(spec, 32)
    assert card.dataset is not None and card.dataset.counts == {"a": 8, "b": 8}

    def shape(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: shape(v) for k, v in d.items() if k != "per_class"}
        return type(d).__name__ if not isinstance(d, bool | int | float) else "number"

    written = json.loads(json.dumps({**card.to_dict(), "weights_file": "model.safetensors"}))
    assert shape(written) == shape({**STORED_CARD, "card_version": CARD_VERSION})


@pytest.mark.parametrize(
    "path",
    [
        "backbone",
        "labels",
        "preprocessing",
        "plan",
        "job_id",
        "name",
        "version",
        "sha256",
        "create_time",
        "preprocessing.image_size",
        "preprocessing.mean",
        "preprocessing.std",
        "preprocessing.interpolation",
        "preprocessing.crop_pct",
        "dataset.fingerprint",
        "training.epochs_run",
    ],
)
def test_a_missing_required_field_is_named(path: str) -> None:
    for how in ("deleted", "null"):
        data = copy.deepcopy(STORED_CARD)
        *parents, key = path.split(".")
        holder = data
        for p in parents:
            holder = holder[p]
        if how == "deleted":
            del holder[key]
        else:
            holder[key] = None
        with pytest.raises(
            FailedPrecondition, match=rf"card.json: model card field '{path}' is missing"
        ):
            ModelCard.from_dict(data, "card.json")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("backbone", 7, "a string"),
        ("labels", "ab", "a list"),
        ("labels", ["a", 2], "a list of strings"),
        ("version", "1", "an integer"),
        ("version", True, "an integer"),
        ("create_time", "now", "a number"),
        ("preprocessing.mean", [0.5, 0.5], "a list of 3 numbers"),
        ("preprocessing.std", [0.5, "x", 0.5], "a list of 3 numbers"),
        ("preprocessing.image_size", 32.5, "an integer"),
        ("dataset.counts", {"a": "8"}, "an object of label -> integer"),
        ("training.device", 0, "a string"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(path: str, value: object, expected: str) -> None:
    data = copy.deepcopy(STORED_CARD)
    *parents, key = path.split(".")
    holder = data
    for p in parents:
        holder = holder[p]
    holder[key] = value
    with pytest.raises(FailedPrecondition, match=rf"field '{path}' should be {expected}"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize("part", ["preprocessing", "plan", "dataset", "training"])
def test_a_part_that_is_not_an_object_is_refused(part: str) -> None:
    with pytest.raises(FailedPrecondition, match=rf"field '{part}' should be"):
        ModelCard.from_dict({**STORED_CARD, part: [1, 2]})
    with pytest.raises(FailedPrecondition, match="the card should be a JSON object"):
        ModelCard.from_dict(cast(Any, [STORED_CARD]))


def test_a_card_of_a_newer_format_is_refused() -> None:
    newer = {**STORED_CARD, "card_version": CARD_VERSION + 1}
    with pytest.raises(FailedPrecondition, match=r"format version 2 is newer than this release"):
        ModelCard.from_dict(newer, "model 'flowers' version 1")
    # The current version and the absent key (cards written before it existed) both read.
    assert ModelCard.from_dict({**STORED_CARD, "card_version": CARD_VERSION}).name == "flowers"
    assert "card_version" not in STORED_CARD


def test_unknown_keys_are_ignored_and_optional_parts_may_be_absent() -> None:
    """Keys this release does not know (an additive change of a writer of the same format,
    or a key an older one wrote) are ignored; the parts a card of a registration outside
    training lacks decode to their defaults."""
    data = copy.deepcopy(STORED_CARD)
    data["signature"] = {"inputs": ["image"]}
    data["preprocessing"]["antialias"] = True
    data["training"]["host"] = "gpu-7"
    assert ModelCard.from_dict(data) == ModelCard.from_dict(STORED_CARD)

    bare = {
        k: v
        for k, v in STORED_CARD.items()
        if k not in ("dataset", "training", "architecture", "weights_file")
    }
    card = ModelCard.from_dict({**bare, "metrics": None})
    assert (card.dataset, card.training, card.metrics) == (None, None, None)
    assert (card.architecture, card.weights_file) == ("", "")
    assert ModelCard.from_dict(card.to_dict()) == card


def test_the_temperature_is_the_applied_calibration_and_1_without_one() -> None:
    """A card written before calibration existed serves at temperature 1; a fitted
    temperature counts only when it was applied; a card with one is refused when the
    temperature could not divide logits."""
    old = ModelCard.from_dict(STORED_CARD)
    assert old.calibration is None and old.temperature == 1.0
    assert "calibration" not in old.to_dict()
    fitted = Calibration(1.7, True, 0.12, 0.03, 0.61, 0.48, 40, 15)
    assert dataclasses.replace(old, calibration=fitted).temperature == 1.7
    unused = dataclasses.replace(fitted, applied=False)
    assert dataclasses.replace(old, calibration=unused).temperature == 1.0
    data = {**STORED_CARD, "calibration": {**fitted.to_dict(), "temperature": 0}}
    with pytest.raises(FailedPrecondition, match=r"'calibration\.temperature' should be a posi"):
        ModelCard.from_dict(data)
    data = {**STORED_CARD, "calibration": {**fitted.to_dict(), "applied": "yes"}}
    with pytest.raises(FailedPrecondition, match=r"'calibration\.applied' should be true or false"):
        ModelCard.from_dict(data)


def test_the_registry_reads_cards_typed_and_refuses_unreadable_ones(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "graft.sqlite3")
    try:
        registry = ModelRegistry(store, tmp_path / "registry")
        written = dataclasses.replace(full_card(), name="", version=0, sha256="", create_time=0.0)
        mv = registry.register(name="pets", state_dict={"w": torch.zeros(2)}, card=written)
        _, _, card = registry.load(ModelRef("pets"))
        identity = {
            "name": "pets",
            "version": 1,
            "sha256": mv.sha256,
            "create_time": mv.create_time,
        }
        assert card == dataclasses.replace(written, **identity)
        assert ModelCard.from_dict(mv.card) == card  # the store's copy reads the same

        path = Path(mv.artifact_dir) / CARD_FILE
        stored = json.loads(path.read_text())
        path.write_text(json.dumps({**stored, "card_version": CARD_VERSION + 1}))
        with pytest.raises(FailedPrecondition, match=rf"{CARD_FILE}: model card format version"):
            registry.load(ModelRef("pets"))
        path.write_text(json.dumps({k: v for k, v in stored.items() if k != "labels"}))
        with pytest.raises(FailedPrecondition, match="field 'labels' is missing"):
            registry.load(ModelRef("pets"))
        path.unlink()  # no card.json: the store's copy is read, and validated the same way
        assert registry.load(ModelRef("pets"))[2] == card
    finally:
        store.close()

"""The model card: what the worker writes beside a version's weights and Predict reads
back to serve it, as one typed shape (`ModelCard`) with one JSON form.

The JSON (`card.json` in the artifact folder, and `card_json` in the store) is the
dataclasses' fields under their names, tuples as lists, enums as ints, plus
`"card_version": CARD_VERSION`. `version` is the *model* version; the card's format has its
own key. Reading (`ModelCard.from_dict`) is strict about what serving needs and
deliberate about the rest:

- a required field that is missing or of the wrong type raises FailedPrecondition naming
  the card and the field (the version cannot be served as it was trained);
- a card without `card_version` was written before the key existed, by the format that
  is version 1 (the shape has not changed since the first worker wrote it);
- a card of a newer `card_version` is refused: a newer release changed something this
  one would misread. Adding an optional key is not such a change: it keeps the version,
  and a reader that does not know the key ignores it, as it ignores keys older releases
  wrote and this one no longer reads.

The identity fields (`name`, `version`, `sha256`, `create_time`) are empty until the
registry registers the card: the store fills them in inside its transaction.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from graft.domain import EvaluationMetrics, TrainingPlan
from graft.errors import FailedPrecondition

CARD_VERSION = 1
VERSION_KEY = "card_version"

_T = TypeVar("_T")


class NormalisationSpec(Protocol):
    """What a card's preprocessing copies from a backbone's `PretrainedSpec` (the registry
    does not import the backbone catalog)."""

    @property
    def mean(self) -> tuple[float, float, float]: ...
    @property
    def std(self) -> tuple[float, float, float]: ...
    @property
    def interpolation(self) -> str: ...
    @property
    def crop_pct(self) -> float: ...


@dataclass(frozen=True)
class Preprocessing:
    """How the model's input was made in training, so Predict makes it the same way."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear"
    crop_pct: float

    @classmethod
    def from_spec(cls, spec: NormalisationSpec, image_size: int) -> Preprocessing:
        return cls(image_size, spec.mean, spec.std, spec.interpolation, spec.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def _read(cls, d: _Reader) -> Preprocessing:
        return cls(
            image_size=d.get("image_size", int),
            mean=d.triple("mean"),
            std=d.triple("std"),
            interpolation=d.get("interpolation", str),
            crop_pct=d.get("crop_pct", float),
        )


@dataclass(frozen=True)
class DatasetSummary:
    """The dataset the model was trained on, as scanned."""

    fingerprint: str
    images: int
    skipped_files: int
    counts: dict[str, int]  # images per label

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "counts": dict(self.counts)}

    @classmethod
    def _read(cls, d: _Reader) -> DatasetSummary:
        counts = d.get("counts", dict)
        if not all(isinstance(k, str) and _is(v, int) for k, v in counts.items()):
            raise d.wrong("counts", counts, "an object of label -> integer")
        return cls(
            fingerprint=d.get("fingerprint", str),
            images=d.get("images", int),
            skipped_files=d.get("skipped_files", int),
            counts=dict(counts),
        )


@dataclass(frozen=True)
class TrainingSummary:
    """How the training ran."""

    epochs_run: int
    best_epoch: int
    resumed_from_epoch: int
    train_seconds: float
    device: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def _read(cls, d: _Reader) -> TrainingSummary:
        return cls(
            epochs_run=d.get("epochs_run", int),
            best_epoch=d.get("best_epoch", int),
            resumed_from_epoch=d.get("resumed_from_epoch", int),
            train_seconds=d.get("train_seconds", float),
            device=d.get("device", str),
            attempts=d.get("attempts", int),
        )


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling of the version's logits, fitted on its validation split (the rule:
    graft.reports.calibrate, docs/REPORTS.md). Predict divides the logits by `temperature`
    before the softmax only when `applied`. The "after" figures are cross-fitted: each fold
    of the validation split scored with the temperature fitted on the other folds, so they
    are measured on images the temperature did not see."""

    temperature: float  # fitted on the whole validation split
    applied: bool  # whether Predict uses it: the cross-fitted NLL fell
    ece_before: float  # validation ECE at T = 1
    ece_after: float  # cross-fitted validation ECE with temperature scaling
    nll_before: float  # validation mean cross-entropy at T = 1
    nll_after: float  # cross-fitted, with temperature scaling
    images: int  # validation images it was measured on
    bins: int  # confidence bins of the ECE
    reason: str = ""  # why it is (not) applied, in words

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def _read(cls, d: _Reader) -> Calibration:
        temperature = d.get("temperature", float)
        if not temperature > 0:
            raise d.wrong("temperature", temperature, "a positive number")
        return cls(
            temperature=temperature,
            applied=d.get("applied", bool),
            ece_before=d.get("ece_before", float),
            ece_after=d.get("ece_after", float),
            nll_before=d.get("nll_before", float),
            nll_after=d.get("nll_after", float),
            images=d.get("images", int),
            bins=d.get("bins", int),
            reason=d.optional("reason", str) or "",
        )


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to serve a model version exactly as trained, and what it was
    trained on and how."""

    backbone: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    plan: TrainingPlan  # the resolved plan; its feature cut shapes the served network
    job_id: str
    architecture: str = ""
    metrics: EvaluationMetrics | None = None  # validation metrics of the kept weights
    dataset: DatasetSummary | None = None
    training: TrainingSummary | None = None
    weights_file: str = ""  # set by the registry
    calibration: Calibration | None = None  # absent (cards before it): temperature 1
    # Identity, filled in by the store when the version is registered.
    name: str = ""
    version: int = 0
    sha256: str = ""
    create_time: float = 0.0

    @property
    def temperature(self) -> float:
        """What Predict (and an export) divides the logits by before the softmax: the
        fitted temperature when it is applied, else 1."""
        if self.calibration is None or not self.calibration.applied:
            return 1.0
        return self.calibration.temperature

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-able data, with its format's version. `calibration` is an
        optional key: written only when the card has it, so older cards read back the same."""
        optional = {} if self.calibration is None else {"calibration": self.calibration.to_dict()}
        return {
            VERSION_KEY: CARD_VERSION,
            "backbone": self.backbone,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "plan": self.plan.to_dict(),
            "job_id": self.job_id,
            "architecture": self.architecture,
            "metrics": None if self.metrics is None else self.metrics.to_dict(),
            "dataset": None if self.dataset is None else self.dataset.to_dict(),
            "training": None if self.training is None else self.training.to_dict(),
            "weights_file": self.weights_file,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "create_time": self.create_time,
            **optional,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> ModelCard:
        """The card `to_dict` (or any earlier release) wrote; see the module doc for what
        is refused. `source` names the card in errors (a path, a model version)."""
        d = _Reader(data, source)
        found = d.optional(VERSION_KEY, int) or 1  # absent: written before the key existed
        if found > CARD_VERSION:
            raise FailedPrecondition(
                f"{source}: model card format version {found} is newer than this release "
                f"reads ({CARD_VERSION}): serve it with the release that trained it, or newer"
            )
        labels = d.get("labels", list)
        if not all(isinstance(x, str) for x in labels):
            raise d.wrong("labels", labels, "a list of strings")
        try:
            plan = TrainingPlan.from_dict(d.get("plan", dict))
            metrics = EvaluationMetrics.from_dict(d.optional("metrics", dict))
        except (TypeError, ValueError) as e:
            raise FailedPrecondition(f"{source}: unreadable model card plan or metrics: {e}") from e
        dataset, training = d.optional_child("dataset"), d.optional_child("training")
        calibration = d.optional_child("calibration")
        return cls(
            backbone=d.get("backbone", str),
            labels=tuple(labels),
            preprocessing=Preprocessing._read(d.child("preprocessing")),
            plan=plan,
            job_id=d.get("job_id", str),
            architecture=d.optional("architecture", str) or "",
            metrics=metrics,
            dataset=None if dataset is None else DatasetSummary._read(dataset),
            training=None if training is None else TrainingSummary._read(training),
            weights_file=d.optional("weights_file", str) or "",
            calibration=None if calibration is None else Calibration._read(calibration),
            name=d.get("name", str),
            version=d.get("version", int),
            sha256=d.get("sha256", str),
            create_time=d.get("create_time", float),
        )


def _is(value: object, kind: type) -> bool:
    """JSON's idea of `kind`: a bool is no number, an integer is a float too."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


_KIND_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


class _Reader:
    """Typed reads of one JSON object of a card; errors name the card and the field path.
    A field is absent when it is missing or null."""

    def __init__(self, data: object, source: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            where = f"field {path.rstrip('.')!r}" if path else "the card"
            raise FailedPrecondition(f"{source}: {where} should be a JSON object")
        self.data, self.source, self.path = data, source, path

    def get(self, key: str, kind: type[_T]) -> _T:
        """The required field `key`, of JSON type `kind`."""
        value = self.optional(key, kind)
        if value is None:
            raise FailedPrecondition(
                f"{self.source}: model card field {self.path + key!r} is missing"
            )
        return value

    def optional(self, key: str, kind: type[_T]) -> _T | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not _is(value, kind):
            raise self.wrong(key, value, _KIND_NAMES.get(kind, kind.__name__))
        return float(value) if kind is float else value  # type: ignore[return-value]

    def triple(self, key: str) -> tuple[float, float, float]:
        value = self.get(key, list)
        if len(value) != 3 or not all(_is(x, float) for x in value):
            raise self.wrong(key, value, "a list of 3 numbers")
        return (float(value[0]), float(value[1]), float(value[2]))

    def child(self, key: str) -> _Reader:
        """The required object at `key`."""
        return _Reader(self.get(key, dict), self.source, f"{self.path}{key}.")

    def optional_child(self, key: str) -> _Reader | None:
        value = self.optional(key, dict)
        return None if value is None else _Reader(value, self.source, f"{self.path}{key}.")

    def wrong(self, key: str, value: object, expected: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"{self.source}: model card field {self.path + key!r} should be {expected}, "
            f"not {reprlib.repr(value)}"
        )

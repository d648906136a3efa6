"""Domain objects shared by the server, the worker, the store and the registry.

They mirror the protobuf messages of `graft.v1` but carry no protobuf: conversion lives in
`graft.api.convert` alone. Enum values equal the proto numbers.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

# The tenant of everything created without authentication (auth off, the embedded default)
# and of every row that predates tenants (store schema < 3).
DEFAULT_TENANT = "default"


class Strategy(enum.IntEnum):
    UNSPECIFIED = 0
    FULL_FINE_TUNE = 1
    PARTIAL_FINE_TUNE = 2
    FEATURE_EXTRACTION = 3


class Quadrant(enum.IntEnum):
    UNSPECIFIED = 0
    LARGE_DIFFERENT = 1
    LARGE_SIMILAR = 2
    SMALL_DIFFERENT = 3
    SMALL_SIMILAR = 4


class JobState(enum.IntEnum):
    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventKind(enum.IntEnum):
    UNSPECIFIED = 0
    STATE = 1
    STEP = 2
    EVALUATION = 3
    MESSAGE = 4


@dataclass(frozen=True)
class DatasetRef:
    """A dataset path inside a data root (`uri`) or an upload's id (`dataset_id`)."""

    uri: str = ""
    dataset_id: str = ""


@dataclass(frozen=True)
class TrainingPlan:
    """A complete recipe for one job. Zero values mean "not set" until `resolved()`."""

    backbone: str = ""
    strategy: Strategy = Strategy.UNSPECIFIED
    trainable_stages: int = 0
    head_learning_rate: float = 0.0
    base_learning_rate: float = 0.0
    epochs: int = 0
    batch_size: int = 0
    image_size: int = 0
    augmentation: bool = False
    class_weighting: bool = False
    early_stopping_patience: int = 0
    seed: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    head_warmup_epochs: int = 0
    validation_fraction: float = 0.0
    # Feature extraction: 1-based stages whose pooled outputs, concatenated, feed the head;
    # () = the last stage.
    feature_stages: tuple[int, ...] = ()
    # Feature extraction with a cut: pool each stage over a grid x grid partition of its map;
    # 0 or 1 = globally.
    feature_grid: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strategy"] = int(self.strategy)
        d["feature_stages"] = list(self.feature_stages)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingPlan:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["strategy"] = Strategy(int(kw.get("strategy", 0)))
        kw["feature_stages"] = tuple(int(x) for x in kw.get("feature_stages", ()))
        return cls(**kw)


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    support: int


@dataclass(frozen=True)
class EvaluationMetrics:
    """Validation metrics after an epoch (and of a registered model)."""

    accuracy: float = 0.0
    top5_accuracy: float = 0.0
    macro_f1: float = 0.0
    loss: float = 0.0
    per_class: tuple[ClassMetrics, ...] = ()
    confusion: tuple[int, ...] = ()  # row-major, confusion[true * n + predicted]
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EvaluationMetrics | None:
        if not d:
            return None
        return cls(
            accuracy=d.get("accuracy", 0.0),
            top5_accuracy=d.get("top5_accuracy", 0.0),
            macro_f1=d.get("macro_f1", 0.0),
            loss=d.get("loss", 0.0),
            per_class=tuple(ClassMetrics(**c) for c in d.get("per_class", ())),
            confusion=tuple(d.get("confusion", ())),
            labels=tuple(d.get("labels", ())),
        )


@dataclass(frozen=True)
class ProgressEvent:
    """One entry of a job's append-only log. `sequence` is assigned by the store."""

    kind: EventKind
    state: JobState
    sequence: int = 0
    job_id: str = ""
    time: float = 0.0
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float = 0.0
    learning_rate: float = 0.0
    images_per_second: float = 0.0
    eta_seconds: float = 0.0
    metrics: EvaluationMetrics | None = None
    message: str = ""
    # Top-1 on the epoch's training batches as trained (evaluation events); 0: not measured.
    train_accuracy: float = 0.0

    def payload(self) -> dict[str, Any]:
        """What the store keeps besides sequence, job_id and time."""
        d = dataclasses.asdict(self)
        for k in ("sequence", "job_id", "time"):
            d.pop(k)
        d["kind"] = int(self.kind)
        d["state"] = int(self.state)
        return d

    @classmethod
    def from_payload(
        cls, sequence: int, job_id: str, time: float, d: dict[str, Any]
    ) -> ProgressEvent:
        d = dict(d)
        metrics = EvaluationMetrics.from_dict(d.pop("metrics", None))
        return cls(
            sequence=sequence,
            job_id=job_id,
            time=time,
            kind=EventKind(d.pop("kind")),
            state=JobState(d.pop("state")),
            metrics=metrics,
            **d,
        )


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int = 0
    alias: str = ""
    # Model names are per tenant: the same name in two tenants is two models.
    tenant: str = DEFAULT_TENANT


@dataclass
class Job:
    job_id: str
    model_name: str
    dataset: DatasetRef
    plan: TrainingPlan
    request_id: str
    state: JobState
    create_time: float
    start_time: float | None = None
    end_time: float | None = None
    error: str = ""
    model_version: int = 0
    attempts: int = 0
    cancel_requested: bool = False
    last_sequence: int = 0
    skipped_files: int = 0
    metrics: EvaluationMetrics | None = None
    lease_owner: str = ""
    lease_expires: float = 0.0
    # StartFineTune without a plan: the worker advises first, then trains that plan.
    advise_first: bool = False
    # False until the worker has scanned the dataset and completed `plan` (resolve_plan or
    # Advise); until then `plan` is what the caller asked for.
    plan_resolved: bool = True
    # A failed job's error as graft.errors.error_to_dict gives it (kind, field violations).
    error_detail: dict[str, Any] = field(default_factory=dict)
    # Whose job it is; the model it registers belongs to the same tenant.
    tenant: str = DEFAULT_TENANT


class TaskKind(enum.IntEnum):
    """Short work the API awaits on a caller's behalf, done by an advisor lane."""

    UNSPECIFIED = 0
    ADVISE = 1  # measure a dataset and advise (AdviseRequest -> AdviseResponse)
    CHECK_UPLOAD = 2  # extract and scan an uploaded archive (UploadDataset's answer)
    EXPORT = 3  # export a model version to a file format (ExportModel)
    COMPARE = 4  # evaluate two model versions on the same held-out images (CompareModels)


@dataclass
class Task:
    """One piece of awaited work: the API queues it, a worker claims it under a lease and
    writes its result (JSON) or its error (graft.errors.error_to_dict); nothing outlives the
    caller: past `deadline` (epoch seconds, 0 = none) or on cancel it is abandoned."""

    task_id: str
    kind: TaskKind
    state: JobState
    request: dict[str, Any]
    create_time: float
    deadline: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    error_detail: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    lease_owner: str = ""
    lease_expires: float = 0.0
    worker_pid: int = 0  # the process that ran it (claims record it)
    start_time: float | None = None
    end_time: float | None = None


@dataclass
class ModelVersion:
    name: str
    version: int
    create_time: float
    job_id: str
    backbone: str
    labels: tuple[str, ...]
    sha256: str
    card: dict[str, Any]  # as stored (JSON); typed: graft.registry.card.ModelCard.from_dict
    artifact_dir: str
    aliases: list[str] = field(default_factory=list)
    metrics: EvaluationMetrics | None = None
    tenant: str = DEFAULT_TENANT  # (tenant, name, version) identifies a version

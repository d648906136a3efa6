"""protobuf <-> domain conversion, in one place. Domain code never sees protobuf."""

from __future__ import annotations

import enum
import json
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from graft.advisor import Advice, BackboneScore, DatasetReportData
from graft.api.errors import to_rpc_status
from graft.compare import Comparison
from graft.domain import (
    DatasetRef,
    EvaluationMetrics,
    Job,
    ModelRef,
    ModelVersion,
    ProgressEvent,
    Strategy,
    TrainingPlan,
)
from graft.errors import InvalidArgument, error_from_dict
from graft.store import UploadRecord
from graft_client.v1 import adaptation_pb2 as pb

_PLAN_FIELDS = [
    "backbone", "trainable_stages", "head_learning_rate", "base_learning_rate", "epochs",
    "batch_size", "image_size", "augmentation", "class_weighting", "early_stopping_patience",
    "seed", "weight_decay", "label_smoothing", "warmup_epochs", "head_warmup_epochs",
    "validation_fraction", "feature_grid",
]  # fmt: skip


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def dataset_from_pb(msg: pb.DatasetRef) -> DatasetRef:
    return DatasetRef(uri=msg.uri.strip(), dataset_id=msg.dataset_id.strip())


def dataset_to_pb(ref: DatasetRef) -> pb.DatasetRef:
    return pb.DatasetRef(uri=ref.uri, dataset_id=ref.dataset_id)


E = TypeVar("E", bound=enum.IntEnum)


def enum_from_pb(cls: type[E], value: int, field: str) -> E:
    """A proto enum's domain value. Proto3 enums are open, so any int32 arrives: one this
    server does not know is the caller's error (INVALID_ARGUMENT on `field`)."""
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(str(int(v)) for v in cls)
        raise InvalidArgument.of(field, f"unknown value {value} (known: {known})") from None


def plan_from_pb(msg: pb.TrainingPlan) -> TrainingPlan:
    kw: dict[str, Any] = {name: getattr(msg, name) for name in _PLAN_FIELDS}
    kw["backbone"] = msg.backbone.strip()
    strategy = enum_from_pb(Strategy, msg.strategy, "plan.strategy")
    return TrainingPlan(strategy=strategy, feature_stages=tuple(msg.feature_stages), **kw)


def plan_to_pb(plan: TrainingPlan) -> pb.TrainingPlan:
    return pb.TrainingPlan(
        strategy=int(plan.strategy),  # type: ignore[arg-type]
        feature_stages=list(plan.feature_stages),
        **{name: getattr(plan, name) for name in _PLAN_FIELDS},
    )


def metrics_to_pb(
    m: EvaluationMetrics | None, confusion: bool = True
) -> pb.EvaluationMetrics | None:
    """The metrics; without the confusion matrix unless `confusion`: it grows with the
    square of the class count (1,000 classes: 4 MB a message), so lists and progress events
    leave it out and GetJob / GetModel carry it."""
    if m is None:
        return None
    return pb.EvaluationMetrics(
        accuracy=m.accuracy,
        top5_accuracy=m.top5_accuracy,
        macro_f1=m.macro_f1,
        loss=m.loss,
        per_class=[
            pb.ClassMetrics(
                label=c.label, precision=c.precision, recall=c.recall, support=c.support
            )
            for c in m.per_class
        ],
        confusion=list(m.confusion) if confusion else [],
        labels=list(m.labels),
    )


def job_to_pb(job: Job, detail: bool = True) -> pb.Job:
    """The job; `detail=False` (lists) leaves the confusion matrix out."""
    return pb.Job(
        job_id=job.job_id,
        state=int(job.state),  # type: ignore[arg-type]
        model_name=job.model_name,
        dataset=dataset_to_pb(job.dataset),
        plan=plan_to_pb(job.plan),
        request_id=job.request_id,
        create_time=timestamp(job.create_time),
        start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time),
        error=job.error,
        model=pb.ModelRef(name=job.model_name, version=job.model_version, tenant=job.tenant)
        if job.model_version
        else None,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        last_sequence=job.last_sequence,
        skipped_files=job.skipped_files,
        metrics=metrics_to_pb(job.metrics, confusion=detail),
        error_status=to_rpc_status(error_from_dict(job.error_detail)) if job.error_detail else None,
        plan_resolved=job.plan_resolved,
        tenant=job.tenant,
    )


def event_to_pb(ev: ProgressEvent) -> pb.ProgressEvent:
    return pb.ProgressEvent(
        sequence=ev.sequence,
        job_id=ev.job_id,
        state=int(ev.state),  # type: ignore[arg-type]
        kind=int(ev.kind),  # type: ignore[arg-type]
        time=timestamp(ev.time),
        epoch=ev.epoch,
        total_epochs=ev.total_epochs,
        step=ev.step,
        steps_per_epoch=ev.steps_per_epoch,
        loss=ev.loss,
        learning_rate=ev.learning_rate,
        images_per_second=ev.images_per_second,
        eta_seconds=ev.eta_seconds,
        metrics=metrics_to_pb(ev.metrics, confusion=False),  # GetJob / GetModel have it
        message=ev.message,
        train_accuracy=ev.train_accuracy,
    )


def model_ref_from_pb(msg: pb.ModelRef, tenant: str) -> ModelRef:
    """The reference, in `tenant` (the servicer decides whose model a caller may name)."""
    return ModelRef(
        name=msg.name.strip(), version=msg.version, alias=msg.alias.strip(), tenant=tenant
    )


def model_version_to_pb(mv: ModelVersion, detail: bool = True) -> pb.ModelVersion:
    """The version; `detail=False` (ListModels) leaves the confusion matrix out of its
    metrics. The card's copy of the metrics never carries it: as JSON it was the biggest
    part of a version (5 MB at 1,000 classes), and `metrics.confusion` has the same."""
    card = mv.card
    if isinstance(card.get("metrics"), dict) and "confusion" in card["metrics"]:
        card = {**card, "metrics": {k: v for k, v in card["metrics"].items() if k != "confusion"}}
    return pb.ModelVersion(
        name=mv.name,
        version=mv.version,
        aliases=sorted(mv.aliases),
        create_time=timestamp(mv.create_time),
        job_id=mv.job_id,
        backbone=mv.backbone,
        labels=list(mv.labels),
        metrics=metrics_to_pb(mv.metrics, confusion=detail),
        card_json=json.dumps(card, sort_keys=True),
        sha256=mv.sha256,
        tenant=mv.tenant,
    )


def advice_to_pb(advice: Advice) -> pb.AdviseResponse:
    report = report_to_pb(advice.report) if advice.report is not None else None
    return pb.AdviseResponse(
        quadrant=int(advice.quadrant),  # type: ignore[arg-type]
        plan=plan_to_pb(advice.plan),
        similarity=advice.similarity,
        report=report,
        similarity_signals=[
            pb.SimilaritySignal(
                name=s.name, value=s.value, score=s.score, description=s.description
            )
            for s in advice.signals
        ],
        backbones=[_backbone_score_pb(advice, b) for b in advice.backbones],
        estimated_accuracy_low=advice.estimated_accuracy[0],
        estimated_accuracy_high=advice.estimated_accuracy[1],
        strategy_estimates=[
            pb.StrategyEstimate(
                strategy=int(e.strategy),  # type: ignore[arg-type]
                accuracy_low=e.accuracy_low,
                accuracy_high=e.accuracy_high,
                training_seconds=e.training_seconds,
                basis=e.basis,
            )
            for e in advice.strategy_estimates
        ],
        similarity_method=advice.similarity_method,
        rationale=advice.rationale,
        small_dataset_threshold=advice.small_threshold,
        estimated_training_seconds=advice.estimated_training_seconds,
        matrix_strategy=int(advice.matrix_strategy),  # type: ignore[arg-type]
        from_cache=advice.from_cache,
        similarity_low=advice.similarity_interval[0],
        similarity_high=advice.similarity_interval[1],
        similarity_borderline=advice.similarity_borderline,
        similarity_images=advice.similarity_images,
    )


def _backbone_score_pb(advice: Advice, b: BackboneScore) -> pb.BackboneScore:
    msg = pb.BackboneScore(
        backbone=b.backbone,
        probe_accuracy=b.probe_accuracy,
        params_millions=b.params_millions,
        images_per_second=b.images_per_second,
        probe_accuracy_std=b.probe_accuracy_std,
        logme=b.logme,
    )
    depth = advice.depth
    if depth is not None and b.backbone == advice.plan.backbone:
        msg.stages.extend(
            pb.StageScore(
                stage=st.stage,
                channels=st.channels,
                probe_accuracy=st.probe.accuracy,
                logme=st.logme,
            )
            for st in depth.stages
        )
        msg.feature_stages.extend(depth.cut.stages)
        msg.cut_probe_accuracy = depth.cut.probe.accuracy
        msg.feature_grid = depth.cut.grid
    else:
        msg.stages.extend(pb.StageScore(stage=i + 1, logme=v) for i, v in enumerate(b.stage_logme))
    return msg


def report_to_pb(r: DatasetReportData) -> pb.DatasetReport:
    """The report as graft.v1.DatasetReport."""
    return pb.DatasetReport(
        classes=[pb.ClassCount(label=label, count=count) for label, count in r.classes],
        total_images=r.total_images,
        skipped_files=r.skipped_files,
        imbalance_ratio=r.imbalance_ratio,
        median_width=r.median_width,
        median_height=r.median_height,
        fingerprint=r.fingerprint,
        skipped_examples=list(r.skipped_examples),
        duplicate_images=r.duplicate_images,
        duplicate_groups=r.duplicate_groups,
        cross_split_duplicates=r.cross_split_duplicates,
        conflicting_label_duplicates=r.conflicting_label_duplicates,
        min_width=r.min_width,
        max_width=r.max_width,
        min_height=r.min_height,
        max_height=r.max_height,
        modes=dict(r.modes),
    )


def upload_to_pb(upload: UploadRecord, ttl_seconds: float) -> pb.UploadedDataset:
    """An upload as graft.v1.UploadedDataset; `ttl_seconds` (0: never) dates its expiry."""
    return pb.UploadedDataset(
        dataset_id=upload.dataset_id,
        filename=upload.filename,
        tenant=upload.tenant,
        archive_bytes=upload.size_bytes,
        extracted_bytes=upload.extracted_bytes,
        sha256=upload.fingerprint,
        create_time=timestamp(upload.create_time),
        last_used_time=timestamp(upload.last_used),
        expire_time=timestamp(upload.last_used + ttl_seconds) if ttl_seconds else None,
    )


def comparison_to_pb(c: Comparison) -> pb.CompareModelsResponse:
    """A comparison of two versions; both metrics with their confusion matrices (one
    answer, like GetModel's)."""
    return pb.CompareModelsResponse(
        baseline=_resolved_ref_pb(c.baseline),
        candidate=_resolved_ref_pb(c.candidate),
        baseline_metrics=metrics_to_pb(c.baseline_metrics),
        candidate_metrics=metrics_to_pb(c.candidate_metrics),
        deltas=[
            pb.MetricDelta(
                metric=d.metric,
                baseline=d.baseline,
                candidate=d.candidate,
                delta=d.delta,
                higher_is_better=d.higher_is_better,
            )
            for d in c.deltas
        ],
        images=c.images,
        split=c.split,
        candidate_not_worse=c.candidate_not_worse,
    )


def _resolved_ref_pb(ref: ModelRef) -> pb.ModelRef:
    return pb.ModelRef(name=ref.name, version=ref.version, tenant=ref.tenant)

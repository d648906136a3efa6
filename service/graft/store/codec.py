"""Domain objects <-> the column values every SQL store keeps (shared by all backends)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from graft.domain import (
    DatasetRef,
    EvaluationMetrics,
    EventKind,
    Job,
    JobState,
    ModelVersion,
    ProgressEvent,
    Task,
    TaskKind,
    TrainingPlan,
)

# The jobs columns a Job is built from, in `job_from_row` order.
JOB_COLUMNS = (
    "job_id, model_name, dataset_uri, dataset_id, plan_json, request_id, state, create_time,"
    " start_time, end_time, error, model_version, attempts, cancel_requested, last_sequence,"
    " skipped_files, metrics_json, lease_owner, lease_expires, advise_first, plan_resolved,"
    " error_json, tenant"
)

# The tasks columns a Task is built from, in `task_from_row` order.
TASK_COLUMNS = (
    "task_id, kind, state, request_json, create_time, deadline, result_json, error_json,"
    " cancel_requested, lease_owner, lease_expires, worker_pid, start_time, end_time"
)

MODEL_COLUMNS = (
    "name, version, create_time, job_id, backbone, labels_json, sha256, card_json,"
    " artifact_dir, metrics_json, tenant"
)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def metrics_to_json(metrics: EvaluationMetrics | None) -> str:
    return "" if metrics is None else dumps(metrics.to_dict())


def metrics_from_json(text: str | None) -> EvaluationMetrics | None:
    return EvaluationMetrics.from_dict(json.loads(text)) if text else None


def job_from_row(row: tuple[Any, ...]) -> Job:
    (
        job_id,
        model_name,
        dataset_uri,
        dataset_id,
        plan_json,
        request_id,
        state,
        create_time,
        start_time,
        end_time,
        error,
        model_version,
        attempts,
        cancel_requested,
        last_sequence,
        skipped_files,
        metrics_json,
        lease_owner,
        lease_expires,
        advise_first,
        plan_resolved,
        error_json,
        tenant,
    ) = row
    return Job(
        job_id=job_id,
        model_name=model_name,
        dataset=DatasetRef(uri=dataset_uri, dataset_id=dataset_id),
        plan=TrainingPlan.from_dict(json.loads(plan_json)),
        request_id=request_id,
        state=JobState(state),
        create_time=create_time,
        start_time=start_time,
        end_time=end_time,
        error=error,
        model_version=model_version,
        attempts=attempts,
        cancel_requested=bool(cancel_requested),
        last_sequence=last_sequence,
        skipped_files=skipped_files,
        metrics=metrics_from_json(metrics_json),
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        advise_first=bool(advise_first),
        plan_resolved=bool(plan_resolved),
        error_detail=json.loads(error_json) if error_json else {},
        tenant=tenant,
    )


def task_from_row(row: tuple[Any, ...]) -> Task:
    (
        task_id,
        kind,
        state,
        request_json,
        create_time,
        deadline,
        result_json,
        error_json,
        cancel_requested,
        lease_owner,
        lease_expires,
        worker_pid,
        start_time,
        end_time,
    ) = row
    return Task(
        task_id=task_id,
        kind=TaskKind(kind),
        state=JobState(state),
        request=json.loads(request_json),
        create_time=create_time,
        deadline=deadline,
        result=json.loads(result_json) if result_json else {},
        error_detail=json.loads(error_json) if error_json else {},
        cancel_requested=bool(cancel_requested),
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        worker_pid=worker_pid,
        start_time=start_time,
        end_time=end_time,
    )


def event_to_json(event: ProgressEvent) -> str:
    return dumps(event.payload())


def event_from_row(row: tuple[Any, ...]) -> ProgressEvent:
    job_id, sequence, time, payload_json = row
    return ProgressEvent.from_payload(sequence, job_id, time, json.loads(payload_json))


def state_event(state: JobState, message: str, metrics: EvaluationMetrics | None = None) -> str:
    """The payload of a STATE event, as stored."""
    return event_to_json(
        ProgressEvent(kind=EventKind.STATE, state=state, message=message, metrics=metrics)
    )


def model_from_row(row: tuple[Any, ...], aliases: list[str]) -> ModelVersion:
    (
        name,
        version,
        create_time,
        job_id,
        backbone,
        labels_json,
        sha256,
        card_json,
        artifact_dir,
        metrics_json,
        tenant,
    ) = row
    return ModelVersion(
        name=name,
        version=version,
        create_time=create_time,
        job_id=job_id,
        backbone=backbone,
        labels=tuple(json.loads(labels_json)),
        sha256=sha256,
        card=json.loads(card_json),
        artifact_dir=artifact_dir,
        aliases=sorted(aliases),
        metrics=metrics_from_json(metrics_json),
        tenant=tenant,
    )


def new_model_version(
    *,
    name: str,
    version: int,
    now: float,
    job_id: str,
    backbone: str,
    labels: tuple[str, ...] | list[str],
    sha256: str,
    card: dict[str, Any],
    artifact_dir: str,
    metrics: EvaluationMetrics | None,
    tenant: str,
) -> ModelVersion:
    """The version a store is about to insert. Its card goes through JSON once: the card
    returned equals the one read back later, and a card that is not JSON fails here, before
    anything is published."""
    stored_card = json.loads(
        dumps({**card, "name": name, "version": version, "sha256": sha256, "create_time": now})
    )
    return ModelVersion(
        name=name,
        version=version,
        create_time=now,
        job_id=job_id,
        backbone=backbone,
        labels=tuple(labels),
        sha256=sha256,
        card=stored_card,
        artifact_dir=artifact_dir,
        metrics=metrics,
        tenant=tenant,
    )


def model_version_row(mv: ModelVersion) -> tuple[Any, ...]:
    """`mv` as the values of MODEL_COLUMNS (what `model_from_row` reads back)."""
    return (
        mv.name,
        mv.version,
        mv.create_time,
        mv.job_id,
        mv.backbone,
        dumps(list(mv.labels)),
        mv.sha256,
        dumps(mv.card),
        mv.artifact_dir,
        metrics_to_json(mv.metrics),
        mv.tenant,
    )


def request_digest(
    model_name: str, dataset: DatasetRef, plan: TrainingPlan, advise_first: bool
) -> str:
    """What a StartFineTune request asked for, as a digest: a request_id sent again must
    come with the same one (the stored plan is rewritten once resolved, so it cannot be
    compared instead)."""
    asked = {
        "model_name": model_name,
        "dataset": [dataset.uri, dataset.dataset_id],
        "plan": plan.to_dict(),
        "advise_first": advise_first,
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()

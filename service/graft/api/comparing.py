"""Comparing two model versions, for CompareModels (api/compare.py) and SetModelAlias's
guard (api/models.py): the cheap checks here, the evaluation in a worker (a COMPARE task
of the advisor lane, graft.compare.run), awaited like Advise (api/tasks.py).

Checked here before a worker is asked: both versions exist (NOT_FOUND), they classify
into the same labels, and the candidate's training job and its dataset are still there
(FAILED_PRECONDITION otherwise, saying which). Jobs are never deleted from the store, so a
version registered by a job finds it; one registered outside training has none, and no
validation split to compare on.
"""

from __future__ import annotations

import dataclasses
import logging

import grpc

from graft import errors
from graft.api.services import Services
from graft.api.tasks import run_task
from graft.compare.result import Comparison, dataset_gone, guard_refusal, label_difference
from graft.data import locate_dataset
from graft.domain import DatasetRef, ModelRef, ModelVersion, TaskKind

log = logging.getLogger(__name__)


async def compare_versions(
    services: Services, baseline: ModelRef, candidate: ModelRef, context: grpc.aio.ServicerContext
) -> Comparison:
    """Both versions (each resolved: a version, an alias or the newest) evaluated on the
    candidate's held-out images."""
    b = await services.call(services.store.resolve_model, baseline)
    c = await services.call(services.store.resolve_model, candidate)
    return await _compare(services, b, c, context)


async def guard_alias(
    services: Services,
    name: str,
    alias: str,
    version: int,
    tenant: str,
    context: grpc.aio.ServicerContext,
) -> Comparison | None:
    """SetModelAlias's guard: when `alias` points at another version now, compare it (the
    baseline) with `version` (the candidate) and raise FailedPrecondition with the figures
    unless the candidate is not worse (graft.compare.guard_refusal has the rule). None (no
    comparison) for a new alias or the version it points at already.

    Between this check and the move another caller may move the alias; the guard then
    compared against the version the alias had when it looked (the store has no
    compare-and-set of aliases)."""
    store = services.store
    candidate = await services.call(store.get_model_version, name, version, tenant)
    try:
        current = await services.call(
            store.resolve_model, ModelRef(name=name, alias=alias, tenant=tenant)
        )
    except errors.NotFound:
        return None  # a new alias: nothing to be worse than
    if current.version == candidate.version:
        return None
    comparison = await _compare(services, current, candidate, context)
    refusal = guard_refusal(comparison, alias)
    if refusal is not None:
        raise refusal
    log.info(
        "guard: %s@%s moves from version %d to %d (accuracy %.4f -> %.4f on %d images)",
        name,
        alias,
        current.version,
        candidate.version,
        comparison.baseline_metrics.accuracy,
        comparison.candidate_metrics.accuracy,
        comparison.images,
    )
    return comparison


async def _compare(
    services: Services,
    baseline: ModelVersion,
    candidate: ModelVersion,
    context: grpc.aio.ServicerContext,
) -> Comparison:
    differ = label_difference(tuple(baseline.labels), tuple(candidate.labels))
    if differ:
        raise errors.FailedPrecondition(
            f"{_named(baseline)} and {_named(candidate)} classify into different labels "
            f"({differ}): only versions trained on the same classes can be compared"
        )
    dataset = await _training_dataset(services, candidate)
    request = {
        "baseline": _identity(baseline),
        "candidate": _identity(candidate),
        "dataset": dataclasses.asdict(dataset),
    }
    result = await run_task(services, TaskKind.COMPARE, request, context)
    return Comparison.from_json(result)


async def _training_dataset(services: Services, version: ModelVersion) -> DatasetRef:
    """The DatasetRef of the job that trained `version`, if it can still be read (a
    cheap look: a few stat calls; the worker scans it)."""
    try:
        job = await services.call(services.store.get_job, version.job_id, version.tenant)
    except errors.NotFound:
        raise errors.FailedPrecondition(
            f"{_named(version)} has no training job in this store (it was registered "
            "outside training), so it has no validation split to compare on: name as the "
            "candidate a version that a fine-tuning job trained"
        ) from None
    try:
        await services.call(locate_dataset, job.dataset, services.config)
    except (errors.NotFound, errors.InvalidArgument) as exc:
        raise dataset_gone(_named(version), job.dataset, exc.message) from None
    return job.dataset


def _identity(v: ModelVersion) -> dict[str, object]:
    return {"name": v.name, "version": v.version, "tenant": v.tenant}


def _named(v: ModelVersion) -> str:
    return f"{v.name}:{v.version}"

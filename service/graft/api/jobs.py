"""The training-job RPCs: StartFineTune queues a job (the workers run it); GetJob,
ListJobs, CancelJob and StreamProgress read and steer it. Another tenant's job is
NOT_FOUND."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from graft import errors
from graft.api import convert, paging
from graft.api.auth import current_identity
from graft.api.datasets import locate_for_caller
from graft.api.services import Services
from graft.api.validation import MAX_PAGE, require, valid_job_id
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.config import Config
from graft.domain import EventKind, JobState, TrainingPlan
from graft.plans import validate_plan
from graft.registry import validate_model_name
from graft_client.v1 import adaptation_pb2 as pb

# The module these lines were written in: log records keep its name.
log = logging.getLogger("graft.api.servicer")

EVENTS_PER_READ = 500  # StreamProgress reads a job's log this many events at a time


class JobRPCs:
    """StartFineTune, StreamProgress, GetJob, ListJobs and CancelJob, for
    `AdaptationServicer`."""

    services: Services

    async def StartFineTune(
        self, request: pb.StartFineTuneRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartFineTuneResponse:
        services = self.services
        tenant = current_identity().tenant  # an admin's jobs are its own tenant's too
        name = request.model_name.strip()
        require(bool(name), "model_name", "is required")
        validate_model_name(name)
        require(len(request.request_id) <= 200, "request_id", "at most 200 characters")
        ref = convert.dataset_from_pb(request.dataset)
        await locate_for_caller(services, ref)
        plan = TrainingPlan()
        if request.HasField("plan"):
            plan = convert.plan_from_pb(request.plan)
            try:
                spec = get_spec(plan.backbone or DEFAULT_BACKBONE)
            except errors.NotFound as exc:
                raise errors.InvalidArgument.of("plan.backbone", exc.message) from exc
            validate_plan(plan, spec)  # what is set must be right; the worker fills the rest
            backbone = plan.backbone or DEFAULT_BACKBONE
            await services.call(_require_weights, services.config, backbone)
        job, created = await services.call(
            lambda: services.store.create_job(
                model_name=name,
                dataset=ref,
                plan=plan,
                request_id=request.request_id.strip(),
                config_json=services.config.public_json(),
                advise_first=not request.HasField("plan"),
                plan_resolved=False,
                max_active=services.config.max_active_jobs_per_model,
                tenant=tenant,
            )
        )
        if created:
            how = plan.strategy.name if request.HasField("plan") else "advise, then train"
            log.info("queued job %s for model %s (%s)", job.job_id, name, how)
        return pb.StartFineTuneResponse(job=convert.job_to_pb(job))

    async def StreamProgress(
        self, request: pb.StreamProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProgressEvent]:
        services = self.services
        job_id = valid_job_id(request.job_id)
        require(request.after_sequence >= 0, "after_sequence", "must not be negative")
        after = request.after_sequence
        async with services.watcher.follow_job(job_id) as changed:
            # NOT_FOUND first, also for another tenant's job.
            job = await services.call(services.store.get_job, job_id, current_identity().scope)
            ended = job.state.terminal
            while True:
                changed.clear()
                events = await services.call(
                    services.store.events_after, job_id, after, EVENTS_PER_READ
                )
                for event in events:
                    yield convert.event_to_pb(event)
                    after = event.sequence
                    # The terminal STATE event is the last one a job ever gets.
                    ended = ended or (event.kind == EventKind.STATE and event.state.terminal)
                if len(events) == EVENTS_PER_READ:
                    continue
                if ended:
                    return
                if services.draining.is_set():
                    raise errors.Unavailable(
                        "server is shutting down; reconnect with after_sequence"
                    )
                await changed.wait()

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResponse:
        job_id = valid_job_id(request.job_id)
        services = self.services
        job = await services.call(services.store.get_job, job_id, current_identity().scope)
        return pb.GetJobResponse(job=convert.job_to_pb(job))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        state = convert.enum_from_pb(JobState, request.state, "state") if request.state else None
        scope = current_identity().scope
        before = paging.decode(request.page_token, "jobs", request.state)
        require(
            before is None or (type(before) is int and 0 < before < 2**63),
            "page_token",
            "is malformed",
        )
        # At most MAX_PAGE jobs a page, whatever the limit: the rest follow a token.
        limit = min(request.limit or 100, MAX_PAGE)
        services = self.services
        jobs, cursor = await services.call(
            services.store.list_jobs_page, state, limit, scope, before or 0
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_pb(j, detail=False) for j in jobs],
            next_page_token=paging.encode("jobs", request.state, cursor) if cursor else "",
        )

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        job_id = valid_job_id(request.job_id)
        services = self.services
        job = await services.call(services.store.request_cancel, job_id, current_identity().scope)
        return pb.CancelJobResponse(job=convert.job_to_pb(job))


def _require_weights(config: Config, backbone: str) -> None:
    """Blocking (it looks at the weights directory): FailedPrecondition when `backbone`
    is known but its pretrained weights are not here."""
    status = {b.name: b for b in backbone_statuses(config.weights_dir)}
    entry = status.get(backbone)
    if entry is not None and not entry.ready:
        raise errors.FailedPrecondition(
            f"backbone {backbone!r} has no pretrained weights here: {entry.weights}"
        )

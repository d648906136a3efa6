"""graft.v1.AdaptationService on grpc.aio: each method validates cheaply, converts and
delegates; none computes on the event loop.

Every call runs as an `Identity` (graft.api.auth: the caller's tenant, admin or not); store
queries take its scope, so another tenant's job, model or upload is NOT_FOUND.

Blocking store calls (milliseconds each) run on a small thread pool (`Services.call`);
Predict goes to the Predict engine (graft.predict: decode pool, dynamic batcher, runners);
everything heavy (scanning a dataset, measuring it for Advise, checking an upload,
training) is work for a worker process, handed over through the store and, where the RPC's
contract is to answer with its result (Advise, UploadDataset), awaited without holding a
thread: the store watcher wakes the call when the task ends, and a caller that goes away
or runs out of time cancels the work.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from graft import errors
from graft.advisor.advise import DeclaredStats, advise_declared
from graft.advisor.codec import advice_from_json
from graft.api import convert, paging
from graft.api.auth import current_identity
from graft.api.errors import to_rpc_status
from graft.api.watcher import StoreWatcher
from graft.apikeys import validate_tenant
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.config import Config
from graft.data import UploadReceiver, locate_dataset
from graft.data.uploads import UploadQuota, remove_upload
from graft.domain import (
    DEFAULT_TENANT,
    DatasetRef,
    EventKind,
    JobState,
    ModelRef,
    TaskKind,
    TrainingPlan,
)
from graft.errors import quote
from graft.plans import validate_plan
from graft.predict import Predictor
from graft.registry import ModelRegistry, validate_model_name, validate_name
from graft.store import JobStore
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_PAGE = 1000  # jobs or model versions in one list page

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_DATASET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
T = TypeVar("T")


def _require(ok: bool, field: str, description: str) -> None:
    if not ok:
        raise errors.InvalidArgument.of(field, description)


async def _upload_stream(
    requests: AsyncIterator[pb.UploadDatasetRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.UploadDatasetRequest]:
    """The rest of an upload's messages. A stream that breaks off (the caller cancelled,
    went away, or sent a message over the size limit) is CANCELLED, not an unexpected error
    (an INTERNAL incident); one that ends because the call was cancelled is never taken
    for a complete upload."""
    while True:
        try:
            message = await anext(requests)
        except StopAsyncIteration:
            break
        except (asyncio.CancelledError, grpc.aio.AbortError, errors.GraftError):
            raise
        except Exception as exc:  # only the transport reads the stream
            log.info("upload stream broke off: %s: %s", type(exc).__name__, exc)
            raise errors.Cancelled(f"the upload stream broke off ({type(exc).__name__})") from None
        yield message
    if context.cancelled():
        raise errors.Cancelled("the upload was cancelled by its caller")


def _job_id(value: str, field: str = "job_id") -> str:
    value = value.strip()
    _require(bool(value), field, "is required")
    _require(bool(_JOB_ID.match(value)), field, f"{quote(value)} is not a job id (32 hex digits)")
    return value


@dataclass
class Services:
    """What the servicer delegates to; built once by graft.server."""

    config: Config
    store: JobStore
    registry: ModelRegistry
    predictor: Predictor
    draining: threading.Event
    watcher: StoreWatcher
    store_pool: Executor
    predict_pool: Executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a blocking store or file call) on the store pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.store_pool, fn, *args)


class AdaptationServicer(pb_grpc.AdaptationServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    # -- advice and training ------------------------------------------------------------

    async def Advise(
        self, request: pb.AdviseRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdviseResponse:
        config = self.s.config
        threshold = request.small_dataset_threshold or config.small_dataset_threshold
        _require(threshold > 0, "small_dataset_threshold", "must be positive")
        has_dataset = request.dataset.uri or request.dataset.dataset_id
        if not has_dataset and request.HasField("declared"):
            d = request.declared
            _require(d.num_classes >= 2, "declared.num_classes", "must be at least 2")
            _require(d.images_per_class >= 1, "declared.images_per_class", "must be positive")
            _require(0 <= d.similarity_hint <= 1, "declared.similarity_hint", "must be in [0, 1]")
            stats = DeclaredStats(d.num_classes, d.images_per_class, d.similarity_hint)
            advice = advise_declared(stats, small_threshold=threshold, backbone=DEFAULT_BACKBONE)
            return convert.advice_to_pb(advice)
        for field, value, limit in (
            ("max_images_per_class", request.max_images_per_class, config.advise_max_per_class),
            ("max_images", request.max_images, config.advise_max_images),
        ):
            _require(0 <= value <= limit, field, f"must be between 0 (default) and {limit}")
        _require(
            request.max_images == 0 or request.max_images >= 2, "max_images", "must be at least 2"
        )
        await self._locate(convert.dataset_from_pb(request.dataset))
        pending = await self.s.call(
            self.s.store.count_tasks, TaskKind.ADVISE, (JobState.QUEUED, JobState.RUNNING)
        )
        if pending >= config.max_pending_advice:
            raise errors.ResourceExhausted(
                f"{pending} Advise requests are already queued or running (the most this "
                "service takes); retry shortly",
                retry_after=5.0,
            )
        task_request = {
            "advise_request": json_format.MessageToDict(request, preserving_proto_field_name=True)
        }
        result = await self._run_task(TaskKind.ADVISE, task_request, context)
        if "advise_response" in result:  # from a worker of the previous release
            return json_format.ParseDict(result["advise_response"], pb.AdviseResponse())
        return convert.advice_to_pb(advice_from_json(result["advice"]))

    async def StartFineTune(
        self, request: pb.StartFineTuneRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartFineTuneResponse:
        tenant = current_identity().tenant  # an admin's jobs are its own tenant's too
        name = request.model_name.strip()
        _require(bool(name), "model_name", "is required")
        validate_model_name(name)
        _require(len(request.request_id) <= 200, "request_id", "at most 200 characters")
        ref = convert.dataset_from_pb(request.dataset)
        await self._locate(ref)
        plan = TrainingPlan()
        if request.HasField("plan"):
            plan = convert.plan_from_pb(request.plan)
            try:
                spec = get_spec(plan.backbone or DEFAULT_BACKBONE)
            except errors.NotFound as exc:
                raise errors.InvalidArgument.of("plan.backbone", exc.message) from exc
            validate_plan(plan, spec)  # what is set must be right; the worker fills the rest
            await self.s.call(self._check_weights, plan.backbone or DEFAULT_BACKBONE)
        job, created = await self.s.call(
            lambda: self.s.store.create_job(
                model_name=name,
                dataset=ref,
                plan=plan,
                request_id=request.request_id.strip(),
                config_json=self.s.config.to_json(),
                advise_first=not request.HasField("plan"),
                plan_resolved=False,
                max_active=self.s.config.max_active_jobs_per_model,
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
        job_id = _job_id(request.job_id)
        _require(request.after_sequence >= 0, "after_sequence", "must not be negative")
        after = request.after_sequence
        async with self.s.watcher.follow_job(job_id) as changed:
            # NOT_FOUND first, also for another tenant's job.
            job = await self.s.call(self.s.store.get_job, job_id, current_identity().scope)
            ended = job.state.terminal
            while True:
                changed.clear()
                events = await self.s.call(self.s.store.events_after, job_id, after, 500)
                for event in events:
                    yield convert.event_to_pb(event)
                    after = event.sequence
                    # The terminal STATE event is the last one a job ever gets.
                    ended = ended or (event.kind == EventKind.STATE and event.state.terminal)
                if len(events) == 500:
                    continue
                if ended:
                    return
                if self.s.draining.is_set():
                    raise errors.Unavailable(
                        "server is shutting down; reconnect with after_sequence"
                    )
                await changed.wait()

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResponse:
        job_id = _job_id(request.job_id)
        job = await self.s.call(self.s.store.get_job, job_id, current_identity().scope)
        return pb.GetJobResponse(job=convert.job_to_pb(job))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        _require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        state = convert.enum_from_pb(JobState, request.state, "state") if request.state else None
        scope = current_identity().scope
        before = paging.decode(request.page_token, "jobs", request.state)
        _require(
            before is None or (type(before) is int and 0 < before < 2**63),
            "page_token",
            "is malformed",
        )
        # At most MAX_PAGE jobs a page, whatever the limit: the rest follow a token.
        limit = min(request.limit or 100, MAX_PAGE)
        jobs, cursor = await self.s.call(
            self.s.store.list_jobs_page, state, limit, scope, before or 0
        )
        return pb.ListJobsResponse(
            jobs=[convert.job_to_pb(j, detail=False) for j in jobs],
            next_page_token=paging.encode("jobs", request.state, cursor) if cursor else "",
        )

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        job_id = _job_id(request.job_id)
        job = await self.s.call(self.s.store.request_cancel, job_id, current_identity().scope)
        return pb.CancelJobResponse(job=convert.job_to_pb(job))

    # -- registry and inference ---------------------------------------------------------

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        ref = self._model_ref(request.model)
        _require(len(request.images) > 0, "images", "at least one image is required")
        limit = self.s.config.max_predict_images
        if len(request.images) > limit:
            raise errors.ResourceExhausted(
                f"{len(request.images)} images in one request; at most {limit} are allowed"
            )
        _require(0 <= request.top_k <= 1000, "top_k", "must be in [0, 1000]")
        images = [im.data for im in request.images]
        # Batched with concurrent calls for the same version; the caller's deadline holds
        # while the images wait for the model (DEADLINE_EXCEEDED for this call alone).
        result = await self.s.predictor.predict_async(
            ref, images, request.top_k, context.time_remaining()
        )
        if result.version.tenant != ref.tenant:
            # Defence in depth: a Predict engine whose caches ignore the tenant would answer
            # with another tenant's model of the same name. That is a bug (INTERNAL, logged),
            # and its predictions must not reach this caller.
            raise RuntimeError(
                f"Predict answered {ref.tenant}'s {ref.name!r} with tenant "
                f"{result.version.tenant}'s model"
            )
        return pb.PredictResponse(
            model=pb.ModelRef(
                name=result.version.name,
                version=result.version.version,
                tenant=result.version.tenant,
            ),
            predictions=[
                pb.Prediction(
                    classes=[pb.ClassScore(label=label, score=score) for label, score in r.classes],
                    error=to_rpc_status(r.error) if r.error else None,
                )
                for r in result.results
            ],
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        prefix, scope = request.name_prefix.strip(), current_identity().scope
        _require(0 <= request.page_size <= MAX_PAGE, "page_size", f"must be in [0, {MAX_PAGE}]")
        after = paging.decode(request.page_token, "models", prefix)
        _require(
            after is None
            or (
                isinstance(after, list)
                and [type(x) for x in after] == [str, str, int]
                and 0 < after[2] < 2**63
            ),
            "page_token",
            "is malformed",
        )
        versions, cursor = await self.s.call(
            self.s.store.list_model_versions_page,
            prefix,
            scope,
            request.page_size or 100,
            None if after is None else (after[0], after[1], after[2]),
        )
        return pb.ListModelsResponse(
            models=[
                # An admin's list may hold one name in several tenants: one Model each.
                pb.Model(
                    name=name,
                    tenant=tenant,
                    versions=[convert.model_version_to_pb(v, detail=False) for v in group],
                )
                for (name, tenant), group in itertools.groupby(
                    versions, lambda v: (v.name, v.tenant)
                )
            ],
            next_page_token=paging.encode("models", prefix, list(cursor)) if cursor else "",
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        ref = self._model_ref(request.model)
        version = await self.s.call(self.s.store.resolve_model, ref)
        return pb.GetModelResponse(model=convert.model_version_to_pb(version))

    async def SetModelAlias(
        self, request: pb.SetModelAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetModelAliasResponse:
        _require(bool(request.name.strip()), "name", "is required")
        _require(bool(request.alias), "alias", "is required")
        validate_name(request.alias, "alias")
        _require(request.version >= 1, "version", "must be a version number (from 1)")
        name = request.name.strip()
        tenant = self._tenant(request.tenant, name, "tenant")
        version = await self.s.call(
            self.s.store.set_alias, name, request.alias, request.version, tenant
        )
        self.s.predictor.forget(version.name, version.tenant)  # later Predicts see the move
        return pb.SetModelAliasResponse(model=convert.model_version_to_pb(version))

    async def ListBackbones(
        self, request: pb.ListBackbonesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBackbonesResponse:
        statuses = await self.s.call(
            functools.partial(backbone_statuses, self.s.config.weights_dir, reveal_paths=False)
        )
        return pb.ListBackbonesResponse(
            backbones=[
                pb.Backbone(
                    name=b.name,
                    architecture=b.architecture,
                    ready=b.ready,
                    weights=b.weights,
                    input_size=b.input_size,
                    num_stages=b.num_stages,
                    params_millions=b.params_millions,
                    is_default=b.is_default,
                )
                for b in statuses
            ]
        )

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[pb.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadDatasetResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise errors.InvalidArgument.of("chunk", "the upload stream was empty")
        _require(bool(first.filename.strip()), "filename", "the first message must name the file")
        # Owned before it can be used: only its tenant (or an admin) may name its id.
        tenant = current_identity().tenant  # read here: the pool's threads can't see it
        received = await self._receive_upload(first, request_iterator, context, tenant)
        info = await self._check_upload(received, context)
        return pb.UploadDatasetResponse(
            dataset_id=str(received["dataset_id"]),
            size_bytes=int(info["size_bytes"]),
            images=int(info["images"]),
            classes=int(info["classes"]),
            skipped_files=int(info["skipped_files"]),
        )

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        dataset_id = request.dataset_id.strip()
        _require(bool(dataset_id), "dataset_id", "is required")
        _require(
            bool(_DATASET_ID.match(dataset_id)),
            "dataset_id",
            "must be 1-64 letters, digits, '-' or '_' (as UploadDataset returned)",
        )
        # The record first (NOT_FOUND for another tenant's, FAILED_PRECONDITION while in
        # use), then the files: nothing can name it once its record is gone.
        upload = await self.s.call(self.s.store.delete_upload, dataset_id, current_identity().scope)
        await self.s.call(remove_upload, dataset_id, self.s.config)
        log.info(
            "deleted upload %s of tenant %s (%d bytes)",
            dataset_id,
            upload.tenant,
            upload.stored_bytes,
        )
        return pb.DeleteDatasetResponse(freed_bytes=upload.stored_bytes)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        _require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        scope, config = current_identity().scope, self.s.config
        uploads = await self.s.call(self.s.store.list_uploads, scope, request.limit or 1000)
        used = await self.s.call(self.s.store.upload_usage, scope)
        return pb.ListDatasetsResponse(
            datasets=[convert.upload_to_pb(u, config.upload_ttl_seconds) for u in uploads],
            quota_bytes=config.upload_quota_bytes,
            used_bytes=used,
        )

    # -- helpers ------------------------------------------------------------------------

    async def _receive_upload(
        self,
        first: pb.UploadDatasetRequest,
        requests: AsyncIterator[pb.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
        tenant: str,
    ) -> dict[str, object]:
        """Write the streamed archive, refused at the first byte past max_upload_bytes or
        the tenant's upload quota, and record it as the tenant's (the quota checked again
        there, in one transaction with concurrent uploads). Nothing is kept of one that
        fails. Returns the CHECK_UPLOAD task's request."""
        quota = self.s.config.upload_quota_bytes
        used = await self.s.call(self.s.store.upload_usage, tenant) if quota else 0
        receiver = await self.s.call(
            UploadReceiver,
            self.s.config,
            first.filename.strip(),
            first.sha256.strip(),
            UploadQuota(quota, used),
        )
        try:
            await self.s.call(receiver.write, first.chunk)
            async for message in _upload_stream(requests, context):
                await self.s.call(receiver.write, message.chunk)
            received = await self.s.call(receiver.finish)
            await self.s.call(
                lambda: self.s.store.add_upload(
                    receiver.dataset_id,
                    str(receiver.dir),
                    receiver.size,
                    str(received["sha256"]),
                    tenant=tenant,
                    filename=receiver.name,
                    quota_bytes=quota,
                )
            )
        except BaseException:
            await asyncio.shield(self.s.call(receiver.abort))
            raise
        return {**received, "tenant": tenant}

    async def _check_upload(
        self, received: dict[str, object], context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        """The advisor's check of a received upload: extracted (within what is left of the
        tenant's quota) and scanned; the extracted copy's size is recorded (the quota
        checked again). Nothing is kept of an upload that fails it."""
        dataset_id, tenant = str(received["dataset_id"]), str(received["tenant"])
        quota = self.s.config.upload_quota_bytes
        try:
            if quota:
                used = await self.s.call(self.s.store.upload_usage, tenant)
                received["quota_left_bytes"] = quota - used
            info = await self._run_task(TaskKind.CHECK_UPLOAD, received, context)
            extracted = int(info.get("extracted_bytes", 0))
            await self.s.call(self.s.store.set_upload_extracted, dataset_id, extracted, quota)
        except BaseException:
            await asyncio.shield(self.s.call(self._forget_upload, dataset_id))
            raise
        return info

    def _forget_upload(self, dataset_id: str) -> None:
        """Blocking: the record and the folder of an upload that failed its check go."""
        try:
            self.s.store.delete_upload(dataset_id, force=True)
        except errors.NotFound:
            log.info("upload %s: its record was already gone", dataset_id)
        remove_upload(dataset_id, self.s.config)

    async def _locate(self, ref: DatasetRef) -> None:
        """The dataset reference is valid and points at something the caller may use (no
        scanning here). An upload is its tenant's: to anyone else it does not exist."""
        await self.s.call(locate_dataset, ref, self.s.config)
        caller = current_identity()
        if ref.dataset_id and not caller.admin:
            try:
                upload = await self.s.call(self.s.store.get_upload, ref.dataset_id)
                owner = upload.tenant
            except errors.NotFound:
                owner = DEFAULT_TENANT  # uploaded before tenants existed (store schema < 3)
            if owner != caller.tenant:
                raise errors.NotFound(f"no uploaded dataset with id {ref.dataset_id!r}")
        if ref.dataset_id:  # a new job or Advise uses it: its expiry starts again
            await self.s.call(self.s.store.touch_upload, ref.dataset_id)

    async def _run_task(
        self, kind: TaskKind, request: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        """Queue a task for a worker and await its result without holding a thread. The
        caller's deadline (or, with none, `advise_timeout_seconds`) goes with the task; a
        caller that goes away or runs out of time cancels it, and its worker stops."""
        remaining = context.time_remaining()
        budget = self.s.config.advise_timeout_seconds
        timeout = budget if remaining is None else min(remaining, budget)
        store = self.s.store
        task = await self.s.call(store.create_task, kind, request, time.time() + timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.s.watcher.wait_task(task.task_id)
        except BaseException as exc:
            # Cancelled (the client went away or its deadline passed), timed out here, or
            # the server is stopping: nobody will read the result, so stop the work.
            try:
                asyncio.get_running_loop().run_in_executor(
                    self.s.store_pool, store.cancel_task, task.task_id
                )
            except RuntimeError:  # the server has shut its store pool down
                log.warning("task %s not cancelled: the server is stopping", task.task_id)
            if isinstance(exc, TimeoutError):
                raise errors.Unavailable(
                    f"no worker finished the {kind.name.lower()} task in {timeout:.0f} s"
                ) from None
            raise
        task = await self.s.call(store.get_task, task.task_id)
        if task.state == JobState.SUCCEEDED:
            return task.result
        if task.state == JobState.FAILED:
            raise errors.error_from_dict(task.error_detail)
        if self.s.draining.is_set():
            raise errors.Unavailable("server is shutting down; retry")
        raise errors.Unavailable(f"the {kind.name.lower()} task was cancelled; retry")

    def _tenant(self, requested: str, model_name: str, field: str) -> str:
        """The tenant whose model `model_name` a call names: the caller's own unless an
        admin names another. Naming another tenant without the admin role is NOT_FOUND,
        with the words a missing model gets."""
        caller = current_identity()
        requested = requested.strip()
        if not requested or requested == caller.tenant:
            return caller.tenant
        if not caller.admin:
            raise errors.NotFound(f"model {model_name!r} not found")
        return validate_tenant(requested, field)

    def _model_ref(self, msg: pb.ModelRef) -> ModelRef:
        _require(bool(msg.name.strip()), "model.name", "is required")
        tenant = self._tenant(msg.tenant, msg.name.strip(), "model.tenant")
        ref = convert.model_ref_from_pb(msg, tenant)
        _require(ref.version >= 0, "model.version", "must not be negative")
        _require(not (ref.version and ref.alias), "model", "give a version or an alias, not both")
        return ref

    def _check_weights(self, backbone: str) -> None:
        status = {b.name: b for b in backbone_statuses(self.s.config.weights_dir)}
        entry = status.get(backbone)
        if entry is not None and not entry.ready:
            raise errors.FailedPrecondition(
                f"backbone {backbone!r} has no pretrained weights here: {entry.weights}"
            )

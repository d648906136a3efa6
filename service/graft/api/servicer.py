"""graft.v1.AdaptationService on grpc.aio: each method validates cheaply, converts and
delegates; none computes on the event loop.

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
from graft.api import convert
from graft.api.errors import to_rpc_status
from graft.api.watcher import StoreWatcher
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.config import Config
from graft.data import UploadReceiver, locate_dataset
from graft.domain import DatasetRef, EventKind, JobState, ModelRef, TaskKind, TrainingPlan
from graft.plans import validate_plan
from graft.predict import Predictor
from graft.registry import ModelRegistry, validate_model_name, validate_name
from graft.store import JobStore
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
T = TypeVar("T")


def _require(ok: bool, field: str, description: str) -> None:
    if not ok:
        raise errors.InvalidArgument.of(field, description)


def _job_id(value: str, field: str = "job_id") -> str:
    value = value.strip()
    _require(bool(value), field, "is required")
    _require(bool(_JOB_ID.match(value)), field, f"{value!r} is not a job id (32 hex digits)")
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
        return json_format.ParseDict(result["advise_response"], pb.AdviseResponse())

    async def StartFineTune(
        self, request: pb.StartFineTuneRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartFineTuneResponse:
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
            job = await self.s.call(self.s.store.get_job, job_id)  # NOT_FOUND first
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
        job = await self.s.call(self.s.store.get_job, _job_id(request.job_id))
        return pb.GetJobResponse(job=convert.job_to_pb(job))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        _require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        state = JobState(request.state) if request.state else None
        jobs = await self.s.call(self.s.store.list_jobs, state, request.limit or 100)
        return pb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in jobs])

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        job = await self.s.call(self.s.store.request_cancel, _job_id(request.job_id))
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
        return pb.PredictResponse(
            model=pb.ModelRef(name=result.version.name, version=result.version.version),
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
        models = await self.s.call(self.s.store.list_models, request.name_prefix.strip())
        return pb.ListModelsResponse(
            models=[
                pb.Model(name=name, versions=[convert.model_version_to_pb(v) for v in versions])
                for name, versions in sorted(models.items())
            ]
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
        version = await self.s.call(
            self.s.store.set_alias, request.name.strip(), request.alias, request.version
        )
        self.s.predictor.forget(version.name)  # a Predict after this reply sees the move
        return pb.SetModelAliasResponse(model=convert.model_version_to_pb(version))

    async def ListBackbones(
        self, request: pb.ListBackbonesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBackbonesResponse:
        statuses = await self.s.call(backbone_statuses, self.s.config.weights_dir)
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
        receiver = await self.s.call(
            UploadReceiver, self.s.config, first.filename.strip(), first.sha256.strip()
        )
        try:
            await self.s.call(receiver.write, first.chunk)
            async for message in request_iterator:
                await self.s.call(receiver.write, message.chunk)
            received = await self.s.call(receiver.finish)
        except BaseException:
            await asyncio.shield(self.s.call(receiver.abort))
            raise
        info = await self._run_task(TaskKind.CHECK_UPLOAD, received, context)
        return pb.UploadDatasetResponse(
            dataset_id=str(received["dataset_id"]),
            size_bytes=int(info["size_bytes"]),
            images=int(info["images"]),
            classes=int(info["classes"]),
            skipped_files=int(info["skipped_files"]),
        )

    # -- helpers ------------------------------------------------------------------------

    async def _locate(self, ref: DatasetRef) -> None:
        """The dataset reference is valid and points at something (no scanning here)."""
        await self.s.call(locate_dataset, ref, self.s.config)

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

    def _model_ref(self, msg: pb.ModelRef) -> ModelRef:
        ref = convert.model_ref_from_pb(msg)
        _require(bool(ref.name), "model.name", "is required")
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

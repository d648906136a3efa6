"""graft.v1.AdaptationService: each method validates, converts and delegates."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from graft import errors
from graft.advisor import DeclaredStats, advise_dataset, advise_declared
from graft.api import convert
from graft.api.errors import to_rpc_status
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.config import Config
from graft.data import ScannedDataset, resolve_dataset, save_upload, scan_dataset
from graft.domain import DatasetRef, JobState, ModelRef, TrainingPlan
from graft.predict import Predictor
from graft.registry import ModelRegistry, validate_model_name, validate_name
from graft.store import JobStore
from graft.training.plan import resolve_plan, validate_plan
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


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


class AdaptationServicer(pb_grpc.AdaptationServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    # -- advice and training ------------------------------------------------------------

    def Advise(self, request: pb.AdviseRequest, context: grpc.ServicerContext) -> pb.AdviseResponse:
        threshold = request.small_dataset_threshold or self.s.config.small_dataset_threshold
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
        config = self.s.config
        for field, value, limit in (
            ("max_images_per_class", request.max_images_per_class, config.advise_max_per_class),
            ("max_images", request.max_images, config.advise_max_images),
        ):
            _require(0 <= value <= limit, field, f"must be between 0 (default) and {limit}")
        _require(
            request.max_images == 0 or request.max_images >= 2, "max_images", "must be at least 2"
        )
        dataset = self._scan(convert.dataset_from_pb(request.dataset))
        advice = advise_dataset(
            dataset,
            config=config,
            candidates=[c.strip() for c in request.candidate_backbones],
            small_threshold=threshold,
            max_per_class=request.max_images_per_class or None,
            max_images=request.max_images or None,
        )
        return convert.advice_to_pb(advice)

    def StartFineTune(
        self, request: pb.StartFineTuneRequest, context: grpc.ServicerContext
    ) -> pb.StartFineTuneResponse:
        name = request.model_name.strip()
        _require(bool(name), "model_name", "is required")
        validate_model_name(name)
        _require(len(request.request_id) <= 200, "request_id", "at most 200 characters")
        ref = convert.dataset_from_pb(request.dataset)
        dataset = self._scan(ref)
        if request.HasField("plan"):
            plan = convert.plan_from_pb(request.plan)
            try:
                spec = get_spec(plan.backbone or DEFAULT_BACKBONE)
            except errors.NotFound as exc:
                raise errors.InvalidArgument.of("plan.backbone", exc.message) from exc
            plan = resolve_plan(
                plan,
                spec,
                num_train_images=len(dataset.samples),
                median_size=dataset.median_size,
            )
        else:  # no plan: advise, then train with exactly the advised plan
            plan = advise_dataset(dataset, config=self.s.config).plan
            spec = get_spec(plan.backbone)
        validate_plan(plan, spec)
        self._check_weights(plan)
        job, created = self.s.store.create_job(
            model_name=name,
            dataset=ref,
            plan=plan,
            request_id=request.request_id.strip(),
            config_json=self.s.config.to_json(),
        )
        if created:
            log.info("queued job %s for model %s (%s)", job.job_id, name, plan.strategy.name)
        return pb.StartFineTuneResponse(job=convert.job_to_pb(job))

    def StreamProgress(
        self, request: pb.StreamProgressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ProgressEvent]:
        job_id = _job_id(request.job_id)
        _require(request.after_sequence >= 0, "after_sequence", "must not be negative")
        self.s.store.get_job(job_id)  # NOT_FOUND before the stream starts
        after = request.after_sequence
        while context.is_active():
            events = self.s.store.events_after(job_id, after, limit=500)
            for event in events:
                yield convert.event_to_pb(event)
                after = event.sequence
            if events:
                continue
            if self.s.store.get_job(job_id).state.terminal:
                # A terminal state event is the last one written, so nothing can follow.
                if not self.s.store.events_after(job_id, after, limit=1):
                    return
                continue
            if self.s.draining.wait(self.s.config.poll_seconds):
                raise errors.Unavailable("server is shutting down; reconnect with after_sequence")

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(
            job=convert.job_to_pb(self.s.store.get_job(_job_id(request.job_id)))
        )

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        _require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        state = JobState(request.state) if request.state else None
        jobs = self.s.store.list_jobs(state=state, limit=request.limit or 100)
        return pb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in jobs])

    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.CancelJobResponse:
        job = self.s.store.request_cancel(_job_id(request.job_id))
        return pb.CancelJobResponse(job=convert.job_to_pb(job))

    # -- registry and inference ---------------------------------------------------------

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        ref = self._model_ref(request.model)
        _require(len(request.images) > 0, "images", "at least one image is required")
        limit = self.s.config.max_predict_images
        if len(request.images) > limit:
            raise errors.ResourceExhausted(
                f"{len(request.images)} images in one request; at most {limit} are allowed"
            )
        _require(0 <= request.top_k <= 1000, "top_k", "must be in [0, 1000]")
        result = self.s.predictor.predict(ref, [im.data for im in request.images], request.top_k)
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

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self.s.store.list_models(request.name_prefix.strip())
        return pb.ListModelsResponse(
            models=[
                pb.Model(name=name, versions=[convert.model_version_to_pb(v) for v in versions])
                for name, versions in sorted(models.items())
            ]
        )

    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        version = self.s.store.resolve_model(self._model_ref(request.model))
        return pb.GetModelResponse(model=convert.model_version_to_pb(version))

    def SetModelAlias(
        self, request: pb.SetModelAliasRequest, context: grpc.ServicerContext
    ) -> pb.SetModelAliasResponse:
        _require(bool(request.name.strip()), "name", "is required")
        _require(bool(request.alias), "alias", "is required")
        validate_name(request.alias, "alias")
        _require(request.version >= 1, "version", "must be a version number (from 1)")
        version = self.s.store.set_alias(request.name.strip(), request.alias, request.version)
        return pb.SetModelAliasResponse(model=convert.model_version_to_pb(version))

    def ListBackbones(
        self, request: pb.ListBackbonesRequest, context: grpc.ServicerContext
    ) -> pb.ListBackbonesResponse:
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
                for b in backbone_statuses(self.s.config.weights_dir)
            ]
        )

    def UploadDataset(
        self, request_iterator: Iterator[pb.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> pb.UploadDatasetResponse:
        first = next(request_iterator, None)
        if first is None:
            raise errors.InvalidArgument.of("chunk", "the upload stream was empty")
        _require(bool(first.filename.strip()), "filename", "the first message must name the file")

        def chunks() -> Iterator[bytes]:
            yield first.chunk
            for message in request_iterator:
                yield message.chunk

        info = save_upload(self.s.config, first.filename.strip(), chunks(), first.sha256.strip())
        return pb.UploadDatasetResponse(
            dataset_id=info.dataset_id,
            size_bytes=info.size_bytes,
            images=info.images,
            classes=info.classes,
            skipped_files=info.skipped_files,
        )

    # -- helpers ------------------------------------------------------------------------

    def _scan(self, ref: DatasetRef) -> ScannedDataset:
        """Resolve and scan a dataset: a bad or unusable one is rejected up front."""
        path = resolve_dataset(ref, self.s.config)
        return scan_dataset(path)

    def _model_ref(self, msg: pb.ModelRef) -> ModelRef:
        ref = convert.model_ref_from_pb(msg)
        _require(bool(ref.name), "model.name", "is required")
        _require(ref.version >= 0, "model.version", "must not be negative")
        _require(not (ref.version and ref.alias), "model", "give a version or an alias, not both")
        return ref

    def _check_weights(self, plan: TrainingPlan) -> None:
        status = {b.name: b for b in backbone_statuses(self.s.config.weights_dir)}
        entry = status.get(plan.backbone)
        if entry is not None and not entry.ready:
            raise errors.FailedPrecondition(
                f"backbone {plan.backbone!r} has no pretrained weights here: {entry.weights}"
            )

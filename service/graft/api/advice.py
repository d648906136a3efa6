"""The Advise RPC: declared statistics are answered here (arithmetic over the plan
matrix); a dataset is measured by a worker (the advisor lane), whose answer the call awaits
as a task."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from graft import errors
from graft.advisor import DeclaredStats, advise_declared
from graft.advisor.codec import advice_from_json
from graft.api import convert
from graft.api.datasets import locate_for_caller
from graft.api.services import Services
from graft.api.tasks import run_task
from graft.api.validation import require
from graft.backbones import DEFAULT_BACKBONE
from graft.config import Config
from graft.domain import JobState, TaskKind
from graft_client.v1 import adaptation_pb2 as pb


class AdviceRPCs:
    """Advise, for `AdaptationServicer`."""

    services: Services

    async def Advise(
        self, request: pb.AdviseRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdviseResponse:
        services = self.services
        threshold = request.small_dataset_threshold or services.config.small_dataset_threshold
        require(threshold > 0, "small_dataset_threshold", "must be positive")
        has_dataset = request.dataset.uri or request.dataset.dataset_id
        if not has_dataset and request.HasField("declared"):
            return _advise_declared(request.declared, threshold)
        _check_measuring_limits(request, services.config)
        await locate_for_caller(services, convert.dataset_from_pb(request.dataset))
        await _refuse_when_busy(services)
        task_request = {
            "advise_request": json_format.MessageToDict(request, preserving_proto_field_name=True)
        }
        result = await run_task(services, TaskKind.ADVISE, task_request, context)
        if "advise_response" in result:  # from a worker of the previous release
            return json_format.ParseDict(result["advise_response"], pb.AdviseResponse())
        return convert.advice_to_pb(advice_from_json(result["advice"]))


def _advise_declared(declared: pb.DeclaredStatistics, threshold: int) -> pb.AdviseResponse:
    """The answer for a dataset described only by its statistics: no worker needed."""
    require(declared.num_classes >= 2, "declared.num_classes", "must be at least 2")
    require(declared.images_per_class >= 1, "declared.images_per_class", "must be positive")
    require(0 <= declared.similarity_hint <= 1, "declared.similarity_hint", "must be in [0, 1]")
    stats = DeclaredStats(declared.num_classes, declared.images_per_class, declared.similarity_hint)
    advice = advise_declared(stats, small_threshold=threshold, backbone=DEFAULT_BACKBONE)
    return convert.advice_to_pb(advice)


def _check_measuring_limits(request: pb.AdviseRequest, config: Config) -> None:
    """How many images Advise may measure: within the service's limits (0: its default)."""
    for field, value, limit in (
        ("max_images_per_class", request.max_images_per_class, config.advise_max_per_class),
        ("max_images", request.max_images, config.advise_max_images),
    ):
        require(0 <= value <= limit, field, f"must be between 0 (default) and {limit}")
    require(request.max_images == 0 or request.max_images >= 2, "max_images", "must be at least 2")


async def _refuse_when_busy(services: Services) -> None:
    """ResourceExhausted (retry shortly) when as many Advise requests as the service takes
    are already queued or running."""
    pending = await services.call(
        services.store.count_tasks, TaskKind.ADVISE, (JobState.QUEUED, JobState.RUNNING)
    )
    if pending >= services.config.max_pending_advice:
        raise errors.ResourceExhausted(
            f"{pending} Advise requests are already queued or running (the most this "
            "service takes); retry shortly",
            retry_after=5.0,
        )

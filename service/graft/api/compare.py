"""CompareModels: two model versions evaluated on the same held-out images (the
candidate's validation split) by a worker, answered with both metrics and their deltas
(docs/COMPARE.md; the work is api/comparing.py's and graft.compare's).

Each reference follows the tenant rules of the model RPCs (api/models.py): the caller's
own models, or an admin's named tenant's. The two may name different models: what must
match is the labels, which comparing checks (FAILED_PRECONDITION naming the difference).
"""

from __future__ import annotations

import grpc

from graft.api import convert
from graft.api.comparing import compare_versions
from graft.api.models import tenant_named
from graft.api.services import Services
from graft.api.validation import require
from graft.domain import ModelRef
from graft_client.v1 import adaptation_pb2 as pb


class CompareRPCs:
    """CompareModels, for `AdaptationServicer`."""

    services: Services

    async def CompareModels(
        self, request: pb.CompareModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompareModelsResponse:
        baseline = _ref(request.baseline, "baseline")
        candidate = _ref(request.candidate, "candidate")
        comparison = await compare_versions(self.services, baseline, candidate, context)
        return convert.comparison_to_pb(comparison)


def _ref(msg: pb.ModelRef, field: str) -> ModelRef:
    """The version request field `field` names, in the tenant the caller may name."""
    name = msg.name.strip()
    require(bool(name), f"{field}.name", "is required")
    tenant = tenant_named(msg.tenant, name, f"{field}.tenant")
    ref = convert.model_ref_from_pb(msg, tenant)
    require(ref.version >= 0, f"{field}.version", "must not be negative")
    require(not (ref.version and ref.alias), field, "give a version or an alias, not both")
    return ref

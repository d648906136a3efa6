"""The registry and inference RPCs: Predict (through the batching Predict engine),
ListModels, GetModel, SetModelAlias (with `guard`, only to a version not worse than the
alias's current one: api/comparing.py) and ListBackbones.

A call names its own tenant's models; an admin may name another tenant's, and anyone else
who does gets the NOT_FOUND a missing model gets.
"""

from __future__ import annotations

import functools
import itertools

import grpc

from graft import errors
from graft.api import convert, paging
from graft.api.auth import current_identity
from graft.api.comparing import guard_alias
from graft.api.errors import to_rpc_status
from graft.api.services import Services
from graft.api.validation import MAX_PAGE, require
from graft.apikeys import validate_tenant
from graft.backbones import backbone_statuses
from graft.domain import ModelRef, ModelVersion
from graft.predict import PredictResult
from graft.registry import validate_name
from graft_client.v1 import adaptation_pb2 as pb


class ModelRPCs:
    """Predict, ListModels, GetModel, SetModelAlias and ListBackbones, for
    `AdaptationServicer`."""

    services: Services

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        ref = requested_model(request.model)
        require(len(request.images) > 0, "images", "at least one image is required")
        limit = self.services.config.max_predict_images
        if len(request.images) > limit:
            raise errors.ResourceExhausted(
                f"{len(request.images)} images in one request; at most {limit} are allowed"
            )
        require(0 <= request.top_k <= 1000, "top_k", "must be in [0, 1000]")
        images = [im.data for im in request.images]
        # Batched with concurrent calls for the same version; the caller's deadline holds
        # while the images wait for the model (DEADLINE_EXCEEDED for this call alone).
        result = await self.services.predictor.predict_async(
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
        return _predict_response(result)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        prefix, scope = request.name_prefix.strip(), current_identity().scope
        require(0 <= request.page_size <= MAX_PAGE, "page_size", f"must be in [0, {MAX_PAGE}]")
        after = paging.decode(request.page_token, "models", prefix)
        require(
            after is None
            or (
                isinstance(after, list)
                and [type(x) for x in after] == [str, str, int]
                and 0 < after[2] < 2**63
            ),
            "page_token",
            "is malformed",
        )
        services = self.services
        versions, cursor = await services.call(
            services.store.list_model_versions_page,
            prefix,
            scope,
            request.page_size or 100,
            None if after is None else (after[0], after[1], after[2]),
        )
        return pb.ListModelsResponse(
            models=_models_of(versions),
            next_page_token=paging.encode("models", prefix, list(cursor)) if cursor else "",
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        ref = requested_model(request.model)
        version = await self.services.call(self.services.store.resolve_model, ref)
        return pb.GetModelResponse(model=convert.model_version_to_pb(version))

    async def SetModelAlias(
        self, request: pb.SetModelAliasRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetModelAliasResponse:
        require(bool(request.name.strip()), "name", "is required")
        require(bool(request.alias), "alias", "is required")
        validate_name(request.alias, "alias")
        require(request.version >= 1, "version", "must be a version number (from 1)")
        name = request.name.strip()
        tenant = tenant_named(request.tenant, name, "tenant")
        services = self.services
        if request.guard:  # FAILED_PRECONDITION with the figures when it would be worse
            await guard_alias(services, name, request.alias, request.version, tenant, context)
        version = await services.call(
            services.store.set_alias, name, request.alias, request.version, tenant
        )
        services.predictor.forget(version.name, version.tenant)  # later Predicts see the move
        return pb.SetModelAliasResponse(model=convert.model_version_to_pb(version))

    async def ListBackbones(
        self, request: pb.ListBackbonesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBackbonesResponse:
        statuses = await self.services.call(
            functools.partial(
                backbone_statuses, self.services.config.weights_dir, reveal_paths=False
            )
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


def tenant_named(requested: str, model_name: str, field: str) -> str:
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


def requested_model(msg: pb.ModelRef) -> ModelRef:
    """The model a request names (field `model`), in the tenant the caller may name."""
    require(bool(msg.name.strip()), "model.name", "is required")
    tenant = tenant_named(msg.tenant, msg.name.strip(), "model.tenant")
    ref = convert.model_ref_from_pb(msg, tenant)
    require(ref.version >= 0, "model.version", "must not be negative")
    require(not (ref.version and ref.alias), "model", "give a version or an alias, not both")
    return ref


def _predict_response(result: PredictResult) -> pb.PredictResponse:
    """The answer to Predict: the version that answered, and each image's classes or error."""
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


def _models_of(versions: list[ModelVersion]) -> list[pb.Model]:
    """A page of versions (in name, tenant, version order) as one `Model` per name and
    tenant: an admin's list may hold one name in several tenants."""
    return [
        pb.Model(
            name=name,
            tenant=tenant,
            versions=[convert.model_version_to_pb(v, detail=False) for v in group],
        )
        for (name, tenant), group in itertools.groupby(versions, lambda v: (v.name, v.tenant))
    ]

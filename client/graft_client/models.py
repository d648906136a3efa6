"""The SDK's calls for Predict, the model registry and the backbone catalog."""

from __future__ import annotations

from collections.abc import Iterable

from graft_client.base import ClientBase
from graft_client.common import (
    ADVISE_TIMEOUT,
    PREDICT_TIMEOUT,
    parse_model_ref,
)
from graft_client.images import ImageInput, to_pb_images
from graft_client.v1 import adaptation_pb2 as pb


class ModelCalls(ClientBase):
    """Predict, ListModels (every page), GetModel, SetModelAlias, CompareModels,
    ListBackbones."""

    def predict(
        self,
        model: str | pb.ModelRef,
        images: Iterable[ImageInput],
        *,
        version: int = 0,
        alias: str = "",
        top_k: int = 5,
        timeout: float | None = None,
    ) -> pb.PredictResponse:
        """Classifies images with a registered model version. `model` is a name (also
        `name:VERSION` / `name@ALIAS`) or a ModelRef; `version` / `alias` override.
        Images are paths, encoded bytes, PIL images or uint8 numpy arrays. One
        prediction per image, in order; an undecodable image fails only its own entry
        (`prediction.error`)."""
        ref = self._model_ref(model, version, alias)
        request = pb.PredictRequest(model=ref, images=to_pb_images(images), top_k=top_k)
        response: pb.PredictResponse = self._call(
            self._stub.Predict, request, self._deadline(timeout, PREDICT_TIMEOUT)
        )
        return response

    @staticmethod
    def _model_ref(model: str | pb.ModelRef, version: int, alias: str) -> pb.ModelRef:
        if isinstance(model, pb.ModelRef):
            ref = pb.ModelRef()
            ref.CopyFrom(model)
        else:
            ref = parse_model_ref(model)
        if version:
            ref.version, ref.alias = version, ""
        if alias:
            ref.alias, ref.version = alias, 0
        return ref

    def list_models(self, name_prefix: str = "", *, timeout: float | None = None) -> list[pb.Model]:
        """Registered models (with their versions), optionally by name prefix: every page
        of the server's list, one Model per name (and tenant). Metrics come without the
        confusion matrix (`get_model` has it)."""
        models: list[pb.Model] = []
        token = ""
        while True:
            response: pb.ListModelsResponse = self._call(
                self._stub.ListModels,
                pb.ListModelsRequest(name_prefix=name_prefix, page_token=token),
                self._deadline(timeout),
            )
            for model in response.models:
                last = models[-1] if models else None
                if last is not None and (last.name, last.tenant) == (model.name, model.tenant):
                    last.versions.extend(model.versions)  # continued from the last page
                else:
                    models.append(model)
            token = response.next_page_token
            if not token:
                return models

    def get_model(
        self,
        name: str | pb.ModelRef,
        version: int = 0,
        alias: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """One model version with its card; neither version nor alias means the newest."""
        request = pb.GetModelRequest(model=self._model_ref(name, version, alias))
        response: pb.GetModelResponse = self._call(
            self._stub.GetModel, request, self._deadline(timeout)
        )
        return response.model

    def set_model_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        tenant: str = "",
        guard: bool = False,
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """Points `alias` (e.g. "production") at a version; returns that version. `tenant`:
        another tenant's model (admin keys only; default: the caller's own). With `guard`,
        the server first compares the version with the one the alias points at (as
        `compare_models` does) and refuses with FailedPrecondition, the figures in its
        message and a PreconditionFailure detail, unless the new one is not worse."""
        request = pb.SetModelAliasRequest(
            name=name, alias=alias, version=version, tenant=tenant, guard=guard
        )
        floor = ADVISE_TIMEOUT if guard else 0.0  # a guard evaluates both versions
        response: pb.SetModelAliasResponse = self._call(
            self._stub.SetModelAlias, request, self._deadline(timeout, floor)
        )
        return response.model

    def compare_models(
        self,
        baseline: str | pb.ModelRef,
        candidate: str | pb.ModelRef,
        *,
        timeout: float | None = None,
    ) -> pb.CompareModelsResponse:
        """Evaluates two model versions on the same held-out images (the candidate's
        validation split, made again as its training made it) and returns both metrics,
        their deltas (candidate - baseline), the image count, where the images come from
        (`split`, with a caveat when the baseline may have trained on some of them) and
        `candidate_not_worse`. Each of `baseline` and `candidate` is `name`,
        `name:VERSION`, `name@ALIAS` or a ModelRef. Waits for a worker: the deadline is
        at least Advise's."""
        request = pb.CompareModelsRequest(
            baseline=self._model_ref(baseline, 0, ""),
            candidate=self._model_ref(candidate, 0, ""),
        )
        response: pb.CompareModelsResponse = self._call(
            self._stub.CompareModels, request, self._deadline(timeout, ADVISE_TIMEOUT)
        )
        return response

    def list_backbones(self, *, timeout: float | None = None) -> list[pb.Backbone]:
        """The backbone catalog, with whether each one's weights are available."""
        response: pb.ListBackbonesResponse = self._call(
            self._stub.ListBackbones, pb.ListBackbonesRequest(), self._deadline(timeout)
        )
        return list(response.backbones)

"""`ModelStore`: registry metadata, model versions and their aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from graft.domain import DEFAULT_TENANT, EvaluationMetrics, ModelRef, ModelVersion

# Called by `add_model_version` inside its write transaction, with the version about to be
# committed (its number, create_time and final card filled in, `artifact_dir` not yet).
# It puts the artifact in place and returns its directory, which is what the row records.
# If it raises, nothing is committed. See docs/STORE.md, "Registry crash ordering".
PublishArtifact = Callable[[ModelVersion], str]


@runtime_checkable
class ModelStore(Protocol):
    """Registry metadata: model versions and their aliases."""

    def add_model_version(
        self,
        *,
        name: str,
        job_id: str,
        backbone: str,
        labels: tuple[str, ...] | list[str],
        sha256: str,
        card: dict[str, Any],
        artifact_dir: str,
        metrics: EvaluationMetrics | None,
        publish: PublishArtifact | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> ModelVersion:
        """Record the next version of `tenant`'s model `name` (1, 2, …, allocated in the
        transaction; each tenant's `name` counts on its own).

        The stored card is `card` plus name, version, sha256 and create_time. With
        `publish`, the artifact is put in place inside the transaction (see
        `PublishArtifact`) and its returned directory replaces `artifact_dir`.

        A job registers one version of a name: when a version with this non-empty
        `job_id` exists already (an earlier attempt of the job registered it, then lost
        its worker or its lease), that version is returned and nothing is added or
        published. Registrations of one name take turns, so two attempts of one job
        cannot both add one.
        """
        ...

    def get_model_version(
        self, name: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        """That version of `tenant`'s model, aliases filled in, or NotFound."""
        ...

    def resolve_model(self, ref: ModelRef) -> ModelVersion:
        """`ref.version` if set, else `ref.alias` if set, else the newest version, of the
        model `ref.name` of `ref.tenant`."""
        ...

    def list_models(
        self, name_prefix: str = "", tenant: str | None = None
    ) -> dict[str, list[ModelVersion]]:
        """Models of `tenant` (None: of every tenant) whose name starts with `name_prefix`,
        by name; versions oldest first (with tenant None: by tenant, then oldest first, and
        a name used by several tenants lists all their versions)."""
        ...

    def list_model_versions_page(
        self,
        name_prefix: str = "",
        tenant: str | None = None,
        limit: int = 100,
        after: tuple[str, str, int] | None = None,
    ) -> tuple[list[ModelVersion], tuple[str, str, int] | None]:
        """At most `limit` versions in `list_models` order (name, tenant, version) after
        the cursor `after` (None: from the first), and the cursor of the next page (None:
        this was the last)."""
        ...

    def set_alias(
        self, name: str, alias: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        """Point `alias` of `tenant`'s model `name` at `version` (moving it if it pointed
        elsewhere)."""
        ...

    def count_model_versions(self) -> int:
        """All versions of all models."""
        ...

"""Registry metadata: model versions and their aliases."""

from __future__ import annotations

import dataclasses
from typing import Any

from graft.domain import DEFAULT_TENANT, EvaluationMetrics, ModelRef, ModelVersion
from graft.errors import InvalidArgument, NotFound
from graft.store.codec import (
    MODEL_COLUMNS,
    model_from_row,
    model_version_row,
    new_model_version,
)
from graft.store.postgres.base import Conn, PostgresBase
from graft.store.protocols.models import PublishArtifact

# One placeholder per MODEL_COLUMNS entry.
_VALUES = ", ".join(["%s"] * len(MODEL_COLUMNS.split(",")))


class ModelsMixin(PostgresBase):
    """Registry metadata: model versions and their aliases."""

    @staticmethod
    def _aliases(c: Conn, tenant: str, name: str, version: int) -> list[str]:
        rows = c.execute(
            "SELECT alias FROM model_aliases WHERE tenant = %s AND name = %s AND version = %s",
            (tenant, name, version),
        ).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def _model_exists(c: Conn, tenant: str, name: str) -> bool:
        row = c.execute(
            "SELECT 1 FROM model_versions WHERE tenant = %s AND name = %s LIMIT 1", (tenant, name)
        ).fetchone()
        return row is not None

    def _get_version(self, c: Conn, tenant: str, name: str, version: int) -> ModelVersion:
        row = c.execute(
            f"SELECT {MODEL_COLUMNS} FROM model_versions"
            " WHERE tenant = %s AND name = %s AND version = %s",
            (tenant, name, version),
        ).fetchone()
        if row is None:
            if self._model_exists(c, tenant, name):
                raise NotFound(f"model {name!r} has no version {version}")
            raise NotFound(f"model {name!r} not found")
        return model_from_row(row, self._aliases(c, tenant, name, version))

    def _version_of_job(self, c: Conn, tenant: str, name: str, job_id: str) -> ModelVersion | None:
        """The version of `name` that job `job_id` registered already, if any."""
        if not job_id:
            return None
        row = c.execute(
            f"SELECT {MODEL_COLUMNS} FROM model_versions"
            " WHERE tenant = %s AND name = %s AND job_id = %s ORDER BY version LIMIT 1",
            (tenant, name, job_id),
        ).fetchone()
        if row is None:
            return None
        return model_from_row(row, self._aliases(c, tenant, name, int(row[1])))

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
        with self._tx() as c:
            # Registrations of one model take turns until commit (docs/STORE.md, "Registry
            # crash ordering"): the version is ours, and so is whatever sits at its place.
            self._lock(c, "model-version", tenant, name)
            earlier = self._version_of_job(c, tenant, name, job_id)
            if earlier is not None:
                return earlier
            now = self._now(c)
            row = c.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions"
                " WHERE tenant = %s AND name = %s",
                (tenant, name),
            ).fetchone()
            version = (int(row[0]) if row else 0) + 1
            mv = new_model_version(
                name=name,
                version=version,
                now=now,
                job_id=job_id,
                backbone=backbone,
                labels=labels,
                sha256=sha256,
                card=card,
                artifact_dir=artifact_dir,
                metrics=metrics,
                tenant=tenant,
            )
            if publish is not None:
                mv = dataclasses.replace(mv, artifact_dir=publish(mv))
            c.execute(
                f"INSERT INTO model_versions ({MODEL_COLUMNS}) VALUES ({_VALUES})",
                model_version_row(mv),
            )
            return mv

    def get_model_version(
        self, name: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        with self._tx() as c:
            return self._get_version(c, tenant, name, version)

    def resolve_model(self, ref: ModelRef) -> ModelVersion:
        tenant, name = ref.tenant, ref.name
        with self._tx() as c:
            if ref.version:
                return self._get_version(c, tenant, name, ref.version)
            if ref.alias:
                row = c.execute(
                    "SELECT version FROM model_aliases"
                    " WHERE tenant = %s AND name = %s AND alias = %s",
                    (tenant, name, ref.alias),
                ).fetchone()
                if row is None:
                    if self._model_exists(c, tenant, name):
                        raise NotFound(f"model {name!r} has no alias {ref.alias!r}")
                    raise NotFound(f"model {name!r} not found")
                return self._get_version(c, tenant, name, row[0])
            row = c.execute(
                "SELECT MAX(version) FROM model_versions WHERE tenant = %s AND name = %s",
                (tenant, name),
            ).fetchone()
            if row is None or row[0] is None:
                raise NotFound(f"model {name!r} not found")
            return self._get_version(c, tenant, name, row[0])

    def list_models(
        self, name_prefix: str = "", tenant: str | None = None
    ) -> dict[str, list[ModelVersion]]:
        where = "WHERE starts_with(name, %s)"
        args: tuple[object, ...] = (name_prefix,)
        if tenant is not None:
            where += " AND tenant = %s"
            args += (tenant,)
        aliases: dict[tuple[str, str, int], list[str]] = {}
        out: dict[str, list[ModelVersion]] = {}
        with self._tx() as c:
            for owner, name, version, alias in c.execute(
                f"SELECT tenant, name, version, alias FROM model_aliases {where}", args
            ):
                aliases.setdefault((owner, name, version), []).append(alias)
            for row in c.execute(
                f"SELECT {MODEL_COLUMNS} FROM model_versions {where}"
                " ORDER BY name, tenant, version",
                args,
            ):
                mv = model_from_row(row, [])
                mv.aliases = sorted(aliases.get((mv.tenant, mv.name, mv.version), []))
                out.setdefault(mv.name, []).append(mv)
        return out

    def list_model_versions_page(
        self,
        name_prefix: str = "",
        tenant: str | None = None,
        limit: int = 100,
        after: tuple[str, str, int] | None = None,
    ) -> tuple[list[ModelVersion], tuple[str, str, int] | None]:
        where = "WHERE starts_with(v.name, %s)"
        args: tuple[object, ...] = (name_prefix,)
        if tenant is not None:
            where += " AND v.tenant = %s"
            args += (tenant,)
        if after is not None:
            where += " AND (v.name, v.tenant, v.version) > (%s, %s, %s)"
            args += after
        columns = ", ".join(f"v.{c.strip()}" for c in MODEL_COLUMNS.split(","))
        with self._tx() as c:
            rows = c.execute(
                f"SELECT {columns} FROM model_versions v {where}"
                " ORDER BY v.name, v.tenant, v.version LIMIT %s",
                (*args, limit + 1),
            ).fetchall()
            versions = [model_from_row(row, []) for row in rows[:limit]]
            for mv in versions:
                mv.aliases = sorted(self._aliases(c, mv.tenant, mv.name, mv.version))
        last = versions[-1] if len(rows) > limit else None
        return versions, (None if last is None else (last.name, last.tenant, last.version))

    def set_alias(
        self, name: str, alias: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        if not alias:
            raise InvalidArgument.of("alias", "must not be empty")
        with self._tx() as c:
            self._get_version(c, tenant, name, version)  # NotFound names what is missing
            c.execute(
                "INSERT INTO model_aliases (tenant, name, alias, version) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant, name, alias) DO UPDATE SET version = excluded.version",
                (tenant, name, alias, version),
            )
            return self._get_version(c, tenant, name, version)

    def count_model_versions(self) -> int:
        with self._tx() as c:
            row = c.execute("SELECT COUNT(*) FROM model_versions").fetchone()
        return int(row[0]) if row else 0

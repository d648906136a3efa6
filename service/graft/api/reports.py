"""GetModelReport: a version's report, read from its artifact folder (graft.reports.files).

The worker drew the report when it registered the version; this process only reads files
(on the store pool, off the event loop) and computes nothing. Tenant rules as for the
registry RPCs (api/models.py): a caller names its own tenant's models, an admin any
tenant's; anyone else naming another tenant gets NOT_FOUND. A version without a report
answers why: NOT_FOUND for one registered before reports existed, FAILED_PRECONDITION with
the worker's reason when it could not make one.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from graft.api.models import requested_model
from graft.api.services import Services
from graft.domain import ModelVersion
from graft.registry.registry import artifact_dir_under
from graft.reports.files import StoredReport, read_report
from graft_client.v1 import adaptation_pb2 as pb


class ReportRPCs:
    """GetModelReport, for `AdaptationServicer`."""

    services: Services

    async def GetModelReport(
        self, request: pb.GetModelReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelReportResponse:
        ref = requested_model(request.model)
        services = self.services
        version = await services.call(services.store.resolve_model, ref)
        report = await services.call(_read, services.config.registry_dir, version)
        return pb.GetModelReportResponse(
            model=pb.ModelRef(name=version.name, version=version.version, tenant=version.tenant),
            report_json=report.report_json,
            files=[
                pb.ArtifactFile(
                    path=f.path,
                    data=f.data,
                    size=len(f.data),
                    sha256=f.sha256,
                    media_type=f.media_type,
                )
                for f in report.files
            ],
        )


def _read(registry_root: Path, version: ModelVersion) -> StoredReport:
    """The report in `version`'s folder (blocking file reads: run on the store pool)."""
    folder = artifact_dir_under(registry_root, version)
    return read_report(folder, f"model {version.name!r} version {version.version}")

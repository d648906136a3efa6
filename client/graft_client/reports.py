"""The SDK's call for GetModelReport, and writing a report's files into a folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from graft_client.base import ClientBase
from graft_client.errors import DataLoss
from graft_client.models import ModelCalls
from graft_client.v1 import adaptation_pb2 as pb

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


class ReportCalls(ClientBase):
    """GetModelReport."""

    def get_model_report(
        self,
        model: str | pb.ModelRef,
        version: int = 0,
        alias: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.GetModelReportResponse:
        """The report the worker made when it registered a model version (`model`: a name,
        `name:VERSION`, `name@ALIAS` or a ModelRef; `version` / `alias` override; neither
        means the newest): `report_json` (curves, per-class metrics, confusion,
        calibration, suspects, plan) and `files` (report.html, self-contained, and its
        PNGs). Raises NotFound for a version registered before reports existed, and
        FailedPrecondition (with the worker's reason) when it could not make one."""
        request = pb.GetModelReportRequest(model=ModelCalls._model_ref(model, version, alias))
        response: pb.GetModelReportResponse = self._call(
            self._stub.GetModelReport, request, self._deadline(timeout)
        )
        return response


def save_report(report: pb.GetModelReportResponse, out_dir: str | os.PathLike[str]) -> Path:
    """Writes `report`'s files and its report.json under `out_dir` (created; files of the
    same names are replaced) and returns the path of report.html. A file whose size or
    sha256 differs from what the server said, or whose path leads outside `out_dir`,
    raises DataLoss before anything is written."""
    out = Path(out_dir)
    checked: list[tuple[Path, bytes]] = [(out / REPORT_JSON, report.report_json.encode())]
    for f in report.files:
        rel = PurePosixPath(f.path)
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or f.path == REPORT_JSON:
            raise DataLoss(f"the report names a file outside its folder: {f.path!r}")
        if len(f.data) != f.size or hashlib.sha256(f.data).hexdigest() != f.sha256:
            raise DataLoss(f"report file {f.path!r} arrived damaged (size or sha256 differ)")
        checked.append((out.joinpath(*rel.parts), f.data))
    if REPORT_HTML not in {f.path for f in report.files}:
        raise DataLoss(f"the report has no {REPORT_HTML}")
    for path, data in checked:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out / REPORT_HTML

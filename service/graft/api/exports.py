"""ExportModel: a model version exported to ONNX, TorchScript or a Triton model repository
by a worker (a task of kind EXPORT: graft.export.exporter writes and checks the files under
the shared artifacts folder, or reuses an earlier export), then streamed from there: an
ExportManifest first (every file's path, size, sha256 and media type, and how the export
was checked), then each file in chunks of CHUNK_BYTES, in the manifest's order.

The model reference follows the model RPCs' tenant rules (api/models.py). The API only
reads files here, on the store pool, hashing what it sends: a file that changed since the
worker recorded it ends the stream with FAILED_PRECONDITION (artifact corrupted), and the
SDK checks every size and sha256 against the manifest as well.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import grpc

from graft import errors
from graft.api.models import requested_model
from graft.api.services import Services
from graft.api.tasks import run_task
from graft.artifacts import check_digest
from graft.domain import TaskKind
from graft.export.layout import ExportedFile, ExportRecord, exports_root, is_safe_path
from graft_client.v1 import adaptation_pb2 as pb

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
FORMAT_NAMES = {
    pb.EXPORT_FORMAT_ONNX: "onnx",
    pb.EXPORT_FORMAT_TORCHSCRIPT: "torchscript",
    pb.EXPORT_FORMAT_TRITON: "triton",
}


class ExportRPCs:
    """ExportModel, for `AdaptationServicer`."""

    services: Services

    async def ExportModel(
        self, request: pb.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportModelChunk]:
        fmt = FORMAT_NAMES.get(request.format)
        if fmt is None:
            raise errors.InvalidArgument.of(
                "format",
                f"{_format_name(request.format)} is not an export format: use "
                "EXPORT_FORMAT_ONNX, EXPORT_FORMAT_TORCHSCRIPT or EXPORT_FORMAT_TRITON",
            )
        services = self.services
        mv = await services.call(services.store.resolve_model, requested_model(request.model))
        task = {"model": {"name": mv.name, "version": mv.version, "tenant": mv.tenant}}
        result = await run_task(services, TaskKind.EXPORT, {**task, "format": fmt}, context)
        record = ExportRecord.from_dict(result["record"])
        folder = str(result["folder"])
        if not is_safe_path(folder):
            raise RuntimeError(f"the exporter answered with an unsafe folder {folder!r}")
        yield pb.ExportModelChunk(manifest=_manifest(record, request.format))
        root = exports_root(services.config.artifacts_root) / folder
        for entry in record.files:
            async for chunk in _file_chunks(services, root, entry):
                yield chunk


def _format_name(value: int) -> str:
    try:
        return pb.ExportFormat.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return f"format {value}"


def _manifest(record: ExportRecord, fmt: pb.ExportFormat.ValueType) -> pb.ExportManifest:
    return pb.ExportManifest(
        model=pb.ModelRef(name=record.name, version=record.version, tenant=record.tenant),
        format=fmt,
        files=[
            pb.ArtifactFile(path=f.path, size=f.size, sha256=f.sha256, media_type=f.media_type)
            for f in record.files
        ],
        verification=record.verification,
    )


async def _file_chunks(
    services: Services, root: Path, entry: ExportedFile
) -> AsyncIterator[pb.ExportModelChunk]:
    """One file's chunks (one empty chunk for an empty file), read on the store pool and
    hashed as they go: the bytes sent are the bytes checked."""
    path = root / entry.path
    digest = hashlib.sha256()
    try:
        stream: IO[bytes] = await services.call(path.open, "rb")
    except FileNotFoundError:  # the folder was replaced after the worker answered
        raise errors.Unavailable(
            f"the export's {entry.path} is gone from the server; retry"
        ) from None
    try:
        offset = 0
        while True:
            data = await services.call(stream.read, CHUNK_BYTES)
            if not data and offset:
                break
            digest.update(data)
            yield pb.ExportModelChunk(path=entry.path, offset=offset, data=data)
            offset += len(data)
            if not data:
                break
    finally:
        stream.close()
    check_digest(path, digest.hexdigest(), (entry.sha256,), "the export's record says")
    if offset != entry.size:
        raise errors.FailedPrecondition(
            f"artifact corrupted: {path} is {offset} bytes, its record says {entry.size}"
        )

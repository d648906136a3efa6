"""The SDK's call for ExportModel: a model version exported to ONNX, TorchScript or a
Triton model repository, written into a local folder and checked against the manifest."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc

from graft_client.base import ClientBase
from graft_client.common import ADVISE_TIMEOUT
from graft_client.errors import DataLoss, InvalidArgument, from_rpc_error
from graft_client.models import ModelCalls
from graft_client.v1 import adaptation_pb2 as pb

EXPORT_FORMATS = {
    "onnx": pb.EXPORT_FORMAT_ONNX,
    "torchscript": pb.EXPORT_FORMAT_TORCHSCRIPT,
    "triton": pb.EXPORT_FORMAT_TRITON,
}


class ExportCalls(ClientBase):
    """ExportModel, written to a folder."""

    def export_model(
        self,
        model: str | pb.ModelRef,
        format: str | pb.ExportFormat.ValueType,
        out_dir: str | os.PathLike[str],
        *,
        version: int = 0,
        alias: str = "",
        timeout: float | None = None,
    ) -> pb.ExportManifest:
        """Exports a model version (`model`: a name, `name:VERSION`, `name@ALIAS` or a
        ModelRef; `version` / `alias` override) as `format` ("onnx", "torchscript",
        "triton" or an ExportFormat) and writes its files under `out_dir` (created; files
        of the same names are replaced). Returns the manifest: the files with their sizes
        and sha256, and how the server checked the export against the PyTorch model.

        Each file is written beside its place and renamed into it only once its size and
        sha256 match the manifest; a mismatch, a path outside `out_dir` or a file missing
        from the stream raises DataLoss. The server makes the export in a worker (first
        time: seconds to a minute) and reuses it afterwards: the deadline is at least
        Advise's."""
        request = pb.ExportModelRequest(model=ModelCalls._model_ref(model, version, alias))
        request.format = _format(format)
        chunks = self._stub.ExportModel(
            request,
            timeout=self._deadline(timeout, ADVISE_TIMEOUT),
            metadata=self._metadata or None,
        )
        try:
            return _write_export(iter(chunks), Path(out_dir))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


def _format(value: str | pb.ExportFormat.ValueType) -> pb.ExportFormat.ValueType:
    if isinstance(value, str):
        if value.lower() not in EXPORT_FORMATS:
            raise InvalidArgument(
                f"unknown export format {value!r}; use one of {', '.join(EXPORT_FORMATS)}",
                field_violations=[("format", "onnx, torchscript or triton")],
            )
        return EXPORT_FORMATS[value.lower()]
    return value


def _write_export(chunks: Iterator[pb.ExportModelChunk], out: Path) -> pb.ExportManifest:
    first = next(chunks, None)
    if first is None or not first.HasField("manifest"):
        raise DataLoss("the export stream did not start with its manifest")
    manifest = first.manifest
    for f in manifest.files:
        if not _is_safe(f.path):
            raise DataLoss(f"the export's manifest names an unsafe path {f.path!r}")
    out.mkdir(parents=True, exist_ok=True)
    pending = list(manifest.files)
    writer: _FileWriter | None = None
    try:
        for chunk in chunks:
            if writer is None or chunk.path != writer.entry.path:
                if writer is not None:
                    writer.finish()
                if not pending or chunk.path != pending[0].path:
                    raise DataLoss(f"the export sent {chunk.path!r} out of its manifest's order")
                writer = _FileWriter(out, pending.pop(0))
            writer.write(chunk)
        if writer is not None:
            writer.finish()
            writer = None
    finally:
        if writer is not None:
            writer.abandon()
    if pending:
        raise DataLoss(f"the export stream ended before {pending[0].path!r}")
    return manifest


def _is_safe(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


class _FileWriter:
    """One file of the export: written to a temporary file beside its place, then renamed
    into place once its size and sha256 are those of the manifest."""

    def __init__(self, out: Path, entry: pb.ArtifactFile) -> None:
        self.entry = entry
        self.path = out.joinpath(*entry.path.split("/"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self.tmp = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: pb.ExportModelChunk) -> None:
        if chunk.offset != self.size:
            raise DataLoss(
                f"{self.entry.path}: a chunk at offset {chunk.offset}, expected {self.size}"
            )
        self.file.write(chunk.data)
        self.digest.update(chunk.data)
        self.size += len(chunk.data)

    def finish(self) -> None:
        self.file.close()
        if (self.size, self.digest.hexdigest()) != (self.entry.size, self.entry.sha256):
            self.abandon()
            raise DataLoss(
                f"{self.entry.path}: received {self.size} bytes with sha256 "
                f"{self.digest.hexdigest()}, the manifest says {self.entry.size} bytes with "
                f"sha256 {self.entry.sha256}; export again"
            )
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

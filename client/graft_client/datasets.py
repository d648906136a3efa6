"""The SDK's calls for uploading a dataset (a file, or a folder packed on the fly), and
the upload calls."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from graft_client.base import ClientBase
from graft_client.common import (
    UPLOAD_TIMEOUT,
    MiB,
)
from graft_client.v1 import adaptation_pb2 as pb


class DatasetCalls(ClientBase):
    """UploadDataset (a file, or a folder packed first), DeleteDataset, ListDatasets."""

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = MiB,
        timeout: float | None = None,
    ) -> pb.UploadDatasetResponse:
        """Uploads a dataset archive (.zip, .tar, .tar.gz, .tgz) in chunks and returns its
        dataset_id. A directory is packed into a .tar first. The first chunk carries the
        file name and the sha256 of the whole archive, which the server checks."""
        if not 0 < chunk_size < self.max_message_bytes:
            raise ValueError(f"chunk_size must be in 1..{self.max_message_bytes - 1}")
        source = Path(path)
        deadline = self._deadline(timeout, UPLOAD_TIMEOUT)
        if source.is_dir():
            with tempfile.TemporaryDirectory(prefix="graft-upload-") as tmp:
                archive = Path(tmp) / f"{source.resolve().name or 'dataset'}.tar"
                _pack_folder(source, archive)
                return self._upload_file(archive, chunk_size, deadline)
        return self._upload_file(source, chunk_size, deadline)

    def _upload_file(
        self, archive: Path, chunk_size: int, timeout: float
    ) -> pb.UploadDatasetResponse:
        digest = hashlib.sha256()
        with archive.open("rb") as f:
            for block in iter(lambda: f.read(MiB), b""):
                digest.update(block)
        sha256 = digest.hexdigest()

        def chunks() -> Iterator[pb.UploadDatasetRequest]:
            with archive.open("rb") as f:
                first = True
                while True:
                    chunk = f.read(chunk_size)
                    if not chunk and not first:
                        return
                    if first:
                        yield pb.UploadDatasetRequest(
                            filename=archive.name, sha256=sha256, chunk=chunk
                        )
                        first = False
                    else:
                        yield pb.UploadDatasetRequest(chunk=chunk)

        response: pb.UploadDatasetResponse = self._call(self._stub.UploadDataset, chunks(), timeout)
        return response

    def delete_dataset(self, dataset_id: str, *, timeout: float | None = None) -> int:
        """Deletes an uploaded dataset (its archive and extracted copy) and returns the bytes
        given back to the tenant's upload quota. NotFound for an unknown id (or another
        tenant's); FailedPrecondition, naming the job, while a queued or running job uses it."""
        response: pb.DeleteDatasetResponse = self._call(
            self._stub.DeleteDataset,
            pb.DeleteDatasetRequest(dataset_id=dataset_id),
            self._deadline(timeout),
        )
        return response.freed_bytes

    def list_datasets(
        self, limit: int = 0, *, timeout: float | None = None
    ) -> pb.ListDatasetsResponse:
        """The caller's uploaded datasets, newest first (`limit` 0: the server's default,
        1000), with their sizes and expiry, and the quota and what the tenant uses of it."""
        response: pb.ListDatasetsResponse = self._call(
            self._stub.ListDatasets, pb.ListDatasetsRequest(limit=limit), self._deadline(timeout)
        )
        return response


def _pack_folder(source: Path, archive: Path) -> None:
    """`source`'s regular files as a tar, what the server accepts: no links (a symbolic
    link to a file is packed as a copy of that file, under the link's name), no special
    files; folders reached through links are not followed (they could loop)."""
    with tarfile.open(archive, "w") as tar:
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if not path.is_file():  # FIFOs, devices, sockets, dangling links
                    continue
                arcname = path.relative_to(source).as_posix()
                with path.open("rb") as f:  # follows a link to a file: its content
                    info = tar.gettarinfo(fileobj=f, arcname=arcname)
                    tar.addfile(info, f)

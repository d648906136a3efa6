"""The dataset RPCs: UploadDataset, DeleteDataset, ListDatasets; and the check that a
dataset reference names something the caller may use (Advise, StartFineTune).

An upload is its tenant's: to anyone else it does not exist. It is received here (written
to disk within the tenant's quota) and checked by a worker (extracted and scanned); nothing
is kept of one that fails either step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from graft import errors
from graft.api import convert
from graft.api.auth import current_identity
from graft.api.services import Services
from graft.api.tasks import run_task
from graft.api.validation import require, valid_dataset_id
from graft.data import UploadReceiver, locate_dataset
from graft.data.uploads import UploadQuota, remove_upload
from graft.domain import DEFAULT_TENANT, DatasetRef, TaskKind
from graft_client.v1 import adaptation_pb2 as pb

# The module these lines were written in: log records keep its name.
log = logging.getLogger("graft.api.servicer")


class DatasetRPCs:
    """UploadDataset, DeleteDataset and ListDatasets, for `AdaptationServicer`."""

    services: Services

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[pb.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadDatasetResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise errors.InvalidArgument.of("chunk", "the upload stream was empty")
        require(bool(first.filename.strip()), "filename", "the first message must name the file")
        # Owned before it can be used: only its tenant (or an admin) may name its id.
        tenant = current_identity().tenant  # read here: the pool's threads can't see it
        received = await _receive_upload(self.services, first, request_iterator, context, tenant)
        info = await _check_upload(self.services, received, context)
        return pb.UploadDatasetResponse(
            dataset_id=str(received["dataset_id"]),
            size_bytes=int(info["size_bytes"]),
            images=int(info["images"]),
            classes=int(info["classes"]),
            skipped_files=int(info["skipped_files"]),
        )

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        dataset_id = valid_dataset_id(request.dataset_id)
        # The record first (NOT_FOUND for another tenant's, FAILED_PRECONDITION while in
        # use), then the files: nothing can name it once its record is gone.
        services = self.services
        upload = await services.call(
            services.store.delete_upload, dataset_id, current_identity().scope
        )
        await services.call(remove_upload, dataset_id, services.config)
        log.info(
            "deleted upload %s of tenant %s (%d bytes)",
            dataset_id,
            upload.tenant,
            upload.stored_bytes,
        )
        return pb.DeleteDatasetResponse(freed_bytes=upload.stored_bytes)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        require(0 <= request.limit <= 10_000, "limit", "must be in [0, 10000]")
        services = self.services
        scope, config = current_identity().scope, services.config
        uploads = await services.call(services.store.list_uploads, scope, request.limit or 1000)
        used = await services.call(services.store.upload_usage, scope)
        return pb.ListDatasetsResponse(
            datasets=[convert.upload_to_pb(u, config.upload_ttl_seconds) for u in uploads],
            quota_bytes=config.upload_quota_bytes,
            used_bytes=used,
        )


async def locate_for_caller(services: Services, ref: DatasetRef) -> None:
    """The dataset reference is valid and points at something the caller may use (no
    scanning here). An upload is its tenant's: to anyone else it does not exist."""
    await services.call(locate_dataset, ref, services.config)
    caller = current_identity()
    if ref.dataset_id and not caller.admin:
        try:
            upload = await services.call(services.store.get_upload, ref.dataset_id)
            owner = upload.tenant
        except errors.NotFound:
            owner = DEFAULT_TENANT  # uploaded before tenants existed (store schema < 3)
        if owner != caller.tenant:
            raise errors.NotFound(f"no uploaded dataset with id {ref.dataset_id!r}")
    if ref.dataset_id:  # a new job or Advise uses it: its expiry starts again
        await services.call(services.store.touch_upload, ref.dataset_id)


async def _upload_stream(
    requests: AsyncIterator[pb.UploadDatasetRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.UploadDatasetRequest]:
    """The rest of an upload's messages. A stream that breaks off (the caller cancelled,
    went away, or sent a message over the size limit) is CANCELLED, not an unexpected error
    (an INTERNAL incident); one that ends because the call was cancelled is never taken
    for a complete upload."""
    while True:
        try:
            message = await anext(requests)
        except StopAsyncIteration:
            break
        except (asyncio.CancelledError, grpc.aio.AbortError, errors.GraftError):
            raise
        except Exception as exc:  # only the transport reads the stream
            log.info("upload stream broke off: %s: %s", type(exc).__name__, exc)
            raise errors.Cancelled(f"the upload stream broke off ({type(exc).__name__})") from None
        yield message
    if context.cancelled():
        raise errors.Cancelled("the upload was cancelled by its caller")


async def _receive_upload(
    services: Services,
    first: pb.UploadDatasetRequest,
    requests: AsyncIterator[pb.UploadDatasetRequest],
    context: grpc.aio.ServicerContext,
    tenant: str,
) -> dict[str, object]:
    """Write the streamed archive, refused at the first byte past max_upload_bytes or
    the tenant's upload quota, and record it as the tenant's (the quota checked again
    there, in one transaction with concurrent uploads). Nothing is kept of one that
    fails. Returns the CHECK_UPLOAD task's request."""
    quota = services.config.upload_quota_bytes
    used = await services.call(services.store.upload_usage, tenant) if quota else 0
    receiver = await services.call(
        UploadReceiver,
        services.config,
        first.filename.strip(),
        first.sha256.strip(),
        UploadQuota(quota, used),
    )
    try:
        await services.call(receiver.write, first.chunk)
        async for message in _upload_stream(requests, context):
            await services.call(receiver.write, message.chunk)
        received = await services.call(receiver.finish)
        await services.call(
            lambda: services.store.add_upload(
                receiver.dataset_id,
                str(receiver.dir),
                receiver.size,
                str(received["sha256"]),
                tenant=tenant,
                filename=receiver.name,
                quota_bytes=quota,
            )
        )
    except BaseException:
        await asyncio.shield(services.call(receiver.abort))
        raise
    return {**received, "tenant": tenant}


async def _check_upload(
    services: Services, received: dict[str, object], context: grpc.aio.ServicerContext
) -> dict[str, Any]:
    """The advisor's check of a received upload: extracted (within what is left of the
    tenant's quota) and scanned; the extracted copy's size is recorded (the quota
    checked again). Nothing is kept of an upload that fails it."""
    dataset_id, tenant = str(received["dataset_id"]), str(received["tenant"])
    quota = services.config.upload_quota_bytes
    try:
        if quota:
            used = await services.call(services.store.upload_usage, tenant)
            received["quota_left_bytes"] = quota - used
        info = await run_task(services, TaskKind.CHECK_UPLOAD, received, context)
        extracted = int(info.get("extracted_bytes", 0))
        await services.call(services.store.set_upload_extracted, dataset_id, extracted, quota)
    except BaseException:
        await asyncio.shield(services.call(_forget_upload, services, dataset_id))
        raise
    return info


def _forget_upload(services: Services, dataset_id: str) -> None:
    """Blocking: the record and the folder of an upload that failed its check go."""
    try:
        services.store.delete_upload(dataset_id, force=True)
    except errors.NotFound:
        log.info("upload %s: its record was already gone", dataset_id)
    remove_upload(dataset_id, services.config)

"""A thin typed wrapper over the generated AdaptationService stub.

Each method builds the request, applies a deadline and the client's metadata, turns a
`grpc.RpcError` into a `graft_client.errors.GraftError`, and returns the generated
protobuf message (single-field responses are unwrapped: `get_job` returns the `Job`).
`Client` is the calls' groups in one class: jobs.py (training and progress), models.py
(Predict and the registry), datasets.py (uploads), exports.py (a model exported into a
folder), reports.py (a version's report), over base.py's plumbing; common.py
holds what they share (deadlines, the retry policy, TLS, request conversions).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import TracebackType

import grpc

from graft_client.base import ClientBase
from graft_client.common import (
    ADVISE_TIMEOUT,
    DEFAULT_TARGET,
    SERVICE_CONFIG,
    STREAM_SEGMENT_SECONDS,
    TERMINAL_STATES,
    DatasetLike,
    DeclaredLike,
    MiB,
    PemLike,
    dataset_ref,
    job_state,
    message_of,
    parse_model_ref,
    tls_credentials,
)
from graft_client.datasets import DatasetCalls
from graft_client.errors import InvalidArgument, Unavailable
from graft_client.exports import ExportCalls
from graft_client.jobs import JobCalls
from graft_client.models import ModelCalls
from graft_client.reports import ReportCalls
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TARGET",
    "TERMINAL_STATES",
    "Client",
    "job_state",
    "parse_model_ref",
    "tls_credentials",
]


class Client(JobCalls, ModelCalls, DatasetCalls, ExportCalls, ReportCalls, ClientBase):
    """Client of a Graft server.

    `target` is host:port. `timeout` is the default deadline in seconds of quick calls;
    Advise, Predict and UploadDataset get at least 600, 120 and 3600 seconds. Every
    method also takes `timeout=` to override its deadline. `channel` uses an existing
    channel (left open on close()); otherwise one is created with `max_message_bytes` as
    the message size limit and transparent retries on UNAVAILABLE. `metadata` is sent
    with every call.

    Security (docs/SECURITY.md): `api_key` (default: $GRAFT_API_KEY, if set) is sent as
    `authorization: Bearer <key>` with every call; a server on loopback with its defaults
    needs none. The channel uses TLS when `tls` is true or any of `ca_cert` (a PEM CA
    bundle to verify the server with; default: the system's roots), `client_cert` and
    `client_key` (PEM, both or neither: for mTLS) is given; each is a path, or the PEM
    bytes themselves. `tls_server_name` is the name the server's certificate must carry
    when it is not the target's host (e.g. through `kubectl port-forward`). `credentials`
    (grpc.ChannelCredentials) overrides all of these.

    Methods raise `graft_client.GraftError` subclasses (never a raw grpc.RpcError).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        max_message_bytes: int = 64 * MiB,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        tls: bool = False,
        ca_cert: PemLike | None = None,
        client_cert: PemLike | None = None,
        client_key: PemLike | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._metadata = tuple(metadata or ())
        api_key = os.environ.get("GRAFT_API_KEY") if api_key is None else api_key
        if api_key:
            self._metadata += (("authorization", f"Bearer {api_key.strip()}"),)
        if credentials is None and (tls or ca_cert or client_cert or client_key):
            credentials = tls_credentials(ca_cert, client_cert, client_key)
        self._owns_channel = channel is None
        if channel is None:
            options = [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.enable_retries", 1),
                # Reconnect soon after a server restart (gRPC's default backoff grows to
                # 120 s, longer than a progress stream keeps retrying).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5000),
                ("grpc.service_config", SERVICE_CONFIG),
            ]
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
        self._channel = channel
        self._stub = pb_grpc.AdaptationServiceStub(channel)
        # Reconnection of progress streams: exponential backoff between these bounds.
        self.reconnect_backoff: tuple[float, float] = (0.2, 5.0)
        self.stream_segment_seconds = STREAM_SEGMENT_SECONDS

    def close(self) -> None:
        """Closes the channel if this client created it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_for_server(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects; raises Unavailable after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"no Graft server at {self.target} after {timeout:g} s") from None

    def advise(
        self,
        dataset: DatasetLike | None = None,
        *,
        dataset_id: str | None = None,
        candidate_backbones: Iterable[str] = (),
        small_dataset_threshold: int = 0,
        declared: DeclaredLike | None = None,
        max_images_per_class: int = 0,
        max_images: int = 0,
        timeout: float | None = None,
    ) -> pb.AdviseResponse:
        """Measures a dataset (a server-side URI, or an uploaded dataset_id) and returns
        the quadrant, a complete plan and the numbers behind it. With only `declared`
        statistics (num_classes, images_per_class, similarity_hint) nothing is measured.
        `max_images_per_class` / `max_images` bound the measured sample (0: the server's
        defaults, which are also its limits)."""
        ref = dataset_ref(dataset, dataset_id)
        if ref is None and declared is None:
            raise InvalidArgument(
                "advise needs a dataset URI, a dataset_id or declared statistics",
                field_violations=[("dataset", "set a uri or a dataset_id, or `declared`")],
            )
        request = pb.AdviseRequest(
            candidate_backbones=list(candidate_backbones),
            small_dataset_threshold=small_dataset_threshold,
            max_images_per_class=max_images_per_class,
            max_images=max_images,
        )
        if ref is not None:
            request.dataset.CopyFrom(ref)
        if declared is not None:
            request.declared.CopyFrom(message_of(pb.DeclaredStatistics, declared))
        response: pb.AdviseResponse = self._call(
            self._stub.Advise, request, self._deadline(timeout, ADVISE_TIMEOUT)
        )
        return response

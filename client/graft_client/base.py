"""The plumbing every group of calls uses: the stub, the metadata, the deadline rules and
the translation of gRPC errors into graft_client errors."""

from __future__ import annotations

from typing import Any

import grpc

from graft_client.errors import from_rpc_error
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc


class ClientBase:
    """What `Client.__init__` sets up; the call groups (jobs, models, datasets) build on it."""

    target: str
    timeout: float
    max_message_bytes: int
    _metadata: tuple[tuple[str, str | bytes], ...]
    _stub: pb_grpc.AdaptationServiceStub
    _channel: grpc.Channel
    reconnect_backoff: tuple[float, float]
    stream_segment_seconds: float

    def _deadline(self, timeout: float | None, floor: float = 0.0) -> float:
        if timeout is not None:
            return timeout
        return max(self.timeout, floor)

    def _call(self, method: Any, request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout, metadata=self._metadata or None)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

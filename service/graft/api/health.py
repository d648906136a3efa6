"""grpc.health.v1 kept truthful: the HealthMonitor task and the health service names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from graft.api.services import Services
from graft_client.v1 import adaptation_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AdaptationService"].full_name
# Health service name for "some worker is alive" (heartbeat within `worker_ready_seconds`).
# The API stays SERVING without one: jobs queue until a worker comes.
WORKER_HEALTH_NAME = "graft.worker"


class HealthMonitor:
    """Keeps grpc.health.v1 truthful: NOT_SERVING until started and once draining; the API
    ("" and the AdaptationService) SERVING only while the store answers a ping; the
    `graft.worker` entry SERVING while some worker's heartbeat is recent. An asyncio task;
    the store is read on the services' store pool."""

    def __init__(
        self, health_servicer: HealthServicer, services: Services, interval: float = 2.0
    ) -> None:
        self.health = health_servicer
        self.services = services
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._api_serving: bool | None = None
        self._worker_serving: bool | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.services.draining.is_set():
                return  # enter_graceful_shutdown has set NOT_SERVING for good
            await self.check()

    def _probe(self) -> tuple[bool, bool]:
        store = self.services.store
        store.ping()
        now = time.time()
        window = self.services.config.worker_ready_seconds
        return True, any(now - w.last_heartbeat <= window for w in store.list_workers())

    async def check(self) -> None:
        try:
            api_ok, worker_ok = await self.services.call(self._probe)
        except Exception as exc:
            api_ok = worker_ok = False
            if self._api_serving is not False:
                log.error("health: the job store does not answer (%s): NOT_SERVING", exc)
        if self.services.draining.is_set():
            return
        if api_ok != self._api_serving:
            for name in ("", SERVICE_NAME):
                await self.health.set(name, _status(api_ok))
            if api_ok and self._api_serving is False:
                log.info("health: the job store answers again: SERVING")
            self._api_serving = api_ok
        if worker_ok != self._worker_serving:
            await self.health.set(WORKER_HEALTH_NAME, _status(worker_ok))
            log.info("health: %s", "a worker is ready" if worker_ok else "no worker is ready")
            self._worker_serving = worker_ok


def _status(ok: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )

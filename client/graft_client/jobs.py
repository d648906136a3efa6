"""The SDK's calls for StartFineTune, progress streams (resumed across reconnects),
waiting, and the job calls."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Generator
from contextlib import closing

import grpc

from graft_client.base import ClientBase
from graft_client.common import (
    ADVISE_TIMEOUT,
    RESUMABLE_STREAM_CODES,
    TERMINAL_STATES,
    DatasetLike,
    PlanLike,
    dataset_ref,
    job_state,
    message_of,
)
from graft_client.errors import DeadlineExceeded, InvalidArgument, from_rpc_error
from graft_client.v1 import adaptation_pb2 as pb


class JobCalls(ClientBase):
    """StartFineTune, StreamProgress (resumed across reconnects), wait, GetJob, ListJobs,
    CancelJob."""

    def start_fine_tune(
        self,
        model_name: str,
        dataset: DatasetLike | None = None,
        *,
        dataset_id: str | None = None,
        plan: PlanLike | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.Job:
        """Queues a training job and returns it. Without a plan the server advises first
        and trains with the advised plan; zero fields of a plan take server defaults.

        `request_id` makes the call idempotent: a fresh uuid4 is used when None, and the
        same one on every transparent retry. Pass your own to make your retries safe."""
        ref = dataset_ref(dataset, dataset_id)
        if ref is None:
            raise InvalidArgument(
                "start_fine_tune needs a dataset URI or a dataset_id",
                field_violations=[("dataset", "set a uri or a dataset_id")],
            )
        request = pb.StartFineTuneRequest(
            model_name=model_name, request_id=request_id or str(uuid.uuid4())
        )
        request.dataset.CopyFrom(ref)
        if plan is not None:
            request.plan.CopyFrom(message_of(pb.TrainingPlan, plan))
        floor = ADVISE_TIMEOUT if plan is None else 0.0
        response: pb.StartFineTuneResponse = self._call(
            self._stub.StartFineTune, request, self._deadline(timeout, floor)
        )
        return response.job

    def stream_progress(
        self,
        job_id: str,
        after_sequence: int = 0,
        *,
        reconnect: bool = True,
        max_retries: int = 10,
        timeout: float | None = None,
    ) -> Generator[pb.ProgressEvent, None, None]:
        """Yields the job's progress events after `after_sequence`, then live ones, and
        ends when the server ends the stream (the job ended).

        With `reconnect`, a lost connection (UNAVAILABLE, or CANCELLED by a server that
        shut down) is retried with exponential backoff, up to `max_retries` times in a
        row, resuming after the last sequence seen: no gap, no duplicate. `timeout`
        bounds the whole follow (DeadlineExceeded); None follows for as long as it runs.
        Closing the iterator cancels the call."""
        last = after_sequence
        failures = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            segment: float | None = self.stream_segment_seconds if reconnect else None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"stopped following job {job_id} after {timeout:g} s")
                segment = remaining if segment is None else min(segment, remaining)
            started = time.monotonic()
            request = pb.StreamProgressRequest(job_id=job_id, after_sequence=last)
            call = self._stub.StreamProgress(
                request, timeout=segment, metadata=self._metadata or None
            )
            try:
                for event in call:
                    if event.sequence <= last:
                        continue  # replayed twice across a reconnect
                    last = event.sequence
                    failures = 0
                    yield event
                return
            except grpc.RpcError as error:
                code = error.code()
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(
                        f"stopped following job {job_id} after {timeout:g} s"
                    ) from None
                if (
                    reconnect
                    and code == grpc.StatusCode.DEADLINE_EXCEEDED
                    and segment is not None
                    and time.monotonic() - started >= segment * 0.5
                ):
                    continue  # the connection's own deadline ran out; resume at once
                resumable = code in RESUMABLE_STREAM_CODES or (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED and segment is not None
                )
                if not reconnect or not resumable or failures >= max_retries:
                    raise from_rpc_error(error) from None
                failures += 1
                low, high = self.reconnect_backoff
                delay = min(high, low * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - time.monotonic()))
                time.sleep(delay)
            finally:
                call.cancel()

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[pb.ProgressEvent], None] | None = None,
    ) -> pb.Job:
        """Follows a job's progress (replayed from the start, each event passed to
        `on_event`) until it ends, and returns the final Job. Raises DeadlineExceeded
        after `timeout` seconds (the job itself keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            with closing(self.stream_progress(job_id, last, timeout=remaining)) as events:
                for event in events:
                    last = event.sequence
                    if on_event is not None:
                        on_event(event)
            remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
            job = self.get_job(job_id, timeout=remaining)
            if job.state in TERMINAL_STATES:
                return job
            # The server ended the stream while the job still runs (it was draining for a
            # restart): follow again after a pause.
            time.sleep(self.reconnect_backoff[0])

    def get_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Returns one job."""
        response: pb.GetJobResponse = self._call(
            self._stub.GetJob, pb.GetJobRequest(job_id=job_id), self._deadline(timeout)
        )
        return response.job

    def list_jobs(
        self, state: int | str | None = None, limit: int = 0, *, timeout: float | None = None
    ) -> list[pb.Job]:
        """Jobs, newest first; `state` filters (a JobState or a name like "running");
        `limit` 0 means the server's default (100). A limit above the server's page size
        (1,000) is met by following its page tokens. Metrics come without the confusion
        matrix (`get_job` has it)."""
        jobs: list[pb.Job] = []
        request = pb.ListJobsRequest(state=job_state(state), limit=limit)
        while True:
            response: pb.ListJobsResponse = self._call(
                self._stub.ListJobs, request, self._deadline(timeout)
            )
            jobs.extend(response.jobs)
            if not response.next_page_token or (limit and len(jobs) >= limit) or not limit:
                return jobs[: limit or None]
            request = pb.ListJobsRequest(
                state=request.state,
                limit=limit - len(jobs),
                page_token=response.next_page_token,
            )

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Asks a queued or running job to stop; returns the job after the request."""
        response: pb.CancelJobResponse = self._call(
            self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id), self._deadline(timeout)
        )
        return response.job

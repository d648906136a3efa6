"""A thin typed wrapper over the generated AdaptationService stub.

Each method builds the request, applies a deadline and the client's metadata, turns a
`grpc.RpcError` into a `graft_client.errors.GraftError`, and returns the generated
protobuf message (single-field responses are unwrapped: `get_job` returns the `Job`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from graft_client.errors import DeadlineExceeded, InvalidArgument, Unavailable, from_rpc_error
from graft_client.images import ImageInput, to_pb_images
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

DEFAULT_TARGET = "localhost:50051"
MiB = 1024 * 1024

# Default deadlines of the calls that legitimately take long; the client's `timeout`
# (for everything else) raises them when it is larger.
ADVISE_TIMEOUT = 600.0  # measures a sample of the dataset with every candidate backbone
PREDICT_TIMEOUT = 120.0  # may load a model before answering
UPLOAD_TIMEOUT = 3600.0  # archives of up to gigabytes
# A progress stream follows a job for as long as it runs; each connection gets this
# deadline and is then resumed, so a silently dead connection is noticed.
STREAM_SEGMENT_SECONDS = 300.0

TERMINAL_STATES = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})

# Transparent retries of calls that never reached the server or were refused while it
# started or drained. Every RPC is safe to retry: reads are reads, StartFineTune is
# idempotent on its request_id, CancelJob and SetModelAlias converge.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "graft.v1.AdaptationService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

# Status codes after which a progress stream resumes: the connection was lost, or the
# server went away (a server that shuts down cancels its open streams).
_RESUMABLE_STREAM_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

_MODEL_REF = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>[^:@]+))?$")

DatasetLike = str | os.PathLike[str] | pb.DatasetRef
PemLike = str | os.PathLike[str] | bytes  # a PEM file's path, or its contents
PlanLike = pb.TrainingPlan | Mapping[str, Any]
DeclaredLike = pb.DeclaredStatistics | Mapping[str, Any]
_T = TypeVar("_T")


def parse_model_ref(text: str) -> pb.ModelRef:
    """`name`, `name:VERSION` or `name@ALIAS` as a ModelRef."""
    match = _MODEL_REF.match(text.strip())
    if not match:
        raise InvalidArgument(
            f"model must be NAME, NAME:VERSION or NAME@ALIAS, got {text!r}",
            field_violations=[("model", "NAME, NAME:VERSION or NAME@ALIAS")],
        )
    return pb.ModelRef(
        name=match["name"],
        version=int(match["version"] or 0),
        alias=match["alias"] or "",
    )


def tls_credentials(
    ca_cert: PemLike | None = None,
    client_cert: PemLike | None = None,
    client_key: PemLike | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials: the server verified against `ca_cert` (None: the system's
    roots), and, for mTLS, this client's certificate chain and key (both or neither)."""
    if bool(client_cert) != bool(client_key):
        raise ValueError("mTLS needs both a client certificate and its key")

    def pem(value: PemLike | None) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        return Path(value).expanduser().read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=pem(ca_cert),
        private_key=pem(client_key),
        certificate_chain=pem(client_cert),
    )


def job_state(value: int | str | None) -> pb.JobState.ValueType:
    """A JobState from its number or its name (`running`, `JOB_STATE_RUNNING`)."""
    if value is None:
        return pb.JOB_STATE_UNSPECIFIED
    if isinstance(value, int):
        return pb.JobState.ValueType(value)
    name = value.strip().upper().replace("-", "_")
    if not name.startswith("JOB_STATE_"):
        name = "JOB_STATE_" + name
    try:
        return pb.JobState.Value(name)
    except ValueError:
        names = ", ".join(n.removeprefix("JOB_STATE_").lower() for n in pb.JobState.keys()[1:])
        raise ValueError(f"unknown job state {value!r}; one of {names}") from None


def _dataset_ref(dataset: DatasetLike | None, dataset_id: str | None) -> pb.DatasetRef | None:
    if dataset is not None and dataset_id:
        raise InvalidArgument(
            "pass either a dataset URI or a dataset_id, not both",
            field_violations=[("dataset", "set exactly one of uri and dataset_id")],
        )
    if isinstance(dataset, pb.DatasetRef):
        ref = pb.DatasetRef()
        ref.CopyFrom(dataset)
        return ref
    if dataset is not None:
        return pb.DatasetRef(uri=os.fspath(dataset))
    if dataset_id:
        return pb.DatasetRef(dataset_id=dataset_id)
    return None


def _message(cls: type[_T], value: _T | Mapping[str, Any]) -> _T:
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {type(value)}")


class Client:
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
                ("grpc.service_config", _SERVICE_CONFIG),
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

    # -- lifecycle ---------------------------------------------------------------------

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

    # -- plumbing ----------------------------------------------------------------------

    def _deadline(self, timeout: float | None, floor: float = 0.0) -> float:
        if timeout is not None:
            return timeout
        return max(self.timeout, floor)

    def _call(self, method: Any, request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout, metadata=self._metadata or None)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # -- advice and training -----------------------------------------------------------

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
        ref = _dataset_ref(dataset, dataset_id)
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
            request.declared.CopyFrom(_message(pb.DeclaredStatistics, declared))
        response: pb.AdviseResponse = self._call(
            self._stub.Advise, request, self._deadline(timeout, ADVISE_TIMEOUT)
        )
        return response

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
        ref = _dataset_ref(dataset, dataset_id)
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
            request.plan.CopyFrom(_message(pb.TrainingPlan, plan))
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
                resumable = code in _RESUMABLE_STREAM_CODES or (
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

    # -- inference ---------------------------------------------------------------------

    def predict(
        self,
        model: str | pb.ModelRef,
        images: Iterable[ImageInput],
        *,
        version: int = 0,
        alias: str = "",
        top_k: int = 5,
        timeout: float | None = None,
    ) -> pb.PredictResponse:
        """Classifies images with a registered model version. `model` is a name (also
        `name:VERSION` / `name@ALIAS`) or a ModelRef; `version` / `alias` override.
        Images are paths, encoded bytes, PIL images or uint8 numpy arrays. One
        prediction per image, in order; an undecodable image fails only its own entry
        (`prediction.error`)."""
        ref = self._model_ref(model, version, alias)
        request = pb.PredictRequest(model=ref, images=to_pb_images(images), top_k=top_k)
        response: pb.PredictResponse = self._call(
            self._stub.Predict, request, self._deadline(timeout, PREDICT_TIMEOUT)
        )
        return response

    @staticmethod
    def _model_ref(model: str | pb.ModelRef, version: int, alias: str) -> pb.ModelRef:
        if isinstance(model, pb.ModelRef):
            ref = pb.ModelRef()
            ref.CopyFrom(model)
        else:
            ref = parse_model_ref(model)
        if version:
            ref.version, ref.alias = version, ""
        if alias:
            ref.alias, ref.version = alias, 0
        return ref

    # -- jobs --------------------------------------------------------------------------

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

    # -- registry ----------------------------------------------------------------------

    def list_models(self, name_prefix: str = "", *, timeout: float | None = None) -> list[pb.Model]:
        """Registered models (with their versions), optionally by name prefix: every page
        of the server's list, one Model per name (and tenant). Metrics come without the
        confusion matrix (`get_model` has it)."""
        models: list[pb.Model] = []
        token = ""
        while True:
            response: pb.ListModelsResponse = self._call(
                self._stub.ListModels,
                pb.ListModelsRequest(name_prefix=name_prefix, page_token=token),
                self._deadline(timeout),
            )
            for model in response.models:
                last = models[-1] if models else None
                if last is not None and (last.name, last.tenant) == (model.name, model.tenant):
                    last.versions.extend(model.versions)  # continued from the last page
                else:
                    models.append(model)
            token = response.next_page_token
            if not token:
                return models

    def get_model(
        self,
        name: str | pb.ModelRef,
        version: int = 0,
        alias: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """One model version with its card; neither version nor alias means the newest."""
        request = pb.GetModelRequest(model=self._model_ref(name, version, alias))
        response: pb.GetModelResponse = self._call(
            self._stub.GetModel, request, self._deadline(timeout)
        )
        return response.model

    def set_model_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        tenant: str = "",
        timeout: float | None = None,
    ) -> pb.ModelVersion:
        """Points `alias` (e.g. "production") at a version; returns that version. `tenant`:
        another tenant's model (admin keys only; default: the caller's own)."""
        request = pb.SetModelAliasRequest(name=name, alias=alias, version=version, tenant=tenant)
        response: pb.SetModelAliasResponse = self._call(
            self._stub.SetModelAlias, request, self._deadline(timeout)
        )
        return response.model

    def list_backbones(self, *, timeout: float | None = None) -> list[pb.Backbone]:
        """The backbone catalog, with whether each one's weights are available."""
        response: pb.ListBackbonesResponse = self._call(
            self._stub.ListBackbones, pb.ListBackbonesRequest(), self._deadline(timeout)
        )
        return list(response.backbones)

    # -- uploads -----------------------------------------------------------------------

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

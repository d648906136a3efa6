"""What the SDK's calls share: default target and deadlines, the channel's retry policy,
the TLS credentials, and the small conversions from Python values to request messages."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from graft_client.errors import InvalidArgument
from graft_client.v1 import adaptation_pb2 as pb

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
SERVICE_CONFIG = json.dumps(
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
RESUMABLE_STREAM_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

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


def dataset_ref(dataset: DatasetLike | None, dataset_id: str | None) -> pb.DatasetRef | None:
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


def message_of(cls: type[_T], value: _T | Mapping[str, Any]) -> _T:
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {type(value)}")

"""Python SDK for the Graft model-adaptation service.

    from graft_client import Client, pb

    with Client("localhost:50051") as graft:
        advice = graft.advise("/data/flowers")
        job = graft.start_fine_tune("flowers", "/data/flowers", plan=advice.plan)
        job = graft.wait(job.job_id, on_event=print)
        print(graft.predict("flowers", ["rose.jpg"]).predictions[0].classes[0].label)

Depends on grpcio and protobuf only; PIL images and numpy arrays are accepted by
`predict` when the caller has them, but neither is imported here.
"""

from graft_client.client import (
    TERMINAL_STATES,
    Client,
    job_state,
    parse_model_ref,
    tls_credentials,
)
from graft_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GraftError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
    from_status,
    job_error,
)
from graft_client.v1 import adaptation_pb2 as pb

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATES",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GraftError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "from_status",
    "job_error",
    "job_state",
    "parse_model_ref",
    "pb",
    "tls_credentials",
]

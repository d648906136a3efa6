"""graft.v1.AdaptationService on grpc.aio: each method validates cheaply, converts and
delegates; none computes on the event loop.

`AdaptationServicer` is the one servicer registered; its methods come in groups, one
module each: `advice` (Advise), `jobs` (StartFineTune, StreamProgress, GetJob, ListJobs,
CancelJob), `models` (Predict, ListModels, GetModel, SetModelAlias, ListBackbones),
`datasets` (UploadDataset, DeleteDataset, ListDatasets), `compare` (CompareModels),
`exports` (ExportModel) and `reports` (GetModelReport).
Checks of request fields they share are in `validation`, the awaiting of a worker's task
in `tasks`.

Every call runs as an `Identity` (graft.api.auth: the caller's tenant, admin or not); store
queries take its scope, so another tenant's job, model or upload is NOT_FOUND.

Blocking store calls (milliseconds each) run on a small thread pool (`Services.call`);
Predict goes to the Predict engine (graft.predict: decode pool, dynamic batcher, runners);
everything heavy (scanning a dataset, measuring it for Advise, checking an upload,
training) is work for a worker process, handed over through the store and, where the RPC's
contract is to answer with its result (Advise, UploadDataset), awaited without holding a
thread: the store watcher wakes the call when the task ends, and a caller that goes away
or runs out of time cancels the work.
"""

from __future__ import annotations

from graft.api.advice import AdviceRPCs
from graft.api.compare import CompareRPCs
from graft.api.datasets import DatasetRPCs
from graft.api.exports import ExportRPCs
from graft.api.jobs import JobRPCs
from graft.api.models import ModelRPCs
from graft.api.reports import ReportRPCs
from graft.api.services import Services
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

__all__ = ["AdaptationServicer"]


class AdaptationServicer(
    AdviceRPCs,
    JobRPCs,
    ModelRPCs,
    DatasetRPCs,
    CompareRPCs,
    ExportRPCs,
    ReportRPCs,
    pb_grpc.AdaptationServiceServicer,
):
    """Every RPC of graft.v1.AdaptationService, each group from its module; they share
    nothing but `services`."""

    def __init__(self, services: Services) -> None:
        self.services = services

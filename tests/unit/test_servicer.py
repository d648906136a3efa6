"""The servicer's composition: `AdaptationServicer` is one class made of RPC groups (one
module each); every RPC of the proto is implemented by exactly one group, and none falls
through to the generated base class (whose methods answer UNIMPLEMENTED)."""

from __future__ import annotations

import inspect

from graft.api.advice import AdviceRPCs
from graft.api.compare import CompareRPCs
from graft.api.datasets import DatasetRPCs
from graft.api.exports import ExportRPCs
from graft.api.jobs import JobRPCs
from graft.api.models import ModelRPCs
from graft.api.reports import ReportRPCs
from graft.api.servicer import AdaptationServicer
from graft_client.v1 import adaptation_pb2 as pb
from graft_client.v1 import adaptation_pb2_grpc as pb_grpc

GROUPS = (AdviceRPCs, JobRPCs, ModelRPCs, DatasetRPCs, ExportRPCs, CompareRPCs, ReportRPCs)


def _rpcs() -> list[str]:
    return [m.name for m in pb.DESCRIPTOR.services_by_name["AdaptationService"].methods]


def test_every_rpc_is_implemented_by_exactly_one_group() -> None:
    rpcs = _rpcs()
    assert len(rpcs) >= 14  # the descriptor was read
    for name in rpcs:
        owners = [g.__name__ for g in GROUPS if name in vars(g)]
        assert len(owners) == 1, f"{name} is implemented by {owners or 'no group'}"
        method = getattr(AdaptationServicer, name)
        assert method is not getattr(pb_grpc.AdaptationServiceServicer, name), name
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


def test_the_groups_hold_rpcs_only() -> None:
    # Helpers are module functions, so two groups cannot clash on a private method name.
    rpcs = set(_rpcs())
    for group in GROUPS:
        methods = {n for n, v in vars(group).items() if inspect.isfunction(v)}
        assert methods <= rpcs, f"{group.__name__}: {sorted(methods - rpcs)} are not RPCs"

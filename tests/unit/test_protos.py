"""Proto hygiene: the contract names clients rely on, a comment on every field and enum
value, `*_UNSPECIFIED = 0` zeros, and generated code that matches the .proto files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from graft_client.v1 import adaptation_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "graft" / "v1" / "adaptation.proto"


def test_service_has_the_contract_rpcs() -> None:
    service = pb.DESCRIPTOR.services_by_name["AdaptationService"]
    names = {m.name for m in service.methods}
    assert names == {
        "Advise",
        "StartFineTune",
        "StreamProgress",
        "Predict",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "ListModels",
        "GetModel",
        "SetModelAlias",
        "ListBackbones",
        "UploadDataset",
        "DeleteDataset",
        "ListDatasets",
        "GetModelReport",
        "CompareModels",
        "ExportModel",
    }
    assert service.methods_by_name["StreamProgress"].server_streaming
    assert service.methods_by_name["UploadDataset"].client_streaming
    assert pb.DESCRIPTOR.package == "graft.v1"


def test_enums_have_unspecified_zero() -> None:
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
    assert pb.Strategy.Value("STRATEGY_FEATURE_EXTRACTION") == 3
    assert pb.Quadrant.Value("QUADRANT_SMALL_SIMILAR") == 4
    assert pb.JobState.Value("JOB_STATE_CANCELLED") == 5


def test_contract_field_names() -> None:
    def fields(msg: str) -> set[str]:
        return set(pb.DESCRIPTOR.message_types_by_name[msg].fields_by_name)

    assert {"uri", "dataset_id"} <= fields("DatasetRef")
    assert {"backbone", "strategy", "trainable_stages"} <= fields("TrainingPlan")
    assert {"quadrant", "plan", "similarity"} <= fields("AdviseResponse")
    assert {"model_name", "dataset", "plan", "request_id"} <= fields("StartFineTuneRequest")
    assert {"job_id", "after_sequence"} <= fields("StreamProgressRequest")
    assert {"sequence", "job_id", "state"} <= fields("ProgressEvent")
    assert {"name", "version", "alias"} <= fields("ModelRef")
    assert {"model", "images", "top_k"} <= fields("PredictRequest")
    assert {"classes", "error"} <= fields("Prediction")
    assert {"label", "score"} <= fields("ClassScore")


def test_every_field_and_value_is_commented() -> None:
    lines = PROTO.read_text().splitlines()
    declaration = re.compile(r"^\s+(repeated\s+)?[\w.]+\s+\w+\s*=\s*\d+;|^\s+[A-Z0-9_]+\s*=\s*\d+;")
    missing = [
        f"{i + 1}: {line.strip()}"
        for i, line in enumerate(lines)
        if declaration.match(line) and not lines[i - 1].strip().startswith("//")
    ]
    assert missing == []


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

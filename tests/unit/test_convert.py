"""graft.api.convert (protobuf <-> domain) and graft.advisor.codec (the Advice between the
advisor lane and the API).

The parity tests fail when a field is added to a proto message or to its domain dataclass
without the other side and the conversion: every field is set to a value that is not its
default and must come out the other end.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest
import torch

from graft.advisor.advice import (
    Advice,
    BackboneScore,
    CutChoice,
    DeclaredStats,
    Depth,
    PilotResult,
    ProbeResult,
    StageScore,
    StrategyEstimate,
)
from graft.advisor.codec import VERSION, advice_from_json, advice_to_json
from graft.advisor.declared import advise_declared
from graft.advisor.report import DatasetReportData
from graft.advisor.signals import Signal
from graft.api import convert
from graft.backbones import DEFAULT_BACKBONE
from graft.domain import (
    ClassMetrics,
    DatasetRef,
    EvaluationMetrics,
    EventKind,
    Job,
    JobState,
    ModelVersion,
    ProgressEvent,
    Quadrant,
    Strategy,
    TrainingPlan,
)
from graft.errors import FailedPrecondition, InvalidArgument
from graft.plans.advised import Speed
from graft.store import UploadRecord
from graft_client.v1 import adaptation_pb2 as pb

# ------------------------------------------------------------------------ field parity

# Proto field name -> domain field name, where they differ. Empty today; a rename goes here
# with a comment saying why.
PLAN_RENAMED: dict[str, str] = {}
# Proto fields with no domain field (none), and domain fields the proto does not carry.
PLAN_PROTO_ONLY: set[str] = set()
PLAN_DOMAIN_ONLY: set[str] = set()

METRICS_RENAMED: dict[str, str] = {}
METRICS_PROTO_ONLY: set[str] = set()
METRICS_DOMAIN_ONLY: set[str] = set()
CLASS_METRICS_RENAMED: dict[str, str] = {}


def _proto_fields(message: Any) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.fields}


def _domain_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    ("message", "cls", "renamed", "proto_only", "domain_only"),
    [
        (pb.TrainingPlan, TrainingPlan, PLAN_RENAMED, PLAN_PROTO_ONLY, PLAN_DOMAIN_ONLY),
        (
            pb.EvaluationMetrics,
            EvaluationMetrics,
            METRICS_RENAMED,
            METRICS_PROTO_ONLY,
            METRICS_DOMAIN_ONLY,
        ),
        (pb.ClassMetrics, ClassMetrics, CLASS_METRICS_RENAMED, set(), set()),
    ],
    ids=["TrainingPlan", "EvaluationMetrics", "ClassMetrics"],
)
def test_proto_and_domain_have_the_same_fields(
    message: Any,
    cls: type,
    renamed: dict[str, str],
    proto_only: set[str],
    domain_only: set[str],
) -> None:
    proto = _proto_fields(message)
    assert proto_only <= proto and set(renamed) <= proto, "stale entries in the mapping"
    assert not set(renamed) & proto_only
    from_proto = {renamed.get(n, n) for n in proto - proto_only}
    domain = _domain_fields(cls) - domain_only
    assert from_proto - domain == set(), f"{message.DESCRIPTOR.full_name}: no domain field"
    assert domain - from_proto == set(), f"{cls.__name__}: not in the proto"


def _not_default(tp: Any, index: int) -> Any:
    """A value of type `tp` unlike its default, different for each field `index`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return tuple(_not_default(args[0], index + k) for k in range(2))
    if isinstance(tp, type) and issubclass(tp, Strategy):
        return Strategy.PARTIAL_FINE_TUNE
    if tp is bool:
        return True
    if tp is int:
        return 3 + index
    if tp is float:
        return 0.25 + index
    if tp is str:
        return f"value-{index}"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _all_set(tp, index * 10)
    raise AssertionError(f"no test value for {tp!r}: extend _not_default")


def _all_set(cls: type, offset: int = 0) -> Any:
    hints = typing.get_type_hints(cls)
    kw = {
        f.name: _not_default(hints[f.name], offset + i)
        for i, f in enumerate(dataclasses.fields(cls))
    }
    value = cls(**kw)
    for f in dataclasses.fields(cls):
        assert getattr(value, f.name) != f.default, f"{cls.__name__}.{f.name} left at default"
    return value


def test_plan_round_trips_every_field() -> None:
    plan = _all_set(TrainingPlan)
    msg = convert.plan_to_pb(plan)
    for name in _proto_fields(pb.TrainingPlan):  # each proto field carries its value
        got = getattr(msg, name)
        want = getattr(plan, PLAN_RENAMED.get(name, name))
        assert (list(got) if name == "feature_stages" else got) == (
            list(want) if name == "feature_stages" else want
        ), name
    assert convert.plan_from_pb(msg) == plan


def test_plan_from_pb_strips_the_backbone_and_refuses_an_unknown_strategy() -> None:
    plan = convert.plan_from_pb(pb.TrainingPlan(backbone="  efficientnet_lite0 \n"))
    assert plan == TrainingPlan(backbone=DEFAULT_BACKBONE)
    with pytest.raises(InvalidArgument) as info:
        convert.plan_from_pb(pb.TrainingPlan(strategy=99))  # type: ignore[arg-type]
    assert info.value.violations[0].field == "plan.strategy"


def test_metrics_carry_every_field() -> None:
    metrics = _all_set(EvaluationMetrics)
    msg = convert.metrics_to_pb(metrics)
    assert msg is not None
    for name in _proto_fields(pb.EvaluationMetrics):
        got, want = getattr(msg, name), getattr(metrics, METRICS_RENAMED.get(name, name))
        if name == "per_class":
            got = tuple(
                ClassMetrics(**{CLASS_METRICS_RENAMED.get(f, f): getattr(c, f) for f in _f(c)})
                for c in got
            )
        assert tuple(got) == want if isinstance(want, tuple) else got == want, name
    # Lists and progress events leave the confusion matrix out (it grows with classes²).
    light = convert.metrics_to_pb(metrics, confusion=False)
    assert light is not None and list(light.confusion) == [] and light.accuracy == 0.25
    assert convert.metrics_to_pb(None) is None


def _f(msg: Any) -> list[str]:
    return [f.name for f in msg.DESCRIPTOR.fields]


# ------------------------------------------------------------------ the other messages


def test_dataset_ref_round_trips_and_strips() -> None:
    ref = DatasetRef(uri="/data/cats", dataset_id="up-1")
    assert convert.dataset_from_pb(convert.dataset_to_pb(ref)) == ref
    assert convert.dataset_from_pb(pb.DatasetRef(uri=" /d ", dataset_id=" x\n")) == DatasetRef(
        "/d", "x"
    )


def test_timestamp() -> None:
    assert convert.timestamp(None) is None
    assert convert.timestamp(0.0) is None
    ts = convert.timestamp(1.5)
    assert ts is not None and ts.ToNanoseconds() == 1_500_000_000


def test_enum_from_pb_names_the_field() -> None:
    assert convert.enum_from_pb(Quadrant, 4, "q") is Quadrant.SMALL_SIMILAR
    with pytest.raises(InvalidArgument) as info:
        convert.enum_from_pb(Quadrant, 7, "quadrant")
    assert info.value.violations[0].field == "quadrant"


def _job(**kw: Any) -> Job:
    base: dict[str, Any] = {
        "job_id": "j1",
        "model_name": "cats",
        "dataset": DatasetRef(uri="/data/cats"),
        "plan": TrainingPlan(backbone="b", strategy=Strategy.FEATURE_EXTRACTION, epochs=2),
        "request_id": "r1",
        "state": JobState.SUCCEEDED,
        "create_time": 10.0,
        "start_time": 11.0,
        "end_time": 12.5,
        "model_version": 3,
        "attempts": 1,
        "last_sequence": 9,
        "skipped_files": 2,
        "metrics": EvaluationMetrics(accuracy=0.9, confusion=(1, 0, 0, 1), labels=("a", "b")),
        "tenant": "t1",
    }
    return Job(**{**base, **kw})


def test_job_to_pb() -> None:
    job = _job()
    msg = convert.job_to_pb(job)
    assert (msg.job_id, msg.state, msg.model_name) == ("j1", pb.JOB_STATE_SUCCEEDED, "cats")
    assert convert.dataset_from_pb(msg.dataset) == job.dataset
    assert convert.plan_from_pb(msg.plan) == job.plan
    assert msg.end_time.ToNanoseconds() == 12_500_000_000
    assert (msg.model.name, msg.model.version, msg.model.tenant) == ("cats", 3, "t1")
    assert (msg.attempts, msg.last_sequence, msg.skipped_files, msg.tenant) == (1, 9, 2, "t1")
    assert list(msg.metrics.confusion) == [1, 0, 0, 1]
    assert list(convert.job_to_pb(job, detail=False).metrics.confusion) == []
    running = convert.job_to_pb(_job(state=JobState.RUNNING, model_version=0, end_time=None))
    assert not running.HasField("model") and not running.HasField("end_time")


def test_failed_job_carries_its_error_status() -> None:
    detail = {"kind": "InvalidArgument", "message": "bad", "violations": []}
    msg = convert.job_to_pb(_job(state=JobState.FAILED, error="bad", error_detail=detail))
    assert msg.HasField("error_status") and msg.error == "bad"


def test_event_to_pb() -> None:
    ev = ProgressEvent(
        kind=EventKind.EVALUATION,
        state=JobState.RUNNING,
        sequence=4,
        job_id="j1",
        time=2.0,
        epoch=1,
        total_epochs=3,
        loss=0.5,
        metrics=EvaluationMetrics(accuracy=0.5, confusion=(1,)),
        message="epoch 1",
        train_accuracy=0.75,
    )
    msg = convert.event_to_pb(ev)
    assert (msg.sequence, msg.job_id, msg.epoch, msg.total_epochs) == (4, "j1", 1, 3)
    assert (msg.loss, msg.message, msg.metrics.accuracy) == (0.5, "epoch 1", 0.5)
    assert msg.train_accuracy == 0.75
    assert list(msg.metrics.confusion) == []  # GetJob / GetModel carry it


def test_model_ref_from_pb_is_in_the_callers_tenant() -> None:
    ref = convert.model_ref_from_pb(pb.ModelRef(name=" cats ", alias=" prod "), "t2")
    assert (ref.name, ref.alias, ref.version, ref.tenant) == ("cats", "prod", 0, "t2")


def test_model_version_to_pb_keeps_the_confusion_matrix_out_of_the_card() -> None:
    metrics = {"accuracy": 0.9, "confusion": [1, 0, 0, 1]}
    mv = ModelVersion(
        name="cats",
        version=2,
        create_time=5.0,
        job_id="j1",
        backbone="b",
        labels=("a", "b"),
        sha256="ab" * 32,
        card={"metrics": metrics, "backbone": "b"},
        artifact_dir="/x",
        aliases=["prod", "canary"],
        metrics=EvaluationMetrics(accuracy=0.9, confusion=(1, 0, 0, 1)),
    )
    msg = convert.model_version_to_pb(mv)
    assert list(msg.aliases) == ["canary", "prod"] and list(msg.labels) == ["a", "b"]
    assert json.loads(msg.card_json) == {"metrics": {"accuracy": 0.9}, "backbone": "b"}
    assert list(msg.metrics.confusion) == [1, 0, 0, 1]
    assert list(convert.model_version_to_pb(mv, detail=False).metrics.confusion) == []
    assert mv.card["metrics"] is metrics and "confusion" in metrics  # not mutated


def test_upload_to_pb_dates_its_expiry() -> None:
    up = UploadRecord("up-1", "/p", 100, "f" * 64, create_time=1.0, filename="a.zip", last_used=5.0)
    msg = convert.upload_to_pb(up, ttl_seconds=10.0)
    assert (msg.dataset_id, msg.archive_bytes, msg.filename) == ("up-1", 100, "a.zip")
    assert msg.expire_time.ToNanoseconds() == 15_000_000_000
    assert not convert.upload_to_pb(up, ttl_seconds=0).HasField("expire_time")


# ------------------------------------------------------------------------ the Advice


def _probe(accuracy: float) -> ProbeResult:
    return ProbeResult(accuracy, 0.01, 3, (accuracy, accuracy, accuracy), (True, False))


def _measured_advice() -> Advice:
    """An Advice with every part a measured one has (depth, speed, pilot, report)."""
    plan = TrainingPlan(
        backbone=DEFAULT_BACKBONE,
        strategy=Strategy.FEATURE_EXTRACTION,
        epochs=5,
        feature_stages=(3, 4),
        feature_grid=2,
    )
    depth = Depth(
        stages=(StageScore(1, 16, -1.5, _probe(0.4)), StageScore(2, 24, -0.5, _probe(0.7))),
        cut=CutChoice(
            stages=(3, 4),
            probe=_probe(0.8),
            features=torch.ones(2, 3),
            candidates=(((4,), 0.7), ((3, 4), 0.8)),
            grid=2,
            grid_candidates=(((3, 4), 0.8),),
            global_probe=_probe(0.75),
        ),
        trainable_stages=2,
        best_stage=2,
    )
    report = DatasetReportData(
        classes=(("cat", 40), ("dog", 38)),
        total_images=78,
        skipped_files=1,
        skipped_examples=("x.jpg: not an image",),
        imbalance_ratio=1.05,
        median_width=64,
        median_height=48,
        fingerprint="f" * 16,
        duplicate_images=2,
        modes=(("L", 3), ("RGB", 75)),
    )
    return Advice(
        quadrant=Quadrant.SMALL_SIMILAR,
        matrix_strategy=Strategy.FEATURE_EXTRACTION,
        plan=plan,
        similarity=0.8,
        signals=[Signal("bn_shift", 0.2, 0.8, "how far the statistics moved")],
        backbones=[BackboneScore(DEFAULT_BACKBONE, 0.8, 3.4, 500.0, 0.01, 3, 64, -0.4, (-1.0,))],
        rationale="small and similar",
        small_threshold=1000,
        estimated_training_seconds=12.5,
        report=report,
        images_per_class=39.0,
        similar=True,
        similarity_backbone=DEFAULT_BACKBONE,
        sample_images=78,
        measure_seconds=3.25,
        speed=Speed(500.0, (0.2, 0.3, 0.5), 0.001, 0.002, decode_every_epoch=True),
        depth=depth,
        strategy_estimates=(
            StrategyEstimate(Strategy.FEATURE_EXTRACTION, 0.75, 0.85, 12.5, "probe"),
        ),
        estimated_accuracy=(0.75, 0.85),
        similarity_method="bn+logme",
        pilot=PilotResult(0.7, 4.0, 1, 60, 18),
        holdout_probe_accuracy=0.78,
        from_cache=True,
        similarity_interval=(0.7, 0.9),
        similarity_borderline=True,
        similarity_images=128,
    )


def _unset_fields(message: Any) -> list[str]:
    """The fields of `message` left at their default (empty for repeated ones)."""
    unset = []
    for f in message.DESCRIPTOR.fields:
        value = getattr(message, f.name)
        if f.is_repeated:
            if not len(value):
                unset.append(f.name)
        elif f.message_type is not None:
            if not message.HasField(f.name):
                unset.append(f.name)
        elif value == f.default_value:
            unset.append(f.name)
    return unset


def test_advice_to_pb_fills_every_response_field() -> None:
    """A field added to AdviseResponse without its conversion fails here: every field of
    the answer to a measured Advice (every part set) is set."""
    assert _unset_fields(convert.advice_to_pb(_measured_advice())) == []


def test_advice_codec_round_trips_a_measured_advice() -> None:
    advice = _measured_advice()
    text = advice_to_json(advice)
    assert json.loads(text)["version"] == VERSION
    back = advice_from_json(text)
    # What the RPC answers is exactly what the lane's advice gives.
    assert convert.advice_to_pb(back) == convert.advice_to_pb(advice)
    assert advice_to_json(back) == text  # nothing lost, nothing added
    assert back.depth is not None and advice.depth is not None
    # Every field but the sample's features (they stay in the worker) comes back equal.
    assert back.depth.cut.features.numel() == 0
    for f in dataclasses.fields(CutChoice):
        if f.name != "features":
            assert getattr(back.depth.cut, f.name) == getattr(advice.depth.cut, f.name), f.name
    for f in dataclasses.fields(Advice):
        if f.name != "depth":
            assert getattr(back, f.name) == getattr(advice, f.name), f.name
    assert back.depth.stages == advice.depth.stages
    assert isinstance(back.quadrant, Quadrant) and isinstance(back.plan.strategy, Strategy)
    assert isinstance(back.plan.feature_stages, tuple)


def test_advice_codec_round_trips_a_declared_advice() -> None:
    advice = advise_declared(
        DeclaredStats(num_classes=5, images_per_class=200, similarity_hint=0.8),
        small_threshold=1000,
        backbone=DEFAULT_BACKBONE,
    )
    back = advice_from_json(advice_to_json(advice))
    assert back == advice
    assert convert.advice_to_pb(back) == convert.advice_to_pb(advice)


def test_advice_codec_refuses_another_version() -> None:
    doc = json.loads(advice_to_json(_measured_advice()))
    doc["version"] = VERSION + 1
    with pytest.raises(FailedPrecondition, match="version"):
        advice_from_json(json.dumps(doc))


def test_advice_codec_fills_a_missing_field_with_its_default() -> None:
    # An older lane that did not know a field yet: the field decodes to its default.
    doc = json.loads(advice_to_json(_measured_advice()))
    del doc["advice"]["holdout_probe_accuracy"]
    del doc["advice"]["plan"]["feature_grid"]
    back = advice_from_json(json.dumps(doc))
    assert back.holdout_probe_accuracy == 0.0 and back.plan.feature_grid == 0

"""graft.training: the loop, progress events, checkpoints and resume, cancellation, feature
extraction's cache, metrics. Tiny random-init models on 32 px PNGs, a few epochs each."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import graft.training.features as features_mod
import graft.training.loop as loop_mod
from graft.data import Sample
from graft.domain import EvaluationMetrics, EventKind, ProgressEvent, Strategy, TrainingPlan
from graft.training import (
    Checkpoint,
    CheckpointError,
    TrainingCancelled,
    evaluate_predictions,
    load_checkpoint,
    save_checkpoint,
    train,
)
from graft.training.checkpoint import FILENAME, RngState
from graft.training.engine import class_weights

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_colour_dataset(
    root: Path, per_class: int = 12, val_per_class: int = 4, seed: int = 0
) -> tuple[list[str], list[Sample], list[Sample]]:
    """Three learnable classes: noisy 32 px images of a dominant colour with a random
    lighter square. Returns (classes, train samples, val samples)."""
    rng = np.random.default_rng(seed)
    classes = sorted(COLOURS)
    train_s: list[Sample] = []
    val_s: list[Sample] = []
    for label, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class + val_per_class):
            px = np.array(COLOURS[name], dtype=np.float64) + rng.normal(0, 35, (32, 32, 3))
            x, y = rng.integers(0, 20, 2)
            px[y : y + 12, x : x + 12] += 50
            path = d / f"{i:03d}.png"
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(path)
            (train_s if i < per_class else val_s).append(Sample(path, label))
    return classes, train_s, val_s


@pytest.fixture(scope="module")
def colours(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[str], list[Sample], list[Sample]]:
    return make_colour_dataset(tmp_path_factory.mktemp("colours"))


def plan_for(strategy: Strategy, **kw: Any) -> TrainingPlan:
    plan = TrainingPlan(
        backbone="efficientnet_lite0",
        strategy=strategy,
        trainable_stages=3 if strategy == Strategy.PARTIAL_FINE_TUNE else 0,
        head_learning_rate=3e-3,
        base_learning_rate=1e-3 if strategy != Strategy.FEATURE_EXTRACTION else 0.0,
        epochs=2,
        batch_size=8,
        image_size=32,
        weight_decay=0.01,
        warmup_epochs=0.5,
        seed=7,
    )
    return dataclasses.replace(plan, **kw)


class Recorder:
    def __init__(self, stop_after_epoch: int = 0) -> None:
        self.events: list[ProgressEvent] = []
        self.stop_after_epoch = stop_after_epoch
        self.stop = False

    def emit(self, e: ProgressEvent) -> None:
        self.events.append(e)
        if self.stop_after_epoch and e.kind == EventKind.EVALUATION:
            # train() writes epoch N's checkpoint right after its EVALUATION event, and checks
            # should_stop before the next step: this interrupts between epochs N and N+1.
            self.stop = e.epoch >= self.stop_after_epoch

    def of(self, kind: EventKind) -> list[ProgressEvent]:
        return [e for e in self.events if e.kind == kind]

    def messages(self) -> list[str]:
        return [e.message for e in self.of(EventKind.MESSAGE)]


def run(
    data: tuple[list[str], list[Sample], list[Sample]],
    plan: TrainingPlan,
    ckpt_dir: Path,
    rec: Recorder | None = None,
    **kw: Any,
) -> loop_mod.TrainResult:
    classes, train_s, val_s = data
    rec = rec or Recorder()
    args: dict[str, Any] = dict(
        job_id="job-1",
        plan=plan,
        classes=classes,
        train_samples=train_s,
        val_samples=val_s,
        dataset_fingerprint="fp-1",
        weights_dir=None,
        checkpoint_dir=ckpt_dir,
        device=torch.device("cpu"),
        emit=rec.emit,
        should_stop=lambda: rec.stop,
        pretrained=False,
    )
    args.update(kw)
    return train(**args)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# --- training end to end -----------------------------------------------------------------


def test_train_learns_and_reports_progress(colours: Any, tmp_path: Path) -> None:
    rec = Recorder()
    # ResNet-18: a random-init EfficientNet-Lite0 barely learns at 32 px in a few epochs.
    plan = plan_for(Strategy.FULL_FINE_TUNE, backbone="resnet18", epochs=3, head_warmup_epochs=1)
    result = run(colours, plan, tmp_path / "c", rec, step_event_interval=3600.0)

    # Clearly above chance (1/3) on held-out images.
    assert result.metrics.accuracy >= 0.75, result.metrics
    assert result.epochs_run == 3 and result.resumed_from_epoch == 0
    assert 1 <= result.best_epoch <= 3
    assert not result.model.training
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in result.model.parameters())

    # With a long interval, exactly one STEP event per epoch: its last step.
    steps = rec.of(EventKind.STEP)
    assert [(e.epoch, e.step) for e in steps] == [(i, 5) for i in range(1, 4)]  # 36 / 8
    for e in steps:
        assert e.steps_per_epoch == 5 and e.total_epochs == 3
        assert e.loss > 0 and math.isfinite(e.loss)
        assert e.learning_rate > 0 and e.images_per_second > 0 and e.eta_seconds >= 0
        assert e.job_id == "job-1" and e.sequence == 0
    assert steps[-1].eta_seconds == 0

    evals = rec.of(EventKind.EVALUATION)
    assert [e.epoch for e in evals] == [1, 2, 3]
    for e in evals:
        m = e.metrics
        assert m is not None and m.labels == ("blue", "green", "red")
        assert sum(m.confusion) == 12 and [c.support for c in m.per_class] == [4, 4, 4]
        assert 0 <= m.accuracy <= m.top5_accuracy == 1.0  # 3 classes: top-3 always right
        assert 0 < e.train_accuracy <= 1  # top-1 of the 40 training images as trained
    assert evals[-1].train_accuracy > 0.5  # learning shows on the training batches too
    assert result.metrics == evals[result.best_epoch - 1].metrics
    msgs = rec.messages()
    assert any("full fine-tune" in m for m in msgs)
    assert any("head warm-up done" in m for m in msgs)

    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt is not None and ckpt.epoch == 3 and ckpt.best_epoch == result.best_epoch
    assert_same_state(ckpt.best_weights(), result.model.state_dict())
    assert [h["epoch"] for h in ckpt.history] == [1, 2, 3]


def test_step_events_every_step_with_zero_interval(colours: Any, tmp_path: Path) -> None:
    rec = Recorder()
    run(
        colours,
        plan_for(Strategy.FEATURE_EXTRACTION, epochs=2),
        tmp_path,
        rec,
        step_event_interval=0.0,
    )
    steps = rec.of(EventKind.STEP)
    assert [(e.epoch, e.step) for e in steps] == [(ep, s) for ep in (1, 2) for s in range(1, 6)]
    # The head's rate per step: linear warm-up over half an epoch (2 of 5 steps), then
    # cosine decay, never reaching 0 on the last step.
    lrs = [e.learning_rate for e in steps]
    assert lrs[:2] == pytest.approx([1.5e-3, 3e-3])
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] > 0


def test_should_stop_cancels_within_one_step(colours: Any, tmp_path: Path) -> None:
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    rec = Recorder()
    with pytest.raises(TrainingCancelled):
        run(
            colours,
            # Augmented: every step reads images (no frozen-stage pass asks first).
            plan_for(Strategy.PARTIAL_FINE_TUNE, augmentation=True),
            tmp_path,
            rec,
            should_stop=should_stop,
            step_event_interval=0.0,
        )
    assert len(rec.of(EventKind.STEP)) == 2  # steps 1 and 2 ran; stopped before step 3
    assert load_checkpoint(tmp_path) is None  # no epoch completed


@pytest.mark.parametrize(
    ("strategy", "pretrained"),
    [
        (Strategy.PARTIAL_FINE_TUNE, False),
        (Strategy.FEATURE_EXTRACTION, False),
        pytest.param(Strategy.FEATURE_EXTRACTION, True, marks=pytest.mark.pretrained),
    ],
)
def test_resume_equals_uninterrupted_run(
    colours: Any,
    tmp_path: Path,
    strategy: Strategy,
    pretrained: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Augmentation and label smoothing on: the resumed run must also restore the RNG.
    plan = plan_for(
        strategy,
        epochs=3,
        augmentation=strategy != Strategy.FEATURE_EXTRACTION,
        label_smoothing=0.1,
    )
    straight = run(colours, plan, tmp_path / "a", pretrained=pretrained)
    straight_last = load_checkpoint(tmp_path / "a")
    assert straight_last is not None
    # Feature extraction from pretrained weights checkpoints the head alone: the resumed
    # run rebuilds the body from the weights file (compared in full below).
    head_only = strategy == Strategy.FEATURE_EXTRACTION and pretrained
    assert straight_last.extra["weights"] == ("head" if head_only else "model")
    assert all(k.startswith("head.") for k in straight_last.model_state) == head_only

    rec = Recorder(stop_after_epoch=1)
    with pytest.raises(TrainingCancelled):
        run(colours, plan, tmp_path / "b", rec, pretrained=pretrained)
    first = load_checkpoint(tmp_path / "b")
    assert first is not None and first.epoch == 1

    computed = {"n": 0}
    real = features_mod.compute_features

    def counting(*a: Any, **k: Any) -> Any:
        computed["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(features_mod, "compute_features", counting)
    rec2 = Recorder()
    resumed = run(colours, plan, tmp_path / "b", rec2, pretrained=pretrained)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    assert any("resumed from checkpoint at epoch 1" in m for m in rec2.messages())
    assert [e.epoch for e in rec2.of(EventKind.EVALUATION)] == [2, 3]
    if strategy == Strategy.FEATURE_EXTRACTION:
        assert computed["n"] == 0  # features read from checkpoint_dir/features.safetensors
        assert any("features read from the cache" in m for m in rec2.messages())

    last = load_checkpoint(tmp_path / "b")
    assert last is not None
    assert_same_state(straight_last.model_state, last.model_state)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.metrics.accuracy == pytest.approx(straight.metrics.accuracy)


def test_checkpoint_of_another_plan_is_ignored(colours: Any, tmp_path: Path) -> None:
    plan = plan_for(Strategy.FEATURE_EXTRACTION, epochs=1)
    run(colours, plan, tmp_path)
    rec = Recorder()
    result = run(colours, dataclasses.replace(plan, epochs=2), tmp_path, rec)
    assert result.resumed_from_epoch == 0
    assert any("ignoring the checkpoint" in m and "epochs" in m for m in rec.messages())
    rec = Recorder()
    result = run(
        colours, dataclasses.replace(plan, epochs=2), tmp_path, rec, dataset_fingerprint="other"
    )
    assert any("different dataset" in m for m in rec.messages())

    (tmp_path / FILENAME).write_bytes(b"not a checkpoint")
    rec = Recorder()
    result = run(colours, dataclasses.replace(plan, epochs=2), tmp_path, rec)
    assert result.resumed_from_epoch == 0
    assert any("unreadable checkpoint" in m for m in rec.messages())


def test_feature_cache_key_includes_the_feature_cut(colours: Any) -> None:
    classes, train_s, val_s = colours
    common: dict[str, Any] = dict(
        backbone="efficientnet_lite0",
        image_size=32,
        pretrained=False,
        dataset_fingerprint="fp-1",
        classes=classes,
        train_samples=train_s,
        val_samples=val_s,
    )
    plain = features_mod.feature_key(**common)
    assert features_mod.feature_key(**common, feature_stages=()) == plain
    cut = features_mod.feature_key(**common, feature_stages=(3, 5))
    assert len({plain, cut, features_mod.feature_key(**common, feature_stages=(3,))}) == 3
    assert features_mod.feature_key(**common, feature_stages=[3, 5]) == cut


def test_class_weighting_and_label_smoothing(colours: Any, tmp_path: Path) -> None:
    classes, train_s, val_s = colours
    unbalanced = train_s[:12] + train_s[12:16] + train_s[24:26]  # 12 / 4 / 2 images
    plan = plan_for(
        Strategy.FEATURE_EXTRACTION, epochs=2, class_weighting=True, label_smoothing=0.2
    )
    result = run((classes, unbalanced, val_s), plan, tmp_path)
    assert result.epochs_run == 2 and math.isfinite(result.metrics.loss)

    w = class_weights([s.label for s in unbalanced], 3)
    torch.testing.assert_close(w, torch.tensor([18 / 36, 18 / 12, 18 / 6]))
    assert float((w[torch.tensor([s.label for s in unbalanced])]).mean()) == pytest.approx(1.0)


def test_early_stopping_keeps_best(
    colours: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([0.5, 0.7, 0.6, 0.6, 0.9, 0.9])
    real_evaluate = loop_mod.evaluate

    def fake_evaluate(*a: Any, **k: Any) -> EvaluationMetrics:
        m = real_evaluate(*a, **k)
        return dataclasses.replace(m, accuracy=next(scripted), loss=1.0)

    monkeypatch.setattr(loop_mod, "evaluate", fake_evaluate)
    rec = Recorder()
    plan = plan_for(Strategy.FEATURE_EXTRACTION, epochs=6, early_stopping_patience=2)
    result = run(colours, plan, tmp_path, rec)
    assert result.epochs_run == 4 and result.best_epoch == 2
    assert result.metrics.accuracy == 0.7
    assert any("early stopping at epoch 4" in m for m in rec.messages())
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.best_state is not None  # best (2) != last (4)
    # The result's head has the feature standardisation folded in; the checkpoint keeps
    # the head as trained (on standardised features), for a resume.
    served = result.model.state_dict()
    assert_same_state(
        {k: v for k, v in ckpt.best_state.items() if not k.startswith("head.")},
        {k: v for k, v in served.items() if not k.startswith("head.")},
    )
    assert not torch.allclose(ckpt.best_state["head.weight"], served["head.weight"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / FILENAME), "pt") as f:
        stored_best = {k for k in f.keys() if k.startswith("best.")}  # noqa: SIM118
    assert stored_best == {"best.head.weight", "best.head.bias"}  # the body is stored once


def test_empty_validation_set_is_a_failed_precondition(colours: Any, tmp_path: Path) -> None:
    from graft.errors import FailedPrecondition

    classes, train_s, _ = colours
    with pytest.raises(FailedPrecondition):
        run((classes, train_s, []), plan_for(Strategy.FEATURE_EXTRACTION), tmp_path)


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_with_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)
    )
    model(torch.randn(2, 3, 5, 5))
    model = model.to(memory_format=torch.channels_last)  # non-contiguous weights must save
    opt = torch.optim.AdamW(
        [
            {"name": "head", "params": list(model[3].parameters()), "lr": 1e-2},
            {
                "name": "base",
                "params": list(model[0].parameters()) + list(model[1].parameters()),
                "lr": 1e-3,
                "weight_decay": 0.0,
            },
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1 / (s + 1)] * 2)

    def step() -> None:
        loss = model(torch.randn(4, 3, 5, 5)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    for _ in range(3):
        step()
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE)
    metrics = evaluate_predictions(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), ["a", "b"])
    ckpt = Checkpoint(
        job_id="j",
        backbone="tiny",
        classes=["a", "b"],
        dataset_fingerprint="fp",
        plan=plan,
        epoch=2,
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        rng=RngState.capture(),
        best_metric=0.5,
        best_loss=0.7,
        best_epoch=2,
        best_metrics=metrics,
        best_state={k: v + 1 for k, v in model.state_dict().items()},
        history=[{"epoch": 1, "accuracy": 0.5}],
        train_seconds=1.5,
        extra={"k": "v"},
    )
    path = save_checkpoint(tmp_path, ckpt)
    # No temporary file left; the sha256 beside it (graft.artifacts).
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME, f"{FILENAME}.sha256"]
    expected_next = torch.rand(3)
    ckpt.rng.restore()  # type: ignore[union-attr]

    # Self-describing: the header alone says what this is, readable as JSON.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["graft.checkpoint"])
        assert not any(k.endswith(".pkl") for k in f.keys())  # noqa: SIM118
    assert header["format"] == "graft.checkpoint.v1" and header["classes"] == ["a", "b"]
    assert header["plan"]["strategy"] == int(Strategy.PARTIAL_FINE_TUNE)

    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    assert (loaded.epoch, loaded.best_epoch, loaded.best_metric, loaded.best_loss) == (
        2,
        2,
        0.5,
        0.7,
    )
    assert loaded.plan == plan and loaded.best_metrics == metrics
    assert loaded.history == ckpt.history and loaded.extra == {"k": "v"}
    assert_same_state(
        loaded.model_state, {k: v.contiguous() for k, v in model.state_dict().items()}
    )
    assert loaded.best_state is not None
    assert torch.equal(loaded.best_state["0.weight"], model.state_dict()["0.weight"] + 1)
    assert loaded.scheduler_state == sched.state_dict()
    assert loaded.mismatch(plan, "fp", ["a", "b"]) == ""
    assert "class names" in loaded.mismatch(plan, "fp", ["b", "a"])
    assert "batch_size" in loaded.mismatch(
        dataclasses.replace(plan, batch_size=4), "fp", ["a", "b"]
    )

    # RNG: restoring the loaded state reproduces the draws that followed the capture.
    torch.rand(5)
    assert loaded.rng is not None
    loaded.rng.restore()
    assert torch.equal(torch.rand(3), expected_next)

    # Optimizer and scheduler: a restored copy takes the same next step as the original.
    twin = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)
    )
    twin(torch.randn(2, 3, 5, 5))
    twin.load_state_dict(loaded.model_state)
    twin_opt = torch.optim.AdamW(
        [
            {"name": "head", "params": list(twin[3].parameters()), "lr": 1e-2},
            {
                "name": "base",
                "params": list(twin[0].parameters()) + list(twin[1].parameters()),
                "lr": 1e-3,
                "weight_decay": 0.0,
            },
        ]
    )
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, [lambda s: 1 / (s + 1)] * 2)
    assert loaded.optimizer_state is not None and loaded.scheduler_state is not None
    twin_opt.load_state_dict(loaded.optimizer_state)
    twin_sched.load_state_dict(loaded.scheduler_state)
    x = torch.randn(4, 3, 5, 5)
    for m, o, s in ((model, opt, sched), (twin, twin_opt, twin_sched)):
        loss = m(x).square().mean()
        o.zero_grad()
        loss.backward()
        o.step()
        s.step()
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert_same_state(twin.state_dict(), {k: v.contiguous() for k, v in model.state_dict().items()})


def test_load_checkpoint_absent_and_corrupt(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None
    (tmp_path / FILENAME).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


# --- metrics -------------------------------------------------------------------------------


def test_metrics_against_a_hand_computed_confusion_matrix() -> None:
    labels = ["cat", "dog", "owl"]
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    logits = torch.full((8, 3), -2.0)
    logits[torch.arange(8), predicted] = 2.0
    m = evaluate_predictions(logits, targets, labels)
    # rows = true, columns = predicted
    assert m.confusion == (2, 1, 0,
                           0, 1, 1,
                           1, 0, 2)  # fmt: skip
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.top5_accuracy == 1.0  # k = min(5, 3)
    precision = [2 / 3, 1 / 2, 2 / 3]
    recall = [2 / 3, 1 / 2, 2 / 3]
    assert [c.precision for c in m.per_class] == pytest.approx(precision)
    assert [c.recall for c in m.per_class] == pytest.approx(recall)
    assert [c.support for c in m.per_class] == [3, 2, 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert m.macro_f1 == pytest.approx(sum(f1) / 3)
    assert m.loss == pytest.approx(float(nn.functional.cross_entropy(logits, targets)))

    # Probabilities are accepted too, and a class never predicted has precision 0.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    m2 = evaluate_predictions(probs, torch.tensor([0, 1]), labels, probabilities=True)
    assert m2.per_class[1].precision == 0.0 and m2.per_class[1].recall == 0.0
    assert m2.loss == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert m2.macro_f1 == pytest.approx((2 * 0.5 * 1 / 1.5 + 0) / 2)  # owl absent: left out

    # Top-k with more than five classes.
    scores = torch.arange(7.0).repeat(2, 1)  # class 6 ranks first, class 0 last
    m3 = evaluate_predictions(scores, torch.tensor([2, 1]), [str(i) for i in range(7)])
    assert m3.accuracy == 0.0 and m3.top5_accuracy == 0.5


def test_stop_at_checkpoint_preempts_after_the_epoch_checkpoint_and_observer_counts(
    colours: Any, tmp_path: Path
) -> None:
    from graft.observability.metrics import WorkerMetrics
    from graft.training.errors import TrainingPreempted

    metrics = WorkerMetrics()
    rec = Recorder()
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, epochs=3)
    stopping = {"now": False}

    def emit(e: ProgressEvent) -> None:
        rec.emit(e)
        if e.kind == EventKind.EVALUATION and e.epoch == 2:
            stopping["now"] = True  # SIGTERM arrives during epoch 2's evaluation

    with pytest.raises(TrainingPreempted, match="epoch 2"):
        run(
            colours,
            plan,
            tmp_path,
            rec,
            emit=emit,
            observer=metrics,
            stop_at_checkpoint=lambda: stopping["now"],
        )
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.epoch == 2  # nothing of epoch 2 lost
    _, train_s, _ = colours
    sample = metrics.registry.get_sample_value
    assert sample("graft_worker_training_images_total") == 2 * len(train_s)
    steps_per_epoch = math.ceil(len(train_s) / plan.batch_size)
    # Step times are measured between successive steps of an epoch, the first from its start.
    assert sample("graft_worker_step_seconds_count") == 2 * steps_per_epoch
    assert sample("graft_worker_epoch_seconds_count") == 2
    assert sample("graft_worker_checkpoint_seconds_count") == 2
    assert sample("graft_worker_training_images_per_second") > 0


def test_feature_extraction_serves_the_standardised_head_folded_into_a_linear(
    colours: Any, tmp_path: Path
) -> None:
    from graft.training.loop import feature_statistics, fold_standardization

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * torch.tensor([1e-3, 1.0, 10.0, 100.0, 0.5, 2.0]) + 3
    head = nn.Linear(6, 3)
    mean, std = feature_statistics(x)
    expected = head((x - mean) / std)
    fold_standardization(head, mean, std)
    torch.testing.assert_close(head(x), expected, rtol=1e-4, atol=1e-4)

    # End to end: the trained model's logits on images equal its head on the standardised
    # features it was validated on (the metrics it reports are the served model's).
    plan = plan_for(Strategy.FEATURE_EXTRACTION, epochs=3)
    result = run(colours, plan, tmp_path)
    from safetensors.torch import load_file

    cached = load_file(str(tmp_path / "features.safetensors"))  # this run's raw features
    with torch.no_grad():
        logits = result.model.head(cached["val_x"])
    accuracy = float((logits.argmax(1) == cached["val_y"]).float().mean())
    assert accuracy == pytest.approx(result.metrics.accuracy)


def test_feature_extraction_hands_the_report_its_validation_logits(
    colours: Any, tmp_path: Path
) -> None:
    """Calibration and the report read the kept model's validation logits: feature
    extraction has them from its cached features (TrainResult.validation_logits), and they
    must be what the served model gives on the validation images; fine-tuning has none."""
    from graft.training.validation_outputs import validation_outputs

    classes, _, val_s = colours
    plan = plan_for(Strategy.FEATURE_EXTRACTION, epochs=3)
    result = run(colours, plan, tmp_path / "fe")
    assert result.validation_logits is not None
    cpu = torch.device("cpu")
    served = validation_outputs(result.model, plan, val_s, num_classes=len(classes), device=cpu)
    torch.testing.assert_close(result.validation_logits, served.logits, atol=1e-4, rtol=1e-4)
    reused = validation_outputs(
        result.model,
        plan,
        val_s,
        num_classes=len(classes),
        device=cpu,
        logits=result.validation_logits,
    )
    assert torch.equal(reused.logits, result.validation_logits)
    assert torch.equal(reused.targets, served.targets) and reused.samples == served.samples
    with pytest.raises(ValueError, match="validation logits"):
        validation_outputs(
            result.model,
            plan,
            val_s[:-1],
            num_classes=len(classes),
            device=cpu,
            logits=result.validation_logits,
        )
    tuned = run(colours, plan_for(Strategy.PARTIAL_FINE_TUNE, epochs=1), tmp_path / "ft")
    assert tuned.validation_logits is None


def test_feature_statistics_do_not_blow_up_a_channel_constant_in_training() -> None:
    from graft.training.loop import feature_statistics

    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    x[:, 3] = 0.0  # a ReLU channel that never fired on the training images
    mean, std = feature_statistics(x)
    new = torch.zeros(1, 8)
    new[0, 3] = 0.05  # it fires a little on a new image
    assert float(((new - mean) / std).abs().max()) < 10
    torch.testing.assert_close(std[[0, 1, 2]], x[:, [0, 1, 2]].std(0, unbiased=False))


def test_feature_statistics_floor_holds_when_most_channels_are_dead() -> None:
    # At 32 px most final channels can be zero on every training image: the floor must come
    # from the channels that vary, not from a median of zeros.
    from graft.training.loop import feature_statistics

    x = torch.zeros(100, 10)
    x[:, :3] = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    mean, std = feature_statistics(x)
    new = torch.zeros(1, 10)
    new[0, 5:] = 0.05  # dead channels fire a little on a new image
    assert float(((new - mean) / std).abs().max()) < 10
    # Nothing varies at all: no scaling blows up either.
    mean, std = feature_statistics(torch.zeros(20, 4))
    assert float(std.min()) == 1.0

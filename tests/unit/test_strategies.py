"""What each strategy trains, proven by taking real optimizer steps and comparing weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from graft.backbones import create_model
from graft.backbones.spec import GraftModel
from graft.domain import EventKind, ProgressEvent, Strategy, TrainingPlan
from graft.training import apply_strategy, load_checkpoint, set_train_mode, train
from graft.training.strategies import frozen_stage_indices, set_trainable

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def make_model(name: str = "efficientnet_lite0", seed: int = 0) -> GraftModel:
    torch.manual_seed(seed)
    return create_model(name, NUM_CLASSES, pretrained=False)


def plan_for(strategy: Strategy, **kw: object) -> TrainingPlan:
    base = TrainingPlan(
        backbone="efficientnet_lite0",
        strategy=strategy,
        trainable_stages=3 if strategy == Strategy.PARTIAL_FINE_TUNE else 0,
        head_learning_rate=1e-2,
        base_learning_rate=1e-3 if strategy != Strategy.FEATURE_EXTRACTION else 0.0,
        weight_decay=0.01,
        epochs=2,
        batch_size=8,
        image_size=32,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def take_steps(
    model: GraftModel, plan: TrainingPlan, groups: list[dict], steps: int = 3, **mode: bool
) -> None:
    optimizer = torch.optim.AdamW(groups)
    set_train_mode(model, plan, **mode)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g) * 2 + 1  # far from BN's init statistics
        y = torch.randint(0, NUM_CLASSES, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def stage_keys(model: GraftModel) -> list[set[str]]:
    """State-dict keys (params and buffers) of each stage, input side first."""
    out = []
    for stage in model.spec.stages:
        keys = set()
        for name in stage:
            keys |= {f"body.{name}.{k}" for k in model.body.get_submodule(name).state_dict()}
        out.append(keys)
    return out


def changed(before: dict, after: dict, keys: set[str]) -> set[str]:
    return {k for k in keys if not torch.equal(before[k], after[k])}


def float_keys(model: GraftModel, keys: set[str]) -> set[str]:
    params = {f"{n}" for n, _ in model.named_parameters()}
    return {k for k in keys if k in params}


def test_feature_extraction_trains_only_the_head() -> None:
    model = make_model()
    plan = plan_for(Strategy.FEATURE_EXTRACTION)
    groups = apply_strategy(model, plan)
    assert {g["name"] for g in groups} == {"head", "head_no_decay"}
    assert all(g["lr"] == plan.head_learning_rate for g in groups)
    assert not any(p.requires_grad for p in model.body.parameters())
    before = snapshot(model)

    take_steps(model, plan, groups)

    assert not model.body.training  # whole body in eval mode: BN statistics never update
    after = snapshot(model)
    body = {k for k in before if k.startswith("body.")}
    assert changed(before, after, body) == set()  # params and BN buffers, bit for bit
    assert changed(before, after, {"head.weight", "head.bias"}) == {"head.weight", "head.bias"}


def test_feature_extraction_with_a_cut_trains_only_its_narrower_head() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", NUM_CLASSES, pretrained=False, feature_stages=(3, 5))
    plan = plan_for(Strategy.FEATURE_EXTRACTION, feature_stages=(3, 5))
    groups = apply_strategy(model, plan)
    assert {p for g in groups for p in g["params"]} == set(model.head.parameters())
    assert model.head.in_features == 24 + 80
    before = snapshot(model)
    take_steps(model, plan, groups)
    after = snapshot(model)
    body = {k for k in before if k.startswith("body.")}
    assert changed(before, after, body) == set()
    assert changed(before, after, {"head.weight", "head.bias"}) == {"head.weight", "head.bias"}


@pytest.mark.parametrize("backbone,k", [("efficientnet_lite0", 3), ("resnet18", 2)])
def test_partial_fine_tune_trains_top_stages_and_head(backbone: str, k: int) -> None:
    model = make_model(backbone)
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, backbone=backbone, trainable_stages=k)
    groups = apply_strategy(model, plan)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == plan.head_learning_rate > lrs["base"] == plan.base_learning_rate
    assert groups[0]["name"] == "head"  # the first group's rate is the one events report
    n = len(model.spec.stages)
    assert frozen_stage_indices(model, plan) == list(range(n - k))
    before = snapshot(model)

    # As train() runs a randomly initialised model: trained stages update BN statistics.
    take_steps(model, plan, groups, update_bn_statistics=True)

    after = snapshot(model)
    stages = stage_keys(model)
    for i, keys in enumerate(stages):
        if i < n - k:
            # Frozen: weights AND BatchNorm running_mean/var/num_batches_tracked identical.
            assert changed(before, after, keys) == set(), f"frozen stage {i} changed"
            assert all(
                not m.training
                for name in model.spec.stages[i]
                for m in model.body.get_submodule(name).modules()
            )
        else:
            params = float_keys(model, keys)
            assert changed(before, after, params) == params, f"stage {i} did not train"
            bn_means = {key for key in keys if key.endswith("running_mean")}
            assert bn_means and changed(before, after, bn_means) == bn_means
    assert changed(before, after, {"head.weight", "head.bias"}) == {"head.weight", "head.bias"}


def test_trained_stages_keep_pretrained_bn_statistics_by_default() -> None:
    model = make_model()
    plan = plan_for(Strategy.PARTIAL_FINE_TUNE, trainable_stages=2)
    groups = apply_strategy(model, plan)
    before = snapshot(model)
    take_steps(model, plan, groups)  # the default, used for pretrained models
    after = snapshot(model)
    top = stage_keys(model)[-1]
    stats = {k for k in top if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    affine = {k for k in top if k.endswith(("bn2.weight", "bn2.bias"))}
    assert stats and changed(before, after, stats) == set()
    assert affine and changed(before, after, affine) == affine  # scale and shift still train
    bns = [m for m in model.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.body.training and model.head.training


def test_full_fine_tune_trains_everything_and_head_warmup_freezes_the_base() -> None:
    model = make_model()
    plan = plan_for(Strategy.FULL_FINE_TUNE, head_warmup_epochs=1)
    groups = apply_strategy(model, plan)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    base_groups = [g for g in groups if g["name"].startswith("base")]
    assert base_groups and all(g["lr"] == plan.base_learning_rate for g in base_groups)
    # No weight decay on biases and normalisation parameters.
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))

    # Head warm-up: the base is frozen and every stage in eval mode.
    set_trainable(model, plan, head_warmup=True)
    before = snapshot(model)
    take_steps(model, plan, groups, head_warmup=True)
    after = snapshot(model)
    body = {k for k in before if k.startswith("body.")}
    assert changed(before, after, body) == set()
    assert changed(before, after, {"head.weight", "head.bias"}) == {"head.weight", "head.bias"}

    # After it, everything trains.
    set_trainable(model, plan, head_warmup=False)
    take_steps(model, plan, groups, update_bn_statistics=True)
    final = snapshot(model)
    params = float_keys(model, body)
    assert changed(after, final, params) == params


def test_full_fine_tune_head_warmup_inside_train(tmp_path: Path) -> None:
    """Through train(): after the head-only epoch the checkpointed body equals the initial
    body bit for bit; after the next epoch it has moved."""
    from tests.unit.test_training import make_colour_dataset  # shared tiny dataset

    classes, train_s, val_s = make_colour_dataset(tmp_path / "data", per_class=8)
    plan = plan_for(Strategy.FULL_FINE_TUNE, head_warmup_epochs=1, warmup_epochs=0.5, seed=3)
    initial = snapshot(make_model(seed=3))
    stop = {"now": False}

    def emit(e: ProgressEvent) -> None:
        if e.kind == EventKind.EVALUATION and e.epoch == 1:
            stop["now"] = True  # the checkpoint of epoch 1 is written right after this

    kwargs = dict(
        job_id="j",
        plan=plan,
        classes=classes,
        train_samples=train_s,
        val_samples=val_s,
        dataset_fingerprint="fp",
        weights_dir=None,
        checkpoint_dir=tmp_path / "ckpt",
        device=torch.device("cpu"),
        pretrained=False,
    )
    from graft.training import TrainingCancelled

    with pytest.raises(TrainingCancelled):
        train(emit=emit, should_stop=lambda: stop["now"], **kwargs)  # type: ignore[arg-type]
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt is not None and ckpt.epoch == 1
    body = {k for k in initial if k.startswith("body.")}
    assert changed(initial, ckpt.model_state, body) == set()
    assert not torch.equal(initial["head.weight"], ckpt.model_state["head.weight"])

    result = train(emit=lambda e: None, should_stop=lambda: False, **kwargs)  # type: ignore[arg-type]
    ckpt2 = load_checkpoint(tmp_path / "ckpt")
    assert ckpt2 is not None and ckpt2.epoch == 2 and result.resumed_from_epoch == 1
    params = float_keys(result.model, body)
    assert changed(initial, ckpt2.model_state, params) == params

"""graft.plans: defaults, the image-size rule, partial fine-tuning's one depth rule, every
validation violation, and that the module imports without torch."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from typing import Any

import pytest

from graft.backbones import DEFAULT_BACKBONE, get_spec, list_backbones
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.errors import InvalidArgument
from graft.plans import (
    DEFAULTS,
    MATRIX,
    Speed,
    build_plan,
    default_image_size,
    default_trainable_stages,
    resolve_plan,
    validate_plan,
)

LITE0 = get_spec("efficientnet_lite0")  # 224 px, 9 stages
R18 = get_spec("resnet18")  # 224 px, 5 stages


def resolve(plan: TrainingPlan, spec: Any = LITE0, n: int = 1000, **kw: Any) -> TrainingPlan:
    return resolve_plan(plan, spec, num_train_images=n, **kw)


def test_partial_is_the_default_strategy_with_discriminative_rates() -> None:
    p = resolve(TrainingPlan(), median_size=(28, 28))
    assert p.backbone == "efficientnet_lite0" == DEFAULT_BACKBONE
    assert p.strategy == Strategy.PARTIAL_FINE_TUNE
    assert p.trainable_stages == 3
    assert p.head_learning_rate == 1e-3 and p.base_learning_rate == pytest.approx(1e-4)
    assert p.epochs == DEFAULTS.fine_tune_epochs
    assert p.batch_size == 64 and p.image_size == 64
    assert p.validation_fraction == 0.2 and p.weight_decay == 0.01
    assert p.warmup_epochs == 1.0 and p.head_warmup_epochs == 0
    assert p.seed == 0 and p.label_smoothing == 0 and p.early_stopping_patience == 0
    validate_plan(p, LITE0)
    assert resolve(p, median_size=(28, 28)) == p  # idempotent


def test_full_fine_tune_defaults() -> None:
    p = resolve(TrainingPlan(strategy=Strategy.FULL_FINE_TUNE), R18)
    assert p.trainable_stages == 5 and p.head_warmup_epochs == 1
    assert p.base_learning_rate < p.head_learning_rate
    # One epoch only: no room for a head-only epoch.
    assert resolve(TrainingPlan(strategy=Strategy.FULL_FINE_TUNE, epochs=1)).head_warmup_epochs == 0
    # A short run warms up for a tenth of it.
    assert resolve(TrainingPlan(strategy=Strategy.FULL_FINE_TUNE, epochs=4)).warmup_epochs == 0.4


def test_feature_extraction_defaults() -> None:
    p = resolve(TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION), median_size=(28, 28))
    assert p.trainable_stages == 0 and p.base_learning_rate == 0.0
    assert p.head_learning_rate == 3e-3 and p.weight_decay == 0.05
    assert p.epochs == DEFAULTS.feature_extraction_epochs  # 16 steps an epoch: the cap
    assert p.warmup_epochs == 0 and p.head_warmup_epochs == 0
    validate_plan(p, LITE0)


@pytest.mark.parametrize(
    ("images", "epochs"), [(1000, 30), (4000, 12), (8000, 6), (24_000, 4), (100_000, 4)]
)
def test_a_feature_extraction_head_trains_for_about_750_steps(images: int, epochs: int) -> None:
    """30 epochs over thousands of cached feature rows over-fitted the head (docs/TRAINING.md
    § The head's epochs on cached features): the default is about 750 steps, in 4 to 30
    epochs."""
    fe = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION)
    p = resolve(fe, n=images, median_size=(28, 28))  # 64 px: batches of 64
    assert p.batch_size == 64 and p.epochs == epochs
    assert resolve(p, n=images) == p  # resolved twice: the same plan
    given = resolve(dataclasses.replace(fe, epochs=30), n=images, median_size=(28, 28))
    assert given.epochs == 30  # a plan's own epochs are kept
    advised = build_plan(  # Advise's feature-extraction plans take the same rule
        Quadrant.SMALL_SIMILAR,
        LITE0,
        num_train=images,
        num_val=images // 4,
        median_size=(28, 28),
        imbalance_ratio=1.0,
        speed=Speed(images_per_second=1000.0, stage_fractions=(1 / 9,) * 9),
    )
    assert advised.strategy == Strategy.FEATURE_EXTRACTION and advised.epochs == epochs


def test_set_fields_are_kept() -> None:
    given = TrainingPlan(
        backbone="resnet18",
        strategy=Strategy.PARTIAL_FINE_TUNE,
        trainable_stages=1,
        head_learning_rate=0.01,
        base_learning_rate=0.02,  # above the head's: allowed (train() says it is unusual)
        epochs=3,
        batch_size=16,
        image_size=96,
        augmentation=True,
        class_weighting=True,
        early_stopping_patience=2,
        seed=42,
        weight_decay=0.1,
        label_smoothing=0.1,
        warmup_epochs=0.5,
        head_warmup_epochs=1,
        validation_fraction=0.3,
    )
    assert resolve(given, R18) == given
    # Only the head's rate given: the base's is 10x lower.
    assert resolve(TrainingPlan(head_learning_rate=0.02)).base_learning_rate == pytest.approx(2e-3)


def test_plans_and_the_catalog_import_without_torch() -> None:
    """The API server validates and resolves plans; it must not need torch for that."""
    code = (
        "import sys\n"
        "import graft.plans\n"
        "from graft.backbones import get_spec, list_backbones\n"
        "from graft.domain import TrainingPlan\n"
        "spec = get_spec('efficientnet_lite0')\n"
        "plan = graft.plans.resolve_plan(TrainingPlan(), spec, num_train_images=100)\n"
        "graft.plans.validate_plan(plan)\n"
        "assert len(list_backbones()) > 1\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "n,small,deep",
    [(9, 3, 5), (8, 3, 4), (6, 2, 3), (5, 2, 3), (2, 1, 2), (1, 1, 1)],
)
def test_default_trainable_stages_rule(n: int, small: int, deep: int) -> None:
    """Small K: a third of the stages, rounded up; deeper (quadrant 3): half, rounded up,
    at least one more than small K; never more than there are."""
    assert default_trainable_stages(n) == small
    assert default_trainable_stages(n, Quadrant.LARGE_SIMILAR) == small
    assert default_trainable_stages(n, Quadrant.SMALL_DIFFERENT) == deep


def test_one_depth_rule_for_resolve_plan_and_the_quadrant_plans() -> None:
    """A partial plan without stages and the advisor's plan without a measured depth get
    their stages from the same rule (they used to disagree: 3 against 2 for quadrant 2)."""
    for spec in list_backbones():
        n = len(spec.stages)
        partial = TrainingPlan(strategy=Strategy.PARTIAL_FINE_TUNE)
        assert resolve(partial, spec).trainable_stages == default_trainable_stages(n)
        for quadrant in (Quadrant.LARGE_SIMILAR, Quadrant.SMALL_DIFFERENT):
            assert MATRIX[quadrant] == Strategy.PARTIAL_FINE_TUNE
            plan = build_plan(
                quadrant,
                spec,
                num_train=800,
                num_val=200,
                median_size=(28, 28),
                imbalance_ratio=1.0,
            )
            assert plan.trainable_stages == default_trainable_stages(n, quadrant)
        # Quadrant 2 is the plain default: resolving its plan without stages changes nothing.
        q2 = build_plan(
            Quadrant.LARGE_SIMILAR,
            spec,
            num_train=800,
            num_val=200,
            median_size=(28, 28),
            imbalance_ratio=1.0,
        )
        unset = dataclasses.replace(q2, trainable_stages=0)
        assert resolve(unset, spec, median_size=(28, 28)) == q2
    # The figures in docs/TRAINING.md were measured with EfficientNet-Lite0's top 3 stages.
    assert default_trainable_stages(len(LITE0.stages)) == 3 == math.ceil(9 / 3)
    # A measured depth is kept as it is.
    measured = build_plan(
        Quadrant.SMALL_DIFFERENT,
        LITE0,
        num_train=800,
        num_val=200,
        median_size=(28, 28),
        imbalance_ratio=1.0,
        trainable_stages=7,
    )
    assert measured.trainable_stages == 7


@pytest.mark.parametrize(
    "median,expected",
    [
        (None, 224),  # unknown: the backbone's pretraining size
        ((28, 28), 64),  # tiny images: at least 64
        ((70, 90), 96),  # shorter side 70, up to a multiple of 32
        ((128, 128), 128),
        ((129, 300), 160),
        ((500, 375), 224),  # large photos: never above the pretraining size
        ((0, 0), 224),
    ],
)
def test_image_size_rule(median: tuple[int, int] | None, expected: int) -> None:
    assert default_image_size(LITE0, median) == expected
    assert resolve(TrainingPlan(), median_size=median).image_size == expected


def test_batch_size_rule() -> None:
    assert resolve(TrainingPlan(), median_size=(500, 375)).batch_size == 32  # 224 px
    assert resolve(TrainingPlan(), median_size=(28, 28)).batch_size == 64
    assert resolve(TrainingPlan(), n=20, median_size=(28, 28)).batch_size == 20
    assert resolve(TrainingPlan(), n=1, median_size=(28, 28)).batch_size == 2


def violations(plan: TrainingPlan, spec: Any = LITE0) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        validate_plan(plan, spec)
    return {v.field: v.description for v in info.value.violations}


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"epochs": -1}, "plan.epochs"),
        ({"epochs": 1001}, "plan.epochs"),
        ({"batch_size": -4}, "plan.batch_size"),
        ({"batch_size": 1}, "plan.batch_size"),
        ({"batch_size": 4096}, "plan.batch_size"),
        ({"head_learning_rate": -1e-3}, "plan.head_learning_rate"),
        ({"head_learning_rate": 1.0}, "plan.head_learning_rate"),
        ({"head_learning_rate": float("nan")}, "plan.head_learning_rate"),
        ({"base_learning_rate": 2.0}, "plan.base_learning_rate"),
        ({"base_learning_rate": -0.1}, "plan.base_learning_rate"),
        ({"trainable_stages": 10}, "plan.trainable_stages"),  # Lite0 has 9
        ({"trainable_stages": -1}, "plan.trainable_stages"),
        ({"image_size": 16}, "plan.image_size"),
        ({"image_size": 2048}, "plan.image_size"),
        ({"label_smoothing": 1.0}, "plan.label_smoothing"),
        ({"label_smoothing": -0.1}, "plan.label_smoothing"),
        ({"validation_fraction": 0.6}, "plan.validation_fraction"),
        ({"validation_fraction": -0.1}, "plan.validation_fraction"),
        ({"weight_decay": -0.01}, "plan.weight_decay"),
        ({"weight_decay": 1.5}, "plan.weight_decay"),
        ({"early_stopping_patience": -1}, "plan.early_stopping_patience"),
        ({"seed": -1}, "plan.seed"),
        ({"seed": 2**63}, "plan.seed"),
        ({"warmup_epochs": -1.0}, "plan.warmup_epochs"),
        ({"epochs": 2, "warmup_epochs": 3.0}, "plan.warmup_epochs"),
        ({"head_warmup_epochs": -1}, "plan.head_warmup_epochs"),
        ({"epochs": 2, "head_warmup_epochs": 2}, "plan.head_warmup_epochs"),
        ({"backbone": "resnet18"}, "plan.backbone"),  # checked against Lite0's spec
    ],
)
def test_each_violation_names_its_field(changes: dict[str, Any], field: str) -> None:
    plan = dataclasses.replace(TrainingPlan(strategy=Strategy.PARTIAL_FINE_TUNE), **changes)
    found = violations(plan)
    assert list(found) == [field], found
    assert found[field]


def test_strategy_specific_violations() -> None:
    fe = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION)
    assert (
        "only the head"
        in violations(dataclasses.replace(fe, trainable_stages=2))["plan.trainable_stages"]
    )
    assert "plan.base_learning_rate" in violations(dataclasses.replace(fe, base_learning_rate=0.1))
    assert "plan.head_warmup_epochs" in violations(dataclasses.replace(fe, head_warmup_epochs=1))
    full = TrainingPlan(strategy=Strategy.FULL_FINE_TUNE)
    assert "plan.trainable_stages" in violations(dataclasses.replace(full, trainable_stages=4))
    validate_plan(dataclasses.replace(full, trainable_stages=9), LITE0)
    validate_plan(TrainingPlan(strategy=Strategy.PARTIAL_FINE_TUNE, trainable_stages=5), R18)
    assert "plan.trainable_stages" in violations(
        TrainingPlan(strategy=Strategy.PARTIAL_FINE_TUNE, trainable_stages=6), R18
    )


def test_feature_stages_only_with_feature_extraction_and_kept_by_resolve() -> None:
    fe = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION, feature_stages=(3, 5))
    validate_plan(fe, LITE0)
    p = resolve(fe)
    assert p.feature_stages == (3, 5)
    validate_plan(p, LITE0)
    assert resolve(p) == p
    assert resolve(TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION)).feature_stages == ()

    for strategy in (Strategy.PARTIAL_FINE_TUNE, Strategy.FULL_FINE_TUNE, Strategy.UNSPECIFIED):
        found = violations(dataclasses.replace(fe, strategy=strategy))
        assert list(found) == ["plan.feature_stages"], found
        assert "feature extraction" in found["plan.feature_stages"]


def test_feature_grid_only_on_a_feature_extraction_cut_and_kept_by_resolve() -> None:
    fe = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION, feature_stages=(6, 7), feature_grid=2)
    validate_plan(fe, LITE0)
    p = resolve(fe)
    assert p.feature_grid == 2 and resolve(p) == p
    validate_plan(p, LITE0)
    # 0 and 1 both pool globally, with or without a cut.
    for grid in (0, 1):
        validate_plan(TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION, feature_grid=grid))
        validate_plan(dataclasses.replace(fe, feature_grid=grid), LITE0)

    found = violations(dataclasses.replace(fe, strategy=Strategy.FULL_FINE_TUNE, feature_stages=()))
    assert (
        list(found) == ["plan.feature_grid"] and "feature extraction" in found["plan.feature_grid"]
    )
    found = violations(dataclasses.replace(fe, feature_stages=()))
    assert list(found) == ["plan.feature_grid"] and "feature_stages" in found["plan.feature_grid"]
    for grid in (-1, 5):
        found = violations(dataclasses.replace(fe, feature_grid=grid))
        assert list(found) == ["plan.feature_grid"], found


@pytest.mark.parametrize(
    "stages,spec",
    [((0,), LITE0), ((10,), LITE0), ((6,), R18), ((3, 3), LITE0), ((5, 3), LITE0)],
)
def test_feature_stages_must_be_ascending_stages_of_the_backbone(
    stages: tuple[int, ...], spec: Any
) -> None:
    plan = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION, feature_stages=stages)
    found = violations(plan, spec)
    assert list(found) == ["plan.feature_stages"], found
    with pytest.raises(InvalidArgument) as info:
        validate_plan(plan, spec, prefix="request.plan")
    assert [v.field for v in info.value.violations] == ["request.plan.feature_stages"]


def test_all_violations_are_reported_at_once() -> None:
    bad = TrainingPlan(epochs=-1, batch_size=-1, image_size=8, label_smoothing=2.0)
    found = violations(bad)
    assert set(found) == {
        "plan.epochs",
        "plan.batch_size",
        "plan.image_size",
        "plan.label_smoothing",
    }


def test_unknown_backbone_is_invalid_argument_on_plan_backbone() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_plan(TrainingPlan(backbone="no-such-net"))
    assert [v.field for v in info.value.violations] == ["plan.backbone"]
    validate_plan(TrainingPlan())  # empty backbone: the default, which exists


def test_unset_plan_is_valid_and_prefix_is_configurable() -> None:
    validate_plan(TrainingPlan(), LITE0)
    with pytest.raises(InvalidArgument) as info:
        validate_plan(TrainingPlan(epochs=-1), LITE0, prefix="request.plan")
    assert info.value.violations[0].field == "request.plan.epochs"

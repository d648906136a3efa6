"""Advise: the matrix exactly as DESIGN.md, the declared-statistics answer at its boundaries,
the linear probe, the similarity signals on real images through real pretrained weights,
and a measured advice on a small Fashion-MNIST folder."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from graft.advisor import MATRIX, DeclaredStats, advise_declared, quadrant_for, size_axis
from graft.advisor.advise import FE_MARGIN, advise_dataset, fine_tune_range
from graft.advisor.bootstrap import similarity_interval
from graft.advisor.choice import Planner, departs
from graft.advisor.estimates import DEPARTURE_MAX_PER_CLASS
from graft.advisor.measure import (
    SIGNAL_MIN_IMAGES,
    decode_sample,
    measure_backbone,
    select_sample,
)
from graft.advisor.probe import linear_probe, stratified_folds
from graft.advisor.ranking import resolve_candidates
from graft.advisor.signals import BatchNormRecorder, ImageNetResponse, combine, measure_signals
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses, get_spec
from graft.config import Config
from graft.data import scan_dataset
from graft.domain import Quadrant, Strategy, TrainingPlan
from graft.errors import FailedPrecondition, InvalidArgument
from graft.plans import (
    Speed,
    build_plan,
    default_trainable_stages,
    estimate_training_seconds,
    resolve_plan,
    validate_plan,
)
from graft_devtools.datasets import (
    DOMAINS,
    write_digits_folder,
    write_domain_folder,
    write_fashion_mnist_folder,
    write_photos_folder,
)
from tests.helpers import count_decodes


@pytest.fixture(autouse=True, scope="module")
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the matrix


def test_matrix_is_designs_table() -> None:
    assert MATRIX == {
        Quadrant.LARGE_DIFFERENT: Strategy.FULL_FINE_TUNE,
        Quadrant.LARGE_SIMILAR: Strategy.PARTIAL_FINE_TUNE,
        Quadrant.SMALL_DIFFERENT: Strategy.PARTIAL_FINE_TUNE,
        Quadrant.SMALL_SIMILAR: Strategy.FEATURE_EXTRACTION,
    }
    # Quadrant numbers as in DESIGN.md and the proto.
    assert [int(q) for q in MATRIX] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("per_class", "similar", "expected"),
    [
        (999, False, Quadrant.SMALL_DIFFERENT),
        (999, True, Quadrant.SMALL_SIMILAR),
        (1000, False, Quadrant.LARGE_DIFFERENT),
        (1000, True, Quadrant.LARGE_SIMILAR),
        (999.5, True, Quadrant.SMALL_SIMILAR),
    ],
)
def test_quadrant_size_boundary(per_class: float, similar: bool, expected: Quadrant) -> None:
    assert quadrant_for(per_class, similar, 1000) == expected


def test_size_axis_is_the_median_class_count() -> None:
    assert size_axis([10, 10, 5000]) == 10  # one big class does not make it large
    assert size_axis([2, 1200, 1300]) == 1200  # one rare class does not make it small
    assert size_axis([10, 20]) == 15


@pytest.mark.parametrize(
    ("per_class", "hint", "expected"),
    [
        (999, 0.4999, Quadrant.SMALL_DIFFERENT),
        (999, 0.5, Quadrant.SMALL_SIMILAR),
        (1000, 0.4999, Quadrant.LARGE_DIFFERENT),
        (1000, 0.5, Quadrant.LARGE_SIMILAR),
        (5, 0.0, Quadrant.SMALL_DIFFERENT),
        (100_000, 1.0, Quadrant.LARGE_SIMILAR),
    ],
)
def test_declared_statistics_get_the_matrix_answer(
    per_class: int, hint: float, expected: Quadrant
) -> None:
    advice = advise_declared(
        DeclaredStats(num_classes=4, images_per_class=per_class, similarity_hint=hint),
        small_threshold=1000,
        backbone=DEFAULT_BACKBONE,
    )
    spec = get_spec(DEFAULT_BACKBONE)
    n = len(spec.stages)
    assert advice.quadrant == expected
    assert advice.matrix_strategy == MATRIX[expected]
    assert advice.plan.strategy == MATRIX[expected]
    validate_plan(advice.plan, spec)
    assert resolve_plan(advice.plan, spec, num_train_images=4 * per_class) == advice.plan
    assert advice.plan.augmentation == (expected == Quadrant.SMALL_DIFFERENT)
    expected_k = {
        Quadrant.LARGE_DIFFERENT: n,
        Quadrant.LARGE_SIMILAR: math.ceil(n / 3),  # "small K": 3 of Lite0's 9 stages
        Quadrant.SMALL_DIFFERENT: math.ceil(n / 2),  # deeper: 5 of 9
        Quadrant.SMALL_SIMILAR: 0,
    }[expected]
    assert advice.plan.trainable_stages == expected_k
    assert advice.similarity == hint and advice.report is None and advice.backbones == []
    assert str(per_class) in advice.rationale and "1000" in advice.rationale


def test_declared_threshold_is_configurable() -> None:
    stats = DeclaredStats(num_classes=3, images_per_class=200, similarity_hint=0.9)
    assert advise_declared(stats, small_threshold=1000, backbone=DEFAULT_BACKBONE).quadrant == (
        Quadrant.SMALL_SIMILAR
    )
    assert advise_declared(stats, small_threshold=200, backbone=DEFAULT_BACKBONE).quadrant == (
        Quadrant.LARGE_SIMILAR
    )


def test_partial_depth_small_different_deeper_than_large_similar() -> None:
    for spec in (get_spec("efficientnet_lite0"), get_spec("resnet18")):
        n = len(spec.stages)
        shallow = default_trainable_stages(n, Quadrant.LARGE_SIMILAR)
        deep = default_trainable_stages(n, Quadrant.SMALL_DIFFERENT)
        assert 0 < shallow < deep < n


def test_class_weighting_follows_imbalance() -> None:
    spec = get_spec(DEFAULT_BACKBONE)

    def plan(ratio: float) -> TrainingPlan:
        return build_plan(
            Quadrant.SMALL_SIMILAR,
            spec,
            num_train=400,
            num_val=100,
            median_size=(28, 28),
            imbalance_ratio=ratio,
        )

    assert plan(3.5).class_weighting and not plan(3.0).class_weighting
    assert plan(1.0).image_size == 64  # small images are not blown up to 224


def test_estimate_formula() -> None:
    spec = get_spec(DEFAULT_BACKBONE)
    n = len(spec.stages)
    speed = Speed(images_per_second=100.0, stage_fractions=(1 / n,) * n)
    base = TrainingPlan(backbone=spec.name, epochs=10, image_size=64, batch_size=32)
    fe = dataclasses.replace(base, strategy=Strategy.FEATURE_EXTRACTION)
    assert estimate_training_seconds(fe, speed, num_train=800, num_val=200) == pytest.approx(10.0)
    partial = dataclasses.replace(base, strategy=Strategy.PARTIAL_FINE_TUNE, trainable_stages=3)
    # 10 epochs x (800 x 0.01 x (1 + 3 x 3/9) + 200 x 0.01) = 10 x (16 + 2)
    assert estimate_training_seconds(partial, speed, num_train=800, num_val=200) == (
        pytest.approx(180.0)
    )
    full = dataclasses.replace(
        base, strategy=Strategy.FULL_FINE_TUNE, trainable_stages=n, head_warmup_epochs=1
    )
    # 9 x 800 x 0.04 + 1 x 800 x 0.01 + 10 x 200 x 0.01
    assert estimate_training_seconds(full, speed, num_train=800, num_val=200) == (
        pytest.approx(288.0 + 8.0 + 20.0)
    )
    # The once-per-run and per-epoch terms: the model's build, a checkpoint every epoch,
    # and for feature extraction the head's epochs on cached features.
    slow = dataclasses.replace(
        speed, build_seconds=0.8, checkpoint_seconds=0.03, head_seconds_per_image=1e-4
    )
    assert estimate_training_seconds(fe, slow, num_train=800, num_val=200) == pytest.approx(
        10.0 + 0.8 + 10 * 0.03 + 10 * 1000 * 1e-4
    )
    assert estimate_training_seconds(partial, slow, num_train=800, num_val=200) == (
        pytest.approx(180.0 + 0.8 + 10 * 0.03)
    )
    # Frozen stages run once (training.prefix): stages 1-6, F = 6/9 of the forward, once
    # per image (1000 x 0.01 x 6/9); each epoch trains at s - c·F = 0.02 - 0.00667 and
    # validates at c·(1 - F): 6.67 + 10 x 800 x 0.01333 + 10 x 200 x 0.00333.
    once = dataclasses.replace(speed, frozen_once=True)
    assert estimate_training_seconds(partial, once, num_train=800, num_val=200) == (
        pytest.approx(6.667 + 106.667 + 6.667, abs=0.01)
    )
    augmented = dataclasses.replace(partial, augmentation=True)
    assert estimate_training_seconds(augmented, once, num_train=800, num_val=200) == (
        pytest.approx(180.0)
    )


def test_a_checkpoint_costs_the_head_under_feature_extraction_and_the_model_otherwise() -> None:
    # Planner._checkpoint_seconds: four tensors the size of what the checkpoint keeps (the
    # weights, the best weights, AdamW's two moments), at the measured write speed. Under
    # feature extraction that is the head (Run.kept_state): 1,536 features + 1 bias, x 10.
    m = SimpleNamespace(save_bytes_per_second=1e6, weight_bytes=18_000_000)
    cut = SimpleNamespace(features=torch.zeros(4, 1536))
    planner = Planner(  # type: ignore[arg-type]
        **{f.name: None for f in dataclasses.fields(Planner)}
        | {"m": m, "depth": SimpleNamespace(cut=cut), "num_classes": 10}
    )
    fe = TrainingPlan(strategy=Strategy.FEATURE_EXTRACTION)
    assert planner._checkpoint_seconds(fe) == pytest.approx(4 * 4 * 1537 * 10 / 1e6)
    full = TrainingPlan(strategy=Strategy.FULL_FINE_TUNE)
    assert planner._checkpoint_seconds(full) == pytest.approx(4 * 18_000_000 / 1e6)
    # No write speed measured: no term.
    unmeasured = dataclasses.replace(planner, m=SimpleNamespace(save_bytes_per_second=0.0))
    assert unmeasured._checkpoint_seconds(fe) == 0.0


# --------------------------------------------------------------------------- the probe


def test_probe_separable_features_near_perfect() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g) * 6
    labels = [i % 4 for i in range(80)]
    x = centres[labels] + torch.randn(80, 32, generator=g)
    result = linear_probe(x, labels)
    assert result.folds == 5
    assert result.accuracy >= 0.98
    assert result.std <= 0.05


def test_probe_random_labels_near_chance() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 64, generator=g)
    labels = torch.randint(0, 4, (200,), generator=g).tolist()
    result = linear_probe(x, labels)
    assert 0.1 <= result.accuracy <= 0.4  # chance is 0.25


def test_probe_folds_follow_the_smallest_class() -> None:
    labels = [0] * 10 + [1] * 3
    assert linear_probe(torch.randn(13, 4), labels).folds == 3
    assert linear_probe(torch.randn(4, 4), [0, 0, 1, 1]).folds == 2
    folds = stratified_folds([0] * 10 + [1] * 10, 5)
    for f in range(5):
        assert Counter(y for y, k in zip([0] * 10 + [1] * 10, folds, strict=True) if k == f) == {
            0: 2,
            1: 2,
        }


def test_ranking_needs_a_significant_gain_to_put_a_slower_backbone_first() -> None:
    from graft.advisor.advice import BackboneScore, ProbeResult
    from graft.advisor.probe import paired_sign_test
    from graft.advisor.ranking import _rank

    def probe(correct: list[bool]) -> ProbeResult:
        acc = sum(correct) / len(correct)
        return ProbeResult(acc, 0.0, 5, (acc,) * 5, tuple(correct))

    def score(name: str, p: ProbeResult, ips: float) -> BackboneScore:
        return BackboneScore(name, p.accuracy, 5.0, ips)

    base = [True] * 150 + [False] * 50
    slow_bit_better = probe(base[:150] + [True] * 4 + [False] * 46)  # +4 of 200 images
    slow_much_better = probe(base[:150] + [True] * 40 + [False] * 10)  # +40 of 200 images
    fast = probe(base)
    # 4 wins, no loss: p = 1/16, not significant at 0.05.
    assert paired_sign_test(slow_bit_better, fast) == (4, 0, pytest.approx(1 / 16))
    assert paired_sign_test(fast, slow_bit_better)[2] == 1.0

    order, note = _rank(
        [(score("slow", slow_bit_better, 100), slow_bit_better), (score("fast", fast, 1000), fast)]
    )
    assert [s.backbone for s in order] == ["fast", "slow"]
    assert "not significant" in note and "p = 0.06" in note and "1000 vs 100 img/s" in note
    order, note = _rank(
        [
            (score("slow", slow_much_better, 100), slow_much_better),
            (score("fast", fast, 1000), fast),
        ]
    )
    assert [s.backbone for s in order] == ["slow", "fast"]
    assert note == "slow has the best probe."
    # Speeds within 1.25x are a tie: the default backbone wins it, else the better probe.
    tie = [
        (score("other", slow_bit_better, 1100), slow_bit_better),
        (score(DEFAULT_BACKBONE, fast, 1000), fast),
    ]
    assert _rank(tie)[0][0].backbone == DEFAULT_BACKBONE
    tie[1] = (score("third", fast, 1000), fast)
    assert _rank(tie)[0][0].backbone == "other"


def test_probe_matches_scikit_learn_objective() -> None:
    from sklearn.linear_model import LogisticRegression

    from graft.advisor.probe import fit_logistic

    g = torch.Generator().manual_seed(2)
    x = torch.randn(150, 10, generator=g, dtype=torch.float64)
    y = x[:, 0] + 0.5 * x[:, 1] + 0.8 * torch.randn(150, generator=g, dtype=torch.float64) > 0
    y3 = (y.long() + (x[:, 2] > 1).long()).clamp(max=2)
    w, b = fit_logistic(x, y3, 3, max_iter=500)
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(x.numpy(), y3.numpy())
    # Same objective: same probabilities (softmax is invariant to a shared shift of logits).
    ours = torch.softmax(x @ w + b, 1).numpy()
    theirs = ref.predict_proba(x.numpy())
    assert abs(ours - theirs).max() < 1e-3


# --------------------------------------------------------------------------- signals


def test_batchnorm_recorder_combines_batches_exactly() -> None:
    bn = nn.BatchNorm2d(3).eval()
    net = nn.Sequential(bn)
    x = torch.randn(10, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 4
    with torch.no_grad(), BatchNormRecorder(net, grid=0) as rec:
        net(x[:3])
        net(x[3:])
        (m,) = rec.moments()
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    assert torch.allclose(m.mean.float(), mean, atol=1e-5)
    assert torch.allclose(m.var.float(), var, atol=1e-4)


@pytest.fixture(scope="module")
def reference_responses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageNetResponse]:
    """What real image sets give through the real pretrained default backbone."""
    root = tmp_path_factory.mktemp("reference")
    sets = {
        "photos": write_photos_folder(root / "photos", per_class=4, size=256),
        "digits": write_digits_folder(root / "digits", per_class=7),
        "fashion": write_fashion_mnist_folder(root / "fashion", per_class=3),
        **{d: write_domain_folder(root / d, d, per_class=6) for d in DOMAINS},
    }
    spec = get_spec(DEFAULT_BACKBONE)
    out = {}
    for name, path in sets.items():
        ds = scan_dataset(path)
        sample = decode_sample(
            select_sample(ds.samples, max_per_class=50, max_images=2000), max_short_side=256
        )
        m = measure_backbone(spec, sample, image_size=64, batch_size=8, signal_images=len(sample))
        assert m.response is not None and m.features.shape[0] == len(sample)
        out[name] = m.response
    return out


@pytest.fixture(scope="module")
def reference_signals(reference_responses: dict[str, ImageNetResponse]) -> dict[str, list]:
    return {name: measure_signals(r) for name, r in reference_responses.items()}


@pytest.mark.pretrained
def test_the_signals_stop_reading_once_the_interval_is_clear_of_the_threshold(
    reference_responses: dict[str, ImageNetResponse],
) -> None:
    """Digit glyphs (70 images) are far from ImageNet: after SIGNAL_MIN_IMAGES the interval
    lies below 0.5 and the signals read no more. The photos (24) and Fashion-MNIST (30)
    are fewer than that: read in full."""
    digits = reference_responses["digits"]
    interval = similarity_interval(digits)
    assert digits.num_images == SIGNAL_MIN_IMAGES < 70
    assert interval is not None and interval[1] < 0.5
    assert reference_responses["photos"].num_images == 24
    assert reference_responses["fashion"].num_images == 30


@pytest.mark.pretrained
@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_far_from_photos_are_not_similar(reference_signals: dict, domain: str) -> None:
    """Scanned text, microscopy, retinas, the sky, line drawings: not like ImageNet, as
    common sense says — also where the ImageNet head is confidently wrong (retinas and
    the Moon, whose confidence scores high: the mean of the two scores called them
    similar)."""
    assert combine(reference_signals["photos"]) >= 0.5 > combine(reference_signals[domain])


@pytest.mark.pretrained
@pytest.mark.parametrize("other", ["digits", "fashion"])
def test_each_signal_scores_photos_above_glyphs(reference_signals: dict, other: str) -> None:
    photos = {s.name: s for s in reference_signals["photos"]}
    glyphs = {s.name: s for s in reference_signals[other]}
    assert set(photos) == set(glyphs) == {"imagenet_confidence", "batchnorm_shift"}
    # Raw values move the right way: more confident, smaller BatchNorm shift on photos.
    assert photos["imagenet_confidence"].value > glyphs["imagenet_confidence"].value
    assert photos["batchnorm_shift"].value < glyphs["batchnorm_shift"].value
    for name in photos:
        assert photos[name].score > glyphs[name].score
        assert 0.0 <= glyphs[name].score <= 1.0
    assert combine(reference_signals["photos"]) >= 0.5 > combine(reference_signals[other])


# --------------------------------------------------------------------------- advise_dataset


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("fashion"), per_class=12)


@pytest.mark.pretrained
def test_advise_dataset_on_fashion_mnist(
    fashion_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = count_decodes(monkeypatch)
    config = Config(data_dir=tmp_path, advise_max_per_class=8, advise_max_images=60)
    ds = scan_dataset(fashion_folder)
    # Two candidates keep the test short; resolve_candidates' default list is tested below.
    advice = advise_dataset(
        ds, config=config, candidates=["efficientnet_lite0", "efficientnet_lite1"]
    )

    # Bounded sample: 60 in all, so 6 per class (under the per-class cap of 8), each once.
    assert len(decoded) == len(set(decoded)) == advice.sample_images == 60
    by_class = Counter(p.parent.name for p in decoded)
    assert set(by_class.values()) == {6}

    # Size from the whole dataset, not the sample.
    assert advice.report is not None
    assert advice.report.total_images == 120
    assert dict(advice.report.classes) == dict.fromkeys(ds.classes, 12)
    assert advice.report.imbalance_ratio == 1.0
    assert (advice.report.median_width, advice.report.median_height) == (28, 28)
    assert advice.report.fingerprint == ds.fingerprint
    assert advice.images_per_class == 12
    assert advice.quadrant in (Quadrant.SMALL_DIFFERENT, Quadrant.SMALL_SIMILAR)
    assert advice.matrix_strategy == MATRIX[advice.quadrant]
    # The similarity's bootstrap interval holds it, and borderline means straddling 0.5.
    low, high = advice.similarity_interval
    print(f"similarity {advice.similarity:.3f}, interval {low:.3f}-{high:.3f}")
    assert low <= advice.similarity <= high and low < high
    assert advice.similarity_borderline == (low < 0.5 <= high)
    assert f"90% bootstrap interval {low:.2f}-{high:.2f}" in advice.rationale
    # 60 sampled images, fewer than the signals' minimum: they read them all.
    assert advice.similarity_images == 60 and "on 60 sampled images" in advice.rationale
    # The strategy is the matrix's unless the measurement says feature extraction does as
    # well: the pilot fine-tune against the probe on the same split.
    assert advice.pilot is not None and 0 <= advice.pilot.accuracy <= 1
    assert advice.pilot.train_images + advice.pilot.val_images == 60
    departs = advice.holdout_probe_accuracy >= advice.pilot.accuracy - FE_MARGIN
    expected = Strategy.FEATURE_EXTRACTION if departs else advice.matrix_strategy
    assert advice.plan.strategy == expected

    # A complete plan StartFineTune takes unchanged.
    plan = advice.plan
    spec = get_spec(plan.backbone)
    validate_plan(plan, spec)
    assert resolve_plan(plan, spec, num_train_images=96, median_size=(28, 28)) == plan
    assert plan.image_size == 64 and plan.epochs > 0 and plan.batch_size >= 2
    assert plan.head_learning_rate > 0 and plan.validation_fraction > 0
    assert plan.augmentation == (
        advice.quadrant == Quadrant.SMALL_DIFFERENT and plan.strategy != Strategy.FEATURE_EXTRACTION
    )

    # Depth: every stage of the plan's backbone scored; the cut and the partial depth follow.
    depth = advice.depth
    assert depth is not None and len(depth.stages) == len(spec.stages)
    assert [st.stage for st in depth.stages] == list(range(1, len(spec.stages) + 1))
    best = max(depth.stages, key=lambda st: (st.probe.accuracy, st.stage))
    assert depth.best_stage == best.stage
    assert depth.trainable_stages == min(
        max(1, len(spec.stages) - best.stage), len(spec.stages) - 1
    )
    assert depth.cut.probe.accuracy >= depth.stages[-1].probe.accuracy
    if plan.strategy == Strategy.FEATURE_EXTRACTION:
        last = (len(spec.stages),)
        classic = depth.cut.stages == last and depth.cut.grid == 1
        assert plan.feature_stages == (() if classic else depth.cut.stages)
        assert plan.feature_grid == (depth.cut.grid if depth.cut.grid > 1 else 0)
    elif plan.strategy == Strategy.PARTIAL_FINE_TUNE:
        assert plan.trainable_stages == depth.trainable_stages
    # Estimates for feature extraction and the fine-tuning strategy, the plan's among them.
    assert {e.strategy for e in advice.strategy_estimates} >= {Strategy.FEATURE_EXTRACTION}
    low, high = advice.estimated_accuracy
    assert 0 <= low <= high <= 1
    mine = next(e for e in advice.strategy_estimates if e.strategy == plan.strategy)
    assert (mine.accuracy_low, mine.accuracy_high) == (low, high)
    assert all(b.logme != 0 and len(b.stage_logme) == len(spec.stages) for b in advice.backbones)

    # Measurements: signals, ranking, estimate.
    assert [s.name for s in advice.signals] == ["imagenet_confidence", "batchnorm_shift"]
    assert advice.similarity == pytest.approx(min(s.score for s in advice.signals))
    assert {b.backbone for b in advice.backbones} == {"efficientnet_lite0", "efficientnet_lite1"}
    assert plan.backbone in {"efficientnet_lite0", "efficientnet_lite1"}
    assert advice.similarity_backbone == DEFAULT_BACKBONE
    assert plan.backbone == advice.backbones[0].backbone  # the plan uses the top-ranked
    assert all(b.probe_accuracy > 0.3 for b in advice.backbones)  # chance is 0.1
    assert all(b.images_per_second > 0 and b.params_millions > 0 for b in advice.backbones)
    assert advice.estimated_training_seconds > 0

    # The rationale quotes the numbers.
    text = advice.rationale
    assert "median of 12 images per class" in text and "1000" in text
    for s in advice.signals:
        assert f"{s.value:.3f}" in text and f"{s.score:.2f}" in text
    assert f"{advice.similarity:.2f}" in text
    for b in advice.backbones:
        assert f"{100 * b.probe_accuracy:.1f}%" in text
    assert re.search(r"quadrant [34]", text)
    assert f"{100 * advice.pilot.accuracy:.1f}%" in text  # the measurement behind the strategy
    assert f"{100 * advice.holdout_probe_accuracy:.1f}%" in text
    assert f"the best single stage is {depth.best_stage}" in text
    assert f"of {len(depth.cut.candidates)} cuts probed" in text
    assert f"{100 * depth.cut.probe.accuracy:.1f}%" in text
    assert depth.cut.grid_candidates  # the best cuts were probed pooled over a grid too
    assert f"{len(depth.cut.grid_candidates)} of them again pooled over a 2x2 grid" in text
    if depth.cut.grid > 1:
        assert depth.cut.global_probe is not None
        assert f"{100 * depth.cut.global_probe.accuracy:.1f}% for the best cut pooled" in text
    assert f"{100 * low:.1f}% to {100 * high:.1f}%" in text
    assert f"{advice.estimated_training_seconds:.0f} s" in text


@pytest.mark.parametrize(
    ("matrix", "per_class", "probe", "pilot", "expected"),
    [
        (Strategy.PARTIAL_FINE_TUNE, 100, 0.80, 0.70, True),  # small: the probe wins
        (Strategy.PARTIAL_FINE_TUNE, 100, 0.695, 0.70, True),  # within FE_MARGIN
        (Strategy.PARTIAL_FINE_TUNE, 100, 0.68, 0.70, False),  # fine-tuning measured better
        (Strategy.FULL_FINE_TUNE, 1000, 0.87, 0.72, True),  # large, measured to keep up
        (Strategy.FULL_FINE_TUNE, DEPARTURE_MAX_PER_CLASS, 0.87, 0.72, True),
        (Strategy.FULL_FINE_TUNE, DEPARTURE_MAX_PER_CLASS + 1, 0.87, 0.72, False),
        (Strategy.FEATURE_EXTRACTION, 100, 0.80, 0.70, False),  # nothing to depart from
    ],
)
def test_feature_extraction_departs_from_the_matrix_up_to_the_measured_size(
    matrix: Strategy, per_class: float, probe: float, pilot: float, expected: bool
) -> None:
    assert departs(matrix, per_class, probe, pilot) is expected


def test_the_rationale_says_why_a_large_dataset_follows_the_matrix() -> None:
    from graft.advisor.advice import StrategyEstimate
    from graft.advisor.rationale import _pilot_sentence
    from tests.unit.test_convert import _measured_advice

    base = _measured_advice()
    estimates = (
        StrategyEstimate(Strategy.FEATURE_EXTRACTION, 0.8, 0.9, 60.0, "probe"),
        StrategyEstimate(Strategy.FULL_FINE_TUNE, 0.8, 0.9, 250.0, "pilot"),
    )
    huge = dataclasses.replace(
        base,
        matrix_strategy=Strategy.FULL_FINE_TUNE,
        plan=dataclasses.replace(base.plan, strategy=Strategy.FULL_FINE_TUNE),
        images_per_class=5000.0,
        strategy_estimates=estimates,
    )
    assert base.pilot is not None
    text = _pilot_sentence(huge, base.pilot)
    assert "follows the matrix (more than 3,000 images per class" in text
    large = dataclasses.replace(
        huge,
        plan=dataclasses.replace(base.plan, strategy=Strategy.FEATURE_EXTRACTION),
        images_per_class=2000.0,
    )
    assert "departs from the matrix" in _pilot_sentence(large, base.pilot)


def test_candidate_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve_candidates(["efficientnet_lite0", "no-such-net"], tmp_path)
    assert [v.field for v in err.value.violations] == ["candidate_backbones"]
    assert "no-such-net" in err.value.violations[0].description

    missing = [s.name for s in backbone_statuses(tmp_path) if not s.ready]
    if not missing:
        pytest.skip("every backbone's weights are on this machine")
    with pytest.raises(FailedPrecondition) as fp:
        resolve_candidates([missing[0]], tmp_path)
    assert missing[0] in fp.value.message and "import" in fp.value.message

    names = resolve_candidates([], tmp_path)
    assert names[0] == DEFAULT_BACKBONE and len(names) <= 3
    assert resolve_candidates([DEFAULT_BACKBONE, DEFAULT_BACKBONE], tmp_path) == [DEFAULT_BACKBONE]


def test_fine_tune_range_is_the_pilot_within_its_standard_error_raised_by_lead_and_curve() -> None:
    # 74% on 100 images: standard error sqrt(0.74 * 0.26 / 100) = 4.39 points.
    low, high = fine_tune_range(0.74, 100, probe_accuracy=0.80, extra=0.0)
    assert low == pytest.approx(0.74 - 0.0439, abs=1e-4)
    assert high == pytest.approx(0.74 + 0.0439, abs=1e-4)
    # A pilot ahead of the probe by 10 points, and 3 points more from the learning curve.
    low, high = fine_tune_range(0.74, 100, probe_accuracy=0.64, extra=0.03)
    assert low == pytest.approx(0.74 - 0.0439, abs=1e-4)
    assert high == pytest.approx(0.87)
    # Clipped to [0, 1]; a perfect pilot has no spread of its own.
    assert fine_tune_range(1.0, 50, probe_accuracy=0.9, extra=0.05) == (1.0, 1.0)
    assert fine_tune_range(0.01, 4, probe_accuracy=0.5, extra=0.0)[0] == 0.0

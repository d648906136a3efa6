"""Advise's rationale: the prose that says what was measured and why the plan is what it
is (docs/ADVISOR.md). Formatting only; every number comes in on the Advice. The
declared-statistics rationale, and `plan_sentence` that both end with, are in declared.py."""

from __future__ import annotations

from graft.advisor.advice import Advice, CutChoice, Depth, PilotResult
from graft.advisor.curve_sample import RECHECK_MARGIN
from graft.advisor.declared import plan_sentence
from graft.advisor.depth import CUT_GRID
from graft.advisor.estimates import DEPARTURE_MAX_PER_CLASS, FE_MARGIN
from graft.backbones import get_spec
from graft.backbones.spec import PretrainedSpec
from graft.domain import Quadrant, Strategy
from graft.plans.advised import IMBALANCE_CLASS_WEIGHTING
from graft.plans.matrix import MATRIX, QUADRANT_WORDS, SIMILARITY_THRESHOLD, STRATEGY_WORDS

# What a strategy is called in running text (STRATEGY_WORDS adds its number).
STRATEGY_NAMES: dict[Strategy, str] = {
    Strategy.FULL_FINE_TUNE: "full fine-tune",
    Strategy.PARTIAL_FINE_TUNE: "partial fine-tune",
    Strategy.FEATURE_EXTRACTION: "feature extraction",
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:.1f} points"


def measured_rationale(
    advice: Advice,
    counts: list[int],
    spec: PretrainedSpec,
    ranking_note: str,
    num_train: int,
    num_val: int,
) -> str:
    """The rationale of advise_dataset, from its finished Advice (all but the rationale);
    `spec` is the chosen backbone's."""
    report = advice.report
    assert report is not None
    parts = _position_sentences(advice, counts, report.total_images)
    parts.append(_ranking_sentence(advice, ranking_note))
    if advice.depth is not None:
        parts.append(_depth_sentence(advice.depth, spec.name))
    if advice.pilot is not None:
        parts.append(_pilot_sentence(advice, advice.pilot))
    parts.append(plan_sentence(advice.plan, spec))
    if advice.plan.class_weighting:
        parts.append(
            f"Class weighting because the imbalance ratio {report.imbalance_ratio:.1f} "
            f"exceeds {IMBALANCE_CLASS_WEIGHTING:.0f}."
        )
    low, high = advice.estimated_accuracy
    if high > 0:
        parts.append(f"Expected validation accuracy: {_pct(low)} to {_pct(high)}.")
    parts.append(
        f"Estimated training time on this host: {advice.estimated_training_seconds:.0f} s "
        f"({num_train} training and {num_val} validation images, inference measured at "
        f"{advice.backbones[0].images_per_second:.0f} img/s)."
    )
    return " ".join(parts)


def _position_sentences(advice: Advice, counts: list[int], total_images: int) -> list[str]:
    """Where the dataset sits in the matrix: size, similarity, quadrant."""
    q = advice.quadrant
    threshold = advice.small_threshold
    small = advice.images_per_class < threshold
    per_class = advice.images_per_class
    per_class_text = f"{per_class:.0f}" if per_class == int(per_class) else f"{per_class:.1f}"
    signal_text = ", ".join(f"{s.name} {s.value:.3f} (score {s.score:.2f})" for s in advice.signals)
    response_size = get_spec(advice.similarity_backbone).input_size
    return [
        f"{len(counts)} classes, {total_images} images: a median of {per_class_text} "
        f"images per class (smallest {min(counts)}, largest {max(counts)}), "
        f"{'below' if small else 'at or above'} the small-dataset threshold of {threshold}: "
        f"{'small' if small else 'large'}.",
        f"Similarity to ImageNet, measured with {advice.similarity_backbone} at "
        f"{response_size} px on {advice.similarity_images} sampled images: "
        f"{signal_text}; combined {advice.similarity:.2f} "
        f"({'>=' if advice.similar else '<'} {SIMILARITY_THRESHOLD}: "
        f"{'similar' if advice.similar else 'different'}" + _interval_text(advice) + ").",
        f"That is {QUADRANT_WORDS[q]}, for which the matrix gives "
        f"{STRATEGY_WORDS[MATRIX[q]]}"
        + (" plus data augmentation" if q == Quadrant.SMALL_DIFFERENT else "")
        + ".",
    ]


def _interval_text(advice: Advice) -> str:
    low, high = advice.similarity_interval
    if low == high:
        return ""
    text = f"; 90% bootstrap interval {low:.2f}-{high:.2f}"
    if advice.similarity_borderline:
        text += (
            f", which straddles {SIMILARITY_THRESHOLD}: borderline, another sample of the "
            "same data could fall in the other column, so the measured pilot weighs more "
            "than the column"
        )
    return text


def _ranking_sentence(advice: Advice, ranking_note: str) -> str:
    ranking = ", ".join(
        f"{s.backbone} {_pct(s.probe_accuracy)} ± {_pct(s.probe_accuracy_std)} "
        f"({s.images_per_second:.0f} img/s at {s.image_size} px)"
        for s in advice.backbones
    )
    return (
        f"Backbones ranked, with their {advice.backbones[0].probe_folds}-fold linear-probe "
        f"accuracy on frozen features of {advice.sample_images} sampled images: {ranking}. "
        + ranking_note
    )


def _depth_sentence(depth: Depth, backbone: str) -> str:
    stage_text = ", ".join(f"{st.stage}: {_pct(st.probe.accuracy)}" for st in depth.stages)
    cut = depth.cut
    last = len(depth.stages)
    where = (
        "the last stage"
        if cut.stages == (last,)
        else f"stage{'s' if len(cut.stages) > 1 else ''} {'+'.join(map(str, cut.stages))}"
    )
    against = (
        []
        if cut.stages == (last,) and cut.grid == 1
        else [f"{_pct(depth.stages[-1].probe.accuracy)} for the last stage"]
    )
    if cut.grid > 1:
        where += f" pooled over a {cut.grid}x{cut.grid} grid"
        if cut.global_probe is not None:
            against.insert(0, f"{_pct(cut.global_probe.accuracy)} for the best cut pooled globally")
    cut_words = f"{where} ({_pct(cut.probe.accuracy)}" + (
        f", against {' and '.join(against)})" if against else ")"
    )
    grid_words = (
        f", {len(cut.grid_candidates)} of them again pooled over a {CUT_GRID}x{CUT_GRID} grid"
        if cut.grid_candidates
        else ""
    )
    return (
        f"Depth, measured on {backbone}'s pooled stage outputs (linear-probe accuracy "
        f"by stage, {stage_text}): the best single stage is {depth.best_stage}, so "
        f"partial fine-tuning unfreezes the {depth.trainable_stages} stage(s) above it; "
        f"of {len(cut.candidates)} cuts probed (single stages and runs of consecutive "
        f"stages around the best ones{grid_words}), feature extraction reads {cut_words}."
        + _recheck_words(cut)
    )


def _recheck_words(cut: CutChoice) -> str:
    """The best cuts probed again on the learning curve's images (curve_sample.recheck)."""
    if not cut.rechecked:
        return ""

    def name(stages: tuple[int, ...], grid: int) -> str:
        pooled = f" on the {grid}x{grid} grid" if grid > 1 else " pooled globally"
        return "+".join(map(str, stages)) + pooled

    fit, held = cut.recheck_split
    if len(cut.rechecked) == 1:
        return (
            f" No other cut probed within {100 * RECHECK_MARGIN:.0f} points of the best on the "
            f"sample, so none was probed again on {fit + held} images of the dataset; this one "
            f"scored {_pct(cut.rechecked[0][2])} there ({fit} to fit, {held} held out)."
        )
    scores = ", ".join(f"{name(s, g)} {_pct(a)}" for s, g, a in cut.rechecked)
    first = cut.rechecked[0]
    verdict = (
        "the sample's choice stands"
        if first[:2] == (cut.stages, cut.grid)
        else f"{name(cut.stages, cut.grid)} replaces the sample's choice, {name(*first[:2])}"
    )
    return (
        f" The best cuts probed again on {fit + held} images of the dataset ({fit} to fit, "
        f"{held} held out): {scores}; {verdict}."
    )


def _pilot_sentence(advice: Advice, pilot: PilotResult) -> str:
    lead = advice.holdout_probe_accuracy - pilot.accuracy
    ft = next(e for e in advice.strategy_estimates if e.strategy != Strategy.FEATURE_EXTRACTION)
    verdict = (
        (
            f"the probe beats the pilot by {_points(lead)}"
            if lead > 0
            else f"the probe is within {100 * FE_MARGIN:.0f} point of the pilot"
        )
        + ", so the plan departs from the matrix: feature extraction reaches as much for "
        "a fraction of the time"
        if advice.plan.strategy == Strategy.FEATURE_EXTRACTION
        and advice.matrix_strategy != Strategy.FEATURE_EXTRACTION
        else "the plan follows the matrix"
        + (
            f" (more than {DEPARTURE_MAX_PER_CLASS:,} images per class: a pilot on a sample "
            "cannot show what fine-tuning gains from all of them, and frozen features were "
            "measured to keep up only to that size)"
            if advice.images_per_class > DEPARTURE_MAX_PER_CLASS
            else " (fine-tuning measured better)"
        )
    )
    return (
        f"Measured on one split of the sample ({pilot.train_images} training, "
        f"{pilot.val_images} held-out images): {pilot.epochs} epochs of "
        f"{STRATEGY_NAMES[ft.strategy]} reached "
        f"{_pct(pilot.accuracy)} in {pilot.seconds:.0f} s; a linear head on the frozen "
        f"features of the cut reached {_pct(advice.holdout_probe_accuracy)}; {verdict}."
    )

"""`graft advise`: measure a dataset and print the recommended plan."""

from __future__ import annotations

import textwrap

from graft.cli.context import EXIT_OK, Context, dataset_from
from graft.cli.render import (
    QUADRANT_TEXT,
    STRATEGY_TEXT,
    describe_plan,
    fmt_duration,
    print_fields,
    print_json,
)
from graft_client import pb


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _span(low: int, high: int) -> str:
    return str(high) if low == high else f"{low}-{high}"


def _report_text(report: pb.DatasetReport, small_threshold: int) -> str:
    """Advise's dataset report in two lines: counts, then image sizes and colour modes."""
    counts = (
        f"{report.total_images} images in {len(report.classes)} classes"
        f" (small below {small_threshold}/class), imbalance {report.imbalance_ratio:.1f}"
    )
    if report.skipped_files:
        counts += f", {_count(report.skipped_files, 'file')} skipped"
    median = f"{report.median_width}x{report.median_height}"
    if report.max_width:  # older servers send only the median
        images = (
            f"sizes {_span(report.min_width, report.max_width)} x "
            f"{_span(report.min_height, report.max_height)} px (median {median})"
        )
    else:
        images = f"median {median} px"
    if report.modes:
        modes = sorted(report.modes.items(), key=lambda kv: (-kv[1], kv[0]))
        images += ", modes " + ", ".join(f"{mode} {n}" for mode, n in modes)
    return f"{counts}\n{images}"


def _duplicates_text(report: pb.DatasetReport) -> str:
    """Exact duplicates by content: how many, and which of them matter."""
    text = (
        f"{_count(report.duplicate_images, 'extra copy', 'extra copies')} in "
        f"{_count(report.duplicate_groups, 'group')} of identical files"
    )
    worse = []
    if report.cross_split_duplicates:
        worse.append(f"{report.cross_split_duplicates} across the train/validation split")
    if report.conflicting_label_duplicates:
        worse.append(f"{report.conflicting_label_duplicates} with conflicting labels")
    return text + (": " + ", ".join(worse) if worse else "")


def _similarity_text(advice: pb.AdviseResponse) -> str:
    text = f"{advice.similarity:.2f} (1 = like ImageNet"
    if advice.similarity_high > advice.similarity_low:
        text += f"; 90% interval {advice.similarity_low:.2f}-{advice.similarity_high:.2f}"
        if advice.similarity_borderline:
            text += ", borderline"
    return text + ")"


def cmd_advise(ctx: Context) -> int:
    a = ctx.args
    with ctx.client() as client:
        advice = client.advise(
            **dataset_from(a, ctx.parser),
            candidate_backbones=a.backbones,
            small_dataset_threshold=a.small_threshold,
        )
    if a.json:
        print_json(advice, ctx.out)
        return EXIT_OK
    strategy = STRATEGY_TEXT.get(advice.plan.strategy, "?")
    if advice.matrix_strategy and advice.matrix_strategy != advice.plan.strategy:
        strategy += f"  (the matrix alone says {STRATEGY_TEXT.get(advice.matrix_strategy)})"
    fields = [
        ("quadrant", QUADRANT_TEXT.get(advice.quadrant, "?")),
        ("strategy", strategy),
        ("similarity", _similarity_text(advice)),
    ]
    report = advice.report
    if report.total_images:
        fields.append(("dataset", _report_text(report, advice.small_dataset_threshold)))
        if report.duplicate_groups:
            fields.append(("duplicates", _duplicates_text(report)))
    if advice.similarity_signals:
        fields.append(
            (
                "signals",
                "\n".join(
                    f"{s.name} = {s.value:.3g} -> {s.score:.2f}" for s in advice.similarity_signals
                ),
            )
        )
    if advice.backbones:
        fields.append(
            (
                "backbones",
                "\n".join(
                    f"{b.backbone}: probe {b.probe_accuracy:.1%}"
                    + (f" (cut {b.cut_probe_accuracy:.1%})" if b.cut_probe_accuracy else "")
                    + f", LogME {b.logme:.3f}, {b.params_millions:.1f}M params,"
                    f" {b.images_per_second:.0f} img/s"
                    for b in advice.backbones
                ),
            )
        )
    fields.append(("plan", describe_plan(advice.plan)))
    if advice.estimated_training_seconds:
        estimate = f"~{fmt_duration(advice.estimated_training_seconds)} training"
        if advice.estimated_accuracy_high:
            estimate += (
                f", accuracy {advice.estimated_accuracy_low:.1%}"
                f"-{advice.estimated_accuracy_high:.1%}"
            )
        fields.append(("estimate", estimate))
    if advice.strategy_estimates:
        fields.append(
            (
                "strategies",
                "\n".join(
                    f"{STRATEGY_TEXT.get(e.strategy, '?')}: {e.accuracy_low:.1%}"
                    f"-{e.accuracy_high:.1%}, ~{fmt_duration(e.training_seconds)}"
                    for e in advice.strategy_estimates
                ),
            )
        )
    if advice.rationale:
        fields.append(("rationale", textwrap.fill(advice.rationale, 76)))
    if advice.from_cache:
        fields.append(("measured", "earlier: answered from the advice cache (same data, options)"))
    print_fields(fields, ctx.out)
    return EXIT_OK

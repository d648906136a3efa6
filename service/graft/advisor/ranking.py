"""Which backbones Advise measures, and how it ranks them (docs/ADVISOR.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from graft.advisor.advice import SEED, BackboneScore, ProbeResult
from graft.advisor.logme import logme
from graft.advisor.measure import BackboneMeasurement, DecodedSample
from graft.advisor.probe import linear_probe, paired_sign_test
from graft.backbones import DEFAULT_BACKBONE, backbone_statuses
from graft.errors import FailedPrecondition, FieldViolation, InvalidArgument

# Without an explicit list, Advise measures the default backbone and the lightest other
# backbones whose weights are here, this many in all; an explicit list may name up to
# MAX_CANDIDATES.
DEFAULT_MAX_CANDIDATES = 3
MAX_CANDIDATES = 6
# A slower backbone is chosen over a faster one only when its probe is better with a
# one-sided sign-test p-value below this.
SIGNIFICANCE = 0.05
# Measured speeds closer than this factor count as a tie (see _rank).
SPEED_TIE = 1.25


def resolve_candidates(candidates: Sequence[str], weights_dir: Path | None) -> list[str]:
    """The backbones to measure, in order. Explicit names must be known (InvalidArgument on
    `candidate_backbones`) and have their weights here (FailedPrecondition, saying how to
    provide them). Without names: the default backbone, then the lightest others whose
    weights are here, DEFAULT_MAX_CANDIDATES in all."""
    statuses = {s.name: s for s in backbone_statuses(weights_dir)}
    if candidates:
        names = list(dict.fromkeys(candidates))
        unknown = [n for n in names if n not in statuses]
        if unknown:
            known = ", ".join(statuses)
            raise InvalidArgument(
                f"candidate_backbones: unknown backbone(s) {', '.join(map(repr, unknown))}",
                [
                    FieldViolation("candidate_backbones", f"unknown backbone {n!r}; known: {known}")
                    for n in unknown
                ],
            )
        if len(names) > MAX_CANDIDATES:
            raise InvalidArgument.of(
                "candidate_backbones",
                f"at most {MAX_CANDIDATES} backbones per request (each is measured), "
                f"got {len(names)}",
            )
        missing = [statuses[n] for n in names if not statuses[n].ready]
        if missing:
            raise FailedPrecondition(
                "no pretrained weights on this host for candidate backbone(s) "
                + "; ".join(f"{s.name!r} ({s.weights})" for s in missing)
            )
        return names
    ready = [s for s in statuses.values() if s.ready]
    if not ready:
        raise FailedPrecondition(
            "no backbone has its pretrained weights on this host; provide the default's: "
            + statuses[DEFAULT_BACKBONE].weights
        )
    ready.sort(key=lambda s: (s.name != DEFAULT_BACKBONE, s.params_millions))
    return [s.name for s in ready[:DEFAULT_MAX_CANDIDATES]]


def _rank(by_probe: list[tuple[BackboneScore, ProbeResult]]) -> tuple[list[BackboneScore], str]:
    """The ranking Advise reports (best first; the plan uses the first) and a sentence on
    why the first is first.

    `by_probe` is sorted by probe accuracy. A candidate whose probe is not significantly
    worse than the top one's (exact one-sided sign test on the images exactly one of the
    two gets right — same images, same folds — p >= SIGNIFICANCE) is tied with it: the gap
    is noise on a sample this size. Among the tied, the fastest ranks first (it trains and
    serves for less); speeds within SPEED_TIE of each other count as equal (timings on a
    shared host move by more than that), and then the default backbone, else the better
    probe, goes first. Everyone else keeps probe order."""
    top, top_probe = by_probe[0]
    tests = {s.backbone: paired_sign_test(top_probe, p) for s, p in by_probe}
    tied = [s for s, _ in by_probe if s is top or tests[s.backbone][2] >= SIGNIFICANCE]
    fastest = max(s.images_per_second for s in tied)
    quick = [s for s in tied if s.images_per_second * SPEED_TIE >= fastest]
    default = [s for s in quick if s.backbone == DEFAULT_BACKBONE]
    first = default[0] if default else quick[0]
    order = [first] + [s for s, _ in by_probe if s is not first]
    if first is top:
        return order, f"{first.backbone} has the best probe."
    wins, losses, p = tests[first.backbone]
    speed = (
        f"is faster ({first.images_per_second:.0f} vs {top.images_per_second:.0f} img/s)"
        if first.images_per_second >= top.images_per_second * SPEED_TIE
        else "is the default and about as fast"
    )
    return order, (
        f"{top.backbone} probes highest, but its lead over {first.backbone} is not "
        f"significant (sign test: right on {wins} images the other missed, wrong on "
        f"{losses} it got, p = {p:.2f} >= {SIGNIFICANCE}) and {first.backbone} {speed}, "
        f"so {first.backbone} ranks first."
    )


def rank_backbones(
    names: Sequence[str],
    measurements: dict[str, BackboneMeasurement],
    sample: DecodedSample,
    num_classes: int,
) -> tuple[list[BackboneScore], str]:
    """Each candidate's linear probe and LogME on the sample, ranked by _rank."""
    ranked: list[tuple[BackboneScore, ProbeResult]] = []
    for n in names:
        m = measurements[n]
        probe = linear_probe(m.features, sample.labels, num_classes=num_classes, seed=SEED)
        y = torch.as_tensor(sample.labels, dtype=torch.long)
        score = BackboneScore(
            backbone=n,
            probe_accuracy=probe.accuracy,
            params_millions=m.spec.params_millions,
            images_per_second=m.images_per_second,
            probe_accuracy_std=probe.std,
            probe_folds=probe.folds,
            image_size=m.image_size,
            logme=logme(m.features, y, num_classes),
            stage_logme=tuple(logme(f, y, num_classes) for f in m.stage_features),
        )
        ranked.append((score, probe))
    ranked.sort(key=lambda sp: (-sp[0].probe_accuracy, -sp[0].images_per_second))
    return _rank(ranked)

"""The worker's side of a version's report: after training, before registering, `prepare`
runs the kept model over the validation split once, fits and judges temperature scaling
(calibrate.py: the card's `calibration`), and draws the report (data.py, figures.py). What
it returns gives the registry the report's files once the version's number is known
(`Prepared.files`, called under the registry's lock: it only formats what is drawn).

A report must never cost the version: any failure is logged, and the version registers
with `report/failure.json` saying why (GetModelReport then answers FAILED_PRECONDITION
with that reason). A failure before calibration leaves the card without one
(temperature 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.advisor.advice_cache import AdviceCache, advice_key
from graft.config import Config
from graft.data import Sample, ScannedDataset, load_image
from graft.domain import EventKind, Job, ModelVersion, ProgressEvent, Strategy, TrainingPlan
from graft.registry.card import Calibration, ModelCard
from graft.reports import data, figures, page
from graft.reports.calibrate import FOLDS, CalibrationResult, calibrate
from graft.reports.files import HTML_FILE, JSON_FILE, REPORT_FORMAT, failure_files, report_path
from graft.store import JobStore
from graft.training.validation_outputs import ValidationOutputs, validation_outputs

log = logging.getLogger(__name__)

Files = Callable[[ModelVersion], dict[str, bytes]]


@dataclass(frozen=True)
class Prepared:
    """What registration takes from the report: the card's calibration (None when it could
    not be measured) and the files to publish with the version."""

    calibration: Calibration | None
    files: Files
    failure: str = ""  # why there is no report ("" when there is one)
    seconds: float = 0.0  # what the validation pass, calibration and drawing took

    def message(self) -> str:
        """The job's progress message about it."""
        c = self.calibration
        text = (
            "calibration: not measured"
            if c is None
            else f"calibration: temperature {c.temperature:.3f} {c.reason}"
        )
        if self.failure:
            return f"{text}; no model report: {self.failure} (the version registers without one)"
        return f"{text}; model report drawn ({self.seconds:.1f} s)"


@dataclass(frozen=True)
class Draft:
    """A report drawn before its version's number is known."""

    report: dict[str, Any]  # report.json's data, less the version's identity
    pngs: dict[str, bytes] = field(default_factory=dict)  # path in the report -> PNG

    def files(self, mv: ModelVersion) -> dict[str, bytes]:
        """The report's files for version `mv` (paths relative to the version's folder);
        the failure note instead when formatting fails."""
        try:
            report = dict(self.report)
            report["model"] = {
                **report["model"],
                "name": mv.name,
                "version": mv.version,
                "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mv.create_time)),
            }
            out = {report_path(path): png for path, png in self.pngs.items()}
            out[report_path(JSON_FILE)] = json.dumps(report, indent=1).encode()
            out[report_path(HTML_FILE)] = page.render(report, self.pngs).encode()
            return out
        except Exception as exc:  # the version registers without its report; say why
            log.exception("model report of %s version %d could not be written", mv.name, mv.version)
            return failure_files(f"writing the report failed: {type(exc).__name__}: {exc}")


def prepare(
    *,
    job: Job,
    card: ModelCard,
    dataset: ScannedDataset,
    val_samples: Sequence[Sample],
    model: nn.Module,
    device: torch.device,
    store: JobStore,
    config: Config,
    validation_logits: torch.Tensor | None = None,
) -> Prepared:
    """Calibration and the report of the model `job` trained (`card`: its card so far).
    `validation_logits`: the model's on `val_samples` when training has them
    (TrainResult.validation_logits). Never raises (see the module doc)."""
    plan, started = card.plan, time.monotonic()
    try:
        outputs = validation_outputs(
            model,
            plan,
            val_samples,
            num_classes=len(card.labels),
            device=device,
            logits=validation_logits,
        )
        calibrated = calibrate(outputs.logits, outputs.targets, plan.seed)
    except Exception as exc:
        log.exception("job %s: the validation pass for calibration failed", job.job_id)
        return _failed(f"the validation pass failed: {type(exc).__name__}: {exc}", None)
    try:
        events = _events(store, job.job_id)
        origin = plan_origin(job, plan, dataset, config, device)
        draft = draw(card, calibrated, outputs, events, origin, dataset, len(val_samples))
    except Exception as exc:
        log.exception("job %s: the model report could not be drawn", job.job_id)
        return _failed(f"drawing the report failed: {type(exc).__name__}: {exc}", calibrated)
    return Prepared(calibrated.calibration, draft.files, seconds=time.monotonic() - started)


def _failed(reason: str, calibrated: CalibrationResult | None) -> Prepared:
    calibration = None if calibrated is None else calibrated.calibration
    return Prepared(calibration, lambda mv: failure_files(reason), reason)


def _events(store: JobStore, job_id: str) -> list[ProgressEvent]:
    """Every event of the job so far, in order."""
    events: list[ProgressEvent] = []
    while True:
        batch = store.events_after(job_id, events[-1].sequence if events else 0, limit=1000)
        events.extend(batch)
        if len(batch) < 1000:
            return events


def strategy_name(plan: TrainingPlan) -> str:
    if plan.strategy == Strategy.PARTIAL_FINE_TUNE:
        return f"partial fine-tune (top {plan.trainable_stages} stages)"
    return plan.strategy.name.lower().replace("_", " ")


def plan_origin(
    job: Job, plan: TrainingPlan, dataset: ScannedDataset, config: Config, device: torch.device
) -> dict[str, Any]:
    """Where the plan came from: the caller, or Advise (with its rationale when the advice
    is still in the advice cache, where the worker put it when it advised this job)."""
    base = {"plan": plan.to_dict(), "strategy": strategy_name(plan), "advice": None}
    if not job.advise_first:
        note = (
            "The caller gave this plan (StartFineTune with a plan); the fields it left unset "
            "were filled in with defaults for this dataset."
        )
        return {**base, "source": "given", "note": note}
    key = advice_key(dataset.fingerprint, config, device)
    advice = AdviceCache.for_config(config).get(key)
    if advice is None or advice.plan != plan:
        note = (
            "No plan was given: Advise chose this one. Its advice is no longer in the advice "
            "cache (evicted, or the settings changed since), so its rationale cannot be shown; "
            "the job's messages below tell what the worker did."
        )
        return {**base, "source": "advised", "note": note}
    summary = {
        "quadrant": advice.quadrant.name.lower(),
        "matrix_strategy": advice.matrix_strategy.name.lower(),
        "similarity": advice.similarity,
        "estimated_accuracy": list(advice.estimated_accuracy),
        "rationale": advice.rationale,
    }
    note = "No plan was given: Advise measured the dataset and chose this plan."
    return {**base, "source": "advised", "note": note, "advice": summary}


def draw(
    card: ModelCard,
    calibrated: CalibrationResult,
    outputs: ValidationOutputs,
    events: Sequence[ProgressEvent],
    origin: dict[str, Any],
    dataset: ScannedDataset,
    validation_images: int,
) -> Draft:
    """The report's data and figures (everything but the version's identity)."""
    assert card.metrics is not None, "a trained model's card has its metrics"
    metrics, labels = card.metrics, list(card.labels)
    points = data.curves(events)
    counts, normalised = data.confusion_rows(metrics)
    per_class = data.per_class(metrics)
    suspects = data.suspects(outputs, labels)
    images = [load_image(outputs.samples[s["index"]].path) for s in suspects]
    pngs = {
        "figures/curves.png": figures.curves(points),
        "figures/confusion.png": figures.confusion(labels, normalised),
        "figures/per_class.png": figures.per_class(per_class),
        "figures/reliability.png": figures.reliability(
            calibrated.before, calibrated.after, calibrated.calibration
        ),
        "figures/suspects.png": figures.suspects(
            images, [f"{s['label']} → {s['predicted']}" for s in suspects]
        ),
    }
    for k, (s, image) in enumerate(zip(suspects, images, strict=True), start=1):
        s["thumbnail"] = f"suspects/{k:02d}.png"
        s["file"] = _relative(outputs.samples[s.pop("index")].path, dataset.root)
        pngs[s["thumbnail"]] = figures.thumbnail_png(image)
    report = {
        "report_format": REPORT_FORMAT,
        "model": {
            "job_id": card.job_id,
            "backbone": card.backbone,
            "architecture": card.architecture,
        },
        "labels": labels,
        "dataset": {
            "fingerprint": card.dataset.fingerprint if card.dataset else dataset.fingerprint,
            "images": len(dataset.samples),
            "validation_images": validation_images,
            "skipped_files": len(dataset.skipped),
        },
        "training": None if card.training is None else card.training.to_dict(),
        "metrics": metrics.to_dict(),
        "curves": [p.to_dict() for p in points],
        "confusion": {"labels": labels, "counts": counts, "normalised": normalised},
        "per_class": per_class,
        "confused_pairs": data.confused_pairs(metrics),
        "calibration": {
            **calibrated.calibration.to_dict(),
            "folds": FOLDS,
            "bins_before": [dataclasses.asdict(b) for b in calibrated.before],
            "bins_after": [dataclasses.asdict(b) for b in calibrated.after],
        },
        "suspects": suspects,
        "plan": origin,
        "messages": [e.message for e in events if e.kind == EventKind.MESSAGE and e.message],
        "figures": {Path(p).stem: p for p in pngs if p.startswith("figures/")},
    }
    return Draft(report, pngs)


def _relative(path: Path, root: Path) -> str:
    """`path` relative to the dataset (its folder, or a manifest's folder)."""
    base = root if root.is_dir() else root.parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name

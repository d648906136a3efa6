"""report.html: one self-contained page (inline CSS, figures as data: URIs, no script, no
external resource) drawn from report.json's data, so a person can open it anywhere."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1080px;
       color: #1b1b1b; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; font-size: 1.25em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.summary { color: #444; } .note { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
img.figure { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 150px; font-size: 0.82em; }
.gallery img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
               border: 1px solid #ccc; background: #f8f8f8; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.8em; border-radius: 4px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of already-escaped cells."""
    top = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table>"


def _figure(files: Mapping[str, bytes], path: str | None, alt: str) -> str:
    if not path or path not in files:
        return f'<p class="note">({_e(alt)}: no figure)</p>'
    return f'<img class="figure" alt="{_e(alt)}" src="{_data_uri(files[path])}">'


def render(report: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    """The page of `report` (report.json's data); `files` are the PNGs it names, by path."""
    model, metrics = report["model"], report["metrics"]
    title = f"{model['name']} version {model['version']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Model report: {_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Model report: {_e(title)}</h1>",
        f'<p class="summary">{_summary(report)}</p>',
        _table(
            ["accuracy", "top-5 accuracy", "macro F1", "loss", "validation images"],
            [
                [
                    _pct(metrics["accuracy"]),
                    _pct(metrics["top5_accuracy"]),
                    _num(metrics["macro_f1"]),
                    _num(metrics["loss"]),
                    _e(sum(c["support"] for c in metrics["per_class"])),
                ]
            ],
        ),
        _curves(report, files),
        "<h2>Confusion matrix</h2>",
        _figure(files, report["figures"].get("confusion"), "confusion matrix"),
        _per_class(report, files),
        _pairs(report),
        _calibration(report, files),
        _suspects(report, files),
        _plan(report),
        _messages(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(report: Mapping[str, Any]) -> str:
    model, plan, dataset = report["model"], report["plan"]["plan"], report["dataset"]
    return (
        f"{_e(model['backbone'])}, {_e(report['plan']['strategy'])}, {plan['image_size']} px; "
        f"{len(report['labels'])} classes, {_e(dataset['images'])} images "
        f"({_e(dataset['validation_images'])} for validation); job {_e(model['job_id'])}; "
        f"registered {_e(model['created'])}"
    )


def _curves(report: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    rows = [
        [
            _e(p["epoch"]),
            _num(p["train_loss"]),
            _num(p["train_accuracy"]),
            _num(p["val_loss"]),
            _num(p["val_accuracy"]),
        ]
        for p in report["curves"]
    ]
    head = ["epoch", "training loss", "training accuracy", "validation loss", "validation accuracy"]
    return (
        "<h2>Training and validation curves</h2>"
        + _figure(files, report["figures"].get("curves"), "loss and accuracy per epoch")
        + _table(head, rows)
        + '<p class="note">Training figures are over the epoch\'s batches as they were '
        "trained (augmented and with dropout where the plan has them); validation figures "
        "over the held-out split, in evaluation mode.</p>"
    )


def _per_class(report: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    rows = [
        [
            _e(c["label"]),
            _num(c["precision"], 3),
            _num(c["recall"], 3),
            _num(c["f1"], 3),
            _e(c["support"]),
        ]
        for c in report["per_class"]
    ]
    return (
        "<h2>Per class</h2>"
        + _figure(files, report["figures"].get("per_class"), "precision, recall and F1")
        + _table(["class", "precision", "recall", "F1", "support"], rows)
    )


def _pairs(report: Mapping[str, Any]) -> str:
    pairs = report["confused_pairs"]
    if not pairs:
        return "<h2>Most-confused pairs</h2><p>No validation image was misclassified.</p>"
    rows = [[_e(p["true"]), _e(p["predicted"]), _e(p["count"]), _pct(p["share"])] for p in pairs]
    return "<h2>Most-confused pairs</h2>" + _table(
        ["true class", "predicted as", "images", "share of the true class"], rows
    )


def _calibration(report: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    c = report["calibration"]
    rows = [
        ["temperature (fitted on the whole validation split)", _num(c["temperature"], 3)],
        ["applied at Predict", "yes" if c["applied"] else "no"],
        ["ECE at temperature 1", _num(c["ece_before"])],
        ["ECE with temperature scaling (held out)", _num(c["ece_after"])],
        ["NLL at temperature 1", _num(c["nll_before"])],
        ["NLL with temperature scaling (held out)", _num(c["nll_after"])],
        ["validation images, confidence bins", f"{_e(c['images'])}, {_e(c['bins'])}"],
    ]
    return (
        "<h2>Calibration</h2>"
        + _table(["", "value"], rows)
        + f'<p class="note">{_e(c["reason"])}. "Held out": the validation split cut in '
        f"{_e(c.get('folds', 5))} folds, each scored with the temperature fitted on the others. "
        "Predict applies the temperature when the held-out NLL is lower (docs/REPORTS.md).</p>"
        + _figure(files, report["figures"].get("reliability"), "reliability diagrams")
    )


def _suspects(report: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
    items = []
    for s in report["suspects"]:
        src = _data_uri(files[s["thumbnail"]]) if s["thumbnail"] in files else ""
        items.append(
            f'<figure><img alt="{_e(s["file"])}" src="{src}"><figcaption>'
            f"label <b>{_e(s['label'])}</b><br>predicted {_e(s['predicted'])} "
            f"({_pct(s['confidence'])})<br>loss {_num(s['loss'], 3)}<br>"
            f'<span class="note">{_e(s["file"])}</span></figcaption></figure>'
        )
    return (
        "<h2>Highest-loss validation images (label-noise suspects)</h2>"
        '<p class="note">The images the model finds least likely under their own label. '
        "A wrong label, an ambiguous image or a real weakness of the model; worth a look.</p>"
        f'<div class="gallery">{"".join(items)}</div>'
    )


def _plan(report: Mapping[str, Any]) -> str:
    plan = report["plan"]
    rows = [[_e(k), _e(v)] for k, v in plan["plan"].items()]
    rows[[r[0] for r in rows].index("strategy")][1] = _e(plan["strategy"])
    advice = plan.get("advice")
    rationale = f"<h3>Advise's rationale</h3><pre>{_e(advice['rationale'])}</pre>" if advice else ""
    return f"<h2>Plan</h2><p>{_e(plan['note'])}</p>" + rationale + _table(["field", "value"], rows)


def _messages(report: Mapping[str, Any]) -> str:
    items = "".join(f"<li>{_e(m)}</li>" for m in report["messages"])
    return f"<h2>The job's messages</h2><ul>{items}</ul>" if items else ""

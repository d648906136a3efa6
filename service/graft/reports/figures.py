"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas
(headless; no pyplot, so no global state between reports). Sizes are fixed in inches at
DPI, so each figure's pixel size is known in advance (`*_size` functions): small enough
that a report stays a few hundred kB, large enough to read."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from graft.registry.card import Calibration
from graft.reports.data import EpochPoint
from graft.training.calibration import ReliabilityBin

DPI = 100
THUMBNAIL_PX = 96  # the longest side of a suspect's thumbnail (smaller images stay as they are)
MAX_CLASS_BARS = 40  # per-class bars: the lowest-F1 classes when there are more
MAX_CELL_TEXT = 20  # confusion cells carry their value up to this many classes
MAX_TICK_LABELS = 60  # and the axes their labels up to this many
CURVES_SIZE = (8.0, 3.2)
RELIABILITY_SIZE = (8.0, 3.6)
GRID_COLUMNS = 6


def confusion_size(classes: int) -> tuple[float, float]:
    side = min(10.0, max(4.5, 2.5 + 0.35 * classes))
    return (side + 1.0, side)


def per_class_size(classes: int) -> tuple[float, float]:
    return (7.0, min(10.0, max(2.5, 1.2 + 0.28 * min(classes, MAX_CLASS_BARS))))


def suspects_size(count: int) -> tuple[float, float]:
    return (1.5 * GRID_COLUMNS, 1.85 * max(1, math.ceil(count / GRID_COLUMNS)))


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of `size` inches."""
    return round(size[0] * DPI), round(size[1] * DPI)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"optimize": True})
    return buf.getvalue()


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def curves(points: Sequence[EpochPoint]) -> bytes:
    """Loss and accuracy per epoch, training and validation."""
    fig = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [p.epoch for p in points]
    for ax, train, val, title in (
        (loss_ax, [p.train_loss for p in points], [p.val_loss for p in points], "loss"),
        (
            acc_ax,
            [p.train_accuracy for p in points],
            [p.val_accuracy for p in points],
            "accuracy",
        ),
    ):
        known = [(e, v) for e, v in zip(epochs, train, strict=True) if v is not None]
        if known:
            ax.plot(*zip(*known, strict=True), "o-", label="training", color="#1f77b4")
        ax.plot(epochs, val, "s-", label="validation", color="#d62728")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
    acc_ax.set_ylim(0, 1.02)
    return _png(fig)


def confusion(labels: Sequence[str], normalised: Sequence[Sequence[float]]) -> bytes:
    """The confusion matrix normalised by row (true class), labelled."""
    n = len(labels)
    fig = Figure(figsize=confusion_size(n), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.asarray(normalised, dtype=float), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= MAX_TICK_LABELS:
        size = 9 if n <= 20 else 6
        ax.set_xticks(range(n), [_short(x) for x in labels], rotation=60, ha="right", fontsize=size)
        ax.set_yticks(range(n), [_short(x) for x in labels], fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= MAX_CELL_TEXT:
        for i in range(n):
            for j in range(n):
                v = normalised[i][j]
                colour = "white" if v > 0.5 else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({n} classes, rows sum to 1)")
    return _png(fig)


def per_class(rows: Sequence[dict[str, Any]]) -> bytes:
    """Precision, recall and F1 per class (the MAX_CLASS_BARS lowest by F1 when more)."""
    shown = sorted(rows, key=lambda r: (r["f1"], r["label"]))[:MAX_CLASS_BARS]
    shown.reverse()  # barh draws bottom-up: the lowest F1 at the top
    fig = Figure(figsize=per_class_size(len(rows)), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(shown))
    for k, (key, colour) in enumerate(
        (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c"))
    ):
        ax.barh(y + (k - 1) * 0.27, [r[key] for r in shown], 0.27, label=key, color=colour)
    ax.set_yticks(y, [_short(r["label"]) for r in shown], fontsize=8)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    more = f" (the {len(shown)} lowest F1 of {len(rows)})" if len(rows) > len(shown) else ""
    ax.set_title("per class" + more)
    return _png(fig)


def reliability(
    before: Sequence[ReliabilityBin], after: Sequence[ReliabilityBin], calibration: Calibration
) -> bytes:
    """Reliability diagrams at temperature 1 and with temperature scaling (cross-fitted:
    each image scored by a temperature fitted without it)."""
    fig = Figure(figsize=RELIABILITY_SIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = (
        f"temperature 1: ECE {calibration.ece_before:.3f}",
        f"temperature {calibration.temperature:.2f} (held out): ECE {calibration.ece_after:.3f}",
    )
    for ax, bins, title in zip(axes, (before, after), titles, strict=True):
        used = [b for b in bins if b.count]
        width = bins[0].upper - bins[0].lower if bins else 0.1
        ax.bar(
            [b.lower for b in used],
            [b.accuracy for b in used],
            width=width,
            align="edge",
            color="#1f77b4",
            edgecolor="white",
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        points = ([b.confidence for b in used], [b.accuracy for b in used])
        ax.plot(*points, "o", color="#d62728", markersize=3, label="mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    state = "applied at Predict" if calibration.applied else "not applied"
    fig.suptitle(f"calibration on {calibration.images} validation images: {state}", fontsize=10)
    return _png(fig)


def thumbnail(image: Image.Image) -> Image.Image:
    """`image` as RGB, shrunk (aspect kept) to at most THUMBNAIL_PX on its longer side; a
    smaller image is kept as it is (the page scales it up: enlarged here, it would only
    cost bytes)."""
    image = image.convert("RGB")
    scale = THUMBNAIL_PX / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def thumbnail_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    thumbnail(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def suspects(images: Sequence[Image.Image], captions: Sequence[str]) -> bytes:
    """The suspects' thumbnails in a grid, each captioned."""
    fig = Figure(figsize=suspects_size(len(images)), dpi=DPI, layout="constrained")
    rows = max(1, math.ceil(len(images) / GRID_COLUMNS))
    axes = fig.subplots(rows, GRID_COLUMNS, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(np.asarray(thumbnail(images[k])), interpolation="nearest")
            ax.set_title(captions[k], fontsize=7)
    fig.suptitle("highest-loss validation images (label-noise suspects)", fontsize=10)
    return _png(fig)

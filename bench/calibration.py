"""Temperature scaling on real data: what the worker records for a version (the fitted
temperature, the cross-fitted validation ECE and NLL, whether it is applied) against what
that temperature does to Fashion-MNIST test images the model never saw.

    .venv/bin/python bench/calibration.py [--per-class 60 100] [--classes 0,2,4,6 all]
        [--epochs 5] [--image-size 64] [--test-per-class 250]

For each (classes, per-class) pair: writes the train images, runs one feature-extraction
job through a real in-process Worker (which fits and judges the temperature and draws the
report), loads the registered version as Predict does, and scores the held-out test split
at temperature 1 and at the card's temperature. Prints a Markdown table (docs/REPORTS.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from graft.config import Config
from graft.domain import DatasetRef, ModelRef, Strategy, TrainingPlan
from graft.predict import build_model
from graft.training.calibration import expected_calibration_error
from graft.worker import Worker
from graft_devtools.datasets import write_fashion_mnist_folder


def run(
    tmp: Path, classes: tuple[int, ...] | None, per_class: int, args: argparse.Namespace
) -> str:
    root = tmp / "datasets" / f"train-{per_class}"
    write_fashion_mnist_folder(root, per_class=per_class, classes=classes, split="train")
    test = write_fashion_mnist_folder(
        tmp / f"test-{per_class}", per_class=args.test_per_class, classes=classes, split="test"
    )
    config = Config(data_dir=tmp / f"data-{per_class}", data_roots=(root.parent,), device="cpu")
    worker = Worker(config, "bench")
    try:
        plan = TrainingPlan(
            strategy=Strategy.FEATURE_EXTRACTION,
            epochs=args.epochs,
            image_size=args.image_size,
            validation_fraction=0.25,
        )
        worker.store.create_job(
            model_name="m",
            dataset=DatasetRef(uri=str(root)),
            plan=plan,
            request_id=uuid.uuid4().hex,
            plan_resolved=False,
        )
        job = worker.store.claim_job("bench", 600)
        assert job is not None
        t0 = time.monotonic()
        worker.run_job(job)
        seconds = time.monotonic() - t0
        mv, state, card = worker.registry.load(ModelRef("m"))
    finally:
        worker.store.close()
    c = card.calibration
    assert c is not None, "the version has no calibration"
    loaded = build_model(mv, state, card)
    paths = sorted(test.rglob("*.png"))
    arrays = [loaded.preprocess.decode(p.read_bytes()) for p in paths]
    with torch.inference_mode():
        logits = torch.cat(
            [
                loaded.model(loaded.preprocess.to_batch(arrays[i : i + 128])).float()
                for i in range(0, len(arrays), 128)
            ]
        )
    labels = torch.tensor([card.labels.index(p.parent.name) for p in paths])
    t = c.temperature
    ece = expected_calibration_error
    return (
        f"| {len(card.labels)} | {per_class} | {c.images} | {t:.2f} | "
        f"{'yes' if c.applied else 'no'} | {c.ece_before:.3f} → {c.ece_after:.3f} | "
        f"{c.nll_before:.3f} → {c.nll_after:.3f} | {len(paths)} | "
        f"{ece(logits.softmax(1), labels):.3f} → {ece((logits / t).softmax(1), labels):.3f} | "
        f"{F.cross_entropy(logits, labels):.3f} → {F.cross_entropy(logits / t, labels):.3f} | "
        f"{seconds:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[60, 100])
    parser.add_argument("--classes", nargs="+", default=["0,2,4,6", "all"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--test-per-class", type=int, default=250)
    args = parser.parse_args()
    print(
        "| classes | train images a class | validation images | T | applied "
        "| validation ECE (held out) | validation NLL (held out) | test images "
        "| test ECE | test NLL | job |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.classes:
        classes = None if spec == "all" else tuple(int(x) for x in spec.split(","))
        for per_class in args.per_class:
            with tempfile.TemporaryDirectory() as tmp:
                print(run(Path(tmp), classes, per_class, args), flush=True)


if __name__ == "__main__":
    main()

"""Accuracy and wall time of each strategy on the walk-through's demo dataset, measured
through the real service (server process + worker process + SDK).

    .venv/bin/python bench/demo_strategies.py [--per-class 100] [--epochs 4] [--image-size 64]

Writes Fashion-MNIST train/test folders (Debian's dataset-fashion-mnist), starts
`graft serve` on a free port in a temporary data dir, asks Advise, trains the advised plan
and each of the three strategies with the same epoch budget, and predicts the held-out test
images with every resulting model. Prints a Markdown table (docs/WALKTHROUGH.md has it).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graft_client import Client, pb
from graft_devtools.datasets import write_fashion_mnist_folder


def start_server(tmp: Path, data_root: Path) -> tuple[subprocess.Popen[bytes], str]:
    data_dir = tmp / "graft-data"
    cmd = [
        sys.executable, "-m", "graft", "serve", "--port", "0", "--metrics-port", "0",
        "--worker-metrics-port", "0", "--data-dir", str(data_dir), "--data-root", str(data_root),
    ]  # fmt: skip
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ready = data_dir / "server.json"
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"server failed:\n{(tmp / 'server.log').read_text()}")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{json.loads(ready.read_text())['port']}"


@contextmanager
def serving(prefix: str, timeout: float = 3600) -> Iterator[tuple[Client, Path]]:
    """`graft serve` (with its worker) in a temporary folder: a client to it and the
    datasets folder it reads; SIGTERM and the folder's removal when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "datasets"
        proc, target = start_server(tmp, root)
        try:
            yield Client(target, timeout=timeout), root
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(300)


def train_timed(
    client: Client, name: str, train: Path, plan: pb.TrainingPlan
) -> tuple[pb.Job, float]:
    """StartFineTune and wait for the job: the job and the caller's wall time, from the
    call to the registered model. A job that did not succeed ends the benchmark."""
    t0 = time.perf_counter()
    job = client.wait(client.start_fine_tune(name, str(train), plan=plan).job_id, timeout=7200)
    wall = time.perf_counter() - t0
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"{name} failed: {job.error}")
    return job, wall


def held_out_accuracy(client: Client, model: str, test_dir: Path) -> float:
    """Top-1 accuracy of `model` on the images of a class-per-folder test set."""
    paths = sorted(p for p in test_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    correct = 0
    for start in range(0, len(paths), 64):
        batch = paths[start : start + 64]
        response = client.predict(model, batch, top_k=1)
        correct += sum(
            p.classes[0].label == path.parent.name
            for p, path in zip(response.predictions, batch, strict=True)
        )
    return correct / len(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    with serving("graft-demo-", timeout=600) as (client, root):
        train = write_fashion_mnist_folder(root / "train", per_class=args.per_class, split="train")
        test = write_fashion_mnist_folder(
            root / "test", per_class=args.test_per_class, split="test"
        )
        t0 = time.perf_counter()
        advice = client.advise(str(train))
        advise_s = time.perf_counter() - t0
        print(
            f"Advise: {pb.Quadrant.Name(advice.quadrant)}, "
            f"{pb.Strategy.Name(advice.plan.strategy)}, similarity {advice.similarity:.2f}, "
            f"backbone {advice.plan.backbone} ({advise_s:.0f} s)"
        )
        print(f"rationale: {advice.rationale}\n")
        runs: list[tuple[str, pb.TrainingPlan]] = []
        advised = pb.TrainingPlan()
        advised.CopyFrom(advice.plan)
        runs.append(("advised plan (as returned)", advised))
        for strategy, stages in (
            (pb.STRATEGY_FEATURE_EXTRACTION, 0),
            (pb.STRATEGY_PARTIAL_FINE_TUNE, 3),
            (pb.STRATEGY_FULL_FINE_TUNE, 0),
        ):
            plan = pb.TrainingPlan(
                backbone="efficientnet_lite0", strategy=strategy, trainable_stages=stages,
                epochs=args.epochs, image_size=args.image_size,
            )  # fmt: skip
            runs.append((pb.Strategy.Name(strategy), plan))
        print("| run | backbone | strategy | epochs run | val acc | held-out acc | wall s |")
        print("|---|---|---|---|---|---|---|")
        for i, (label, plan) in enumerate(runs):
            job, wall = train_timed(client, f"demo-{i}", train, plan)
            card = json.loads(client.get_model(f"demo-{i}").card_json)
            acc = held_out_accuracy(client, f"demo-{i}", test)
            print(
                f"| {label} | {job.plan.backbone} | {pb.Strategy.Name(job.plan.strategy)} | "
                f"{card['training']['epochs_run']} | {job.metrics.accuracy:.3f} | {acc:.3f} | "
                f"{wall:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

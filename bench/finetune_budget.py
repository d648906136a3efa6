"""Held-out accuracy and wall time of fine-tuning runs with given strategies, epochs and
depths on one Fashion-MNIST subset, through the real service: what does fine-tuning reach
for how much time? (docs/ADVISOR.md § Evaluation.)

    OMP_NUM_THREADS=2 .venv/bin/python bench/finetune_budget.py --per-class 500 \
        --runs full:4,full:3,full:2,partial:4:3

A run is STRATEGY:EPOCHS[:TRAINABLE_STAGES], STRATEGY one of full, partial; the backbone
is EfficientNet-Lite0 at 64 px, batch 64, the rest of the plan as StartFineTune resolves it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder

sys.path.insert(0, str(Path(__file__).parent))
from demo_strategies import held_out_accuracy, serving, train_timed

STRATEGIES = {"full": pb.STRATEGY_FULL_FINE_TUNE, "partial": pb.STRATEGY_PARTIAL_FINE_TUNE}


def parse_run(text: str) -> pb.TrainingPlan:
    strategy, epochs, *depth = text.split(":")
    if strategy not in STRATEGIES or len(depth) > 1:
        raise SystemExit(f"bad run {text!r}: STRATEGY:EPOCHS[:TRAINABLE_STAGES]")
    plan = pb.TrainingPlan(
        backbone="efficientnet_lite0",
        strategy=STRATEGIES[strategy],
        image_size=64,
        batch_size=64,
        epochs=int(epochs),
    )
    if depth:
        plan.trainable_stages = int(depth[0])
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--runs", default="full:4,full:3,full:2,partial:4:3")
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    runs = [(r, parse_run(r)) for r in args.runs.split(",") if r]
    with serving("graft-ft-budget-") as (client, root):
        train = write_fashion_mnist_folder(root / "train", per_class=args.per_class, split="train")
        test = write_fashion_mnist_folder(
            root / "test", per_class=args.test_per_class, split="test"
        )
        print("| run | epochs run | held-out acc | wall s |")
        print("|---|---|---|---|")
        for i, (text, plan) in enumerate(runs):
            name = f"run{i}"
            _, wall = train_timed(client, name, train, plan)
            card = json.loads(client.get_model(name).card_json)
            acc = held_out_accuracy(client, name, test)
            print(
                f"| {text} | {card['training']['epochs_run']} | {100 * acc:.1f}% | {wall:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

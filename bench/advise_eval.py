"""How good is Advise's advice? On real offline datasets of different sizes and domains, ask
Advise, train the advised plan as returned and each of the three strategies with the same
epoch budget, and score every model on held-out test images, all through the real service
(server process + worker process + SDK).

    OMP_NUM_THREADS=2 .venv/bin/python bench/advise_eval.py [--datasets fmnist-30,digits]

Per dataset it prints the quadrant, the recommended strategy, Advise's own time, each
strategy's held-out accuracy and wall time, the plan's accuracy as a fraction of the best
strategy's and its wall time as a fraction of the slowest one's and of the best one's, and
whether the plan's held-out accuracy fell
in Advise's estimated range and the time estimate against the training's real time. Against
the two best hand-written strategies, measured in the same run (issue 13): frozen final
features + logistic regression (bench/baselines.py) and partial fine-tuning for 4 epochs
(the partial row): Graft's held-out accuracy minus the best baseline's, and Graft's whole
wall time (Advise + training + testing) over the fastest baseline's (training + testing).
Then the rank agreement (Kendall tau) between the backbones'
LogME scores and the held-out accuracy each reaches with feature extraction, over the
backbones with real weights. docs/ADVISOR.md has the table as measured.

Datasets (offline): Fashion-MNIST subsets (Debian's dataset-fashion-mnist) at 30, 300 and
1000 images per class (test: 100 per class from its test split; 100 and 500 per class on
request, the issue's reference points); scikit-learn's digits (70%
train / 30% test, seeded); a natural-photo set of crops of the sample photos bundled with
scikit-image and scikit-learn (6 classes, 40 training and 20 test crops each, different
seeds).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from graft.advisor.logme import kendall_tau
from graft_client import Client, pb
from graft_devtools.datasets import (
    write_digits_folder,
    write_fashion_mnist_folder,
    write_photos_folder,
)

sys.path.insert(0, str(Path(__file__).parent))
from baselines import logistic_on_final_features
from demo_strategies import held_out_accuracy, serving, train_timed

EPOCHS = 4  # the same budget for the three strategies (the reference runs)


def _fmnist(per_class: int) -> Callable[[Path], tuple[Path, Path]]:
    def make(root: Path) -> tuple[Path, Path]:
        train = write_fashion_mnist_folder(root / "train", per_class=per_class, split="train")
        test = write_fashion_mnist_folder(root / "test", per_class=100, split="test")
        return train, test

    return make


def _digits(root: Path) -> tuple[Path, Path]:
    train = write_digits_folder(root / "train")
    test = root / "test"
    rng = random.Random(0)
    for d in sorted(train.iterdir()):
        files = sorted(d.iterdir())
        rng.shuffle(files)
        (test / d.name).mkdir(parents=True)
        for f in files[: int(0.3 * len(files))]:
            shutil.move(f, test / d.name / f.name)
    return train, test


def _photos(root: Path) -> tuple[Path, Path]:
    train = write_photos_folder(root / "train", per_class=40, seed=0)
    test = write_photos_folder(root / "test", per_class=20, seed=1)
    return train, test


DATASETS: dict[str, Callable[[Path], tuple[Path, Path]]] = {
    "fmnist-30": _fmnist(30),
    "fmnist-300": _fmnist(300),
    "fmnist-1000": _fmnist(1000),
    "fmnist-3000": _fmnist(3000),  # the largest; about 35 minutes on 2 CPU cores
    # The reference points (fastai and hand-written strategies at 64 px):
    "fmnist-100": _fmnist(100),
    "fmnist-500": _fmnist(500),
    "digits": _digits,
    "photos": _photos,
}


def _train(
    client: Client, name: str, train: Path, test: Path, plan: pb.TrainingPlan
) -> tuple[float, float, pb.Job]:
    """Held-out accuracy, wall seconds of training and testing, the job."""
    job, wall = train_timed(client, name, train, plan)
    t0 = time.perf_counter()
    accuracy = held_out_accuracy(client, name, test)
    return accuracy, wall + time.perf_counter() - t0, job


def evaluate(client: Client, key: str, train: Path, test: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    advice = client.advise(str(train))
    advise_s = time.perf_counter() - t0
    plan = advice.plan
    print(f"\n## {key}: Advise {advise_s:.0f} s", flush=True)
    print(f"rationale: {advice.rationale}", flush=True)

    results: dict[str, tuple[float, float]] = {}
    acc, wall, _ = _train(client, f"{key}-plan", train, test, plan)
    results["plan"] = (acc, wall)
    print(f"plan ({pb.Strategy.Name(plan.strategy)}): held-out {acc:.3f}, {wall:.0f} s")
    for strategy in (
        pb.STRATEGY_FEATURE_EXTRACTION,
        pb.STRATEGY_PARTIAL_FINE_TUNE,
        pb.STRATEGY_FULL_FINE_TUNE,
    ):
        same = pb.TrainingPlan(
            backbone=plan.backbone,
            strategy=strategy,
            image_size=plan.image_size,
            batch_size=plan.batch_size,
            epochs=0 if strategy == pb.STRATEGY_FEATURE_EXTRACTION else EPOCHS,
        )
        if strategy == pb.STRATEGY_PARTIAL_FINE_TUNE and plan.trainable_stages:
            same.trainable_stages = plan.trainable_stages  # the measured depth
        name = f"{key}-{pb.Strategy.Name(strategy).split('_', 1)[1].lower()}"
        acc, wall, _ = _train(client, name, train, test, same)
        results[pb.Strategy.Name(strategy)] = (acc, wall)
        print(f"{pb.Strategy.Name(strategy)}: held-out {acc:.3f}, {wall:.0f} s", flush=True)

    lr_acc, lr_wall = logistic_on_final_features(train, test, image_size=64)
    print(f"baseline frozen features + logistic regression: {lr_acc:.3f}, {lr_wall:.0f} s")
    baselines = {"logistic": (lr_acc, lr_wall), "partial": results["STRATEGY_PARTIAL_FINE_TUNE"]}

    # LogME against reality: feature extraction with every backbone Advise measured.
    logme_acc: list[tuple[str, float, float]] = []
    for b in advice.backbones:
        fe = pb.TrainingPlan(
            backbone=b.backbone,
            strategy=pb.STRATEGY_FEATURE_EXTRACTION,
            image_size=plan.image_size,
        )
        acc, _, _ = _train(client, f"{key}-logme-{b.backbone}", train, test, fe)
        logme_acc.append((b.backbone, b.logme, acc))
        print(f"  {b.backbone}: LogME {b.logme:.3f}, feature extraction {acc:.3f}", flush=True)
    tau = kendall_tau([x[1] for x in logme_acc], [x[2] for x in logme_acc])

    strategies = {k: v for k, v in results.items() if k != "plan"}
    best_acc = max(a for a, _ in strategies.values())
    slowest = max(w for _, w in strategies.values())
    best_name = max(strategies, key=lambda k: strategies[k][0])
    plan_acc, plan_wall = results["plan"]
    low, high = advice.estimated_accuracy_low, advice.estimated_accuracy_high
    card = json.loads(client.get_model(f"{key}-plan").card_json)
    best_baseline = max(a for a, _ in baselines.values())
    fastest_baseline = min(w for _, w in baselines.values())
    return {
        "baselines": baselines,
        "vs_baseline_points": 100 * (plan_acc - best_baseline),
        "wall_vs_fastest_baseline": (advise_s + plan_wall) / fastest_baseline,
        "plan_minus_best_points": 100 * (plan_acc - best_acc),
        "time_estimate_vs_real": advice.estimated_training_seconds
        / max(1e-9, float(card["training"]["train_seconds"])),
        "dataset": key,
        "quadrant": pb.Quadrant.Name(advice.quadrant).removeprefix("QUADRANT_").lower(),
        "similarity": advice.similarity,
        "recommended": pb.Strategy.Name(plan.strategy).removeprefix("STRATEGY_").lower(),
        "feature_stages": list(plan.feature_stages),
        "feature_grid": plan.feature_grid,
        "trainable_stages": plan.trainable_stages,
        "advise_s": advise_s,
        "results": results,
        "best": best_name,
        "plan_vs_best": plan_acc / best_acc,
        "plan_time_vs_slowest": plan_wall / slowest,
        "plan_time_vs_best": plan_wall / strategies[best_name][1],
        "estimate": (low, high),
        "in_range": low <= plan_acc <= high,
        "logme": logme_acc,
        "tau": tau,
        "epochs_run": card["training"]["epochs_run"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        default="fmnist-30,fmnist-300,fmnist-1000,digits,photos",
        help=", ".join(DATASETS),
    )
    args = parser.parse_args()
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    rows = []
    with serving("graft-advise-eval-") as (client, root):
        for key in keys:
            train, test = DATASETS[key](root / key)
            rows.append(evaluate(client, key, train, test))

    fe, pft, fft = (
        "STRATEGY_FEATURE_EXTRACTION",
        "STRATEGY_PARTIAL_FINE_TUNE",
        "STRATEGY_FULL_FINE_TUNE",
    )
    print(
        "\n| dataset | quadrant | recommended | Advise s | plan acc (s) | feature extr. (s) | "
        f"partial {EPOCHS} ep (s) | full {EPOCHS} ep (s) | plan / best acc | "
        "plan / slowest time | plan / best time | estimate | in range | LogME tau |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        res = r["results"]
        assert isinstance(res, dict)

        def cell(k: str, res: dict[str, tuple[float, float]] = res) -> str:
            a, w = res[k]
            return f"{100 * a:.1f}% ({w:.0f})"

        rec = str(r["recommended"])
        if r["feature_stages"]:
            rec += f" (stages {'+'.join(map(str, r['feature_stages']))}"  # type: ignore[call-overload]
            grid = int(r.get("feature_grid") or 0)  # type: ignore[call-overload]
            rec += f", {grid}x{grid} grid)" if grid > 1 else ")"
        elif rec == "partial_fine_tune":
            rec += f" (top {r['trainable_stages']})"
        low, high = r["estimate"]  # type: ignore[misc]
        print(
            f"| {r['dataset']} | {r['quadrant']} | {rec} | {r['advise_s']:.0f} | "
            f"{cell('plan')} | {cell(fe)} | "
            f"{cell(pft)} | {cell(fft)} | {r['plan_vs_best']:.3f} | "
            f"{r['plan_time_vs_slowest']:.2f} | {r['plan_time_vs_best']:.2f} | "
            f"{100 * low:.0f}-{100 * high:.0f}% | {'yes' if r['in_range'] else 'no'} | "
            f"{r['tau']:+.2f} |"
        )
    print(
        "\n| dataset | logistic on final features (s) | partial 4 ep (s) | Graft acc - best "
        "baseline (points) | Graft wall / fastest baseline | plan - best strategy (points) | "
        "time estimate / real |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["baselines"]
        assert isinstance(b, dict)
        print(
            f"| {r['dataset']} | {100 * b['logistic'][0]:.1f}% ({b['logistic'][1]:.0f}) | "
            f"{100 * b['partial'][0]:.1f}% ({b['partial'][1]:.0f}) | "
            f"{r['vs_baseline_points']:+.1f} | {r['wall_vs_fastest_baseline']:.2f} | "
            f"{r['plan_minus_best_points']:+.1f} | {r['time_estimate_vs_real']:.2f} |"
        )
    hits = sum(bool(r["in_range"]) for r in rows)
    print(f"\nestimates in range: {hits} of {len(rows)}")
    taus = [float(r["tau"]) for r in rows]  # type: ignore[arg-type]
    print(
        f"\nmean Kendall tau (LogME vs feature-extraction accuracy): {sum(taus) / len(taus):+.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

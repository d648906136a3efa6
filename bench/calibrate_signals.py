"""Measure the similarity signals on reference image sets (a developer tool, not used by the
service): natural photo crops, the same in grayscale and at 64 px, Fashion-MNIST and
scikit-learn's digits, and five domains far from photos made from scikit-image's samples
(documents, microscopy, medical, astronomy, line drawings). docs/ADVISOR.md quotes its
output; the anchors in
graft.advisor.signals.SIGNALS come from it.

    .venv/bin/python bench/calibrate_signals.py --per-class 16 --seeds 0 1

With `--estimate`, instead: advise on Fashion-MNIST and photo crops, train each advised plan
(epochs capped by `--epochs`) and print the estimated against the measured training time;
`--small-threshold 10 --matrix` makes both sets "large" and keeps the matrix's strategy
(the photos' partial fine-tune then runs its frozen stages once).

Needs graft_devtools with scikit-learn and scikit-image (`make setup`) and Fashion-MNIST in
/usr/share/datasets/fashion-mnist (`make system-deps`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from graft.advisor.measure import decode_sample, select_sample
from graft.advisor.signals import (
    SIGNALS,
    BatchNormRecorder,
    ImageNetResponse,
    combine,
    measure_signals,
)
from graft.backbones import DEFAULT_BACKBONE, create_imagenet_model, get_spec
from graft.backbones.spec import PretrainedSpec
from graft.data import eval_transform, scan_dataset
from graft.domain import Strategy
from graft.plans import default_image_size


def _grayscale_copy(src: Path, dst: Path) -> Path:
    for f in sorted(src.rglob("*.jpg")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("L").save(out.with_suffix(".png"))
    return dst


def reference_sets(root: Path, per_class: int, seed: int) -> dict[str, Path]:
    from graft_devtools.datasets import (
        DOMAINS,
        write_digits_folder,
        write_domain_folder,
        write_fashion_mnist_folder,
        write_photos_folder,
    )

    photos = write_photos_folder(root / "photos-256", per_class, size=256, seed=seed)
    domains = {
        f"{name} 128 px": write_domain_folder(root / name, name, per_class, seed=seed)
        for name in DOMAINS
    }
    return {
        "photos 256 px": photos,
        "photos 256 px gray": _grayscale_copy(photos, root / "photos-gray"),
        "photos 64 px": write_photos_folder(root / "photos-64", per_class, size=64, seed=seed),
        "fashion-mnist 28 px": write_fashion_mnist_folder(
            root / "fashion", per_class, seed=seed, offset=0
        ),
        "digits 32 px": write_digits_folder(root / "digits", per_class, size=32),
        **domains,
    }


def response(
    net: torch.nn.Module, spec: PretrainedSpec, images: list[Image.Image], size: int
) -> ImageNetResponse:
    tf: Callable[[Image.Image], torch.Tensor] = eval_transform(spec, size)
    logits = []
    with torch.no_grad(), BatchNormRecorder(net) as rec:
        for i in range(0, len(images), 32):
            x = torch.stack([tf(im) for im in images[i : i + 32]])
            logits.append(net(x.contiguous(memory_format=torch.channels_last)).float())
        moments = rec.moments()
    return ImageNetResponse(spec.name, size, torch.cat(logits), moments)


def check_estimate(
    per_class: int, epochs: int, small_threshold: int | None = None, matrix: bool = False
) -> None:
    """Advise, then train the advised plan (at most `epochs` epochs) and compare times.
    `small_threshold` moves the matrix's size boundary (a low one makes these sets "large":
    the photos then get quadrant 2's partial fine-tune without augmentation, whose frozen
    stages run once); `matrix` switches the departure to feature extraction off."""
    import dataclasses

    from _inprocess import train_split  # bench/, the script's folder

    import graft.advisor.choice as choice
    from graft.advisor.advise import advise_dataset
    from graft.config import Config
    from graft.data import split_dataset
    from graft.plans import estimate_training_seconds
    from graft_devtools.datasets import write_fashion_mnist_folder, write_photos_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {
            "fashion-mnist 28 px": write_fashion_mnist_folder(root / "fashion", per_class),
            "photos 256 px": write_photos_folder(root / "photos", per_class, size=256),
        }
        if matrix:
            choice.DEPARTURE_MAX_PER_CLASS = -1  # no dataset is small enough to depart
        for label, path in sets.items():
            ds = scan_dataset(path)
            t0 = time.perf_counter()
            advice = advise_dataset(
                ds, config=Config(data_dir=root / "graft"), small_threshold=small_threshold
            )
            advise_s = time.perf_counter() - t0
            plan = advice.plan
            if plan.strategy != Strategy.FEATURE_EXTRACTION and plan.epochs > epochs:
                plan = dataclasses.replace(
                    plan, epochs=epochs, warmup_epochs=min(plan.warmup_epochs, epochs / 10)
                )
            train_s, val_s = split_dataset(ds, plan.validation_fraction, plan.seed)
            t0 = time.perf_counter()
            result = train_split(
                plan, ds, train_s, val_s, root / f"ckpt-{len(label)}", job_id="calibrate"
            )
            actual = time.perf_counter() - t0
            assert advice.speed is not None
            ran = dataclasses.replace(
                plan,
                epochs=result.epochs_run,
                head_warmup_epochs=min(plan.head_warmup_epochs, result.epochs_run),
            )
            estimate = estimate_training_seconds(
                ran, advice.speed, num_train=len(train_s), num_val=len(val_s)
            )
            print(
                f"{label}: advise {advise_s:.0f} s; {advice.quadrant.name} -> "
                f"{plan.strategy.name} {plan.backbone} K={plan.trainable_stages} "
                f"{plan.image_size} px, {result.epochs_run}/{plan.epochs} epochs, "
                f"{len(train_s)}+{len(val_s)} images: estimated {estimate:.1f} s for the "
                f"epochs run, "
                f"trained in {actual:.1f} s (accuracy {result.metrics.accuracy:.3f})",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--estimate", action="store_true", help="check the time estimate instead")
    ap.add_argument("--epochs", type=int, default=5, help="with --estimate: epochs at most")
    ap.add_argument(
        "--small-threshold", type=int, default=None, help="with --estimate: the size boundary"
    )
    ap.add_argument(
        "--matrix", action="store_true", help="with --estimate: no departure from the matrix"
    )
    ap.add_argument(
        "--signal-size",
        type=int,
        default=0,
        help="measure the signals at this size instead of the backbone's pretraining size "
        "(scored with the anchors the service uses at that size)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.estimate:
        check_estimate(args.per_class, args.epochs, args.small_threshold, args.matrix)
        return

    spec = get_spec(args.backbone)
    signal_size = args.signal_size or spec.input_size
    net = create_imagenet_model(spec.name).to(memory_format=torch.channels_last)
    names = [d.name for d in SIGNALS]
    print(f"backbone {spec.name}; signals at {signal_size} px and (in brackets) at the")
    print("plan's image size when that differs; score = calibrated [0, 1]; sim = mean score")
    header = f"{'set':22s} {'seed':>4s} {'n':>4s} {'plan px':>7s} "
    header += " ".join(f"{n:>30s}" for n in names) + f" {'sim':>5s}"
    print(header)
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            for label, path in reference_sets(Path(tmp), args.per_class, seed).items():
                t0 = time.perf_counter()
                ds = scan_dataset(path)
                picked = select_sample(ds.samples, max_per_class=args.per_class, max_images=2000)
                sample = decode_sample(picked, max_short_side=512)
                plan_size = default_image_size(spec, ds.median_size)
                native = measure_signals(response(net, spec, sample.images, signal_size))
                at_plan = None
                if plan_size != spec.input_size:
                    at_plan = measure_signals(response(net, spec, sample.images, plan_size))
                cells = []
                for i, s in enumerate(native):
                    extra = f" [{at_plan[i].value:.3f}]" if at_plan else ""
                    cells.append(f"{s.value:.3f}{extra} ({s.score:.2f})".rjust(30))
                print(
                    f"{label:22s} {seed:4d} {len(sample):4d} {plan_size:7d} "
                    + " ".join(cells)
                    + f" {combine(native):5.2f}  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()

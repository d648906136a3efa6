"""Write the demo datasets used by the README's walk-through and `make serve`.

Usage: python scripts/make_demo_data.py --out DIR [--per-class N] [--test-per-class M]

Writes, in class-per-folder layout (PNG, 28x28 grayscale):
  DIR/fashion-mnist-train  N images per class (default 100) from Fashion-MNIST's train split
  DIR/fashion-mnist-test   M held-out images per class (default 20) from its test split
Each folder is written once: an existing one is left as it is (delete it to rebuild).
Reads the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

try:
    from graft_devtools.datasets import FASHION_MNIST_ROOT, write_fashion_mnist_folder
except ImportError:  # run from a checkout without `make setup` (`pip install -e devtools`)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "devtools"))
    from graft_devtools.datasets import FASHION_MNIST_ROOT, write_fashion_mnist_folder


def _write_once(target: Path, per_class: int, split: str, root: Path) -> None:
    if target.is_dir() and any(target.iterdir()):
        print(f"{target}: exists, kept")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted run leaves no half folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        write_fashion_mnist_folder(tmp, per_class, split=split, root=root)
        if target.is_dir():
            target.rmdir()  # empty
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{target}: {per_class} images per class x 10 classes ({split} split)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument(
        "--test-per-class", type=int, default=20, help="held-out test images per class"
    )
    parser.add_argument(
        "--fashion-mnist", type=Path, default=FASHION_MNIST_ROOT, help="idx .gz files folder"
    )
    args = parser.parse_args(argv)
    if args.per_class < 1 or args.test_per_class < 1:
        parser.error("--per-class and --test-per-class must be at least 1")
    try:
        _write_once(args.out / "fashion-mnist-train", args.per_class, "train", args.fashion_mnist)
        _write_once(
            args.out / "fashion-mnist-test", args.test_per_class, "test", args.fashion_mnist
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

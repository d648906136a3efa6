"""Small real datasets for the walk-through, tests and benchmarks, all from files already on
the machine: Fashion-MNIST (Debian package dataset-fashion-mnist), scikit-learn's digits,
and the sample photos shipped with scikit-image and scikit-learn."""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Folder-safe names of the ten classes, in label order (T-shirt/top, Trouser, Pullover,
# Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes, as an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {arr.size}")
    return arr.reshape(shape)


@functools.lru_cache(maxsize=4)
def _fashion(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_name, labels_name = _FASHION_FILES[split]
    for name in (images_name, labels_name):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{root / name} not found: install the Debian package dataset-fashion-mnist "
                "or pass root= to the folder holding the four idx .gz files"
            )
    images = _read_idx(root / images_name)
    labels = _read_idx(root / labels_name).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def read_fashion_mnist(
    split: str = "train", root: Path = FASHION_MNIST_ROOT
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N×28×28, int64 labels N) of Fashion-MNIST's train (60000) or test
    (10000) split. The arrays are read-only and shared between calls."""
    return _fashion(split, Path(root))


def write_fashion_mnist_folder(
    out: Path,
    per_class: int,
    *,
    split: str = "train",
    classes: Sequence[int] | None = None,
    offset: int = 0,
    seed: int = 0,
    root: Path = FASHION_MNIST_ROOT,
) -> Path:
    """Write `per_class` grayscale PNGs of each class into `out/<class name>/`.

    Each class's images are taken in a seeded random order starting at `offset`, so calls
    with the same seed and non-overlapping offsets give disjoint sets."""
    images, labels = read_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    out = Path(out)
    for label in range(len(FASHION_MNIST_CLASSES)) if classes is None else classes:
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))][offset : offset + per_class]
        if len(idx) < per_class:
            raise ValueError(
                f"class {label} has only {len(idx)} images from offset {offset} in {split}"
            )
        d = out / FASHION_MNIST_CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i]).save(d / f"{split}-{int(i):05d}.png")
    return out


def write_digits_folder(out: Path, per_class: int | None = None, *, size: int = 32) -> Path:
    """scikit-learn's 8×8 handwritten digits (0..16 scaled to 0..255), upsampled to
    `size` px, as `out/<digit>/<index>.png`; all ~180 per class unless `per_class`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(out)
    written: dict[int, int] = {}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        if per_class is not None and written.get(label, 0) >= per_class:
            continue
        gray = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        im = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
        d = out / str(label)
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i:04d}.png")
        written[label] = written.get(label, 0) + 1
    return out


def _sample_photos() -> dict[str, np.ndarray]:
    """RGB uint8 photos bundled with scikit-image and scikit-learn (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {
        "astronaut": skimage.data.astronaut(),
        "cat": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "china": np.asarray(china),
        "flower": np.asarray(flower),
    }


def write_photos_folder(
    out: Path, per_class: int = 8, *, size: int = 64, seed: int = 0, quality: int = 90
) -> Path:
    """A small natural-photo class set: `per_class` seeded random crops (30-80% of the
    shorter side, some mirrored) of each sample photo, resized to `size` px, as JPEGs in
    `out/<photo>/`. Classes: astronaut, cat, china, coffee, flower, rocket."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for name, photo in sorted(_sample_photos().items()):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(_random_crops(photo, per_class, size, rng)):
            im.save(d / f"{name}-{k:03d}.jpg", quality=quality)
    return out


def _random_crops(
    pixels: np.ndarray, count: int, size: int, rng: np.random.Generator
) -> Iterator[Image.Image]:
    """`count` random square crops of `pixels` (30-80% of the shorter side, half of them
    mirrored), each resized to `size` px."""
    h, w = pixels.shape[:2]
    for _ in range(count):
        side = int(min(h, w) * rng.uniform(0.3, 0.8))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        im = Image.fromarray(np.ascontiguousarray(pixels[y : y + side, x : x + side]))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield im.resize((size, size), Image.Resampling.BICUBIC)


def _gray_or_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 pixels of a scikit-image sample: bool and float images scaled to 0-255."""
    if a.dtype == bool:
        return (a * 255).astype(np.uint8)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    return a[..., :3] if a.ndim == 3 else a


def _domain_sources(domain: str) -> dict[str, np.ndarray]:
    """The scikit-image sample images (shipped with the package, no download) of a domain
    far from ImageNet's photos, for the similarity's calibration."""
    import skimage.data as d

    loaders = {
        "documents": {"page": d.page, "text": d.text},
        "microscopy": {"immunohistochemistry": d.immunohistochemistry, "cell": d.cell},
        "medical": {"retina": d.retina, "microaneurysms": d.microaneurysms},
        "astronomy": {"hubble": d.hubble_deep_field, "moon": d.moon},
        "line-drawings": {
            "horse": d.horse,
            "phantom": d.shepp_logan_phantom,
            "blobs": d.binary_blobs,
        },
    }
    if domain not in loaders:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(sorted(loaders))}")
    return {name: _gray_or_rgb(load()) for name, load in loaders[domain].items()}


DOMAINS = ("documents", "microscopy", "medical", "astronomy", "line-drawings")


def write_domain_folder(
    out: Path, domain: str, per_class: int = 8, *, size: int = 128, seed: int = 0
) -> Path:
    """A small image set from a domain far from natural photos (`DOMAINS`: scanned pages
    and text; stained tissue and a cell under the microscope; a retinal fundus and
    microaneurysms; the Hubble deep field and the Moon; a silhouette, a CT phantom and
    binary blobs): `per_class` seeded random crops (30-80% of the shorter side, some
    mirrored) of each source image, resized to `size` px, as PNGs in `out/<source>/`."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for name, pixels in sorted(_domain_sources(domain).items()):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(_random_crops(pixels, per_class, size, rng)):
            im.save(d / f"{name}-{k:03d}.png")
    return out

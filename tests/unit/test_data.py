"""graft.data: layouts, decoding checks, confinement, archives, uploads, splits, transforms.

Every image here is real (encoded by Pillow) and tiny, so the whole file runs in seconds.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graft.data.resolve as resolve_mod
import graft.data.scan as scan_mod
from graft.backbones.spec import PretrainedSpec, WeightSource
from graft.config import Config
from graft.data import (
    ImageDataset,
    ImageDecodeError,
    Sample,
    ScannedDataset,
    eval_transform,
    load_image,
    resolve_dataset,
    save_upload,
    scan_dataset,
    split_dataset,
    train_transform,
)
from graft.domain import DatasetRef
from graft.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from graft_devtools.datasets import (
    FASHION_MNIST_CLASSES,
    read_fashion_mnist,
    write_digits_folder,
    write_fashion_mnist_folder,
    write_photos_folder,
)

RNG = np.random.default_rng(0)


def rgb(w: int = 12, h: int = 10, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def two_class_folder(root: Path, per_class: int = 3, fmt: str = "PNG") -> Path:
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            write(root / name / f"{i}.{ext}", encode(rgb(seed=10 * c + i), fmt))
    return root


def config_for(tmp_path: Path, **kw: object) -> Config:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return Config(data_dir=tmp_path / "data", data_roots=(root,), **kw)  # type: ignore[arg-type]


def field_of(exc: InvalidArgument) -> str:
    assert exc.violations, exc.message
    return exc.violations[0].field


# ------------------------------------------------------------------ decoding and layouts


def test_folder_with_mixed_formats_and_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    jpeg = encode(rgb(16, 16), "JPEG", quality=90)
    write(root / "a" / "rgb.png", encode(rgb(), "PNG"))
    write(root / "a" / "photo.jpg", jpeg)
    write(root / "a" / "nested" / "deeper" / "bitmap.bmp", encode(rgb(), "BMP"))
    write(root / "a" / "anim.gif", encode(rgb().convert("P"), "GIF"))
    write(root / "b" / "web.webp", encode(rgb(), "WEBP"))
    write(root / "b" / "gray.png", encode(rgb().convert("L"), "PNG"))
    write(root / "b" / "alpha.png", encode(rgb().convert("RGBA"), "PNG"))
    wide = np.full((6, 5), 32768, dtype=np.uint16)
    write(root / "b" / "sixteen.png", encode(Image.fromarray(wide), "PNG"))
    # three bad files, and two silently ignored dotfiles
    write(root / "a" / "corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 200)))
    write(root / "b" / "truncated.jpg", jpeg[: len(jpeg) // 2])
    write(root / "b" / "notes.txt", b"not an image")
    write(root / "b" / ".DS_Store", b"junk")
    write(root / ".hidden" / "x.png", encode(rgb(), "PNG"))

    ds = scan_dataset(root)

    assert ds.classes == ["a", "b"]
    assert ds.counts() == {"a": 4, "b": 4}
    assert ds.layout == "folders" and not ds.has_explicit_split
    reasons = dict(ds.skipped)
    assert set(reasons) == {"a/corrupt.png", "b/truncated.jpg", "b/notes.txt"}
    assert "truncated" in reasons["b/truncated.jpg"]
    assert "not an image" in reasons["b/notes.txt"]
    assert reasons["a/corrupt.png"]
    assert {"RGB", "L", "RGBA", "P"} <= set(ds.mode_counts)
    assert sum(ds.mode_counts.values()) == 8
    assert all(s.split == "" and s.path.is_absolute() for s in ds.samples)
    for s in ds.samples:
        im = load_image(s.path)
        assert im.mode == "RGB"
    # 16-bit samples are rescaled, not clipped to white
    sixteen = load_image(root / "b" / "sixteen.png")
    assert np.asarray(sixteen)[0, 0].tolist() == [128, 128, 128]
    # transparent pixels land on white
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(encode(clear, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_load_image_errors_say_what_is_wrong() -> None:
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        load_image(b"hello world")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")
    jpeg = encode(rgb(32, 32), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        load_image(jpeg[:200])
    assert isinstance(info.value, InvalidArgument)


def test_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    two_class_folder(root / "train", per_class=3)
    two_class_folder(root / "Valid", per_class=1)
    write(root / "test" / "cat" / "t.png", encode(rgb(seed=99), "PNG"))

    ds = scan_dataset(root)

    assert ds.layout == "split-folders" and ds.has_explicit_split
    assert ds.classes == ["cat", "dog"]
    assert ds.counts() == {"cat": 5, "dog": 4}
    train, val = split_dataset(ds, 0.5, seed=1)
    assert len(train) == 6 and all(s.split == "train" for s in train)
    assert len(val) == 3 and all(s.split == "val" for s in val)


def test_csv_manifest_with_split_and_escaping_paths(tmp_path: Path) -> None:
    base = tmp_path / "ds"
    for i in range(3):
        write(base / "imgs" / f"c{i}.png", encode(rgb(seed=i), "PNG"))
        write(base / "imgs" / f"d{i}.jpg", encode(rgb(seed=50 + i), "JPEG"))
    write(tmp_path / "outside.png", encode(rgb(), "PNG"))
    rows = [
        "path,label,split",
        "imgs/c0.png,cat,train",
        "imgs/c1.png,cat,train",
        "imgs\\c2.png,cat,test",
        "imgs/d0.jpg,dog,train",
        "imgs/d1.jpg,dog,",
        "imgs/d2.jpg,dog,validation",
        "../outside.png,cat,train",
        f"{tmp_path / 'outside.png'},dog,train",
        "imgs/missing.png,dog,train",
        "imgs/c0.png,cat,holdout",
    ]
    manifest = write(base / "labels.csv", "\n".join(rows).encode())

    ds = scan_dataset(manifest)

    assert ds.layout == "manifest" and ds.root == manifest.resolve()
    assert ds.counts() == {"cat": 3, "dog": 3}
    reasons = [r for _, r in ds.skipped]
    assert len(ds.skipped) == 4
    assert any("escapes" in r for r in reasons)
    assert any("absolute path" in r for r in reasons)
    assert any("not found" in r for r in reasons)
    assert any("unknown split" in r for r in reasons)
    train, val = split_dataset(ds, 0.2, seed=0)
    assert sorted(s.path.name for s in val) == ["c2.png", "d2.jpg"]
    assert len(train) == 4  # rows with an empty split train
    # a folder whose only top-level CSV has the header is read through it
    assert scan_dataset(base).fingerprint == ds.fingerprint


def test_one_class_and_empty_datasets_fail_clearly(tmp_path: Path) -> None:
    one = tmp_path / "one"
    write(one / "cat" / "a.png", encode(rgb(), "PNG"))
    write(one / "cat" / "b.png", encode(rgb(seed=1), "PNG"))
    write(one / "dog" / "broken.png", b"garbage")
    with pytest.raises(FailedPrecondition, match=r"at least 2 classes, found 1 \(cat: 2 images\)"):
        scan_dataset(one)

    empty = tmp_path / "empty"
    write(empty / "cat" / "readme.txt", b"hi")
    (empty / "dog").mkdir()
    with pytest.raises(FailedPrecondition, match="no usable images") as info:
        scan_dataset(empty)
    assert "readme.txt" in info.value.message


def test_max_per_class_is_a_seeded_sample(tmp_path: Path) -> None:
    root = two_class_folder(tmp_path / "ds", per_class=6)
    write(root / "cat" / "0bad.png", b"garbage")  # replaced by another draw when drawn
    a = scan_dataset(root, max_per_class=3, seed=7)
    b = scan_dataset(root, max_per_class=3, seed=7)
    assert a.counts() == {"cat": 3, "dog": 3} and a.sampled
    assert [s.path for s in a.samples] == [s.path for s in b.samples]
    others = {
        tuple(s.path for s in scan_dataset(root, max_per_class=3, seed=k).samples) for k in range(5)
    }
    assert len(others) > 1


def test_threaded_decoding_of_larger_files_matches_sequential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ds"
    for i in range(20):  # random-noise PNGs of ~49 KB each: above the threading threshold
        write(root / "ab"[i % 2] / f"{i:02d}.png", encode(rgb(128, 128, seed=i), "PNG"))
    write(root / "a" / "zz-bad.png", b"garbage")
    threaded = scan_dataset(root)
    monkeypatch.setattr(scan_mod, "_THREADS_MIN_BYTES", 1 << 40)
    sequential = scan_dataset(root)
    assert threaded == sequential
    assert threaded.counts() == {"a": 10, "b": 10} and len(threaded.skipped) == 1


# ------------------------------------------------------------------ fingerprint


def test_fingerprint_stable_across_copies_and_sensitive_to_content(tmp_path: Path) -> None:
    root = two_class_folder(tmp_path / "ds")
    original = scan_dataset(root).fingerprint
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, copy)
    assert scan_dataset(copy).fingerprint == original

    write(copy / "dog" / "1.png", encode(rgb(seed=1234), "PNG"))
    assert scan_dataset(copy).fingerprint != original
    shutil.copytree(root, tmp_path / "renamed")
    (tmp_path / "renamed" / "dog").rename(tmp_path / "renamed" / "wolf")
    assert scan_dataset(tmp_path / "renamed").fingerprint != original


def ppm(w: int, h: int, v: int) -> bytes:
    """A binary PPM written byte by byte: no encoder, so the bytes never change."""
    pixel = bytes([v % 256, (v * 7) % 256, (v * 13) % 256])
    return f"P6\n{w} {h}\n255\n".encode() + pixel * (w * h)


def test_fingerprint_value_is_pinned(tmp_path: Path) -> None:
    # Recorded before samples carried their digest; stored jobs and models quote it.
    for rel, data in {
        "cat/a.ppm": ppm(3, 2, 1),
        "cat/b.ppm": ppm(2, 3, 2),
        "dog/c.ppm": ppm(4, 4, 3),
        "dog/sub/d.ppm": ppm(1, 1, 4),
    }.items():
        write(tmp_path / rel, data)
    ds = scan_dataset(tmp_path)
    assert ds.fingerprint == "82a2747360e291a0f4b7b807cffbcea600cc36d99fd9ee657d2a66f200c8c39a"


def test_samples_carry_their_files_sha256_and_the_size_extremes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root / "cat" / "wide.png", encode(rgb(40, 6, seed=1), "PNG"))
    write(root / "cat" / "same.png", encode(rgb(40, 6, seed=1), "PNG"))
    write(root / "dog" / "tall.jpg", encode(rgb(7, 50, seed=2), "JPEG"))
    write(root / "dog" / "mid.png", encode(rgb(20, 20, seed=3).convert("L"), "PNG"))
    write(root / "dog" / "bad.png", b"garbage")
    ds = scan_dataset(root)
    assert len(ds.samples) == 4
    for s in ds.samples:
        assert s.digest == hashlib.sha256(s.path.read_bytes()).hexdigest()
    digests = {s.path.name: s.digest for s in ds.samples}
    assert digests["wide.png"] == digests["same.png"] != digests["mid.png"]
    assert ds.min_size == (7, 6) and ds.max_size == (40, 50)
    sampled = scan_dataset(root, max_per_class=1, seed=0)
    assert all(s.digest == hashlib.sha256(s.path.read_bytes()).hexdigest() for s in sampled.samples)


# ------------------------------------------------------------------ splitting


def synthetic(sizes: dict[str, int]) -> ScannedDataset:
    classes = sorted(sizes)
    samples = [
        Sample(Path(f"/d/{name}/{i:03d}.png"), label, "")
        for label, name in enumerate(classes)
        for i in range(sizes[name])
    ]
    return ScannedDataset(Path("/d"), classes, samples, [], "", (1, 1), {})


def test_stratified_split_is_deterministic_and_stratified() -> None:
    ds = synthetic({"a": 10, "b": 5, "c": 2, "d": 1})
    train, val = split_dataset(ds, 0.2, seed=3)
    again = split_dataset(ds, 0.2, seed=3)
    assert (train, val) == again
    per_class = {name: sum(s.label == i for s in val) for i, name in enumerate(ds.classes)}
    assert per_class == {"a": 2, "b": 1, "c": 1, "d": 0}
    assert len(train) + len(val) == 18 and not set(train) & set(val)
    assert [s for s in ds.samples if s in set(train)] == train  # dataset order kept
    other = {tuple(split_dataset(ds, 0.2, seed=k)[1]) for k in range(6)}
    assert len(other) > 1
    assert split_dataset(ds, 0.0, seed=0) == (ds.samples, [])
    with pytest.raises(InvalidArgument):
        split_dataset(ds, 1.0, seed=0)


# ------------------------------------------------------------------ confinement


def test_uri_must_stay_inside_data_roots(tmp_path: Path) -> None:
    cfg = config_for(tmp_path)
    inside = two_class_folder(tmp_path / "root" / "ds")
    outside = two_class_folder(tmp_path / "outside")

    assert resolve_dataset(DatasetRef(uri=str(inside)), cfg) == inside.resolve()
    assert resolve_dataset(DatasetRef(uri="ds"), cfg) == inside.resolve()  # relative to a root

    for uri in (str(outside), "../outside", str(tmp_path / "root" / ".." / "outside")):
        with pytest.raises(InvalidArgument) as info:
            resolve_dataset(DatasetRef(uri=uri), cfg)
        assert field_of(info.value) == "dataset.uri"
        assert str(tmp_path / "root") in info.value.message

    (tmp_path / "root" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidArgument) as info:
        resolve_dataset(DatasetRef(uri=str(tmp_path / "root" / "link")), cfg)
    assert field_of(info.value) == "dataset.uri"

    with pytest.raises(NotFound):
        resolve_dataset(DatasetRef(uri="nope"), cfg)
    for ref in (DatasetRef(), DatasetRef(uri="ds", dataset_id="x")):
        with pytest.raises(InvalidArgument) as info:
            resolve_dataset(ref, cfg)
        assert field_of(info.value) == "dataset"
    with pytest.raises(InvalidArgument) as info:
        resolve_dataset(DatasetRef(dataset_id="../etc"), cfg)
    assert field_of(info.value) == "dataset.dataset_id"
    with pytest.raises(NotFound):
        resolve_dataset(DatasetRef(dataset_id="0123abcd"), cfg)


def test_symlinked_file_escaping_the_dataset_is_skipped(tmp_path: Path) -> None:
    root = two_class_folder(tmp_path / "ds")
    secret = write(tmp_path / "secret.png", encode(rgb(), "PNG"))
    (root / "cat" / "link.png").symlink_to(secret)
    ds = scan_dataset(root)
    assert ("cat/link.png", "symbolic link pointing outside the dataset") in ds.skipped
    assert ds.counts() == {"cat": 3, "dog": 3}


# ------------------------------------------------------------------ archives


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def folder_entries(prefix: str) -> dict[str, bytes]:
    return {
        f"{prefix}{name}/{i}.png": encode(rgb(seed=10 * c + i), "PNG")
        for c, name in enumerate(("cat", "dog"))
        for i in range(3)
    }


def test_archives_are_extracted_once_and_unwrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_for(tmp_path)
    reference = scan_dataset(two_class_folder(tmp_path / "plain"))
    entries = folder_entries("wrapped/") | {"__MACOSX/wrapped/._0.png": b"x", ".DS_Store": b"x"}
    zpath = make_zip(tmp_path / "root" / "ds.zip", entries)
    tpath = tmp_path / "root" / "ds.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for name, data in folder_entries("wrapped/").items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    for archive in (zpath, tpath):
        first = resolve_dataset(DatasetRef(uri=archive.name), cfg)
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert first == (cfg.cache_dir / "extracted" / sha / "wrapped").resolve()
        ds = scan_dataset(first)
        assert ds.counts() == {"cat": 3, "dog": 3}
        assert ds.fingerprint == reference.fingerprint

    def no_second_extraction(*args: object) -> None:
        raise AssertionError("extracted twice")

    monkeypatch.setattr(resolve_mod, "_extract_zip", no_second_extraction)
    monkeypatch.setattr(resolve_mod, "_extract_tar", no_second_extraction)
    monkeypatch.setattr(resolve_mod, "file_sha256", no_second_extraction)  # stat memo hit
    assert resolve_dataset(DatasetRef(uri="ds.zip"), cfg).name == "wrapped"
    assert resolve_dataset(DatasetRef(uri="ds.tar.gz"), cfg).name == "wrapped"


def test_unsafe_archives_are_rejected(tmp_path: Path) -> None:
    cfg = config_for(tmp_path)
    root = tmp_path / "root"
    make_zip(root / "slip.zip", folder_entries("") | {"../evil.png": b"x"})
    make_zip(root / "abs.zip", folder_entries("") | {"/tmp/evil.png": b"x"})
    with tarfile.open(root / "link.tar", "w") as tf:
        info = tarfile.TarInfo("ds/cat/escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../../../outside"
        tf.addfile(info)
    with tarfile.open(root / "dotdot.tgz", "w:gz") as tf:
        info = tarfile.TarInfo("../evil.png")
        tf.addfile(info, io.BytesIO(b""))
    write(root / "junk.zip", b"this is not a zip")

    for name in ("slip.zip", "abs.zip", "link.tar", "dotdot.tgz", "junk.zip"):
        with pytest.raises(InvalidArgument) as info:
            resolve_dataset(DatasetRef(uri=name), cfg)
        assert field_of(info.value) == "dataset.uri", name
    assert not (tmp_path / "evil.png").exists() and not (root / "evil.png").exists()
    extracted = cfg.cache_dir / "extracted"
    assert [p.name for p in extracted.iterdir() if p.name != "by-stat"] == []


# ------------------------------------------------------------------ uploads


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def chunked(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_save_upload_then_resolve_by_id(tmp_path: Path) -> None:
    cfg = config_for(tmp_path)
    data = zip_bytes(folder_entries("mine/") | {"mine/dog/bad.png": b"garbage"})
    info = save_upload(cfg, "../My Data.zip", chunked(data), hashlib.sha256(data).hexdigest())

    assert (info.size_bytes, info.images, info.classes, info.skipped_files) == (len(data), 6, 2, 1)
    folder = resolve_dataset(DatasetRef(dataset_id=info.dataset_id), cfg)
    assert folder.name == "mine"
    assert scan_dataset(folder).counts() == {"cat": 3, "dog": 3}
    stored = list((cfg.uploads_dir / info.dataset_id).iterdir())
    # Its own extracted copy, inside its folder (deleting the upload frees all of it).
    assert sorted(p.name for p in stored) == ["My_Data.zip", "extracted", "upload.json"]
    assert folder.is_relative_to((cfg.uploads_dir / info.dataset_id / "extracted").resolve())
    assert info.extracted_bytes > 0


def test_save_upload_rejections_leave_nothing_behind(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, max_upload_bytes=2000)
    data = zip_bytes(folder_entries(""))
    assert len(data) > 2000

    with pytest.raises(ResourceExhausted, match="2000"):
        save_upload(cfg, "big.zip", chunked(data))
    small = zip_bytes(
        {"cat/a.png": encode(rgb(4, 4), "PNG"), "dog/b.png": encode(rgb(4, 4), "PNG")}
    )
    with pytest.raises(InvalidArgument) as info:
        save_upload(cfg, "ds.zip", chunked(small), "0" * 64)
    assert field_of(info.value) == "sha256"
    with pytest.raises(InvalidArgument) as info:
        save_upload(cfg, "ds.rar", chunked(small))
    assert field_of(info.value) == "filename"
    with pytest.raises(InvalidArgument) as info:
        save_upload(cfg, "ds.zip", [zip_bytes({"../x.png": b"x"})])
    assert field_of(info.value) == "chunk"
    one_class = zip_bytes({"cat/a.png": encode(rgb(4, 4), "PNG")})
    with pytest.raises(FailedPrecondition):
        save_upload(cfg, "ds.zip", [one_class])

    assert list(cfg.uploads_dir.iterdir()) == []
    assert [p.name for p in (cfg.cache_dir / "extracted").glob("*")] == []
    assert save_upload(cfg, "ok.zip", chunked(small)).images == 2


# ------------------------------------------------------------------ transforms and dataset

SPEC = PretrainedSpec(
    name="test",
    architecture="test:none",
    weights=WeightSource(),
    input_size=224,
    mean=(0.5, 0.25, 0.125),
    std=(0.5, 0.25, 0.5),
    interpolation="bicubic",
    crop_pct=0.875,
    classifier="head",
    num_features=8,
    stages=(),
)


def test_eval_transform_shape_and_normalisation() -> None:
    t = eval_transform(SPEC, 16)
    flat = Image.new("RGB", (40, 30), (255, 128, 0))
    x = t(flat)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = [(1.0 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, (0.0 - 0.125) / 0.5]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)
    # resize the shorter side to round(16 / 0.875) = 18, then centre-crop 16
    ramp = Image.fromarray(np.tile(np.arange(36, dtype=np.uint8) * 7, (18, 1)))
    out = t(ramp.convert("RGB"))
    assert out.shape == (3, 16, 16)
    assert torch.equal(train_transform(SPEC, 16, augment=False)(flat), x)
    torch.manual_seed(0)
    aug = train_transform(SPEC, 16, augment=True)(rgb(40, 30))
    assert aug.shape == (3, 16, 16) and aug.dtype == torch.float32


def test_image_dataset_returns_tensors_and_caches(tmp_path: Path) -> None:
    root = two_class_folder(tmp_path / "ds", per_class=2)
    ds = scan_dataset(root)
    data = ImageDataset(ds.samples, eval_transform(SPEC, 8))
    x, y = data[3]
    assert x.shape == (3, 8, 8) and y == 1 and len(data) == 4
    (root / "dog" / "1.png").unlink()
    assert data[3][1] == 1  # served from memory
    uncached = ImageDataset(ds.samples, eval_transform(SPEC, 8), max_cached_pixels=0)
    with pytest.raises(FileNotFoundError):
        uncached[3]


# ------------------------------------------------------------------ demo data


# `make test` installs Debian's dataset-fashion-mnist first; no skip: a missing package fails.
def test_fashion_mnist_reader_and_folder(tmp_path: Path) -> None:
    train_x, train_y = read_fashion_mnist("train")
    test_x, test_y = read_fashion_mnist("test")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and len(test_y) == 10000
    assert set(np.unique(train_y)) == set(range(10)) == set(np.unique(test_y))
    assert np.bincount(test_y).tolist() == [1000] * 10

    out = write_fashion_mnist_folder(tmp_path / "fm", 3, split="test", classes=[0, 9, 5])
    ds = scan_dataset(out)
    assert ds.counts() == {"ankle-boot": 3, "sandal": 3, "t-shirt": 3}
    assert ds.median_size == (28, 28) and ds.mode_counts == {"L": 9}
    more = write_fashion_mnist_folder(tmp_path / "fm2", 3, split="test", classes=[0], offset=3)
    first = {p.name for p in (out / "t-shirt").iterdir()}
    assert first.isdisjoint(p.name for p in (more / "t-shirt").iterdir())
    assert len(FASHION_MNIST_CLASSES) == 10


def test_digits_and_photos_folders(tmp_path: Path) -> None:
    digits = scan_dataset(write_digits_folder(tmp_path / "digits", per_class=2))
    assert digits.counts() == {str(d): 2 for d in range(10)} and digits.median_size == (32, 32)
    photos = scan_dataset(write_photos_folder(tmp_path / "photos", per_class=2, size=24))
    assert photos.classes == ["astronaut", "cat", "china", "coffee", "flower", "rocket"]
    assert set(photos.counts().values()) == {2} and photos.mode_counts == {"RGB": 12}
    again = scan_dataset(write_photos_folder(tmp_path / "again", per_class=2, size=24))
    assert again.fingerprint == photos.fingerprint  # seeded

"""Hostile files: archives, images and dataset folders crafted to escape, to hang, or to
exhaust memory and disk (docs/SECURITY.md § Hostile files). Every input is built here, tiny
on disk; each case asserts the exact domain error and that nothing was written outside the
data folder (a snapshot of the whole test folder, before and after)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tarfile
import time
import tracemalloc
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.backbones.spec import PretrainedSpec, WeightSource
from graft.config import Config
from graft.data import ImageDecodeError, load_image, resolve_dataset, save_upload, scan_dataset
from graft.data.archive_writer import ExtractLimits
from graft.data.images import check_size, decode, to_rgb
from graft.domain import DatasetRef
from graft.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, quote
from graft.predict.preprocess import Preprocess, check_request_pixels

# Images between the budget and twice it make Pillow warn before check_size refuses them.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

# --------------------------------------------------------------------------- crafting


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (12, 10), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def good_entries(prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}{label}/{i}.png": image_bytes(seed=10 * c + i)
        for c, label in enumerate(("cat", "dog"))
        for i in range(3)
    }


def zip_of(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_with_info(info: zipfile.ZipInfo, data: bytes, extra: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in extra.items():
            zf.writestr(name, content)
        zf.writestr(info, data)
    return buf.getvalue()


def patch_zip(data: bytes, local_offset: int, central_offset: int, value: int) -> bytes:
    """Set a 2-byte field of every entry, in its local header and its central record."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = out.find(signature)
        while at >= 0:
            struct.pack_into("<H", out, at + offset, value)
            at = out.find(signature, at + 4)
    return bytes(out)


TarMember = tuple[tarfile.TarInfo, bytes | None]


def member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> TarMember:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def tar_of(members: list[TarMember], mode: str = "w", **kw: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, **kw) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def good_members(prefix: str = "") -> list[TarMember]:
    return [member(name, data=data) for name, data in good_entries(prefix).items()]


def cve_2025_4517_tar(outside: Path) -> bytes:
    """The CVE-2025-4517 pattern: folders with names near NAME_MAX and one-letter symlinks
    to them, chained deeper than PATH_MAX so that os.path.realpath (non-strict) gives up
    resolving; a long link at the bottom climbs back out, an `escape` link goes through it
    to `outside`, a hard link reads a file there and a regular entry writes into it."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    members: list[TarMember] = []
    path = ""
    for step in steps:
        members.append(member(os.path.join(path, comp), tarfile.DIRTYPE))
        members.append(member(os.path.join(path, step), tarfile.SYMTYPE, link=comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    members.append(member(linkpath, tarfile.SYMTYPE, link="../" * len(steps)))
    members.append(
        member("escape", tarfile.SYMTYPE, link=f"{linkpath}/{'../' * 8}{outside.as_posix()}")
    )
    members.append(member("ds/cat/read.png", tarfile.LNKTYPE, link="escape/secret.png"))
    members.append(member("escape/pwned", data=b"written outside"))
    return tar_of(members)


def png(width: int, height: int, depth: int = 8, color: int = 0, rows: int = -1) -> bytes:
    """A PNG declaring width x height (grey, or `color` type), its rows all zeros; with
    rows=0 the pixel data is missing (a header bomb: only the header is real)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\x00" * (1 + width * channels * depth // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height if rows < 0 else rows)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(image_bytes("JPEG", (8, 8)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """A test folder: the data dir, one data root, and an `outside` folder with a secret
    image that no archive or link may read or write."""

    top: Path
    config: Config
    root: Path
    outside: Path

    def snapshot(self) -> dict[str, str]:
        """Every path under the test folder with its content hash or kind (the archive
        hash memo, a cache of (path, size, mtime) -> sha256, is left out)."""
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                rel = path.relative_to(self.top).as_posix()
                if "by-stat" in rel.split("/"):
                    continue
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    out[rel] = "-> " + os.readlink(path)
                else:
                    out[rel] = stat.filemode(st.st_mode)[0]
        return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    config = Config(data_dir=tmp_path / "data", data_roots=(tmp_path / "root",))
    for d in (config.uploads_dir, config.cache_dir / "extracted" / "by-stat", tmp_path / "root"):
        d.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(image_bytes(seed=99))
    return World(tmp_path, config, tmp_path / "root", outside)


def refused_upload(world: World, filename: str, data: bytes) -> InvalidArgument:
    """Upload `data`; it must be refused as INVALID_ARGUMENT on `chunk` with nothing left
    behind anywhere (no upload, no extracted copy, nothing outside)."""
    before = world.snapshot()
    with pytest.raises(InvalidArgument) as info:
        save_upload(world.config, filename, [data])
    assert [v.field for v in info.value.violations] == ["chunk"], info.value.message
    assert world.snapshot() == before
    assert len(info.value.message) < 400  # names are quoted short
    return info.value


# --------------------------------------------------------------------------- archives: escapes


def test_zip_slip_absolute_and_drive_names_are_refused(world: World) -> None:
    evil = world.outside / "evil.png"
    for name, expected in (
        ("../evil.png", "outside the archive"),
        ("cat/../../../evil.png", "outside the archive"),
        ("..\\..\\evil.png", "outside the archive"),
        (evil.as_posix(), "absolute path"),
        ("C:\\evil.png", "absolute path"),
    ):
        error = refused_upload(world, "slip.zip", zip_of(good_entries() | {name: b"x"}))
        assert expected in error.message, (name, error.message)
    assert not evil.exists()


def test_tar_absolute_and_dotdot_names_are_refused(world: World) -> None:
    for name in ("../evil.png", (world.outside / "evil.png").as_posix(), "a/../../evil.png"):
        refused_upload(world, "slip.tar", tar_of([*good_members(), member(name, data=b"x")]))


def test_zip_symlink_and_special_entries_are_refused(world: World) -> None:
    for mode, what in (
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFIFO | 0o644, "FIFO"),
        (stat.S_IFCHR | 0o644, "character device"),
        (stat.S_IFSOCK | 0o644, "socket"),
    ):
        info = zipfile.ZipInfo("cat/link.png")
        info.create_system = 3
        info.external_attr = mode << 16
        data = zip_with_info(
            info, (world.outside / "secret.png").as_posix().encode(), good_entries()
        )
        error = refused_upload(world, "links.zip", data)
        assert what in error.message


@pytest.mark.parametrize(
    ("kind", "link", "what"),
    [
        (tarfile.SYMTYPE, "../../../outside/secret.png", "symbolic link"),
        (tarfile.SYMTYPE, "cat/0.png", "symbolic link"),  # even one that stays inside
        (tarfile.LNKTYPE, "OUTSIDE", "hard link"),
        (tarfile.LNKTYPE, "cat/0.png", "hard link"),
        (tarfile.CHRTYPE, "", "device"),
        (tarfile.BLKTYPE, "", "device"),
        (tarfile.FIFOTYPE, "", "FIFO"),
    ],
)
def test_tar_link_device_and_fifo_members_are_refused(
    world: World, kind: bytes, link: str, what: str
) -> None:
    link = link.replace("OUTSIDE", (world.outside / "secret.png").as_posix())
    data = tar_of([*good_members(), member("cat/x.png", kind, link=link)])
    assert what in refused_upload(world, "special.tar", data).message


def test_cve_2025_4517_symlink_chain_neither_writes_nor_reads_outside(world: World) -> None:
    data = cve_2025_4517_tar(world.outside)
    error = refused_upload(world, "chain.tar", data)
    assert "symbolic link" in error.message
    assert not (world.outside / "pwned").exists()
    # The same archive from a data root: the same answer on the request's own field.
    (world.root / "chain.tar").write_bytes(data)
    before = world.snapshot()
    with pytest.raises(InvalidArgument) as info:
        resolve_dataset(DatasetRef(uri="chain.tar"), world.config)
    assert [v.field for v in info.value.violations] == ["dataset.uri"]
    assert world.snapshot() == before


def test_entries_that_collide_are_refused(world: World) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        buf = io.BytesIO(zip_of(good_entries()))
        with zipfile.ZipFile(buf, "a") as zf:
            zf.writestr("cat/0.png", b"second")
    assert "appears twice" in refused_upload(world, "twice.zip", buf.getvalue()).message
    # a file where a later entry needs a folder
    data = tar_of([member("cat", data=b"x"), *good_members()])
    assert "conflicts" in refused_upload(world, "clash.tar", data).message


def test_long_deep_and_unicode_names(world: World) -> None:
    for name, expected in (
        ("cat/" + "n" * 300 + ".png", "longer than"),
        ("/".join(["p" * 60] * 20) + "/x.png", "longer than"),
        ("/".join(["d"] * 70) + "/x.png", "deeper than"),
        ("cat/" + "é" * 130 + ".png", "longer than"),  # 260 bytes in UTF-8
    ):
        assert (
            expected
            in refused_upload(world, "long.zip", zip_of(good_entries() | {name: b"x"})).message
        )
    assert (
        "longer than"
        in refused_upload(
            world, "long.tar", tar_of([*good_members(), member("c/" + "n" * 300, data=b"x")])
        ).message
    )
    # Unicode names that fit are fine: classes keep their names.
    entries = {f"猫/{i}.png": image_bytes(seed=i) for i in range(2)}
    entries |= {f"чашка/{i}.png": image_bytes(seed=9 + i) for i in range(2)}
    info = save_upload(world.config, "unicode.zip", [zip_of(entries)])
    folder = resolve_dataset(DatasetRef(dataset_id=info.dataset_id), world.config)
    assert sorted(scan_dataset(folder).classes) == sorted(["猫", "чашка"])
    assert folder.is_relative_to(world.config.data_dir.resolve())


def test_nested_archive_is_kept_as_a_file_not_extracted(world: World) -> None:
    inner = zip_of({"../../escaped.png": b"x", "cat/9.png": image_bytes(seed=5)})
    info = save_upload(
        world.config, "nested.zip", [zip_of(good_entries() | {"cat/inner.zip": inner})]
    )
    assert (info.images, info.skipped_files) == (6, 1)
    folder = resolve_dataset(DatasetRef(dataset_id=info.dataset_id), world.config)
    assert (folder / "cat" / "inner.zip").read_bytes() == inner
    assert not list(world.top.rglob("escaped.png")) and not (folder / "cat" / "9.png").exists()


# --------------------------------------------------------------------------- archives: bombs


def test_expansion_limit_is_a_ratio_and_a_total() -> None:
    defaults = Config()
    # the finding: a 205 kB zip kept 210 MB
    assert ExtractLimits.for_archive(205_000, defaults).max_bytes == 20 * 205_000
    assert ExtractLimits.for_archive(100, defaults).max_bytes == 1 << 20  # tiny archives
    huge = ExtractLimits.for_archive(2 << 30, defaults)
    assert huge.max_bytes == defaults.max_extract_bytes == 8 << 30


def test_zip_bomb_is_refused_at_the_default_ratio(world: World) -> None:
    bomb = zip_of({"cat/0.png": image_bytes(), "dog/zeros.png": bytes(20 << 20)})
    assert len(bomb) < 40_000  # 20 MiB expands from this
    assert "more than" in refused_upload(world, "bomb.zip", bomb).message


def test_zip_with_lying_sizes_is_refused(world: World) -> None:
    data = zip_of({"cat/0.png": image_bytes(), "dog/a.png": bytes(3 << 20)})
    # declare 100 bytes for the 3 MiB entry (uncompressed size: local +22, central +24)
    out = bytearray(data)
    at = out.find(b"PK\x03\x04", 1)
    struct.pack_into("<I", out, at + 22, 100)
    at = out.find(b"PK\x01\x02", out.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", out, at + 24, 100)
    assert "corrupt" in refused_upload(world, "liar.zip", bytes(out)).message


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_tar_bombs_are_refused_while_reading(world: World, mode: str) -> None:
    bomb = tar_of([*good_members(), member("dog/zeros.png", data=bytes(20 << 20))], mode)
    assert len(bomb) < 60_000
    assert "more than" in refused_upload(world, "bomb.tar.gz", bomb).message


def test_many_small_entries_count_against_the_budget(world: World) -> None:
    """An inode bomb: 4,000 empty files in a few kB of tar.gz (each counts 512 bytes)."""
    data = tar_of([*good_members(), *(member(f"cat/e{i}", data=b"") for i in range(4000))], "w:gz")
    assert "more than" in refused_upload(world, "inodes.tgz", data).message


def test_entry_count_limit_is_checked_before_parsing(tmp_path: Path) -> None:
    world_config = Config(data_dir=tmp_path / "data", max_archive_members=5)
    data = zip_of(good_entries())  # 6 entries
    with pytest.raises(InvalidArgument, match="max_archive_members"):
        save_upload(world_config, "many.zip", [data])


def test_pax_header_bomb_is_refused(world: World) -> None:
    """A pax header of 4 MB (compressing to a few kB) that tarfile would hold in memory."""
    info = tarfile.TarInfo("cat/0.png")
    png_data = image_bytes()
    info.size = len(png_data)
    info.pax_headers = {"comment": "x" * (4 << 20)}
    data = tar_of([(info, png_data), *good_members()], "w:gz", format=tarfile.PAX_FORMAT)
    assert "header" in refused_upload(world, "pax.tgz", data).message


# --------------------------------------------------------------------------- archives: corrupt


def test_encrypted_unknown_method_and_corrupt_zips_are_invalid_argument(world: World) -> None:
    plain = zip_of({"cat/0.png": image_bytes(), "dog/0.png": image_bytes(seed=1)})
    encrypted = patch_zip(plain, 6, 8, 0x1)  # general purpose flag bit 0
    assert "encrypted" in refused_upload(world, "enc.zip", encrypted).message
    unknown = patch_zip(plain, 8, 10, 99)  # 99: WinZip AES
    assert "compression method 99" in refused_upload(world, "aes.zip", unknown).message

    text = zip_of({"cat/0.png": bytes(range(256)) * 64, "dog/0.png": image_bytes()})
    corrupt = bytearray(text)
    start = 30 + len("cat/0.png")
    corrupt[start + 4 : start + 40] = b"\xff" * 36  # inside the deflate stream
    assert "corrupt" in refused_upload(world, "deflate.zip", bytes(corrupt)).message
    refused_upload(world, "junk.zip", b"PK\x03\x04 not really a zip")
    refused_upload(world, "zip-as.tar", plain)


def test_truncated_gzip_and_tar_are_invalid_argument(world: World) -> None:
    data = tar_of(good_members(), "w:gz")
    assert (
        "corrupt or truncated" in refused_upload(world, "cut.tgz", data[: len(data) // 2]).message
    )
    plain = tar_of(good_members())
    refused_upload(world, "cut.tar", plain[:1500])
    refused_upload(world, "empty-ish.tar", b"\x1f\x8b" + b"\x00" * 40)


# --------------------------------------------------------------------------- images


def test_header_bombs_are_refused_from_the_header_in_milliseconds() -> None:
    bomb = jpeg_declaring(13000, 13000)
    assert len(bomb) < 700
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="max_image_pixels") as info:
        decode(bomb)
    assert "169000000 pixels" in info.value.message
    assert time.perf_counter() - started < 0.25
    for data in (png(100_000, 100_000, rows=0), png(60_000, 1_000, depth=16, color=6, rows=0)):
        with pytest.raises(ImageDecodeError, match="max_image_pixels"):
            decode(data)


def test_sixteen_bit_9000_square_png_is_refused_and_wide_conversion_is_bounded() -> None:
    huge = png(9000, 9000, depth=16)
    assert len(huge) < 200_000
    with pytest.raises(ImageDecodeError, match="9000x9000"):
        decode(huge)
    # Within budget, converting 16-bit samples takes no float64 copy of the image.
    side = 2000
    image = Image.fromarray(np.full((side, side), 40000, dtype=np.uint16))
    tracemalloc.start()
    try:
        rgb = to_rgb(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.asarray(rgb)[0, 0].tolist() == [156, 156, 156]  # 40000 / 257, rounded
    assert peak < 10 * side * side, peak  # whole float64 copies took 18+ bytes a pixel


def test_extreme_aspect_ratio_fails_alone_in_predict() -> None:
    wide = png(5_000_000, 2)
    assert len(wide) < 20_000
    pre = Preprocess(SPEC, 32)
    with pytest.raises(ImageDecodeError, match="longer"):
        pre.decode(wide)
    assert pre.decode(image_bytes("JPEG", (40, 30))).shape == (32, 32, 3)
    with pytest.raises(ImageDecodeError):
        check_size((0, 10))


def test_truncated_mislabelled_and_foreign_images() -> None:
    pre = Preprocess(SPEC, 32)
    jpeg = image_bytes("JPEG", (32, 32))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    for data, match in (
        (jpeg[: len(jpeg) // 2], "truncated"),
        (image_bytes()[:60], "truncated"),
        (b"garbage, not an image", "not a recognised image format"),
        (eps, "not a recognised image format"),  # Pillow would hand EPS to Ghostscript
        (b"", "empty"),
    ):
        with pytest.raises(ImageDecodeError, match=match):
            pre.decode(data)
    assert pre.decode(image_bytes("PNG")).shape == (32, 32, 3)  # content decides, not a name


def test_request_pixel_budget_counts_headers_only() -> None:
    ten_mp = jpeg_declaring(5000, 2000)
    small = image_bytes("PNG", (100, 100))
    assert check_request_pixels([small, b"junk", jpeg_declaring(13000, 13000)], 10**6) == 10_000
    assert check_request_pixels([ten_mp, ten_mp], 25_000_000) == 20_000_000
    started = time.perf_counter()
    with pytest.raises(ResourceExhausted, match="max_predict_pixels"):
        check_request_pixels([ten_mp] * 3, 25_000_000)
    assert time.perf_counter() - started < 0.25


# --------------------------------------------------------------------------- dataset folders


def folder_dataset(world: World, name: str = "ds") -> Path:
    root = world.root / name
    for entry, data in good_entries().items():
        (root / entry).parent.mkdir(parents=True, exist_ok=True)
        (root / entry).write_bytes(data)
    return root


@pytest.mark.timeout(20)
def test_fifos_and_devices_in_a_dataset_are_skipped_unopened(world: World) -> None:
    root = folder_dataset(world)
    os.mkfifo(root / "cat" / "pipe.png")
    os.mkfifo(root / "dog" / "pipe")  # no suffix: still never opened
    os.mkfifo(root / "labels.csv")  # a FIFO where a manifest would be
    (root / "cat" / "dev.png").symlink_to("/dev/zero")  # a device, through a link
    (root / "dog" / "to-pipe.png").symlink_to("pipe")  # a FIFO, through a link inside
    ds = scan_dataset(root)
    reasons = dict(ds.skipped)
    assert reasons["cat/pipe.png"] == "FIFO (named pipe), not opened"
    assert reasons["dog/pipe"] == "FIFO (named pipe), not opened"
    assert reasons["cat/dev.png"] == "symbolic link pointing outside the dataset"
    assert reasons["dog/to-pipe.png"] == "symbolic link to a FIFO (named pipe), not opened"
    assert ds.counts() == {"cat": 3, "dog": 3} and ds.layout == "folders"


@pytest.mark.timeout(20)
def test_fifo_as_dataset_uri_is_invalid_argument(world: World) -> None:
    os.mkfifo(world.root / "data.csv")
    with pytest.raises(InvalidArgument, match="FIFO"):
        resolve_dataset(DatasetRef(uri="data.csv"), world.config)
    with pytest.raises(ImageDecodeError, match="FIFO"):
        load_image(world.root / "data.csv")


@pytest.mark.timeout(20)
def test_symlink_loops_and_links_out_of_a_dataset(world: World) -> None:
    root = folder_dataset(world)
    (root / "cat" / "a.png").symlink_to("b.png")
    (root / "cat" / "b.png").symlink_to("a.png")
    (root / "loop").symlink_to("loop")  # a class folder that is a loop
    (root / "dog" / "secret.png").symlink_to(world.outside / "secret.png")
    (root / "dog" / "out").symlink_to(world.outside, target_is_directory=True)
    before = world.snapshot()
    ds = scan_dataset(root)
    reasons = dict(ds.skipped)
    assert reasons["cat/a.png"] == reasons["cat/b.png"] == "symbolic link loop"
    assert reasons["loop"] == "symbolic link: symbolic link loop"
    assert reasons["dog/secret.png"] == "symbolic link pointing outside the dataset"
    assert reasons["dog/out"] == "symbolic link to a folder, not followed"
    assert ds.counts() == {"cat": 3, "dog": 3}
    assert world.snapshot() == before


def test_manifest_rows_cannot_reach_outside_or_break_the_scan(world: World) -> None:
    root = folder_dataset(world)
    (root / "cat" / "loop.png").symlink_to("loop.png")
    (root / "cat" / "out.png").symlink_to(world.outside / "secret.png")
    rows = [
        "path,label",
        *(f"{label}/{i}.png,{label}" for label in ("cat", "dog") for i in range(3)),
        "cat/loop.png,cat",
        "cat/out.png,cat",
        "cat/nul\0.png,cat",
        "cat/" + "n" * 300 + ".png,cat",
        "../outside/secret.png,cat",
    ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = scan_dataset(root)
    assert ds.layout == "manifest" and ds.counts() == {"cat": 3, "dog": 3}
    reasons = dict(ds.skipped)
    assert reasons["cat/loop.png"] == "symbolic link loop"
    assert "escapes" in reasons["manifest.csv:9"]  # cat/out.png, a link to outside
    assert reasons["manifest.csv:10"] == "path has a NUL byte"
    assert reasons["cat/" + "n" * 300 + ".png"] == "path or name too long"
    assert "escapes" in reasons["manifest.csv:12"]


def test_header_bombs_and_bad_images_in_a_dataset_are_skipped(world: World) -> None:
    root = folder_dataset(world)
    (root / "cat" / "bomb.jpg").write_bytes(jpeg_declaring(13000, 13000))
    (root / "cat" / "wide.png").write_bytes(png(5_000_000, 2))
    (root / "dog" / "png-named.jpg").write_bytes(image_bytes("PNG", seed=7))
    (root / "dog" / "garbage.png").write_bytes(b"\x89PNG but not really")
    (root / "dog" / "cut.jpg").write_bytes(image_bytes("JPEG", (32, 32))[:300])
    started = time.perf_counter()
    ds = scan_dataset(root)
    assert time.perf_counter() - started < 5
    reasons = dict(ds.skipped)
    assert "max_image_pixels" in reasons["cat/bomb.jpg"] and "longer" in reasons["cat/wide.png"]
    assert set(reasons) == {"cat/bomb.jpg", "cat/wide.png", "dog/garbage.png", "dog/cut.jpg"}
    assert ds.counts() == {"cat": 3, "dog": 4}  # a PNG named .jpg is a PNG: decoded by content
    with pytest.raises(FailedPrecondition, match="max_image_pixels"):
        scan_dataset(root, max_pixels=100)  # the budget is the caller's (Config)


@pytest.mark.parametrize(
    ("uri", "error", "text"),
    [
        ("ds\0/../../etc", InvalidArgument, "NUL"),
        ("x" * 300, InvalidArgument, "too long"),
        ("x" * 5000, InvalidArgument, "more than 1024"),
        ("sub/" + "y" * 300 + "/z", InvalidArgument, "too long"),
        ("loop", InvalidArgument, "symbolic link loop"),
        ("dangling", NotFound, "does not exist"),
    ],
)
def test_bad_dataset_uris_get_specific_errors(
    world: World, uri: str, error: type[Exception], text: str
) -> None:
    (world.root / "loop").symlink_to("loop")
    (world.root / "dangling").symlink_to("nowhere")
    (world.root / "sub").mkdir()
    with pytest.raises(error, match=text) as info:
        resolve_dataset(DatasetRef(uri=uri), world.config)
    assert len(str(info.value)) < 300  # the input is quoted short


def test_upload_names_are_bounded(world: World) -> None:
    before = world.snapshot()
    for name in ("x" * 100_000 + ".zip", "evil\0.rar"):
        with pytest.raises(InvalidArgument) as info:
            save_upload(world.config, name, [zip_of(good_entries())])
        assert [v.field for v in info.value.violations] == ["filename"]
        assert len(info.value.message) < 200
    assert world.snapshot() == before


def test_quote_keeps_messages_short() -> None:
    assert quote("abc") == "'abc'"
    long = quote("z" * 10_000)
    assert long.startswith("'" + "z" * 80 + "'…") and "(10000 characters)" in long
    assert len(long) < 120


SPEC = PretrainedSpec(
    name="test",
    architecture="test:none",
    weights=WeightSource(),
    input_size=224,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    interpolation="bilinear",
    crop_pct=0.875,
    classifier="head",
    num_features=8,
    stages=(),
)


def test_class_counts_at_both_ends_and_odd_labels(tmp_path: Path) -> None:
    """1 class and 10,001 classes are FAILED_PRECONDITION with what was found (the second
    from the listing alone, before any image is decoded); unicode and 255-byte class names
    are labels like any other."""
    png = image_bytes(size=(6, 5))
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for i in range(3):
        (one / "only" / f"{i}.png").write_bytes(png)
    with pytest.raises(FailedPrecondition, match="at least 2 classes"):
        scan_dataset(one)

    many = tmp_path / "many"
    for i in range(10_001):
        (many / f"c{i}").mkdir(parents=True)
        (many / f"c{i}" / "x.png").write_bytes(png)
    started = time.perf_counter()
    with pytest.raises(FailedPrecondition, match="10001 classes, more than the 1000"):
        scan_dataset(many)
    assert time.perf_counter() - started < 30  # listed, not decoded (10,001 images)

    odd = tmp_path / "odd"
    names = ["猫", "ü" * 127, "a" * 255, "spaces and 'quotes'"]  # 255 bytes each at most
    for name in names:
        (odd / name).mkdir(parents=True)
        for i in range(2):
            (odd / name / f"{i}.png").write_bytes(png)
    assert sorted(scan_dataset(odd).classes) == sorted(names)

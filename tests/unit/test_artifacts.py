"""Shared artifacts (docs/SCALING.md § Shared artifacts): where they live
(`Config.artifacts_dir`, `--artifacts-dir`, `$GRAFT_ARTIFACTS_DIR`), atomic writes with their
sha256 recorded (graft.artifacts), and the check on read of checkpoints, feature caches,
upload archives and imported weights. The registry's own checks are in test_registry.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft import artifacts, cli
from graft.artifacts import (
    CorruptArtifact,
    read_verified,
    recorded_digests,
    sidecar,
    verify_file,
    write_artifact,
)
from graft.backbones.weights import load_weights_file
from graft.config import Config, env_defaults
from graft.data import UploadReceiver, check_upload, resolve_dataset
from graft.domain import DatasetRef, TrainingPlan
from graft.errors import FailedPrecondition, error_from_dict, error_to_dict
from graft.training import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from graft.training.features import FeatureSet, load_features, save_features
from graft.training.setup import usable_checkpoint
from tests.unit.test_cli import fake_module

FOLDERS = ("registry", "uploads", "cache", "checkpoints", "weights")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_a_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- where they live ----------------------------------------------------------------------


def test_artifacts_default_to_the_data_dir_and_move_together(tmp_path: Path) -> None:
    embedded = Config(data_dir=tmp_path / "data")
    assert embedded.artifacts_root == tmp_path / "data"
    folders = (
        embedded.registry_dir,
        embedded.uploads_dir,
        embedded.cache_dir,
        embedded.checkpoints_dir,
        embedded.weights_dir,
    )
    assert folders == tuple(tmp_path / "data" / name for name in FOLDERS)  # as before

    shared = Config(data_dir=tmp_path / "data", artifacts_dir=tmp_path / "shared")
    folders = (
        shared.registry_dir,
        shared.uploads_dir,
        shared.cache_dir,
        shared.checkpoints_dir,
        shared.weights_dir,
    )
    assert folders == tuple(tmp_path / "shared" / name for name in FOLDERS)
    assert shared.store_path == tmp_path / "data" / "graft.sqlite3"  # per process, not shared
    for config in (embedded, shared):  # what `graft serve` hands its workers
        assert Config.from_dict(json.loads(config.to_json())) == config
    assert env_defaults({"GRAFT_ARTIFACTS_DIR": "/mnt/graft"}) == {
        "artifacts_dir": Path("/mnt/graft")
    }
    assert env_defaults({"GRAFT_ARTIFACTS_DIR": ""}) == {}


def test_serve_worker_and_import_take_the_artifacts_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Config] = []
    imported: list[Path] = []

    def import_weights(name: str, file: Path, weights_dir: Path) -> Path:
        imported.append(weights_dir)
        return weights_dir / file.name

    fake_module(monkeypatch, "graft.server", run_server=lambda c: seen.append(c) or 0)
    fake_module(monkeypatch, "graft.worker", run_worker=lambda c, _id: seen.append(c) or 0)
    fake_module(monkeypatch, "graft.backbones", import_weights=import_weights)
    shared = tmp_path / "shared"
    assert cli.main(["serve", "--no-worker", "--artifacts-dir", str(shared)]) == 0
    argv = ["worker", "--data-dir", str(tmp_path / "w"), "--artifacts-dir", str(shared)]
    assert cli.main(argv) == 0
    argv = ["backbones", "import", "resnet18", "w.pth", "--artifacts-dir", str(shared)]
    assert cli.main(argv) == 0
    assert [c.artifacts_dir for c in seen] == [shared.resolve(), shared.resolve()]
    assert seen[1].checkpoints_dir == shared.resolve() / "checkpoints"
    assert imported == [shared / "weights"]

    monkeypatch.setenv("GRAFT_ARTIFACTS_DIR", str(tmp_path / "from-env"))
    assert cli.main(["worker"]) == 0
    assert seen[-1].registry_dir == tmp_path / "from-env" / "registry"


# --- writing and checking ------------------------------------------------------------------


def test_a_written_artifact_verifies_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "blob.bin"
    digest = write_artifact(path, lambda tmp: tmp.write_bytes(b"hello"))
    assert digest == sha(b"hello")
    assert verify_file(path) == digest and read_verified(path) == b"hello"
    assert json.loads(sidecar(path).read_text()) == {
        "file": "blob.bin",
        "sha256": digest,
        "replaces": "",
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["blob.bin", "blob.bin.sha256"]

    path.write_bytes(b"hellO")  # a torn copy, a bad disk, another volume at the path
    expected = f"blob.bin has sha256 {sha(b'hellO')}, but its record says {digest}"
    for read in (verify_file, read_verified):
        with pytest.raises(CorruptArtifact, match=f"^artifact corrupted: .*{expected}"):
            read(path)
    with pytest.raises(FailedPrecondition, match="the upload said"):
        verify_file(path, digest, "the upload said")

    sidecar(path).unlink()
    with pytest.raises(CorruptArtifact, match=r"no recorded sha256 \(blob.bin.sha256 is missing"):
        verify_file(path)
    sidecar(path).write_text("{not json")
    with pytest.raises(CorruptArtifact, match=r"blob\.bin\.sha256 is unreadable"):
        verify_file(path)
    write_artifact(path, lambda tmp: tmp.write_bytes(b"again"))  # a bad record is replaced
    assert read_verified(path) == b"again" and recorded_digests(path) == (sha(b"again"),)


def test_a_writer_killed_before_its_rename_leaves_the_previous_file_whole_and_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.safetensors"
    first = write_artifact(path, lambda tmp: tmp.write_bytes(b"epoch 1"))
    rename = os.replace

    def killed_at_the_rename(src: str, dst: str | Path) -> None:
        if Path(dst) == path:
            raise KeyboardInterrupt  # as SIGINT would, between the record and the rename
        rename(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", killed_at_the_rename)
    with pytest.raises(KeyboardInterrupt):
        write_artifact(path, lambda tmp: tmp.write_bytes(b"epoch 2"))
    monkeypatch.undo()
    assert recorded_digests(path) == (sha(b"epoch 2"), first)  # the new one was recorded
    assert path.read_bytes() == b"epoch 1" and verify_file(path) == first  # the old one reads
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.sha256"]
    assert write_artifact(path, lambda tmp: tmp.write_bytes(b"epoch 2")) == verify_file(path)


# --- what the workers write and read -------------------------------------------------------


def _checkpoint(epoch: int) -> Checkpoint:
    return Checkpoint(
        job_id="job",
        backbone="tiny",
        classes=["a", "b"],
        dataset_fingerprint="f" * 64,
        plan=TrainingPlan(backbone="tiny", epochs=3, image_size=32),
        epoch=epoch,
        model_state={"w": torch.arange(4096, dtype=torch.float32)},
        optimizer_state=None,
        scheduler_state=None,
        rng=None,
    )


def test_a_corrupted_checkpoint_is_never_resumed_from(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _checkpoint(1))
    path = save_checkpoint(tmp_path, _checkpoint(2))
    assert verify_file(path) == recorded_digests(path)[0]
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.epoch == 2
    assert torch.equal(loaded.model_state["w"], _checkpoint(2).model_state["w"])

    flip_a_byte(path, -100)  # inside the tensor data: safetensors alone would not notice
    with pytest.raises(CheckpointError, match=r"artifact corrupted: .*checkpoint\.safetensors"):
        load_checkpoint(tmp_path)
    plan = _checkpoint(2).plan
    why = usable_checkpoint(tmp_path, plan, "f" * 64, ["a", "b"], True, False)
    assert isinstance(why, str)
    assert why.startswith("ignoring an unreadable checkpoint, starting over: artifact corrupted")


def test_a_corrupted_feature_cache_is_computed_again(tmp_path: Path) -> None:
    path = tmp_path / "features.safetensors"
    features = FeatureSet(torch.ones(8, 4), torch.zeros(8).long(), torch.ones(2, 4), torch.ones(2))
    save_features(path, features, "key")
    cached = load_features(path, "key")
    assert cached is not None and torch.equal(cached.train_x, features.train_x)
    flip_a_byte(path, -5)
    assert load_features(path, "key") is None


def _zip_dataset() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in ("a", "b"):
            for i in range(3):
                image = io.BytesIO()
                pixels = np.full((8, 8, 3), 40 * i + (120 if label == "b" else 0), np.uint8)
                Image.fromarray(pixels).save(image, format="PNG")
                archive.writestr(f"set/{label}/{i}.png", image.getvalue())
    return buffer.getvalue()


def _receive(config: Config, data: bytes) -> dict[str, object]:
    """What an API replica does with an upload: the archive, under the shared uploads."""
    receiver = UploadReceiver(config, "set.zip", sha(data))
    receiver.write(data)
    return receiver.finish()


def test_a_worker_reads_an_upload_only_as_the_server_received_it(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", artifacts_dir=tmp_path / "shared")
    data = _zip_dataset()
    received = _receive(config, data)
    folder = tmp_path / "shared" / "uploads" / str(received["dataset_id"])
    assert (folder / "set.zip").read_bytes() == data
    flip_a_byte(folder / "set.zip", len(data) // 2)  # changed before a worker checks it
    with pytest.raises(
        FailedPrecondition, match=r"artifact corrupted: .* but the server received"
    ) as refused:
        check_upload(config, received)
    assert not folder.exists()  # nothing kept of it
    # The worker hands the error to the API through the store: it stays a FailedPrecondition.
    handed = error_from_dict(error_to_dict(refused.value))
    assert type(handed) is FailedPrecondition and handed.message == refused.value.message

    received = _receive(config, data)
    info = check_upload(config, received)
    ref = DatasetRef(dataset_id=info.dataset_id)
    folder = tmp_path / "shared" / "uploads" / info.dataset_id
    assert resolve_dataset(ref, config).is_relative_to(folder)
    assert json.loads((folder / "upload.json").read_text())["sha256"] == sha(data)
    # Its extracted copy gone (an upload from before extraction at check time): extracted
    # again, once the archive's bytes match the upload's record.
    shutil.rmtree(folder / "extracted")
    flip_a_byte(folder / "set.zip", len(data) // 2)
    with pytest.raises(FailedPrecondition, match="but its upload record says"):
        resolve_dataset(ref, config)
    flip_a_byte(folder / "set.zip", len(data) // 2)
    assert resolve_dataset(ref, config).is_relative_to(folder / "extracted")


def test_imported_weights_are_checked_when_read(tmp_path: Path) -> None:
    path = tmp_path / "weights" / "tiny-0123abcd.pth"
    state = {"w": torch.arange(64, dtype=torch.float32)}
    write_artifact(path, lambda tmp: torch.save(state, tmp))
    assert torch.equal(load_weights_file(path)["w"], state["w"])
    flip_a_byte(path, -40)
    os.utime(path, ns=(1, 1))  # another (size, mtime): not the cached read
    with pytest.raises(CorruptArtifact, match=r"tiny-0123abcd\.pth has sha256"):
        load_weights_file(path)
    packaged = tmp_path / "package" / "tiny-0123abcd.pth"  # a package's or the hub's
    packaged.parent.mkdir()
    torch.save(state, packaged)
    assert torch.equal(load_weights_file(packaged)["w"], state["w"])  # no record: read as is

"""The model registry: name → versions (1, 2, …) → safetensors weights + JSON card, and
aliases. Metadata lives in the job store; artifacts under `root/<name>/<version>/` for the
default tenant and `root/.tenants/<tenant>/<name>/<version>/` for the others (model names
are per tenant; names never start with '.', so no model folder meets these).

Crash ordering of `register` (docs/STORE.md has the full argument):

1. The weights are written and fsynced into a private staging folder `root/.staging/…`,
   and hashed. A crash here leaves only staging debris, swept after an hour.
2. Inside the store's write transaction, once the version number is allocated, the card
   (which names its version) is written into the staging folder, which is then renamed
   into place as `root/<name>/<version>` — one atomic rename.
3. The row is inserted and the transaction commits.

Files attached to the version (`register(files=...)`, e.g. its report) are written into the
staging folder in step 2, before the rename: they land with the version, or not at all.

So a committed row always points at a complete artifact. A crash between 2 and 3 leaves a
folder no row points at; the write lock guarantees that the next registration of that
name allocates the same version, finds the folder and discards it before its own rename.

Reading (`load`, on any host that mounts the root): the weights' bytes are checked against
the sha256 the store recorded, and the card file against the card the store recorded; a
difference is `FailedPrecondition: artifact corrupted`, never served.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from graft.artifacts import fsync_dir, fsync_file, read_verified, sha256_file
from graft.domain import DEFAULT_TENANT, ModelRef, ModelVersion
from graft.errors import FailedPrecondition, InvalidArgument
from graft.registry.card import ModelCard
from graft.store import JobStore

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
STAGING_DIR = ".staging"
TRASH_DIR = ".trash"
TENANTS_DIR = ".tenants"

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def validate_name(value: str, field: str) -> None:
    """Letters, digits, '-', '_', '.'; 1–100 characters; not starting with '.' (so never
    '.', '..' or the registry's own hidden folders). Else InvalidArgument on `field`."""
    if not _NAME.fullmatch(value) or value.startswith("."):
        raise InvalidArgument.of(
            field,
            f"{value!r} is not a valid name: use 1-100 letters, digits, '-', '_' or '.',"
            " not starting with '.'",
        )


def validate_model_name(name: str) -> None:
    validate_name(name, "model_name")


def tenant_root(root: Path, tenant: str) -> Path:
    """The folder under the registry `root` holding `tenant`'s models (one folder per name)."""
    return root if tenant == DEFAULT_TENANT else root / TENANTS_DIR / tenant


def artifact_dir_under(root: Path, mv: ModelVersion) -> Path:
    """Where `mv`'s files are: `<name>/<version>` under the registry `root` of this process,
    else the folder recorded at registration. The root first: another host may mount the
    shared artifacts elsewhere than the registering worker did, and a data directory may
    have moved (the sha256 check on load holds either way)."""
    local = tenant_root(root, mv.tenant) / mv.name / str(mv.version)
    return local if local.is_dir() else Path(mv.artifact_dir)


def _write_attached(folder: Path, files: Mapping[str, bytes]) -> None:
    """`files` (relative '/'-separated path -> bytes) under `folder`, fsynced."""
    for name, data in files.items():
        rel = PurePosixPath(name)
        plain = rel.parts and not rel.is_absolute() and ".." not in rel.parts
        if not plain or name in (WEIGHTS_FILE, CARD_FILE):
            raise ValueError(f"cannot attach {name!r} to a model version: not a relative path")
        path = folder.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        fsync_file(path)
    for parent in {folder.joinpath(*PurePosixPath(n).parts).parent for n in files}:
        fsync_dir(parent)


def _plain_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing storage with another (safetensors
    refuses shared storage, e.g. tied weights; each copy is saved on its own)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[key] = t
    return out


def _canonical(card: object) -> str:
    return json.dumps(card, sort_keys=True)  # NaN compares equal as text, not as a float


class ModelRegistry:
    def __init__(self, store: JobStore, root: Path, *, staging_max_age_s: float = 3600.0) -> None:
        self.store = store
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep(staging_max_age_s)

    # --- writing ----------------------------------------------------------------------

    def register(
        self,
        *,
        name: str,
        state_dict: dict[str, torch.Tensor],
        card: ModelCard,
        tenant: str = DEFAULT_TENANT,
        files: Callable[[ModelVersion], Mapping[str, bytes]] | None = None,
    ) -> ModelVersion:
        """Store the weights and card as the next version of `tenant`'s model `name`; see
        the module doc for why a crash at any point leaves no row without its artifact.
        The card's identity fields are the store's to fill in. `files`, given the version
        being registered, returns files to publish with it (relative path -> bytes); it runs
        under the store's write lock, so it should only format what is already computed."""
        validate_model_name(name)
        staging_root = self.root / STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging_root))
        try:
            weights = staging / WEIGHTS_FILE
            save_file(_plain_tensors(state_dict), str(weights), metadata={"format": "pt"})
            fsync_file(weights)
            digest = sha256_file(weights)

            def publish(mv: ModelVersion) -> str:
                # Runs under the store's write lock with mv.version allocated.
                card_path = staging / CARD_FILE
                card_path.write_text(json.dumps(mv.card, indent=2, sort_keys=True) + "\n")
                fsync_file(card_path)
                if files is not None:
                    _write_attached(staging, files(mv))
                fsync_dir(staging)  # the entries of both files, before the folder moves
                target = self.model_root(tenant) / name / str(mv.version)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    log.warning(
                        "discarding %s, left by a registration that never committed", target
                    )
                    self._discard(target)
                os.rename(staging, target)
                fsync_dir(target.parent)
                return str(target.resolve())

            return self.store.add_model_version(
                name=name,
                job_id=card.job_id,
                backbone=card.backbone,
                labels=card.labels,
                sha256=digest,
                card=dataclasses.replace(card, weights_file=WEIGHTS_FILE).to_dict(),
                artifact_dir=str(self.model_root(tenant) / name),  # replaced by publish's answer
                metrics=card.metrics,
                publish=publish,
                tenant=tenant,
            )
        finally:
            # Gone after a successful rename. If the commit failed after the rename the
            # folder in place is left alone: only the next registration, holding the lock,
            # can tell for certain that no row points at it.
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def model_root(self, tenant: str) -> Path:
        """The folder holding `tenant`'s models (one folder per name)."""
        return tenant_root(self.root, tenant)

    def _discard(self, path: Path) -> None:
        """Move aside atomically (so a half-deleted folder is never at a version's place),
        then delete."""
        trash = self.root / TRASH_DIR
        trash.mkdir(exist_ok=True)
        aside = trash / f"{path.parent.name}-{path.name}-{uuid.uuid4().hex}"
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def sweep(self, max_age_s: float = 3600.0) -> None:
        """Delete staging folders older than `max_age_s` (their registration crashed or
        hung; younger ones may belong to a registration in progress in another process)
        and anything left in the trash."""
        now = time.time()
        staging_root = self.root / STAGING_DIR
        if staging_root.is_dir():
            for p in staging_root.iterdir():
                try:
                    if now - p.stat().st_mtime > max_age_s:
                        shutil.rmtree(p, ignore_errors=True)
                except FileNotFoundError:
                    pass
        trash = self.root / TRASH_DIR
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)

    # --- reading ----------------------------------------------------------------------

    def artifact_dir(self, mv: ModelVersion) -> Path:
        """Where `mv`'s files are (artifact_dir_under this registry's root)."""
        return artifact_dir_under(self.root, mv)

    def load(self, ref: ModelRef) -> tuple[ModelVersion, dict[str, torch.Tensor], ModelCard]:
        """The version `ref` names, its weights (checked against the recorded sha256) and
        its card, validated. Never unpickles anything."""
        mv = self.store.resolve_model(ref)
        directory = self.artifact_dir(mv)
        weights_path = directory / WEIGHTS_FILE
        try:
            # The very bytes hashed are deserialised: nothing changes between check and use.
            data = read_verified(
                weights_path,
                mv.sha256,
                f"model {mv.name!r} version {mv.version} was registered with",
            )
        except FileNotFoundError:
            raise FailedPrecondition(
                f"artifact missing: model {mv.name!r} version {mv.version} has no {weights_path}"
            ) from None
        try:
            tensors = load_safetensors(data)
        except Exception as e:  # a matching hash makes this very unlikely
            raise FailedPrecondition(f"artifact corrupted: {weights_path}: {e}") from e
        card = self._read_card(mv, directory / CARD_FILE)
        return mv, tensors, card

    @staticmethod
    def _read_card(mv: ModelVersion, path: Path) -> ModelCard:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            log.warning("%s is missing; using the card recorded in the store", path)
            return ModelCard.from_dict(mv.card, f"model {mv.name!r} version {mv.version}")
        except (ValueError, UnicodeDecodeError) as e:
            raise FailedPrecondition(f"artifact corrupted: {path} is not JSON: {e}") from e
        if not isinstance(data, dict) or (data.get("sha256"), data.get("version")) != (
            mv.sha256,
            mv.version,
        ):
            raise FailedPrecondition(
                f"artifact corrupted: {path} does not describe model {mv.name!r} "
                f"version {mv.version}"
            )
        card = ModelCard.from_dict(data, str(path))
        # The store keeps the card it was published with: the file must say the same, or a
        # replica would serve with labels or preprocessing nobody registered.
        if _canonical(data) != _canonical(mv.card):
            raise FailedPrecondition(
                f"artifact corrupted: {path} differs from the card model {mv.name!r} "
                f"version {mv.version} was registered with"
            )
        return card

    # --- pass-throughs ----------------------------------------------------------------

    def get(self, name: str, version: int, tenant: str = DEFAULT_TENANT) -> ModelVersion:
        return self.store.get_model_version(name, version, tenant)

    def resolve(self, ref: ModelRef) -> ModelVersion:
        return self.store.resolve_model(ref)

    def list_models(
        self, name_prefix: str = "", tenant: str | None = None
    ) -> dict[str, list[ModelVersion]]:
        return self.store.list_models(name_prefix, tenant)

    def set_alias(
        self, name: str, alias: str, version: int, tenant: str = DEFAULT_TENANT
    ) -> ModelVersion:
        validate_name(alias, "alias")
        return self.store.set_alias(name, alias, version, tenant)

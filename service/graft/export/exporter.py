"""The EXPORT task, run by a worker's advisor lane: load the registered version as Predict
builds it, write the format into a staging folder, check it on real images, and rename the
folder into place (graft.export.layout has the folder and its record). A second export of
the same version and format reuses the folder when its record and every file's sha256
still verify.

Export runs on the CPU whatever the worker's device (the files are for any machine), with
the lane's torch threads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from graft import errors
from graft.artifacts import fsync_dir, write_artifact
from graft.config import Config
from graft.domain import ModelRef
from graft.export.formats import Source, build
from graft.export.layout import (
    FORMATS,
    RECORD_FILE,
    ExportRecord,
    export_folder,
    exports_root,
    file_entry,
    read_valid,
)
from graft.export.verify import check_images
from graft.predict.model import build_model
from graft.registry import ModelRegistry
from graft.store import JobStore

log = logging.getLogger(__name__)

STAGING_DIR, TRASH_DIR = ".staging", ".trash"
STAGING_MAX_AGE_S = 3600.0


def run_export(
    config: Config,
    store: JobStore,
    request: dict[str, Any],
    checkpoint: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """The EXPORT task: `request` is {"model": {"name", "version", "tenant"}, "format"};
    the answer {"folder": the export's folder relative to the exports root, "record":
    ExportRecord.to_dict(), "reused": bool}. `checkpoint` raises when the caller has gone."""
    fmt = str(request.get("format", ""))
    if fmt not in FORMATS:
        raise errors.InvalidArgument.of(
            "format", f"{fmt!r} is not an export format: use one of {', '.join(FORMATS)}"
        )
    m = request.get("model", {})
    ref = ModelRef(name=str(m["name"]), version=int(m["version"]), tenant=str(m["tenant"]))
    root = exports_root(config.artifacts_root)
    mv = store.resolve_model(ref)
    relative = export_folder(mv.tenant, mv.name, mv.version, fmt)
    record = read_valid(root / relative, mv.sha256, fmt)
    reused = record is not None
    if record is None:
        record = make_export(config, store, ref, fmt, root, relative, checkpoint)
    log.info(
        "export %s:%d %s %s: %s",
        mv.name,
        mv.version,
        fmt,
        "reused" if reused else "made",
        record.verification,
    )
    return {"folder": relative, "record": record.to_dict(), "reused": reused}


def make_export(
    config: Config,
    store: JobStore,
    ref: ModelRef,
    fmt: str,
    root: Path,
    relative: str,
    checkpoint: Callable[[], None] = lambda: None,
) -> ExportRecord:
    """Export version `ref` (resolved: a version number) to `fmt` into `root/relative`
    (the exports root and export_folder's path)."""
    started = time.monotonic()
    mv, state, card = ModelRegistry(store, config.registry_dir).load(ref)
    loaded = build_model(mv, state, card)
    model = loaded.model.eval()
    checkpoint()
    images = check_images(config, store, card, mv.tenant, loaded.preprocess)
    with torch.inference_mode():
        reference = model(images.batch.contiguous(memory_format=torch.channels_last)).float()
    source = Source(model, card, images, reference, images.batch[:2].clone())
    checkpoint()
    staging = _staging(root)
    try:
        built = build(fmt, source, staging, checkpoint)
        record = ExportRecord(
            name=mv.name,
            version=mv.version,
            tenant=mv.tenant,
            format=fmt,
            weights_sha256=mv.sha256,
            verification=built.verification,
            files=tuple(file_entry(staging, path, digest) for path, digest in built.files),
        )
        write_artifact(
            staging / RECORD_FILE,
            lambda tmp: tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n"),
        )
        checkpoint()
        record = _publish(staging, root, relative, record)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s:%d to %s in %.1f s", mv.name, mv.version, fmt, time.monotonic() - started)
    return record


def _staging(root: Path) -> Path:
    """A fresh private folder under the exports root's staging area; folders left there by
    exports that crashed more than STAGING_MAX_AGE_S ago are swept first, and the trash."""
    area = root / STAGING_DIR
    area.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / TRASH_DIR, ignore_errors=True)
    now = time.time()
    for old in area.iterdir():
        try:
            if now - old.stat().st_mtime > STAGING_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another exporter swept it meanwhile
            continue
    return Path(tempfile.mkdtemp(prefix="export-", dir=area))


def _publish(staging: Path, root: Path, relative: str, record: ExportRecord) -> ExportRecord:
    """Rename `staging` into place as `root/relative`, whole. A folder already there is either a
    valid export another worker published meanwhile (kept, and its record returned) or an
    invalid one (moved aside, then deleted)."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            theirs = read_valid(target, record.weights_sha256, record.format)
            if theirs is not None:
                return theirs
            _discard(target, root)
            continue
        fsync_dir(target.parent)
        return record
    raise errors.Unavailable(f"could not publish the export at {target}: it keeps changing; retry")


def _discard(path: Path, root: Path) -> None:
    """Move `path` aside atomically (no half-deleted export is ever in place), delete it."""
    trash = root / TRASH_DIR
    trash.mkdir(parents=True, exist_ok=True)
    aside = trash / uuid.uuid4().hex
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another worker moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)

"""What an export is checked on, and the check: real images made exactly as Predict makes
them, through the PyTorch model and through the exported file; the export is published
only if it answers like the model.

The images, in order of preference (the first that can be had):

1. the version's validation images: the training job's dataset, scanned again, unchanged
   since training (same fingerprint), split with the plan's fraction and seed as training
   split it;
2. the same dataset's images when it changed since training (the validation split of what
   is there now, or its training images when it has no validation split);
3. smooth synthetic images (graft.predict.runtimes.verification_batch), only when no real
   image is reachable (the job's dataset was deleted, moved or expired): the verification
   text says so and why.

The check is Predict's own rule for serving a runtime (graft.predict.runtimes.compare) on
the probabilities Predict returns, softmax(logits / temperature): the same top-1 wherever
the model's own top two are further apart than the tolerance, and no probability further
than PROB_TOLERANCE from the model's.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from graft import errors
from graft.config import Config
from graft.data import ImageDecodeError, Sample, open_dataset, split_dataset
from graft.data.images import read_image_file
from graft.predict.preprocess import Preprocess
from graft.predict.runtimes import compare, verification_batch
from graft.predict.tolerance import PROB_TOLERANCE
from graft.registry import ModelCard
from graft.store import JobStore

log = logging.getLogger(__name__)

MAX_IMAGES = 32  # real images an export is checked on, spread over the classes
SYNTHETIC_IMAGES = 16


@dataclass(frozen=True)
class CheckImages:
    """A batch made as Predict makes it (N, 3, S, S) float32, and where it came from."""

    batch: torch.Tensor
    source: str  # e.g. "32 validation images of the version"
    real: bool


def check_images(
    config: Config,
    store: JobStore,
    card: ModelCard,
    tenant: str,
    preprocess: Preprocess,
    limit: int = MAX_IMAGES,
) -> CheckImages:
    """The images to check an export of the version `card` describes on (module doc)."""
    try:
        samples, what = _dataset_samples(config, store, card, tenant)
    except errors.GraftError as exc:
        log.info("export check: no real images for job %s: %s", card.job_id, exc.message)
        return _synthetic(card, f"no real image reachable: {exc.message}")
    arrays = []
    for sample in _spread(samples, limit):
        try:
            arrays.append(preprocess.decode(read_image_file(sample.path)))
        except (ImageDecodeError, OSError) as exc:  # changed since it was scanned
            log.info("export check: skipping %s: %s", sample.path, exc)
    if not arrays:
        return _synthetic(card, "the job's dataset has no readable image left")
    return CheckImages(preprocess.to_batch(arrays), f"{len(arrays)} {what}", True)


def _dataset_samples(
    config: Config, store: JobStore, card: ModelCard, tenant: str
) -> tuple[list[Sample], str]:
    """The samples to draw from, best first, and what they are in words."""
    job = store.get_job(card.job_id, tenant)
    dataset = open_dataset(job.dataset, config)
    train, val = split_dataset(dataset, card.plan.validation_fraction, card.plan.seed)
    unchanged = card.dataset is not None and card.dataset.fingerprint == dataset.fingerprint
    if val and unchanged:
        return val, "validation images of the version"
    changed = "" if unchanged else " (changed since training)"
    if val:
        return val, f"validation-split images of the job's dataset{changed}"
    return train, f"training images of the job's dataset{changed}, which has no validation split"


def _spread(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """Up to `limit` samples taken in turn from each class (the list is in class order)."""
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    turns = itertools.chain.from_iterable(itertools.zip_longest(*by_class.values()))
    return [s for s in turns if s is not None][:limit]


def _synthetic(card: ModelCard, why: str) -> CheckImages:
    batch = verification_batch(card.preprocessing.image_size, n=SYNTHETIC_IMAGES)
    return CheckImages(batch, f"{SYNTHETIC_IMAGES} synthetic smooth images ({why})", False)


@dataclass(frozen=True)
class Agreement:
    """How an export's answers compare with the PyTorch model's on the same images."""

    same: bool  # Predict's rule: served only if true
    same_top1: int  # images with the same top-1
    images: int
    max_prob_diff: float


def agreement(reference: torch.Tensor, logits: torch.Tensor, temperature: float) -> Agreement:
    """Compare logits (N, C) with the reference's, as probabilities at `temperature`."""
    if logits.shape != reference.shape:
        return Agreement(False, 0, reference.shape[0], float("inf"))
    ok, diff = compare(reference / temperature, logits / temperature)
    same_top1 = int((reference.argmax(1) == logits.argmax(1)).sum())
    return Agreement(ok, same_top1, reference.shape[0], diff)


def verify(
    what: str,
    images: CheckImages,
    reference: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
) -> str:
    """Run the export (`run`: a batch in, logits out) on the check images and compare it
    with the model's logits `reference`; the verification line, or FailedPrecondition
    (nothing is published) when they disagree."""
    found = agreement(reference, run(images.batch).float(), temperature)
    line = (
        f"{what} on {images.source}: same top-1 {found.same_top1}/{found.images}, max "
        f"probability difference {found.max_prob_diff:.1e} (tolerance {PROB_TOLERANCE:.0e}, "
        f"probabilities softmax(logits / {temperature:g}))"
    )
    if not found.same:
        raise errors.FailedPrecondition(
            f"export refused, nothing was published: {line}. The exported file does not "
            "answer like the model; export another format and report this with the "
            "model's backbone and plan"
        )
    return line

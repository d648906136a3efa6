"""The COMPARE task, run by an advisor lane (graft.advisor.lane): two registered versions
evaluated on the same held-out images.

The images are the candidate's validation split, made again exactly as its training made
it: its training job's dataset, scanned, then `split_dataset` with the validation fraction
and seed of its plan (graft.worker.worker). Each version is built as Predict builds it
(graft.predict.build_model: the card's preprocessing, feature cut and weights, checked
against the store's sha256) and computes in fp32 with its card's temperature applied, so
its loss and ECE are those of the probabilities Predict serves. A baseline whose labels
are the candidate's in another order has its scores put in the candidate's order.

The request (the API's, as JSON): `baseline` and `candidate` (name, version, tenant: the
versions the API resolved, so an alias that moves meanwhile changes nothing) and `dataset`
(the candidate's job's DatasetRef). The answer: `Comparison.to_json()`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from graft import errors
from graft.advisor.cancel import checkpoint
from graft.compare.result import (
    Comparison,
    SplitSource,
    dataset_gone,
    describe,
    label_difference,
    split_text,
)
from graft.config import Config
from graft.data import ImageDataset, resolve_dataset, scan_dataset, split_dataset
from graft.data.scan import Sample, ScannedDataset
from graft.domain import DatasetRef, EvaluationMetrics, ModelRef
from graft.predict.model import LoadedModel, build_model
from graft.registry import ModelCard, ModelRegistry
from graft.store import JobStore
from graft.training.calibration import expected_calibration_error
from graft.training.evaluation import evaluate_predictions

log = logging.getLogger(__name__)

BATCH_SIZE = 64


def run_comparison(
    config: Config, store: JobStore, request: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """The COMPARE task's answer (see the module doc)."""
    registry = ModelRegistry(store, config.registry_dir)
    baseline, b_card = _load(registry, _ref(request["baseline"]), config)
    candidate, c_card = _load(registry, _ref(request["candidate"]), config)
    b_name, c_name = _named(baseline), _named(candidate)
    differ = label_difference(b_card.labels, c_card.labels)
    if differ:
        raise errors.FailedPrecondition(
            f"{b_name} and {c_name} classify into different labels ({differ}): compare "
            "versions trained on the same classes"
        )
    ref = DatasetRef(**request["dataset"])
    dataset, held_out = _held_out(ref, config, c_name, c_card)
    images = ImageDataset(held_out, transform=_no_transform)
    targets = torch.tensor([s.label for s in held_out])
    b_metrics, b_ece = _evaluate(baseline, b_card, images, targets, c_card.labels, device)
    c_metrics, c_ece = _evaluate(candidate, c_card, images, targets, c_card.labels, device)
    text = split_text(
        baseline=b_name,
        candidate=c_name,
        where=describe(ref),
        images=len(held_out),
        baseline_split=_split_source(b_card),
        candidate_split=_split_source(c_card),
        explicit=dataset.has_explicit_split,
        fingerprint_now=dataset.fingerprint,
    )
    comparison = Comparison(
        baseline=_identity(baseline),
        candidate=_identity(candidate),
        baseline_metrics=b_metrics,
        candidate_metrics=c_metrics,
        baseline_ece=b_ece,
        candidate_ece=c_ece,
        images=len(held_out),
        split=text,
        candidate_data_changed=_split_source(c_card).fingerprint not in ("", dataset.fingerprint),
    )
    log.info(
        "compared %s (accuracy %.4f) with %s (accuracy %.4f) on %d images",
        c_name,
        c_metrics.accuracy,
        b_name,
        b_metrics.accuracy,
        len(held_out),
    )
    return comparison.to_json()


def _ref(d: dict[str, Any]) -> ModelRef:
    return ModelRef(name=str(d["name"]), version=int(d["version"]), tenant=str(d["tenant"]))


def _load(registry: ModelRegistry, ref: ModelRef, config: Config) -> tuple[LoadedModel, ModelCard]:
    version, state, card = registry.load(ref)
    return build_model(version, state, card, max_pixels=config.max_image_pixels), card


def _named(model: LoadedModel) -> str:
    return f"{model.version.name}:{model.version.version}"


def _identity(model: LoadedModel) -> ModelRef:
    v = model.version
    return ModelRef(name=v.name, version=v.version, tenant=v.tenant)


def _held_out(
    ref: DatasetRef, config: Config, candidate: str, card: ModelCard
) -> tuple[ScannedDataset, list[Sample]]:
    """The candidate's dataset and its validation split, made again as training made it."""
    dataset = _scan(ref, config, candidate)
    if tuple(dataset.classes) != card.labels:
        raise errors.FailedPrecondition(
            f"the dataset {candidate} trained on ({describe(ref)}) has other classes now "
            f"({len(dataset.classes)}: {', '.join(dataset.classes[:8])}"
            f"{', ...' if len(dataset.classes) > 8 else ''}) than the "
            f"{len(card.labels)} it trained on, so its validation split cannot be made "
            "again: compare versions whose training data is unchanged"
        )
    _, held_out = split_dataset(dataset, card.plan.validation_fraction, card.plan.seed)
    if not held_out:
        raise errors.FailedPrecondition(
            f"{candidate} trained without a validation split (validation fraction 0, and "
            "the dataset marks no validation images): there are no held-out images to "
            "compare on; train it with a validation fraction above 0"
        )
    return dataset, held_out


def _scan(ref: DatasetRef, config: Config, candidate: str) -> ScannedDataset:
    """The candidate's dataset, scanned; FailedPrecondition when it is gone."""
    try:
        path = resolve_dataset(ref, config)
    except (errors.NotFound, errors.InvalidArgument) as exc:
        raise dataset_gone(candidate, ref, exc.message) from None
    dataset = scan_dataset(path, max_pixels=config.max_image_pixels, max_classes=config.max_classes)
    checkpoint()
    return dataset


def _split_source(card: ModelCard) -> SplitSource:
    return SplitSource(
        fingerprint=card.dataset.fingerprint if card.dataset is not None else "",
        validation_fraction=card.plan.validation_fraction,
        seed=card.plan.seed,
    )


def _no_transform(image: Any) -> Any:
    return image


class _Transformed(Dataset[tuple[torch.Tensor, int]]):
    """The held-out images, decoded once (ImageDataset's cache) and each version's eval
    transform applied on the way out."""

    def __init__(self, images: ImageDataset, model: LoadedModel) -> None:
        self.images, self.transform = images, model.transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.image(index)), self.images.samples[index].label


@torch.inference_mode()
def _evaluate(
    model: LoadedModel,
    card: ModelCard,
    images: ImageDataset,
    targets: torch.Tensor,
    labels: Sequence[str],
    device: torch.device,
) -> tuple[EvaluationMetrics, float]:
    """`model`'s metrics and ECE on `images`, its classes put in the order of `labels`."""
    net = model.model.to(device)
    chunks = []
    for inputs, _ in DataLoader(_Transformed(images, model), batch_size=BATCH_SIZE):
        checkpoint()  # the caller went away or ran out of time: stop here
        x = inputs.to(device, memory_format=torch.channels_last)
        chunks.append(net(x).float().cpu())
    order = [model.labels.index(label) for label in labels]
    logits = torch.cat(chunks)[:, order] / card.temperature
    metrics = evaluate_predictions(logits, targets, labels)
    return metrics, expected_calibration_error(torch.softmax(logits, dim=1), targets)

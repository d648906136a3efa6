"""A real trained version's report and calibration, through the real `graft serve` (its
worker trains on Fashion-MNIST) and the real SDK over gRPC: GetModelReport's figures and
data, `graft report` writing the files, the page rendered by Chromium, Predict dividing by
the fitted temperature, and versions without a report answering why."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graft_client
from graft.cli import main as graft_main
from graft.config import Config
from graft.domain import ModelRef
from graft.predict import build_model
from graft.registry import ModelRegistry
from graft.reports import figures
from graft.reports.files import failure_files
from graft.store import open_store
from graft.training.calibration import expected_calibration_error
from graft_client import pb
from graft_devtools.datasets import write_fashion_mnist_folder
from tests.browser import load
from tests.helpers import register_random_model
from tests.integration.conftest import RunningServer

pytestmark = pytest.mark.slow

# Four Fashion-MNIST classes that look alike (t-shirt, pullover, coat, shirt): a head on
# frozen features is clearly overconfident on them (measured with 60 images a class: a
# fitted temperature of 1.95, applied).
CLASSES = (0, 2, 4, 6)
FIGURES = ("curves", "confusion", "per_class", "reliability", "suspects")


@dataclass
class Trained:
    client: graft_client.Client
    job: pb.Job
    test_images: list[Path]


@pytest.fixture(scope="module")
def trained(server: RunningServer) -> Iterator[Trained]:
    train = write_fashion_mnist_folder(
        server.data_root / "shirts", per_class=60, classes=CLASSES, split="train"
    )
    test = write_fashion_mnist_folder(
        server.data_root / "shirts-test", per_class=100, classes=CLASSES, split="test"
    )
    client = server.client()
    plan = pb.TrainingPlan(
        strategy=pb.STRATEGY_FEATURE_EXTRACTION, epochs=5, image_size=64, validation_fraction=0.25
    )
    job = client.wait(client.start_fine_tune("shirts", str(train), plan=plan).job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    yield Trained(client, job, sorted(test.rglob("*.png")))
    client.close()


def test_get_model_report_has_every_figure_and_the_stored_metrics(trained: Trained) -> None:
    report = trained.client.get_model_report("shirts")
    assert (report.model.name, report.model.version) == ("shirts", trained.job.model.version)
    files = {f.path: f for f in report.files}
    expected = {f"figures/{name}.png" for name in FIGURES} | {"report.html"}
    expected |= {f"suspects/{k:02d}.png" for k in range(1, 13)}
    assert set(files) == expected
    data = json.loads(report.report_json)
    sizes = {
        "curves": figures.CURVES_SIZE,
        "confusion": figures.confusion_size(4),
        "per_class": figures.per_class_size(4),
        "reliability": figures.RELIABILITY_SIZE,
        "suspects": figures.suspects_size(12),
    }
    for name, size in sizes.items():
        image = Image.open(io.BytesIO(files[f"figures/{name}.png"].data))
        assert image.format == "PNG" and image.size == figures.pixels(size), name
        assert np.asarray(image.convert("L")).std() > 10, f"{name}.png is blank"
    for k in range(1, 13):
        thumb = Image.open(io.BytesIO(files[f"suspects/{k:02d}.png"].data))
        assert thumb.size == (28, 28)  # Fashion-MNIST's size, not enlarged
    total = len(report.report_json) + sum(f.size for f in report.files)
    assert total < 600_000, f"report is {total} bytes"

    # The JSON's metrics are the version's stored metrics, the calibration its card's.
    version = trained.client.get_model("shirts")
    stored, metrics = version.metrics, data["metrics"]
    assert metrics["accuracy"] == stored.accuracy and metrics["loss"] == stored.loss
    assert metrics["macro_f1"] == stored.macro_f1
    assert metrics["top5_accuracy"] == stored.top5_accuracy
    assert metrics["confusion"] == list(stored.confusion)
    assert [c["recall"] for c in metrics["per_class"]] == [c.recall for c in stored.per_class]
    card = json.loads(version.card_json)
    assert {k: data["calibration"][k] for k in card["calibration"]} == card["calibration"]
    assert data["labels"] == ["coat", "pullover", "shirt", "t-shirt"]
    assert [p["epoch"] for p in data["curves"]] == [1, 2, 3, 4, 5]
    assert all(0 < p["train_accuracy"] <= 1 and p["train_loss"] > 0 for p in data["curves"])
    best = card["training"]["best_epoch"]
    assert data["curves"][best - 1]["val_accuracy"] == stored.accuracy
    assert data["plan"]["source"] == "given" and data["plan"]["plan"]["epochs"] == 5
    assert len(data["suspects"]) == 12 and data["suspects"][0]["loss"] > 1


def test_graft_report_writes_the_files_and_the_page_renders_in_chromium(
    server: RunningServer,
    trained: Trained,
    chromium: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "report"
    assert graft_main(["report", "shirts", "--target", server.target, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "calibration: temperature" in printed and "most confused:" in printed
    assert json.loads((out / "report.json").read_text()) == json.loads(
        trained.client.get_model_report("shirts").report_json
    )
    for name in FIGURES:
        assert Image.open(out / "figures" / f"{name}.png").format == "PNG"

    page = (out / "report.html").read_text()
    # Self-contained: every image inline, nothing fetched, no script of its own.
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('src="data:image/png;base64,') == page.count("<img") == 4 + 12
    shown = load(chromium, out / "report.html", tmp_path / "shot.png", (1200, 2400))
    assert shown.console == [], shown.console
    assert (shown.images, shown.broken_images) == (16, 0)
    screenshot = np.asarray(Image.open(shown.screenshot).convert("L"), dtype=float)
    assert screenshot.shape == (2400, 1200)
    assert screenshot.std() > 20 and (screenshot < 128).mean() > 0.02  # text and figures


@pytest.fixture(scope="module")
def served(server: RunningServer, trained: Trained) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The version's temperature, and the PyTorch model's own logits (eager, at
    temperature 1) on the held-out test images with their labels."""
    store = open_store(Config(data_dir=server.data_dir))
    try:
        mv, state, card = ModelRegistry(store, Config(data_dir=server.data_dir).registry_dir).load(
            ModelRef("shirts")
        )
    finally:
        store.close()
    loaded = build_model(mv, state, card)
    arrays = [loaded.preprocess.decode(p.read_bytes()) for p in trained.test_images]
    with torch.inference_mode():
        logits = loaded.model(loaded.preprocess.to_batch(arrays)).float()
    labels = torch.tensor([card.labels.index(p.parent.name) for p in trained.test_images])
    return card.temperature, logits, labels


def test_predict_divides_the_logits_by_the_fitted_temperature(
    trained: Trained, served: tuple[float, torch.Tensor, torch.Tensor]
) -> None:
    temperature, logits, _ = served
    assert temperature > 1.2  # applied (else it would be 1), and far enough from 1 to show
    images = trained.test_images[:32]
    answer = trained.client.predict("shirts", images, top_k=4)
    labels = json.loads(trained.client.get_model("shirts").card_json)["labels"]
    scores = torch.tensor(
        [
            [dict((c.label, c.score) for c in p.classes)[lb] for lb in labels]
            for p in answer.predictions
        ]
    )
    expected = torch.softmax(logits[:32] / temperature, dim=1)
    untempered = torch.softmax(logits[:32], dim=1)
    assert (scores - expected).abs().max() < 5e-4
    assert (scores - untempered).abs().max() > 0.05  # what serving at temperature 1 gives


def test_temperature_scaling_does_not_worsen_calibration_on_unseen_images(
    served: tuple[float, torch.Tensor, torch.Tensor],
) -> None:
    """400 Fashion-MNIST test images the model never saw (neither in training nor in the
    validation split the temperature was fitted on)."""
    temperature, logits, labels = served
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    nll = torch.nn.functional.cross_entropy
    nll_before, nll_after = nll(logits, labels), nll(logits / temperature, labels)
    print(f"test images: ECE {before:.4f} -> {after:.4f}, NLL {nll_before:.4f} -> {nll_after:.4f}")
    assert after <= before and nll_after < nll_before


def test_versions_without_a_report_say_why(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = server.client()
    register_random_model(server.data_dir, "old-version")  # as before reports existed
    with pytest.raises(graft_client.NotFound, match="registered before Graft made reports"):
        client.get_model_report("old-version")
    assert graft_main(["report", "old-version", "--target", server.target]) == 2
    assert "registered before Graft made reports" in capsys.readouterr().err

    # Registered as the worker registers a version whose report failed.
    config = Config(data_dir=server.data_dir)
    store = open_store(config)
    try:
        registry = ModelRegistry(store, config.registry_dir)
        _, state, card = registry.load(ModelRef("old-version"))
        registry.register(
            name="failed-report",
            state_dict=state,
            card=dataclasses.replace(card, job_id=uuid.uuid4().hex),
            files=lambda mv: failure_files("drawing the report failed: MemoryError"),
        )
    finally:
        store.close()
    with pytest.raises(graft_client.FailedPrecondition, match=r"MemoryError\)\. The version"):
        client.get_model_report("failed-report")
    with pytest.raises(graft_client.NotFound):
        client.get_model_report("no-such-model")
    client.close()

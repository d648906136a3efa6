"""The hand-written baseline Graft's advice is measured against (issue 13): frozen final
features of the pretrained default backbone + scikit-learn's logistic regression, written
the way a practitioner would, without Graft. bench/advise_eval.py runs it in the same run
as Graft's own plans; the other baseline, partial fine-tuning for 4 epochs, runs there
through the service.

What it does: every image resized to `image_size` (bicubic, no crop), normalised with the
backbone's mean and std, one forward pass of tf_efficientnet_lite0 with its ImageNet
weights (`forward_features`, then global average pooling: the 1280 pre-logits features),
standardised, LogisticRegression(max_iter=2000) fitted on the training folder, top-1 on the
test folder. The wall time counts everything from loading the weights to the score.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from graft.backbones import DEFAULT_BACKBONE, create_imagenet_model, get_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images(folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths, [p.parent.name for p in paths]


@torch.inference_mode()
def _features(net: torch.nn.Module, paths: list[Path], image_size: int) -> np.ndarray:
    spec = get_spec(DEFAULT_BACKBONE)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(paths), 64):
        batch = [
            np.asarray(Image.open(p).convert("RGB").resize((image_size, image_size), Image.BICUBIC))
            for p in paths[start : start + 64]
        ]
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        pooled = net.forward_head(net.forward_features(x), pre_logits=True)  # type: ignore[operator]
        out.append(pooled.float().numpy())
    return np.concatenate(out)


def logistic_on_final_features(
    train: Path, test: Path, image_size: int = 64
) -> tuple[float, float]:
    """(held-out top-1 accuracy, wall seconds) of the baseline on class-per-folder data."""
    t0 = time.perf_counter()
    net = create_imagenet_model(DEFAULT_BACKBONE).to(memory_format=torch.channels_last)
    train_paths, train_labels = _images(train)
    test_paths, test_labels = _images(test)
    scaler = StandardScaler()
    x_train = scaler.fit_transform(_features(net, train_paths, image_size))
    x_test = scaler.transform(_features(net, test_paths, image_size))
    classifier = LogisticRegression(max_iter=2000).fit(x_train, train_labels)
    accuracy = float(classifier.score(x_test, test_labels))
    return accuracy, time.perf_counter() - t0

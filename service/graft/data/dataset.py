"""A torch Dataset over scanned samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from graft.data.images import load_image
from graft.data.scan import Sample

# Decoded images are kept in memory up to this many pixels (about 3 bytes each): small
# datasets are then decoded once instead of once per epoch.
DEFAULT_MAX_CACHED_PIXELS = 32_000_000


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """(transform(image), label) for each sample, images decoded with load_image.

    Decoded RGB images are cached until `max_cached_pixels` is reached (0 turns the cache
    off). Each DataLoader worker process holds its own cache.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        max_cached_pixels: int = DEFAULT_MAX_CACHED_PIXELS,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.max_cached_pixels = max_cached_pixels
        self._cache: dict[int, Image.Image] = {}
        self._cached_pixels = 0

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image of sample `index` (from the cache when it is there)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image = load_image(self.samples[index].path)
        pixels = image.width * image.height
        if self._cached_pixels + pixels <= self.max_cached_pixels:
            self._cache[index] = image
            self._cached_pixels += pixels
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(index)), self.samples[index].label

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

"""The one dataset interface every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image


class ImageDataset:
    """A labelled image collection.

    ``len(ds)``; ``ds.image(i)`` returns a PIL image or an ``(H, W)`` / ``(H, W, 3)`` uint8
    array; ``ds.labels`` is an int class vector ``(n,)`` or a 0/1 multi-hot matrix ``(n, c)``;
    ``ds.ids`` are stable string ids (relative paths or ``"<split>/<index>"``);
    ``ds.splits`` holds the official split of each item (``"train"``/``"test"``) or None;
    ``ds.source`` is a string that identifies where the data came from (used as cache key).
    """

    def __init__(self, labels, ids: Sequence[str], loader: Callable[[int], "Image.Image | np.ndarray"],
                 source: str, class_names: Sequence[str] | None = None, splits=None,
                 checksum: str | None = None):
        self.labels = np.asarray(labels)
        self.ids = np.asarray(ids, dtype=str)
        if len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} ids for {len(self.labels)} labels")
        self._loader = loader
        self.source = source
        self.class_names = list(class_names) if class_names is not None else None
        self.splits = None if splits is None else np.asarray(splits, dtype=str)
        self.checksum = checksum

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        return self._loader(int(i))

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def num_classes(self) -> int:
        if self.multilabel:
            return int(self.labels.shape[1])
        return int(self.labels.max()) + 1 if len(self.labels) else 0

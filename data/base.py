"""What the datasets of data/ share: per-sample seeded randomness, the 8 rotations/flips, wrap-around indices,
and file handles opened lazily in each process and never pickled (DataLoader workers open their own)."""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Hashable

import numpy as np
from torch.utils.data import Dataset


def dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations by 90 degrees and flips of an HxWxC array (k in 0..7)."""
    out = np.rot90(patch, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def unit_range(patch: np.ndarray) -> np.ndarray:
    """uint8 H x W x C -> float32 C x H x W in [-1, 1]."""
    return np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 H x W labels -> float32 K x H x W; labels outside 0..K-1 (ignored regions) are all zero."""
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


class SeededDataset(Dataset):
    """A dataset whose sample i is a pure function of (seed, i), so any position of a stream can be resumed.

    Subclasses pass `augment` and `seed` to this constructor. With `augment`, sample i gets one of the 8
    rotations/flips drawn from (seed, i); `without_augmentation()` gives a copy that serves the same items
    unaugmented. File handles opened through `handle` belong to one process: a copy made by pickling (a
    DataLoader worker) or a forked process opens its own.
    """

    augment: bool = False
    seed: int = 0
    _handles: dict | None = None
    _handles_pid: int | None = None

    def __init__(self, augment: bool = False, seed: int = 0) -> None:
        self.augment = augment
        self.seed = seed

    def sample_rng(self, index: int, *stream: int) -> np.random.Generator:
        """The random stream of sample `index` (and of sub-stream `stream`, where a sample draws several)."""
        return np.random.default_rng([self.seed, index, *stream])

    def draw_dihedral(self, rng: np.random.Generator) -> int:
        """k in 0..7 drawn from `rng` when augmenting; 0 (and nothing drawn) otherwise."""
        return int(rng.integers(8)) if self.augment else 0

    def dihedral_k(self, index: int) -> int:
        """The rotation/flip of sample `index`: the first draw of its stream, 0 without augmentation."""
        return self.draw_dihedral(self.sample_rng(index))

    def oriented(self, patch: np.ndarray, index: int) -> np.ndarray:
        """`patch` (H x W x ...) under the rotation/flip of sample `index`; unchanged without augmentation."""
        return dihedral(patch, self.dihedral_k(index)) if self.augment else patch

    def styled_sample(self, index: int, patch: np.ndarray, labels: np.ndarray, style: np.ndarray,
                      meta: dict[str, Any]) -> dict[str, Any]:
        """The sample of `index` from its unaugmented uint8 patch and labels: oriented, in [-1, 1], one-hot (of
        the subclass's `num_classes`), with its style crops and meta."""
        k = self.dihedral_k(index)
        return {
            "image": unit_range(dihedral(patch, k)),
            "semantic": one_hot(np.ascontiguousarray(dihedral(labels, k)), self.num_classes),
            "style": style,
            "meta": meta,
        }

    def wrap(self, index: int) -> int:
        """The item of stream position `index`: indices past the end wrap around (for endless samplers)."""
        if index < 0:
            raise IndexError(f"{type(self).__name__} index must be >= 0, got {index}")
        return index % len(self)

    def without_augmentation(self) -> "SeededDataset":
        """A copy that serves the same items without augmentation (this dataset is left as it is)."""
        clone = copy.copy(self)
        clone.augment = False
        return clone

    def handle(self, key: Hashable, opener: Callable[[], Any]) -> Any:
        """The handle `key` of this process, opened with `opener()` on first use."""
        pid = os.getpid()
        if self._handles is None or self._handles_pid != pid:
            self._handles, self._handles_pid = {}, pid
        found = self._handles.get(key)
        if found is None:
            found = self._handles[key] = opener()
        return found

    def close(self) -> None:
        """Close the handles this process opened (they are reopened on the next read)."""
        if self._handles is not None and self._handles_pid == os.getpid():
            for opened in self._handles.values():
                closer = getattr(opened, "close", None)
                if closer is not None:
                    closer()
        self._handles, self._handles_pid = None, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_handles", None)
        state.pop("_handles_pid", None)
        return state

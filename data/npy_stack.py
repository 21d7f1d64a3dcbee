"""Tile stacks: many equally sized RGB tiles in one .npy file, read memory-mapped.

A stack holds uint8 tiles of shape (N, H, W, 3), or (N, S, H, W, 3) with S slices per tile (one is picked
with `--stack_slice`). The last `test_size` tiles are the held-out test split, the rest is the train split.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import openslide
import torch

from common.files import atomic_path, read_csv_rows
from data.annotations import DataError
from data.base import SeededDataset
from data.splits import tail_split
from data.wsi import read_patch, to_model_range

STACK_SPLITS = ("train", "test", "all")
WHITE_MEAN = 220.0
ATTEMPTS_PER_TILE = 50
TILE_NAME = re.compile(r"tile_(\d+)")


def tile_name(number: int) -> str:
    """The name of global tile `number` (tile_000042)."""
    return f"tile_{number:06d}"


def open_stack(path: str | Path) -> np.ndarray:
    """The stack at `path`, memory-mapped read-only, after checking its dtype and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tile stack {path} does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"tile stack {path} is not a readable .npy array: {err}") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataError(f"tile stack {path}: expected one .npy array, found an archive of several")
    if array.dtype != np.uint8:
        raise DataError(f"tile stack {path}: expected dtype uint8, got {array.dtype}")
    if array.ndim not in (4, 5) or array.shape[-1] != 3 or min(array.shape) < 1:
        raise DataError(f"tile stack {path}: expected shape (N, H, W, 3) or (N, S, H, W, 3), got {array.shape}")
    return array


def split_tiles(count: int, split: str, test_size: int) -> range:
    """Global tile numbers of a split: test is the last `test_size` tiles, train the rest, all every tile."""
    if split not in STACK_SPLITS:
        raise DataError(f"split: expected one of {STACK_SPLITS}, got {split!r}")
    if not 0 <= test_size < count:
        raise DataError(f"test_size must be between 0 and the number of tiles - 1 ({count - 1}), got {test_size}")
    if split == "all":
        return range(count)
    train, test = tail_split(count, test_size)
    return train if split == "train" else test


class TileStack(SeededDataset):
    """The tiles of one split of a stack: `image` (float32 3 x H x W in [-1, 1]), `meta`, and `label` if given.

    `indices` restricts the split to these global tile numbers (each must belong to the split), in the order
    given. `labels` maps global tile numbers to cluster ids; every selected tile needs one. With `augment`,
    sample i gets one of the 8 rotations/flips, drawn from (seed, i). Indices past the end wrap around the
    tiles (for endless samplers). The memory map is opened lazily in each worker and never pickled.
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        test_size: int = 1000,
        slice_index: int = 0,
        augment: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        labels: Mapping[int, int] | None = None,
    ):
        self.path = Path(path)
        array = open_stack(self.path)
        self.count = int(array.shape[0])
        self.tile_shape = tuple(int(s) for s in array.shape[-3:])
        has_slices = array.ndim == 5
        slices = int(array.shape[1]) if has_slices else 1
        del array
        if not 0 <= slice_index < slices:
            raise DataError(
                f"--stack_slice {slice_index} is out of range: stack {self.path} has {slices} slice(s) per tile "
                f"(expected 0..{slices - 1})"
            )
        self.slice_index = slice_index if has_slices else None
        members = split_tiles(self.count, split, test_size)
        if indices is None:
            self.tiles = tuple(members)
        else:
            self.tiles = tuple(int(n) for n in indices)
            outside = [n for n in self.tiles if n not in members]
            if outside:
                raise DataError(
                    f"tile stack {self.path}: tiles {outside[:5]}{' ...' if len(outside) > 5 else ''} are not in "
                    f"the {split} split (tiles {members.start}..{members.stop - 1})"
                )
        if not self.tiles:
            raise DataError(f"tile stack {self.path}: the {split} split selects no tiles")
        self.labels = None if labels is None else {int(k): int(v) for k, v in labels.items()}
        if self.labels is not None:
            missing = [n for n in self.tiles if n not in self.labels]
            if missing:
                raise DataError(
                    f"tile stack {self.path}: no label for tiles {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                )
        self.split = split
        super().__init__(augment, seed)

    def _stack(self) -> np.ndarray:
        return self.handle("stack", lambda: open_stack(self.path))

    @property
    def names(self) -> list[str]:
        """Names of the selected tiles, in dataset order."""
        return [tile_name(n) for n in self.tiles]

    def __len__(self) -> int:
        return len(self.tiles)

    def tile(self, number: int) -> np.ndarray:
        """uint8 H x W x 3 copy of global tile `number` (of the chosen slice), unaugmented."""
        array = self._stack()
        data = array[number] if self.slice_index is None else array[number, self.slice_index]
        return np.array(data)

    def __getitem__(self, index: int) -> dict:
        number = self.tiles[self.wrap(index)]
        patch = self.oriented(self.tile(number), index)
        sample = {
            "image": torch.from_numpy(to_model_range(patch)),
            "meta": {"tile": number, "name": tile_name(number)},
        }
        if self.labels is not None:
            sample["label"] = self.labels[number]
        return sample


def write_stack(path: str | Path, tiles_uint8: np.ndarray) -> Path:
    """Save a (N, H, W, 3) or (N, S, H, W, 3) uint8 stack atomically (temporary file, then a rename)."""
    path = Path(path)
    tiles = np.asarray(tiles_uint8)
    if tiles.dtype != np.uint8 or tiles.ndim not in (4, 5) or tiles.shape[-1] != 3 or min(tiles.shape) < 1:
        raise DataError(
            f"tile stack {path}: expected a uint8 array of shape (N, H, W, 3) or (N, S, H, W, 3), "
            f"got {tiles.dtype} {tiles.shape}"
        )
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, tiles, allow_pickle=False)
    return path


def _open_slides(slide_paths: Sequence[str | Path], tile_size: int) -> list[openslide.OpenSlide]:
    slides: list[openslide.OpenSlide] = []
    try:
        for path in slide_paths:
            try:
                slide = openslide.OpenSlide(str(path))
            except (openslide.OpenSlideError, OSError) as err:
                raise DataError(f"slide file {path} cannot be read by openslide: {err}") from None
            slides.append(slide)
            width, height = slide.dimensions
            if tile_size > min(width, height):
                raise DataError(f"--tile_size {tile_size} is larger than slide {path} ({width} x {height} px)")
    except BaseException:
        for slide in slides:
            slide.close()
        raise
    return slides


def tiles_from_slides(
    slide_paths: Sequence[str | Path], tile_size: int, count: int, seed: int = 0
) -> np.ndarray:
    """`count` random tissue tiles (uint8, count x tile x tile x 3) read at level 0, deterministic by seed.

    A slide is drawn in proportion to its area, then a tile position uniformly on it; tiles whose mean over
    all pixels exceeds 220 (mostly white background) are skipped.
    """
    if not slide_paths:
        raise DataError("tiles_from_slides: no slide files given")
    if tile_size < 1 or count < 1:
        raise DataError(f"tiles_from_slides: tile_size and count must be positive, got {tile_size} and {count}")
    slides = _open_slides(slide_paths, tile_size)
    try:
        dims = np.array([s.dimensions for s in slides], dtype=np.float64)
        weights = dims.prod(axis=1) / dims.prod(axis=1).sum()
        rng = np.random.default_rng(seed)
        tiles = np.empty((count, tile_size, tile_size, 3), dtype=np.uint8)
        found = 0
        for _ in range(count * ATTEMPTS_PER_TILE):
            index = int(rng.choice(len(slides), p=weights))
            width, height = slides[index].dimensions
            x0 = int(rng.integers(0, width - tile_size + 1))
            y0 = int(rng.integers(0, height - tile_size + 1))
            patch = read_patch(slides[index], x0 + tile_size // 2, y0 + tile_size // 2, tile_size)
            if patch.mean() > WHITE_MEAN:
                continue
            tiles[found] = patch
            found += 1
            if found == count:
                return tiles
    finally:
        for slide in slides:
            slide.close()
    raise DataError(
        f"found only {found} tissue tiles of {tile_size} px (mean <= {WHITE_MEAN:g}) in "
        f"{count * ATTEMPTS_PER_TILE} random positions on {', '.join(str(p) for p in slide_paths)}; "
        f"expected {count}"
    )


def labels_from_csv(path: str | Path) -> dict[int, int]:
    """Tile number -> cluster id from a CSV with a `cluster` column and a `tile` (number) or `name` column."""
    path = Path(path)
    rows = read_csv_rows(path, ("cluster",), "cluster file")
    columns = rows[0].keys() if rows else ()
    key = "tile" if "tile" in columns else "name" if "name" in columns else None
    if rows and key is None:
        raise DataError(f"cluster file {path}: expected columns cluster and tile (or name)")
    labels: dict[int, int] = {}
    for line, row in enumerate(rows, start=2):
        raw = (row[key] or "").strip()
        match = TILE_NAME.fullmatch(raw)
        try:
            number = int(match.group(1)) if match else int(raw)
            labels[number] = int(row["cluster"] or "")
        except ValueError:
            raise DataError(
                f"{path}, line {line}: expected a tile number (or tile_NNNNNN) and an integer cluster, "
                f"got {key}={raw!r}, cluster={row['cluster']!r}"
            ) from None
    if not labels:
        raise DataError(f"{path}: no rows")
    return labels

"""PatchCamelyon: 96 px H&E patches labelled 1 when their centre holds metastatic tumour tissue.

Two layouts are read. The original h5 release, `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`
(dataset `x`: uint8 (N, 96, 96, 3); dataset `y`: labels (N, 1, 1, 1)), and the Kaggle release,
`train/{id}.tif` with `train_labels.csv` (`id,label`). Both give the sample contract: `image` (float32
3 x c x c in [-1, 1]), `label` (0 or 1) and `meta` (`index`, `name`). Fake sets in both layouts are written by
`data.synthetic_pcam`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data.annotations import DataError
from data.base import SeededDataset
from data.splits import draw_held_out, partition, share_of
from data.wsi import to_model_range

PCAM_SPLITS = ("train", "valid", "test")
PATCH_SIZE = 96
H5_KEYS = {"x": "x", "y": "y"}
KAGGLE_IMAGES = "train"
KAGGLE_LABELS = "train_labels.csv"
KAGGLE_SUFFIX = ".tif"


def h5_path(root: str | Path, split: str, kind: str) -> Path:
    """The file of `split` holding the images (`kind="x"`) or the labels (`kind="y"`)."""
    if split not in PCAM_SPLITS:
        raise DataError(f"PatchCamelyon split: expected one of {PCAM_SPLITS}, got {split!r}")
    return Path(root) / f"camelyonpatch_level_2_split_{split}_{kind}.h5"


def is_pcam_h5(root: str | Path) -> bool:
    """True if `root` holds the x and y files of at least one PatchCamelyon h5 split."""
    return any(h5_path(root, s, "x").is_file() and h5_path(root, s, "y").is_file() for s in PCAM_SPLITS)


def is_pcam_kaggle(root: str | Path) -> bool:
    """True if `root` holds the Kaggle layout: a `train/` folder and `train_labels.csv`."""
    root = Path(root)
    return (root / KAGGLE_IMAGES).is_dir() and (root / KAGGLE_LABELS).is_file()


def check_crop(crop: int | None, size: int, source: str) -> int:
    """The side of the centre crop: `crop`, or the full `size` when None."""
    if crop is None:
        return size
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or not 1 <= crop <= size:
        raise DataError(f"crop: expected an integer between 1 and {size} (the patch size of {source}), got {crop!r}")
    return int(crop)


def check_label_filter(label_filter: int | None) -> None:
    if label_filter is not None and label_filter not in (0, 1):
        raise DataError(f"label_filter: expected None, 0 or 1, got {label_filter!r}")


def centre_window(size: int, crop: int) -> slice:
    """The rows (or columns) of a centred crop of `crop` px out of `size`."""
    start = (size - crop) // 2
    return slice(start, start + crop)


def make_sample(patch: np.ndarray, label: int, index: int, name: str) -> dict:
    """The sample of one uint8 H x W x 3 patch."""
    return {
        "image": torch.from_numpy(to_model_range(np.ascontiguousarray(patch))),
        "label": int(label),
        "meta": {"index": int(index), "name": name},
    }


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        packed = path.with_name(path.name + ".gz")
        hint = f" ({packed.name} is there: decompress it with gunzip first)" if packed.is_file() else ""
        raise DataError(f"PatchCamelyon file {path} does not exist{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"PatchCamelyon file {path} is not a readable HDF5 file: {err}") from None


def _dataset(handle: h5py.File, path: Path, key: str) -> h5py.Dataset:
    item = handle.get(key)
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"PatchCamelyon file {path}: expected a dataset {key!r}, found keys {sorted(handle.keys())}")
    return item


def read_h5_labels(x_path: Path, y_path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """(labels as int64 (N,), patch (height, width)) after checking both files agree."""
    with _open_h5(x_path) as x_file:
        x = _dataset(x_file, x_path, H5_KEYS["x"])
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or min(x.shape) < 1:
            raise DataError(
                f"PatchCamelyon file {x_path}: expected uint8 patches of shape (N, H, W, 3), "
                f"got {x.dtype} {x.shape}"
            )
        count, patch_shape = int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))
    with _open_h5(y_path) as y_file:
        y = _dataset(y_file, y_path, H5_KEYS["y"])
        if y.ndim < 1 or int(np.prod(y.shape[1:])) != 1 or y.dtype.kind not in "iub":
            raise DataError(
                f"PatchCamelyon file {y_path}: expected integer labels of shape (N, 1, 1, 1), got {y.dtype} {y.shape}"
            )
        labels = np.asarray(y[()]).reshape(-1).astype(np.int64)
    if len(labels) != count:
        raise DataError(
            f"PatchCamelyon files {x_path} and {y_path} disagree: {count} patches but {len(labels)} labels"
        )
    if not np.isin(labels, (0, 1)).all():
        found = sorted(set(labels.tolist()))[:5]
        raise DataError(f"PatchCamelyon file {y_path}: expected labels 0 or 1, found {found}")
    return labels, patch_shape


class PCamH5(SeededDataset):
    """One split of the PatchCamelyon h5 release.

    `crop` takes a centred crop of that many px (read from the file at that size); `label_filter` keeps only
    patches of class 0 or 1; `augment` applies one of the 8 rotations/flips drawn from (seed, index). Indices
    past the end wrap around (for endless samplers). The image file is opened lazily once per worker process
    and never pickled.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop: int | None = None,
        label_filter: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ):
        self.x_path = h5_path(root, split, "x")
        self.y_path = h5_path(root, split, "y")
        check_label_filter(label_filter)
        all_labels, (height, width) = read_h5_labels(self.x_path, self.y_path)
        self.crop = check_crop(crop, min(height, width), str(self.x_path))
        self.window = (centre_window(height, self.crop), centre_window(width, self.crop))
        keep = np.arange(len(all_labels)) if label_filter is None else np.flatnonzero(all_labels == label_filter)
        if len(keep) == 0:
            raise DataError(f"PatchCamelyon file {self.y_path}: no patches with label {label_filter}")
        self.rows = keep.astype(np.int64)
        self.labels = all_labels[self.rows]
        self.split = split
        super().__init__(augment, seed)

    def _images(self) -> h5py.Dataset:
        return self.handle("x", lambda: _open_h5(self.x_path))[H5_KEYS["x"]]

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, row: int) -> str:
        """The name of patch `row` of the file (pcam_train_000042)."""
        return f"pcam_{self.split}_{row:06d}"

    def __getitem__(self, index: int) -> dict:
        position = self.wrap(index)
        row = int(self.rows[position])
        patch = np.asarray(self._images()[row, self.window[0], self.window[1], :])
        return make_sample(self.oriented(patch, index), self.labels[position], row, self.name(row))


def read_kaggle_labels(path: Path) -> dict[str, tuple[int, int]]:
    """id -> (row, label) from the Kaggle `train_labels.csv` (rows counted from 0, header excluded)."""
    if not path.is_file():
        raise DataError(f"PatchCamelyon label file {path} does not exist")
    entries: dict[str, tuple[int, int]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"id", "label"} <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: expected a CSV header with columns id and label, got {reader.fieldnames}")
        for row, record in enumerate(reader):
            line = row + 2
            patch_id, raw = (record["id"] or "").strip(), (record["label"] or "").strip()
            if not patch_id or raw not in ("0", "1"):
                raise DataError(f"{path}, line {line}: expected an id and a label 0 or 1, got {patch_id!r}, {raw!r}")
            if patch_id in entries:
                raise DataError(f"{path}, line {line}: id {patch_id} appears twice")
            entries[patch_id] = (row, int(raw))
    if not entries:
        raise DataError(f"{path}: no rows")
    return entries


class PCamKaggle(SeededDataset):
    """The Kaggle PatchCamelyon training set: `root/train/{id}.tif` labelled by `root/train_labels.csv`.

    `ids` selects patches (default: every id of the CSV, in its order); `crop`, `label_filter`, `augment`,
    `seed` and wrapping indices behave as in PCamH5. `meta["index"]` is the id's row in the CSV.
    """

    def __init__(
        self,
        root: str | Path,
        ids: Sequence[str] | None = None,
        crop: int | None = None,
        label_filter: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.image_dir = self.root / KAGGLE_IMAGES
        labels_path = self.root / KAGGLE_LABELS
        check_label_filter(label_filter)
        self.crop = check_crop(crop, PATCH_SIZE, str(self.image_dir))
        entries = read_kaggle_labels(labels_path)
        chosen = list(entries) if ids is None else [str(i) for i in ids]
        unknown = [i for i in chosen if i not in entries]
        if unknown:
            raise DataError(f"{labels_path}: no label for ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        if label_filter is not None:
            chosen = [i for i in chosen if entries[i][1] == label_filter]
        if not chosen:
            raise DataError(f"{labels_path}: the selection holds no patches (label_filter={label_filter})")
        if not self.image_dir.is_dir():
            raise DataError(f"PatchCamelyon image folder {self.image_dir} does not exist")
        present = {entry.name for entry in os.scandir(self.image_dir)}
        missing = [i for i in chosen if i + KAGGLE_SUFFIX not in present]
        if missing:
            raise DataError(
                f"PatchCamelyon image {self.image_dir / (missing[0] + KAGGLE_SUFFIX)} does not exist "
                f"({len(missing)} of the selected ids have no image)"
            )
        self.ids = chosen
        self.rows = np.array([entries[i][0] for i in chosen], dtype=np.int64)
        self.labels = np.array([entries[i][1] for i in chosen], dtype=np.int64)
        super().__init__(augment, seed)
        self.window = centre_window(PATCH_SIZE, self.crop)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, patch_id: str) -> np.ndarray:
        """uint8 96 x 96 x 3 pixels of patch `patch_id`."""
        path = self.image_dir / (patch_id + KAGGLE_SUFFIX)
        try:
            with Image.open(path) as image:
                patch = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"PatchCamelyon image {path} does not exist") from None
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"PatchCamelyon image {path} cannot be read: {err}") from None
        if patch.shape != (PATCH_SIZE, PATCH_SIZE, 3):
            raise DataError(
                f"PatchCamelyon image {path}: expected {PATCH_SIZE} x {PATCH_SIZE} px, got {patch.shape[:2]}"
            )
        return patch

    def __getitem__(self, index: int) -> dict:
        position = self.wrap(index)
        patch_id = self.ids[position]
        patch = self.read(patch_id)[self.window, self.window]
        return make_sample(self.oriented(patch, index), self.labels[position], self.rows[position], patch_id)


def kaggle_split(ids: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): a random share `val_fraction` (at least one id) held out, deterministic by
    seed; both lists keep the order of `ids`."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise DataError("kaggle_split: ids must be unique")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction: expected a share in (0, 1), got {val_fraction!r}")
    held = max(1, share_of(len(ids), val_fraction))
    if held >= len(ids):
        raise DataError(
            f"kaggle_split: {len(ids)} ids leave none for training with val_fraction={val_fraction} (expected >= 2 ids)"
        )
    validation = draw_held_out(ids, held, seed)
    return partition(ids, lambda i: i in validation)

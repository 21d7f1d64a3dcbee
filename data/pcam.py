"""PatchCamelyon: 96 px H&E patches labelled 1 when their centre holds metastatic tumour tissue.

Two layouts are read. The original h5 release, `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`
(dataset `x`: uint8 (N, 96, 96, 3); dataset `y`: labels (N, 1, 1, 1)), and the Kaggle release,
`train/{id}.tif` with `train_labels.csv` (`id,label`). Both give the sample contract: `image` (float32
3 x c x c in [-1, 1]), `label` (0 or 1) and `meta` (`index`, `name`). The fake writers paint small sets in the
same layouts, with dense dark irregular nuclei on tumour patches and sparse pale nuclei on the others.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from data.annotations import DataError
from data.synthetic import (
    Canvas,
    draw_nucleus,
    local_grid,
    place_nuclei,
    rotate,
    smooth_noise,
    soft_inside,
    stain_to_rgb,
    stroma,
)
from data.wsi import dihedral, to_model_range

PCAM_SPLITS = ("train", "valid", "test")
PATCH_SIZE = 96
H5_KEYS = {"x": "x", "y": "y"}
KAGGLE_IMAGES = "train"
KAGGLE_LABELS = "train_labels.csv"
KAGGLE_SUFFIX = ".tif"
TUMOUR_DENSITY = (32.0, 48.0)
NORMAL_DENSITY = (3.0, 7.0)


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


def make_sample(
    patch: np.ndarray, label: int, index: int, name: str, augment: bool, seed: int, position: int
) -> dict:
    """The sample of one uint8 H x W x 3 patch; `augment` applies one of 8 dihedral maps drawn from (seed, position)."""
    if augment:
        patch = dihedral(patch, int(np.random.default_rng([seed, position]).integers(8)))
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


class PCamH5(Dataset):
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
        self.augment = augment
        self.seed = seed
        self._file: h5py.File | None = None
        self._owner_pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_owner_pid"] = None
        return state

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._owner_pid != os.getpid():
            self._file = _open_h5(self.x_path)
            self._owner_pid = os.getpid()
        return self._file[H5_KEYS["x"]]

    def close(self) -> None:
        """Close this process' image file (it is reopened on the next read)."""
        if self._file is not None and self._owner_pid == os.getpid():
            self._file.close()
        self._file = None
        self._owner_pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, row: int) -> str:
        """The name of patch `row` of the file (pcam_train_000042)."""
        return f"pcam_{self.split}_{row:06d}"

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            raise IndexError(f"PCamH5 index must be >= 0, got {index}")
        position = index % len(self.rows)
        row = int(self.rows[position])
        patch = np.asarray(self._images()[row, self.window[0], self.window[1], :])
        return make_sample(patch, self.labels[position], row, self.name(row), self.augment, self.seed, index)


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


class PCamKaggle(Dataset):
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
        self.augment = augment
        self.seed = seed
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
        if index < 0:
            raise IndexError(f"PCamKaggle index must be >= 0, got {index}")
        position = index % len(self.ids)
        patch_id = self.ids[position]
        patch = self.read(patch_id)[self.window, self.window]
        return make_sample(
            patch, self.labels[position], self.rows[position], patch_id, self.augment, self.seed, index
        )


def kaggle_split(ids: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): a random share `val_fraction` (at least one id) held out, deterministic by
    seed; both lists keep the order of `ids`."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise DataError("kaggle_split: ids must be unique")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction: expected a share in (0, 1), got {val_fraction!r}")
    held = max(1, round(len(ids) * val_fraction))
    if held >= len(ids):
        raise DataError(
            f"kaggle_split: {len(ids)} ids leave none for training with val_fraction={val_fraction} (expected >= 2 ids)"
        )
    validation = np.zeros(len(ids), dtype=bool)
    validation[np.random.default_rng(seed).permutation(len(ids))[:held]] = True
    return [i for i, v in zip(ids, validation) if not v], [i for i, v in zip(ids, validation) if v]


# ---------------------------------------------------------------------------------------------
# Fake sets in the real layouts
# ---------------------------------------------------------------------------------------------


def draw_tumour_nucleus(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A tumour nucleus: large, dark, hyperchromatic, with an irregular (notched, lumpy) outline."""
    a = rng.uniform(4.5, 7.5)
    b = a * rng.uniform(0.6, 0.95)
    yy, xx = local_grid(int(np.ceil(a)) + 3, tuple(rng.uniform(-0.5, 0.5, 2)))
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    r = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    ragged = (r - 1.0) * b + 0.9 * smooth_noise(rng, yy.shape, 1.5)
    alpha = soft_inside(ragged, 0.5)
    clumps = np.clip(smooth_noise(rng, yy.shape, 1.0), -2.0, 2.0)
    h = rng.uniform(1.4, 2.0) * (0.85 + 0.15 * clumps)
    return alpha, h.astype(np.float32), 0.1


def render_pcam_patch(rng: np.random.Generator, label: int, size: int = PATCH_SIZE) -> np.ndarray:
    """One H&E-like uint8 size x size x 3 patch: tumour (1) packed with dark irregular nuclei, else (0)
    stroma with a few pale nuclei."""
    hematoxylin, eosin, gaps = stroma(rng, size, size)
    canvas = Canvas(hematoxylin + (0.08 if label else 0.0), eosin)
    tissue = 1.0 - gaps
    if label:
        centres = place_nuclei(rng, tissue, rng.uniform(*TUMOUR_DENSITY), np.zeros((0, 2), np.int64))
        draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, float]] = draw_tumour_nucleus
    else:
        centres = place_nuclei(rng, tissue, rng.uniform(*NORMAL_DENSITY), np.zeros((0, 2), np.int64))
        draw = draw_nucleus
    for cy, cx in centres:
        alpha, h, e = draw(rng)
        canvas.paint(int(cy), int(cx), alpha, h, e)
    return stain_to_rgb(rng, canvas)


def fake_patches(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, 96, 96, 3) patches, int labels (n,)): half of each class (one more 0 for odd n), shuffled."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n: expected a positive number of patches, got {n!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    patches = np.stack([render_pcam_patch(rng, int(label)) for label in labels])
    return patches, labels


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise DataError(f"{existing[0]} already exists; choose an empty folder for the fake PatchCamelyon set")


def make_fake_pcam_h5(
    root: str | Path, n: int = 16, seed: int = 0, splits: Sequence[str] = PCAM_SPLITS
) -> Path:
    """Write `n` painted patches per split as the h5 release's x and y files in `root`; returns `root`."""
    root = Path(root)
    targets = [h5_path(root, split, kind) for split in splits for kind in ("x", "y")]
    _refuse_existing(targets)
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        patches, labels = fake_patches(n, seed * len(PCAM_SPLITS) + PCAM_SPLITS.index(split))

        def write_x(path: Path, patches: np.ndarray = patches) -> None:
            with h5py.File(path, "w") as handle:
                handle.create_dataset(H5_KEYS["x"], data=patches, chunks=(1, *patches.shape[1:]))

        def write_y(path: Path, labels: np.ndarray = labels) -> None:
            with h5py.File(path, "w") as handle:
                handle.create_dataset(H5_KEYS["y"], data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))

        _write_atomically(h5_path(root, split, "x"), write_x)
        _write_atomically(h5_path(root, split, "y"), write_y)
    return root


def make_fake_pcam_kaggle(root: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write `n` painted patches as `root/train/{id}.tif` with `root/train_labels.csv`; returns `root`."""
    root = Path(root)
    image_dir, labels_path = root / KAGGLE_IMAGES, root / KAGGLE_LABELS
    _refuse_existing([image_dir, labels_path])
    patches, labels = fake_patches(n, seed)
    id_rng = np.random.default_rng([seed, 1])
    ids = [id_rng.bytes(20).hex() for _ in range(n)]
    image_dir.mkdir(parents=True)
    for patch_id, patch in zip(ids, patches):
        _write_atomically(
            image_dir / (patch_id + KAGGLE_SUFFIX),
            lambda path, patch=patch: tifffile.imwrite(path, patch, photometric="rgb"),
        )

    def write_labels(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label"])
            writer.writerows(zip(ids, labels.tolist()))

    _write_atomically(labels_path, write_labels)
    return root

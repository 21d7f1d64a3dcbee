"""PatchCamelyon readers: h5 and Kaggle layouts, crops, label filters, augmentation, pickling, errors; fake sets."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.annotations import DataError
from data.pcam import (
    PCamH5,
    PCamKaggle,
    h5_path,
    is_pcam_h5,
    is_pcam_kaggle,
    kaggle_split,
)
from data.synthetic_pcam import make_fake_pcam_h5, make_fake_pcam_kaggle
from data.wsi import dihedral

N = 10


@pytest.fixture(scope="module")
def h5_root(tmp_path_factory) -> Path:
    return make_fake_pcam_h5(tmp_path_factory.mktemp("pcam_h5"), n=N, seed=1)


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory) -> Path:
    return make_fake_pcam_kaggle(tmp_path_factory.mktemp("pcam_kaggle"), n=N, seed=2)


def raw(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(h5_path(root, split, "x"), "r") as x, h5py.File(h5_path(root, split, "y"), "r") as y:
        return x["x"][()], y["y"][()]


def model_range(patch: np.ndarray) -> np.ndarray:
    return patch.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def kaggle_labels(root: Path) -> list[tuple[str, int]]:
    with (root / "train_labels.csv").open(newline="") as handle:
        return [(row["id"], int(row["label"])) for row in csv.DictReader(handle)]


def test_fake_h5_files_have_the_real_layout(h5_root):
    for split in ("train", "valid", "test"):
        x, y = raw(h5_root, split)
        assert x.dtype == np.uint8 and x.shape == (N, 96, 96, 3)
        assert y.shape == (N, 1, 1, 1) and set(np.unique(y)) == {0, 1}
    assert is_pcam_h5(h5_root) and not is_pcam_kaggle(h5_root)
    assert not raw(h5_root, "train")[0].tobytes() == raw(h5_root, "valid")[0].tobytes()


def test_fake_tumour_patches_hold_more_dark_nuclei(h5_root):
    x, y = raw(h5_root)
    dark = (x.astype(np.float32).mean(-1) < 150).mean(axis=(1, 2))
    labels = y.reshape(-1)
    assert dark[labels == 1].min() > dark[labels == 0].max()


def test_h5_samples_are_the_file_rows_in_model_range(h5_root):
    x, y = raw(h5_root, "valid")
    data = PCamH5(h5_root, split="valid")
    assert len(data) == N
    for i in (0, 7):
        sample = data[i]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 96, 96)
        np.testing.assert_allclose(sample["image"].numpy(), model_range(x[i]), atol=1e-6)
        assert sample["label"] == int(y[i, 0, 0, 0]) and isinstance(sample["label"], int)
        assert sample["meta"] == {"index": i, "name": f"pcam_valid_{i:06d}"}
    assert -1.0 <= float(data[3]["image"].min()) and float(data[3]["image"].max()) <= 1.0
    assert data[N + 2]["meta"]["index"] == 2  # indices past the end wrap around
    with pytest.raises(IndexError):
        data[-1]


def test_h5_centre_crop_is_the_middle_of_the_patch(h5_root):
    x, _ = raw(h5_root)
    data = PCamH5(h5_root, crop=32)
    assert data[4]["image"].shape == (3, 32, 32)
    np.testing.assert_allclose(data[4]["image"].numpy(), model_range(x[4, 32:64, 32:64]), atol=1e-6)
    np.testing.assert_allclose(PCamH5(h5_root, crop=31)[4]["image"].numpy(), model_range(x[4, 32:63, 32:63]))
    with pytest.raises(DataError, match="crop"):
        PCamH5(h5_root, crop=97)


def test_h5_label_filter_keeps_one_class(h5_root):
    _, y = raw(h5_root)
    labels = y.reshape(-1)
    for label in (0, 1):
        data = PCamH5(h5_root, label_filter=label)
        assert len(data) == int((labels == label).sum())
        rows = [data[i]["meta"]["index"] for i in range(len(data))]
        assert rows == np.flatnonzero(labels == label).tolist()
        assert {data[i]["label"] for i in range(len(data))} == {label}
    with pytest.raises(DataError, match="label_filter"):
        PCamH5(h5_root, label_filter=2)


def test_h5_augmentation_is_a_dihedral_map_fixed_by_seed_and_index(h5_root):
    x, _ = raw(h5_root)
    plain = PCamH5(h5_root, crop=32)
    first, again = PCamH5(h5_root, crop=32, augment=True, seed=5), PCamH5(h5_root, crop=32, augment=True, seed=5)
    other = PCamH5(h5_root, crop=32, augment=True, seed=6)
    maps = []
    for i in range(N):
        image = first[i]["image"].numpy()
        np.testing.assert_array_equal(image, again[i]["image"].numpy())
        matches = [k for k in range(8) if np.array_equal(image, model_range(dihedral(x[i, 32:64, 32:64], k)))]
        assert matches
        maps.append(matches[0])
    assert len(set(maps)) > 1
    assert any(not torch.equal(first[i]["image"], other[i]["image"]) for i in range(N))
    assert first[N + 3]["meta"]["index"] == 3
    assert torch.equal(plain[2]["image"], torch.from_numpy(model_range(x[2, 32:64, 32:64])))


def test_h5_dataset_pickles_without_its_file_and_loads_in_workers(h5_root):
    data = PCamH5(h5_root, crop=16)
    before = data[1]["image"]
    assert data._handles
    copy = pickle.loads(pickle.dumps(data))
    assert copy._handles is None
    assert torch.equal(copy[1]["image"], before)
    batch = next(iter(DataLoader(data, batch_size=4, num_workers=2)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].tolist() == [data[i]["label"] for i in range(4)]
    data.close()
    assert data._handles is None and torch.equal(data[1]["image"], before)


def test_h5_missing_file_is_named(tmp_path, h5_root):
    with pytest.raises(DataError, match="split_train_x.h5 does not exist"):
        PCamH5(tmp_path)
    (tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz").write_bytes(b"")
    with pytest.raises(DataError, match="gunzip"):
        PCamH5(tmp_path)
    with pytest.raises(DataError, match="split"):
        PCamH5(h5_root, split="validation")


def test_h5_length_mismatch_and_missing_key_are_named(tmp_path):
    root = make_fake_pcam_h5(tmp_path, n=4, seed=0, splits=("test",))
    y_path = h5_path(root, "test", "y")
    with h5py.File(y_path, "w") as handle:
        handle.create_dataset("y", data=np.zeros((3, 1, 1, 1), np.uint8))
    with pytest.raises(DataError, match=r"split_test_x\.h5 and .*split_test_y\.h5 disagree: 4 patches but 3 labels"):
        PCamH5(root, split="test")
    with h5py.File(y_path, "w") as handle:
        handle.create_dataset("labels", data=np.zeros((4, 1, 1, 1), np.uint8))
    with pytest.raises(DataError, match=r"split_test_y\.h5: expected a dataset 'y'"):
        PCamH5(root, split="test")
    with pytest.raises(DataError, match="already exists"):
        make_fake_pcam_h5(tmp_path, n=4, seed=0, splits=("test",))


def test_kaggle_reader_follows_the_csv(kaggle_root):
    entries = kaggle_labels(kaggle_root)
    assert is_pcam_kaggle(kaggle_root) and not is_pcam_h5(kaggle_root)
    assert len(entries) == N and len({i for i, _ in entries}) == N
    data = PCamKaggle(kaggle_root)
    assert data.ids == [i for i, _ in entries]
    for row in (0, 5):
        patch_id, label = entries[row]
        sample = data[row]
        assert sample["label"] == label and sample["meta"] == {"index": row, "name": patch_id}
        assert sample["image"].shape == (3, 96, 96)
    picked = PCamKaggle(kaggle_root, ids=[entries[6][0], entries[2][0]], crop=32)
    assert [picked[i]["meta"]["index"] for i in range(2)] == [6, 2]
    np.testing.assert_array_equal(picked[1]["image"].numpy(), data[2]["image"].numpy()[:, 32:64, 32:64])
    ones = PCamKaggle(kaggle_root, label_filter=1)
    assert ones.ids == [i for i, label in entries if label == 1]


def test_kaggle_augmentation_and_split(kaggle_root):
    data = PCamKaggle(kaggle_root, crop=24, augment=True, seed=3)
    same = PCamKaggle(kaggle_root, crop=24, augment=True, seed=3)
    assert all(torch.equal(data[i]["image"], same[i]["image"]) for i in range(N))
    ids = PCamKaggle(kaggle_root).ids
    train, val = kaggle_split(ids, 0.3, seed=0)
    assert len(val) == 3 and sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert train == [i for i in ids if i in train]
    assert kaggle_split(ids, 0.3, seed=0) == (train, val)
    assert kaggle_split(ids, 0.3, seed=1) != (train, val)
    with pytest.raises(DataError, match="val_fraction"):
        kaggle_split(ids, 1.0, seed=0)


def test_kaggle_missing_image_and_unknown_id_are_named(tmp_path):
    root = make_fake_pcam_kaggle(tmp_path / "kaggle", n=4, seed=0)
    entries = kaggle_labels(root)
    (root / "train" / f"{entries[1][0]}.tif").unlink()
    with pytest.raises(DataError, match=f"{entries[1][0]}.tif does not exist"):
        PCamKaggle(root)
    assert len(PCamKaggle(root, ids=[entries[0][0], entries[2][0]])) == 2
    with pytest.raises(DataError, match="no label for ids .'unknown'"):
        PCamKaggle(root, ids=["unknown"])
    loaded = PCamKaggle(root, ids=[entries[3][0]])
    (root / "train" / f"{entries[3][0]}.tif").unlink()
    with pytest.raises(DataError, match=f"{entries[3][0]}.tif does not exist"):
        loaded[0]

"""The dataset classes of data/: which item and which of the 8 rotations/flips sample i of a seed gets, wrap-around,
pickling without open file handles."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import tifffile
import torch
from PIL import Image

from data.annotations import Annotation
from data.base import dihedral
from data.condition_maps import MapOptions, build_maps
from data.monuseg import LayoutPatches
from data.npy_stack import TileStack, write_stack
from data.pcam import PCamH5, PCamKaggle, h5_path
from data.synthetic import write_pyramid
from data.wsi import PatchOptions, WSIEvalPatches, WSITrainPatches, read_patch, to_model_range


def image_of(patch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_model_range(np.ascontiguousarray(patch)))


def same_after_pickling(data, indices) -> None:
    clone = pickle.loads(pickle.dumps(data))
    for index in indices:
        assert torch.equal(clone[index]["image"], data[index]["image"])


def pixels(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# sample i of seed 3 gets rotation/flip STACK_K[i]
STACK_K = [6, 7, 6, 2, 0, 0, 3, 4, 0, 3, 0, 3, 2]


def test_tile_stack_samples(tmp_path: Path):
    tiles = pixels((12, 8, 8, 3), 0)
    path = write_stack(tmp_path / "s.npy", tiles)
    data = TileStack(path, "train", test_size=3, augment=True, seed=3)
    assert len(data) == 9
    for index, k in enumerate(STACK_K):
        assert torch.equal(data[index]["image"], image_of(dihedral(tiles[index % 9], k)))
    plain = TileStack(path, "train", test_size=3, augment=False, seed=3)
    assert all(torch.equal(plain[i]["image"], image_of(tiles[i % 9])) for i in range(12))
    data.tile(0)
    same_after_pickling(data, range(4))
    with pytest.raises(IndexError):
        data[-1]


# PCamH5 of seed 2: H5_K; PCamKaggle of seed 6: KAGGLE_K
H5_K = [6, 2, 4, 7, 6, 6, 1, 5, 4]
KAGGLE_K = [3, 0, 4, 0, 1, 3, 5, 6]


def test_pcam_h5_samples(tmp_path: Path):
    patches, labels = pixels((6, 12, 12, 3), 1), np.array([0, 1, 1, 0, 1, 0], np.uint8)
    with h5py.File(h5_path(tmp_path, "train", "x"), "w") as handle:
        handle.create_dataset("x", data=patches)
    with h5py.File(h5_path(tmp_path, "train", "y"), "w") as handle:
        handle.create_dataset("y", data=labels.reshape(-1, 1, 1, 1))
    data = PCamH5(tmp_path, "train", augment=True, seed=2)
    for index, k in enumerate(H5_K):
        sample = data[index]
        assert torch.equal(sample["image"], image_of(dihedral(patches[index % 6], k)))
        assert sample["label"] == labels[index % 6] and sample["meta"]["index"] == index % 6
    cropped = PCamH5(tmp_path, "train", crop=8, label_filter=1, augment=True, seed=2)
    for index, k in enumerate(H5_K[:5]):
        row = [1, 2, 4][index % 3]
        assert torch.equal(cropped[index]["image"], image_of(dihedral(patches[row, 2:10, 2:10], k)))
    same_after_pickling(data, range(3))
    data.close()
    assert torch.equal(data[1]["image"], image_of(dihedral(patches[1], H5_K[1])))
    with pytest.raises(IndexError):
        data[-1]


def test_pcam_kaggle_samples(tmp_path: Path):
    patches = pixels((4, 96, 96, 3), 2)
    ids = [f"p{i}" for i in range(4)]
    (tmp_path / "train").mkdir()
    for patch_id, patch in zip(ids, patches):
        tifffile.imwrite(tmp_path / "train" / f"{patch_id}.tif", patch, photometric="rgb")
    with (tmp_path / "train_labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "label"), *[(i, n % 2) for n, i in enumerate(ids)]])
    data = PCamKaggle(tmp_path, ids[::-1], augment=True, seed=6)
    for index, k in enumerate(KAGGLE_K):
        row = 3 - index % 4
        sample = data[index]
        assert torch.equal(sample["image"], image_of(dihedral(patches[row], k)))
        assert sample["meta"] == {"index": row, "name": ids[row]} and sample["label"] == row % 2
    same_after_pickling(data, range(3))
    with pytest.raises(IndexError):
        data[-1]


# LayoutPatches of seed 5: LAYOUT_K, drawn first from the stream (seed, i) that then builds the maps
LAYOUT_K = [5, 1, 6, 7, 5, 4, 0, 2, 3, 7]


def test_layout_samples(tmp_path: Path):
    (tmp_path / "images").mkdir()
    (tmp_path / "inst_masks").mkdir()
    tiles = {}
    for n in range(3):
        image = pixels((16, 16, 3), 10 + n)
        inst = np.zeros((16, 16), np.uint16)
        inst[1 + n : 6, 2:9], inst[8:15, 4 + n : 12] = 1, 2
        Image.fromarray(image).save(tmp_path / "images" / f"t{n}.png")
        tifffile.imwrite(tmp_path / "inst_masks" / f"t{n}.tif", inst)
        tiles[f"t{n}"] = (image, inst.astype(np.int64))
    options = MapOptions(hv=True, colour=True)
    data = LayoutPatches(tmp_path, options, augment=True, seed=5)
    for index, k in enumerate(LAYOUT_K):
        image, inst = tiles[f"t{index % 3}"]
        rng = np.random.default_rng([5, index])
        assert int(rng.integers(8)) == k
        sample = data[index]
        assert torch.equal(sample["image"], image_of(dihedral(image, k)))
        assert torch.equal(sample["inst_mask"], torch.from_numpy(np.ascontiguousarray(dihedral(inst, k))))
        maps = build_maps(dihedral(inst, k), dihedral(image, k), options, rng)
        np.testing.assert_array_equal(sample["semantic"].numpy(), maps)
    plain = LayoutPatches(tmp_path, options, augment=False, seed=5)
    for index in range(4):
        image, inst = tiles[f"t{index % 3}"]
        assert torch.equal(plain[index]["image"], image_of(image))
        fixed = MapOptions(hv=True, colour=True, shuffle_colour=False)
        expected = build_maps(inst, image, fixed, np.random.default_rng([5, index]))
        np.testing.assert_array_equal(plain[index]["semantic"].numpy(), expected)
    same_after_pickling(data, range(3))


# WSITrainPatches(seed 7, batch 4, mite_ratio 0.5, max_offset 2): sample i is annotation, dx, dy, k
WSI_DRAWS = [("n4", 2, 1, 3), ("n0", 1, -2, 4), ("m0", 0, -1, 0), ("m2", 0, -1, 0), ("n5", 0, -1, 1),
             ("n5", -2, 2, 7), ("m0", -2, 2, 3), ("m0", 0, -1, 5), ("n4", 2, 0, 0), ("m0", -1, 0, 2)]


def test_wsi_samples(tmp_path: Path):
    write_pyramid(tmp_path / "s.tif", pixels((128, 128, 3), 4), 0.25)
    anns = [Annotation(slide="s.tif", x=20 + 9 * i, y=100 - 7 * i, class_name="m" if i < 4 else "n",
                       label=int(i < 4), soft=float(i < 4), uid=f"m{i}" if i < 4 else f"n{i - 4}") for i in range(10)]
    by_uid = {a.uid: a for a in anns}
    paths = {"s.tif": tmp_path / "s.tif"}
    options = PatchOptions(tile_size=8, max_offset=2, augment=True)
    data = WSITrainPatches(anns, paths, options, batch_size=4, mite_ratio=0.5, seed=7)
    with openslide.OpenSlide(str(paths["s.tif"])) as slide:
        for index, (uid, dx, dy, k) in enumerate(WSI_DRAWS):
            a = by_uid[uid]
            sample = data[index]
            assert sample["meta"]["uid"] == uid and sample["label"] == a.label
            assert torch.equal(sample["image"], image_of(dihedral(read_patch(slide, a.x + dx, a.y + dy, 8), k)))
        evaluation = WSIEvalPatches(anns[:3], paths, PatchOptions(tile_size=8, augment=False))
        for index in range(3):
            assert torch.equal(evaluation[index]["image"], image_of(read_patch(slide, anns[index].x, anns[index].y, 8)))
    same_after_pickling(data, range(4))
    same_after_pickling(evaluation, range(2))


def test_without_augmentation_is_an_unaugmented_copy(tmp_path: Path):
    tiles = pixels((6, 8, 8, 3), 0)
    stack = TileStack(write_stack(tmp_path / "s.npy", tiles), "all", test_size=0, augment=True, seed=3)
    stack.tile(0)
    plain = stack.without_augmentation()
    assert plain is not stack and stack.augment and not plain.augment
    assert all(torch.equal(plain[i]["image"], image_of(tiles[i % 6])) for i in range(8))
    assert torch.equal(stack[0]["image"], image_of(dihedral(tiles[0], STACK_K[0])))

    write_pyramid(tmp_path / "w.tif", pixels((64, 64, 3), 4), 0.25)
    anns = [Annotation(slide="w.tif", x=30, y=30, class_name="m", label=1, soft=1.0, uid="0")]
    options = PatchOptions(tile_size=8, augment=True)
    data = WSITrainPatches(anns, {"w.tif": tmp_path / "w.tif"}, options, batch_size=2, mite_ratio=None, seed=1)
    data[0]
    plain = data.without_augmentation()
    assert data.augment and data.options is options and not plain.augment and not plain.options.augment
    with openslide.OpenSlide(str(tmp_path / "w.tif")) as slide:
        centred = image_of(read_patch(slide, 30, 30, 8))
    assert all(torch.equal(plain[i]["image"], centred) for i in range(6))
    assert any(not torch.equal(data[i]["image"], centred) for i in range(6))


def test_handles_are_opened_per_process_and_never_pickled(tmp_path: Path):
    stack = TileStack(write_stack(tmp_path / "s.npy", pixels((4, 8, 8, 3), 0)), "all", test_size=0)
    stack[0]
    assert stack._handles
    clone = pickle.loads(pickle.dumps(stack))
    assert "_handles" not in clone.__dict__ and torch.equal(clone[1]["image"], stack[1]["image"])
    stack.close()
    assert stack._handles is None and torch.equal(stack[1]["image"], clone[1]["image"])

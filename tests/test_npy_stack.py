"""Tile stacks: splits, slices, value ranges, deterministic augmentation, labels, pickling, errors; tiles from slides."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.annotations import DataError
from data.npy_stack import TileStack, labels_from_csv, tiles_from_slides, write_stack
from data.synthetic import synthetic_paths, write_pyramid
from data.wsi import dihedral


def random_tiles(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture()
def stack4(tmp_path) -> tuple[Path, np.ndarray]:
    tiles = random_tiles((10, 16, 12, 3))
    return write_stack(tmp_path / "tiles.npy", tiles), tiles


@pytest.fixture()
def stack5(tmp_path) -> tuple[Path, np.ndarray]:
    tiles = random_tiles((6, 3, 8, 8, 3), seed=1)
    return write_stack(tmp_path / "slices.npy", tiles), tiles


def expected_image(tile: np.ndarray) -> np.ndarray:
    return tile.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def test_splits_hold_out_the_last_tiles(stack4):
    path, tiles = stack4
    train = TileStack(path, split="train", test_size=3)
    test = TileStack(path, split="test", test_size=3)
    every = TileStack(path, split="all", test_size=3)
    assert (len(train), len(test), len(every)) == (7, 3, 10)
    assert [train[i]["meta"]["tile"] for i in range(len(train))] == list(range(7))
    assert [test[i]["meta"]["tile"] for i in range(len(test))] == [7, 8, 9]
    assert test.names == ["tile_000007", "tile_000008", "tile_000009"]
    assert test[1]["meta"]["name"] == "tile_000008"
    assert TileStack(path, split="train", test_size=0).tiles == tuple(range(10))


def test_images_are_the_tiles_in_model_range(stack4):
    path, tiles = stack4
    data = TileStack(path, split="all", test_size=2)
    for i in (0, 4, 9):
        image = data[i]["image"]
        assert image.dtype == torch.float32 and image.shape == (3, 16, 12)
        np.testing.assert_allclose(image.numpy(), expected_image(tiles[i]), atol=1e-6)
    assert float(data[0]["image"].min()) >= -1.0 and float(data[0]["image"].max()) <= 1.0
    assert "label" not in data[0]
    assert data[12]["meta"]["tile"] == 2  # indices past the end wrap around


def test_slice_index_picks_the_slice_of_a_5d_stack(stack5):
    path, tiles = stack5
    data = TileStack(path, split="train", test_size=2, slice_index=2)
    assert len(data) == 4 and data[0]["image"].shape == (3, 8, 8)
    np.testing.assert_allclose(data[3]["image"].numpy(), expected_image(tiles[3, 2]), atol=1e-6)
    first = TileStack(path, split="train", test_size=2)
    np.testing.assert_allclose(first[3]["image"].numpy(), expected_image(tiles[3, 0]), atol=1e-6)
    with pytest.raises(DataError, match="--stack_slice 3"):
        TileStack(path, test_size=2, slice_index=3)
    with pytest.raises(DataError, match="--stack_slice"):
        TileStack(path, test_size=2, slice_index=-1)


def test_a_4d_stack_has_only_slice_zero(stack4):
    with pytest.raises(DataError, match="--stack_slice 1"):
        TileStack(stack4[0], test_size=2, slice_index=1)


def test_augmentation_is_one_of_eight_transforms_and_deterministic(stack4):
    path, tiles = stack4
    square = write_stack(path.with_name("square.npy"), random_tiles((5, 8, 8, 3), seed=4))
    raw = np.load(square)
    first = TileStack(square, split="all", test_size=1, augment=True, seed=7)
    again = TileStack(square, split="all", test_size=1, augment=True, seed=7)
    other = TileStack(square, split="all", test_size=1, augment=True, seed=8)
    used = set()
    for i in range(40):
        image = first[i]["image"].numpy()
        np.testing.assert_array_equal(image, again[i]["image"].numpy())
        matches = [k for k in range(8) if np.allclose(image, expected_image(dihedral(raw[i % 5], k)), atol=1e-6)]
        assert matches, f"sample {i} is not a rotation/flip of its tile"
        used.add(matches[0])
    assert len(used) >= 4
    assert any(not torch.equal(first[i]["image"], other[i]["image"]) for i in range(40))


def test_labels_and_index_selection(stack4):
    path, _ = stack4
    labels = {n: n % 3 for n in range(10)}
    data = TileStack(path, split="test", test_size=4, indices=[9, 7], labels=labels)
    assert [data[i]["meta"]["tile"] for i in range(2)] == [9, 7]
    assert [data[i]["label"] for i in range(2)] == [0, 1]
    assert data.names == ["tile_000009", "tile_000007"]
    with pytest.raises(DataError, match="not in the test split"):
        TileStack(path, split="test", test_size=4, indices=[2, 8])
    with pytest.raises(DataError, match="no label for tiles \\[8\\]"):
        TileStack(path, split="test", test_size=4, labels={6: 0, 7: 1, 9: 2})


def test_pickled_dataset_holds_no_memory_map(stack4):
    path, tiles = stack4
    data = TileStack(path, split="all", test_size=2, labels={n: 1 for n in range(10)})
    before = data[5]
    assert data._handles
    blob = pickle.dumps(data)
    assert len(blob) < tiles.nbytes / 4
    copy = pickle.loads(blob)
    assert copy._handles is None
    after = copy[5]
    assert torch.equal(before["image"], after["image"]) and after["label"] == 1
    batches = list(DataLoader(data, batch_size=4, num_workers=2))
    assert torch.cat([b["meta"]["tile"] for b in batches]).tolist() == list(range(10))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 8, 8, 3), np.float32), "expected dtype uint8"),
        (np.zeros((4, 8, 8), np.uint8), "expected shape"),
        (np.zeros((4, 8, 8, 4), np.uint8), "expected shape"),
    ],
)
def test_malformed_stacks_name_the_file(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message) as err:
        TileStack(path, test_size=1)
    assert str(path) in str(err.value)


def test_bad_files_and_arguments(stack4, tmp_path):
    path, _ = stack4
    with pytest.raises(DataError, match="does not exist"):
        TileStack(tmp_path / "missing.npy")
    text = tmp_path / "text.npy"
    text.write_text("not an array")
    with pytest.raises(DataError, match="not a readable .npy array"):
        TileStack(text)
    with pytest.raises(DataError, match="test_size"):
        TileStack(path, test_size=10)
    with pytest.raises(DataError, match="split"):
        TileStack(path, split="validation", test_size=2)
    with pytest.raises(DataError, match="uint8"):
        write_stack(tmp_path / "floats.npy", np.zeros((2, 4, 4, 3), np.float32))


def test_write_stack_is_atomic_and_round_trips(tmp_path):
    tiles = random_tiles((3, 4, 5, 3))
    path = write_stack(tmp_path / "out" / "stack.npy", tiles)
    np.testing.assert_array_equal(np.load(path), tiles)
    assert sorted(p.name for p in path.parent.iterdir()) == ["stack.npy"]


def test_labels_from_csv_reads_numbers_and_names(tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("tile,f1,cluster,confidence\n3,0.5,2,0.9\n11,0.1,0,0.7\n")
    names = tmp_path / "names.csv"
    names.write_text("name,cluster\ntile_000004,1\ntile_000010,3\n")
    assert labels_from_csv(numbers) == {3: 2, 11: 0}
    assert labels_from_csv(names) == {4: 1, 10: 3}
    bad = tmp_path / "bad.csv"
    bad.write_text("tile,cluster\nabc,1\n")
    with pytest.raises(DataError, match="line 2"):
        labels_from_csv(bad)


@pytest.fixture(scope="module")
def slide_files(synthetic_root) -> list[Path]:
    return sorted(synthetic_paths(synthetic_root)["slides_dir"].glob("*.tif"))


def test_tiles_from_slides_are_tissue_and_deterministic(slide_files):
    tiles = tiles_from_slides(slide_files, 32, 20, seed=5)
    assert tiles.shape == (20, 32, 32, 3) and tiles.dtype == np.uint8
    assert tiles.reshape(20, -1).mean(axis=1).max() <= 220
    np.testing.assert_array_equal(tiles, tiles_from_slides(slide_files, 32, 20, seed=5))
    assert not np.array_equal(tiles, tiles_from_slides(slide_files, 32, 20, seed=6))
    assert len({t.tobytes() for t in tiles}) == 20


def test_mostly_white_tiles_are_skipped(tmp_path):
    image = np.full((512, 512, 3), 255, np.uint8)
    image[:, 256:] = random_tiles((512, 256, 3), seed=2) // 2
    half = tmp_path / "half.tif"
    write_pyramid(half, image, 0.25)
    tiles = tiles_from_slides([half], 64, 30, seed=0)
    assert tiles.reshape(30, -1).mean(axis=1).max() <= 220
    white = tmp_path / "white.tif"
    write_pyramid(white, np.full((512, 512, 3), 255, np.uint8), 0.25)
    with pytest.raises(DataError, match="found only 0 tissue tiles"):
        tiles_from_slides([white], 64, 2, seed=0)


def test_tiles_from_slides_errors(slide_files, tmp_path):
    with pytest.raises(DataError, match="larger than slide"):
        tiles_from_slides(slide_files, 1024, 2)
    missing = tmp_path / "missing.tif"
    with pytest.raises(DataError, match=str(missing)):
        tiles_from_slides([missing], 32, 2)

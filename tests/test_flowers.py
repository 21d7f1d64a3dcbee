"""Oxford-102 flowers reader for style-extracting diffusion, on a fake set in the same layout."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from conftest import check_styled_item
from data.annotations import DataError
from data.flowers import FAKE_COLOURS, Flowers, foreground, open_flowers, write_fake_flowers
from data.splits import pick_labelled

SIZE = 32


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """3 classes x 8 images: 4 train, 2 validation, 2 heldout per class."""
    return write_fake_flowers(tmp_path_factory.mktemp("flowers") / "root", classes=3, per_class=8, size=48, seed=1)


@pytest.fixture(scope="module")
def train(fake_root) -> Flowers:
    return Flowers(open_flowers(fake_root), "train", tile_size=SIZE, num_style=3, augment=True, seed=0)


def copy_root(fake_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fake_root, tmp_path / "copy"))


def test_item_shapes_and_ranges(train):
    item = train[5]
    check_styled_item(item, num_classes=2, num_style=3, size=SIZE)
    assert item["meta"] == {"slide": train.unit_of(5), "x": 0, "y": 0}
    assert train.num_classes == 2
    image, labels = train.layout(5)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert labels.shape == (SIZE, SIZE) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}


def test_background_threshold():
    rng = np.random.default_rng(0)
    blue = np.clip(np.array([0, 0, 254]) + rng.integers(-40, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
    assert not foreground(blue).any()
    flowers = np.array([[c for c in FAKE_COLOURS] + [(30, 30, 30), (70, 70, 250), (40, 40, 190)]], np.uint8)
    assert foreground(flowers).all()


def test_layout_follows_the_segmentation(train):
    for index in range(len(train)):
        image, labels = train.layout(index)
        r, g, b = np.moveaxis(image.astype(int), -1, 0)
        green = (g > r + 30) & (g > b + 30)
        assert 0.1 < labels.mean() < 0.9
        assert ((labels == 0) == green).mean() > 0.9


def test_split_counts(fake_root):
    flowers = open_flowers(fake_root)
    counts = {split: len(Flowers(flowers, split, tile_size=SIZE)) for split in ("train", "validation", "heldout", "all")}
    assert counts == {"train": 12, "validation": 6, "heldout": 6, "all": 24}
    assert Counter(flowers.classes[u] for u in flowers.names("validation")) == {"class_001": 2, "class_002": 2, "class_003": 2}


def test_pick_labelled():
    classes = {f"u{i:02d}": f"c{i % 3}" for i in range(12)}
    kept = pick_labelled(classes, 2, seed=4)
    assert Counter(classes[u] for u in kept) == {"c0": 2, "c1": 2, "c2": 2}
    assert pick_labelled(classes, 2, seed=4) == kept
    assert pick_labelled(classes, None, seed=4) == set(classes) == pick_labelled(classes, 9, seed=4)
    fewer = {u: c for u, c in classes.items() if c != "c2"}
    assert pick_labelled(fewer, 2, seed=4) == {u for u in kept if classes[u] != "c2"}
    assert any(pick_labelled(classes, 2, seed=s) != kept for s in range(5, 10))


def test_labelled_per_class_keeps_unlabelled_units_as_style(fake_root):
    flowers = open_flowers(fake_root)
    few = Flowers(flowers, "train", tile_size=SIZE, num_style=3, labelled_per_class=1, seed=2)
    assert Counter(flowers.classes[few.unit_of(i)] for i in range(len(few))) == {"class_001": 1, "class_002": 1, "class_003": 1}
    assert few.style_units() == flowers.names("train")
    unlabelled = set(few.style_units()) - set(few.units)
    assert len(unlabelled) == 9
    sources = few.style_sources(few.unit_of(0), 3, np.random.default_rng(0))
    assert set(sources) <= unlabelled and len(set(sources)) == 3
    assert len(Flowers(flowers, "train", tile_size=SIZE, labelled_per_class=10)) == 12


def mean_colour(images: np.ndarray) -> np.ndarray:
    """Mean RGB of float32 n x 3 x S x S images in [-1, 1]."""
    return images.mean(axis=(0, 2, 3))


def test_multi_patch_crops_come_from_the_same_class(fake_root, train):
    flowers = train.flowers
    means = {}
    for name in sorted(set(flowers.classes.values())):
        images = [train.content(u) for u in flowers.names("train") if flowers.classes[u] == name]
        means[name] = np.stack(images).reshape(-1, 3).mean(0) / 127.5 - 1.0
    for index in range(len(train)):
        unit = train.unit_of(index)
        sources = train.style_sources(unit, 3, np.random.default_rng(index))
        assert unit not in sources
        assert {flowers.classes[s] for s in sources} == {flowers.classes[unit]}
        assert {flowers.splits[s] for s in sources} == {"train"}
        colour = mean_colour(train[index]["style"])
        nearest = min(means, key=lambda name: np.linalg.norm(means[name] - colour))
        assert nearest == flowers.classes[unit]


def test_nearby_and_augmented_modes(train):
    unit = train.unit_of(0)
    rng = np.random.default_rng(0)
    nearby = train.style_crops(unit, rng, count=2, mode="nearby")
    augmented = train.style_crops(unit, rng, count=2, mode="augmented")
    assert nearby.shape == augmented.shape == (2, 3, SIZE, SIZE)
    content = train.content(unit).astype(np.float32).reshape(-1, 3).mean(0) / 127.5 - 1.0
    assert np.abs(mean_colour(augmented) - content).max() < 0.15
    assert train.style_crops(unit, rng, mode="none").shape == (0, 3, SIZE, SIZE)
    with pytest.raises(DataError, match="image_99999"):
        train.style_crops("image_99999", rng)
    with pytest.raises(DataError, match="expected one of"):
        train.style_crops(unit, rng, mode="sideways")


def test_samples_are_a_function_of_seed_and_index(fake_root, train):
    again = Flowers(open_flowers(fake_root), "train", tile_size=SIZE, num_style=3, augment=True, seed=0)
    other = Flowers(open_flowers(fake_root), "train", tile_size=SIZE, num_style=3, augment=True, seed=1)
    for index in (0, 3, 12 + 3):
        first, second = train[index], again[index]
        for key in ("image", "semantic", "style"):
            assert np.array_equal(first[key], second[key])
    assert any(not np.array_equal(train[i]["style"], other[i]["style"]) for i in range(3))


def test_missing_parts_are_named(fake_root, tmp_path):
    root = copy_root(fake_root, tmp_path)
    shutil.rmtree(root / "segs")
    with pytest.raises(DataError, match=r"segs is missing"):
        open_flowers(root)
    root = copy_root(fake_root, tmp_path / "b")
    (root / "setid.mat").unlink()
    with pytest.raises(DataError, match=r"setid.mat is missing.*trnid"):
        open_flowers(root)
    savemat(str(root / "setid.mat"), {"trnid": np.array([[1, 2]]), "valid": np.array([[3]])})
    with pytest.raises(DataError, match=r"setid.mat: expected the key\(s\) \['tstid'\]"):
        open_flowers(root)
    savemat(str(root / "setid.mat"), {"trnid": np.array([[1, 99]]), "valid": np.array([[3]]), "tstid": np.array([[4]])})
    with pytest.raises(DataError, match="names image 99 but imagelabels.mat labels images 1..24"):
        open_flowers(root)
    (root / "imagelabels.mat").write_bytes(b"not a MATLAB file" * 8)
    with pytest.raises(DataError, match="imagelabels.mat: cannot read"):
        open_flowers(root)


def test_image_without_segmentation(fake_root, tmp_path):
    root = copy_root(fake_root, tmp_path)
    (root / "segs" / "segmim_00007.jpg").unlink()
    with pytest.raises(DataError, match=r"image_00007.jpg: no segmentation .*segmim_00007.jpg"):
        open_flowers(root)
    (root / "imgs" / "image_00007.jpg").unlink()
    with pytest.raises(DataError, match=r"image_00007.jpg is missing"):
        open_flowers(root)


def test_mismatched_sizes(fake_root, tmp_path):
    root = copy_root(fake_root, tmp_path)
    Image.new("RGB", (20, 30), (0, 0, 254)).save(root / "segs" / "segmim_00001.jpg")
    flowers = Flowers(open_flowers(root), "train", tile_size=SIZE)
    with pytest.raises(DataError, match=r"segmim_00001.jpg: segmentation is 20x30 px but image .*image_00001.jpg is .*same size"):
        flowers[0]


def test_bad_options(fake_root):
    flowers = open_flowers(fake_root)
    with pytest.raises(DataError, match="split"):
        Flowers(flowers, "test")
    with pytest.raises(DataError, match="--labelled_per_class"):
        Flowers(flowers, labelled_per_class=0)
    with pytest.raises(DataError, match="--style_sampling"):
        Flowers(flowers, style_mode="sideways")

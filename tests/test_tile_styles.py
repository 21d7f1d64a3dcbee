"""A tile-pair folder as a source for style-extracting diffusion: items, reference tiles and labelled slides."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import check_styled_item
from data.annotations import DataError
from data.tile_pairs import list_pairs, read_pair, write_demo_tile_pairs
from data.tile_styles import NEARBY_REFUSED, TileStyles

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 slides x 3 tiles (slide0_000.png ...)."""
    return write_demo_tile_pairs(tmp_path_factory.mktemp("tiles") / "set", slides=4, tiles_per_slide=3, size=SIZE, seed=2)


@pytest.fixture(scope="module")
def tiles(folder) -> TileStyles:
    return TileStyles(list_pairs(folder), num_classes=2, num_style=2, augment=True, seed=0)


def test_items_follow_the_contract(tiles):
    assert len(tiles) == 12 and tiles.tile_size == SIZE
    item = tiles[4]
    check_styled_item(item, num_classes=2, num_style=2, size=SIZE)
    assert item["meta"] == {"slide": "slide1", "x": 0, "y": 0} and tiles.unit_of(4) == "slide1"
    image, labels = tiles.layout(4)
    assert labels.dtype == np.uint8 and np.array_equal(labels, read_pair(tiles.items[4], 2)[1])
    assert tiles.num_classes == 2 and tiles.style_units() == ["slide0", "slide1", "slide2", "slide3"]


def test_multi_patch_takes_other_tiles_of_the_slide(tiles):
    for index in range(len(tiles)):
        pair = tiles.items[index]
        sources = tiles.style_sources(pair.slide, 2, np.random.default_rng(index), exclude=pair.name)
        assert {s.slide for s in sources} == {pair.slide} and pair.name not in {s.name for s in sources}
        assert len({s.name for s in sources}) == 2
        expected = {s.name: read_pair(s, 2)[0] for s in tiles.tiles_of(pair.slide) if s.name != pair.name}
        for crop in tiles[index]["style"]:
            rgb = np.rint((crop.transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)
            assert any(np.array_equal(rgb, image) for image in expected.values())


def test_single_tile_slides_use_the_tile_itself(folder, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        shutil.copy(folder / sub / "slide0_000.png", tmp_path / sub / "alpha.png")
        shutil.copy(folder / sub / "slide1_000.png", tmp_path / sub / "beta.png")
    single = TileStyles(list_pairs(tmp_path), num_classes=2, num_style=2)
    assert single.style_units() == ["alpha", "beta"]
    item = single[0]
    assert np.array_equal(item["style"], np.stack([item["image"]] * 2))


def test_augmented_and_refused_modes(folder, tiles):
    rng = np.random.default_rng(0)
    assert tiles.style_crops("slide2", rng, count=3, mode="augmented").shape == (3, 3, SIZE, SIZE)
    assert tiles.style_crops("slide2", rng, mode="none").shape == (0, 3, SIZE, SIZE)
    augmented = TileStyles(list_pairs(folder), num_classes=2, num_style=2, style_mode="augmented")
    assert augmented[0]["style"].shape == (2, 3, SIZE, SIZE)
    with pytest.raises(DataError, match=NEARBY_REFUSED):
        TileStyles(list_pairs(folder), num_classes=2, style_mode="nearby")
    with pytest.raises(DataError, match=NEARBY_REFUSED):
        tiles.style_crops("slide0", rng, mode="nearby")
    with pytest.raises(DataError, match="slide9"):
        tiles.style_crops("slide9", rng)


def test_labelled_slides_and_style_units(folder):
    few = TileStyles(list_pairs(folder), num_classes=2, labelled_per_class=2, seed=5)
    labelled = {few.unit_of(i) for i in range(len(few))}
    assert len(labelled) == 2 and len(few) == 6
    assert few.style_units() == ["slide0", "slide1", "slide2", "slide3"]
    with pytest.raises(DataError, match="--labelled_per_class"):
        TileStyles(list_pairs(folder), num_classes=2, labelled_per_class=0)


def test_samples_are_a_function_of_seed_and_index(folder, tiles):
    again = TileStyles(list_pairs(folder), num_classes=2, num_style=2, augment=True, seed=0)
    for index in (0, 7, 12 + 7):
        for key in ("image", "semantic", "style"):
            assert np.array_equal(tiles[index][key], again[index][key])


def test_bad_tiles(folder):
    with pytest.raises(DataError, match="--seg_classes is 1"):
        TileStyles(list_pairs(folder), num_classes=1)[0]
    with pytest.raises(DataError, match="no tile pairs"):
        TileStyles([], num_classes=2)

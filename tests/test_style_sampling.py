"""Style reference crops: none, nearby, multi_patch (tissue only) and augmented, on synthetic region slides."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

from data.annotations import DataError
from data.regions import parse_class_map, read_region_polygons, slide_mask
from data.style_sampling import (
    STYLE_MODES,
    augmented_crops,
    multi_patch_crops,
    nearby_crops,
    read_crop,
    sample_style,
    tissue_map,
    tissue_mask,
    to_style_array,
)
from data.synthetic_regions import CLASS_MAP, SyntheticRegionsConfig, generate_synthetic_regions, regions_paths


class ArrayReader:
    """An openslide-like reader over one RGB array (a single level)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.dimensions = (rgb.shape[1], rgb.shape[0])
        self.level_count = 1
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)

    def read_region(self, location, level, size):
        out = np.zeros((size[1], size[0], 4), np.uint8)
        x0, y0 = location
        h, w = self.rgb.shape[:2]
        ys, xs = slice(max(y0, 0), min(y0 + size[1], h)), slice(max(x0, 0), min(x0 + size[0], w))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0, :3] = self.rgb[ys, xs]
            out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0, 3] = 255
        return Image.fromarray(out, "RGBA")


@pytest.fixture(scope="module")
def slide_set(tmp_path_factory):
    root = generate_synthetic_regions(
        tmp_path_factory.mktemp("style") / "data", SyntheticRegionsConfig(num_slides=2, heldout=1), progress=False
    )
    paths = regions_paths(root)
    name = "regions_000.tif"
    polygons = read_region_polygons(paths["database"], slides=[name])
    tissue = slide_mask(polygons, name, parse_class_map(CLASS_MAP), (512, 512)) > 0
    with openslide.OpenSlide(str(paths["slides_dir"] / name)) as reader:
        yield reader, tissue


def test_tissue_mask_separates_glass_from_stain():
    rgb = np.array([[[246, 245, 247], [230, 120, 180], [120, 60, 160], [40, 40, 40]]], np.uint8)
    assert tissue_mask(rgb).tolist() == [[False, True, True, False]]


def test_multi_patch_crops_are_tissue_and_seeded(slide_set):
    reader, tissue = slide_set
    crops = multi_patch_crops(reader, 64, 6, np.random.default_rng(1), min_tissue=0.6)
    assert crops.images.shape == (6, 64, 64, 3) and crops.images.dtype == np.uint8
    for image, (x, y) in zip(crops.images, crops.centres):
        assert tissue_mask(image).mean() >= 0.6
        x0, y0 = int(round(x - 32)), int(round(y - 32))
        # the crops lie on the annotated tissue outline, not on glass
        assert tissue[y0:y0 + 64, x0:x0 + 64].mean() > 0.6
        np.testing.assert_array_equal(image, read_crop(reader, x, y, 64))
    again = multi_patch_crops(reader, 64, 6, np.random.default_rng(1), min_tissue=0.6)
    np.testing.assert_array_equal(again.images, crops.images)
    other = multi_patch_crops(reader, 64, 6, np.random.default_rng(2), min_tissue=0.6)
    assert not np.array_equal(other.centres, crops.centres)


def test_multi_patch_without_tissue_names_the_slide():
    glass = ArrayReader(np.full((256, 256, 3), 245, np.uint8))
    with pytest.raises(DataError, match="blank.svs: no tissue"):
        multi_patch_crops(glass, 32, 2, np.random.default_rng(0), name="blank.svs")
    pale = np.full((256, 256, 3), 245, np.uint8)
    pale[100:120, 100:120] = (200, 100, 160)  # a speck of tissue too small for a mostly-tissue crop
    with pytest.raises(DataError, match="found only 0 of 2"):
        multi_patch_crops(ArrayReader(pale), 64, 2, np.random.default_rng(0), min_tissue=0.9, name="pale.svs")


def test_nearby_crops_within_radius_and_inside_slide(slide_set):
    reader, _ = slide_set
    for cx, cy in [(256.0, 256.0), (20.0, 500.0)]:  # the middle, and a corner where the disc is mostly outside
        crops = nearby_crops(reader, cx, cy, 48, 8, 60.0, np.random.default_rng(3))
        distance = np.hypot(crops.centres[:, 0] - cx, crops.centres[:, 1] - cy)
        assert (distance <= 60.0 + 1e-9).all()
        assert (crops.centres >= 24).all() and (crops.centres <= 512 - 24).all()
        again = nearby_crops(reader, cx, cy, 48, 8, 60.0, np.random.default_rng(3))
        np.testing.assert_array_equal(again.images, crops.images)
    assert len({tuple(c) for c in nearby_crops(reader, 256, 256, 48, 8, 60.0, np.random.default_rng(3)).centres}) == 8
    with pytest.raises(DataError, match="within 10"):
        nearby_crops(reader, -200.0, -200.0, 48, 1, 10.0, np.random.default_rng(0))


def test_augmented_crops_are_strong_and_seeded(slide_set):
    reader, _ = slide_set
    content = read_crop(reader, 256, 256, 64)
    crops = augmented_crops(content, 4, np.random.default_rng(7))
    assert crops.images.shape == (4, 64, 64, 3) and np.isnan(crops.centres).all()
    for image in crops.images:
        assert np.abs(image.astype(float) - content).mean() > 10  # the layout moved
        assert np.abs(image.reshape(-1, 3).mean(0) - content.reshape(-1, 3).mean(0)).max() < 25  # the stain did not
    np.testing.assert_array_equal(augmented_crops(content, 4, np.random.default_rng(7)).images, crops.images)


def test_sample_style_dispatch(slide_set):
    reader, _ = slide_set
    content = read_crop(reader, 256, 256, 32)
    shapes = {}
    for mode in STYLE_MODES:
        crops = sample_style(mode, np.random.default_rng(0), size=32, count=3, reader=reader,
                             position=(256.0, 256.0), content=content, radius=40.0,
                             tissue=tissue_map(reader))
        shapes[mode] = crops.images.shape
        style = to_style_array(crops)
        assert style.dtype == np.float32 and style.shape == (len(crops.images), 3, 32, 32)
        assert style.size == 0 or (style.min() >= -1.0 and style.max() <= 1.0)
    assert shapes == {"none": (0, 32, 32, 3), "nearby": (3, 32, 32, 3), "multi_patch": (3, 32, 32, 3),
                      "augmented": (3, 32, 32, 3)}
    with pytest.raises(DataError, match="--style_mode"):
        sample_style("random", np.random.default_rng(0), size=32, count=1)
    with pytest.raises(DataError, match="needs the slide"):
        sample_style("nearby", np.random.default_rng(0), size=32, count=1)
    with pytest.raises(DataError, match="does not fit"):
        multi_patch_crops(reader, 1024, 1, np.random.default_rng(0))

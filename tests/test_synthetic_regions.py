"""Synthetic region slides with per-slide stain styles: files, polygons, painted regions, held-out styles."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import openslide
import pytest

from data.annotations import DataError
from data.regions import parse_class_map, read_region_polygons, region_summary, slide_mask
from data.synthetic_regions import (
    CLASS_MAP,
    SyntheticRegionsConfig,
    slide_styles,
    generate_synthetic_regions,
    main,
    read_slides_csv,
    regions_paths,
)


@pytest.fixture(scope="module")
def regions_root(tmp_path_factory) -> Path:
    """The default set: 6 slides of 512 px, 2 of them held out."""
    return generate_synthetic_regions(tmp_path_factory.mktemp("regions") / "data", progress=False)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _slide_rgb(path: Path) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3].astype(np.float64)


def test_deterministic_by_seed(tmp_path):
    small = SyntheticRegionsConfig(num_slides=2, size=256, heldout=1, nests_per_slide=2, seed=5)
    first = _files(generate_synthetic_regions(tmp_path / "a", small, progress=False))
    second = _files(generate_synthetic_regions(tmp_path / "b", small, progress=False))
    assert first == second
    other = _files(generate_synthetic_regions(tmp_path / "c", SyntheticRegionsConfig(
        num_slides=2, size=256, heldout=1, nests_per_slide=2, seed=6), progress=False))
    assert other["WSI/regions_000.tif"] != first["WSI/regions_000.tif"]
    # asking again for the same set reuses it; other parameters in the same folder are refused
    assert generate_synthetic_regions(tmp_path / "a", small, progress=False) == tmp_path / "a"
    with pytest.raises(DataError, match="other parameters"):
        generate_synthetic_regions(tmp_path / "a", SyntheticRegionsConfig(num_slides=2, size=256, heldout=1,
                                                                            nests_per_slide=2, seed=7), progress=False)


def test_slides_open_and_database_reads_back(regions_root):
    paths = regions_paths(regions_root)
    rows = read_slides_csv(paths["slides_csv"])
    assert [r["split"] for r in rows] == ["train"] * 4 + ["heldout"] * 2
    for row in rows:
        with openslide.OpenSlide(str(paths["slides_dir"] / row["slide"])) as slide:
            assert slide.dimensions == (512, 512) and slide.level_count == 2
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    summary = region_summary(paths["database"])
    assert summary["slides"] == 6 and summary["per_class"] == {"stroma": 6, "tumor": 24}
    con = sqlite3.connect(paths["database"])
    try:
        columns = {row[1] for row in con.execute("PRAGMA table_info(Annotations)")}
    finally:
        con.close()
    assert {"deleted", "guid", "agreedClass"} <= columns


def test_polygons_cover_the_painted_regions(regions_root):
    paths = regions_paths(regions_root)
    polygons = read_region_polygons(paths["database"])
    class_map = parse_class_map(CLASS_MAP)
    for row in read_slides_csv(paths["slides_csv"]):
        rgb = _slide_rgb(paths["slides_dir"] / row["slide"])
        mask = slide_mask(polygons, row["slide"], class_map, rgb.shape[:2])
        tumour, stroma, glass = mask == 2, mask == 1, mask == 0
        assert tumour.sum() > 1000 and stroma.sum() > 10 * 1000 and glass.sum() > 1000
        # haematoxylin by colour deconvolution with the slide's own stain vectors
        density = -np.log(np.clip(rgb, 1.0, 250.0) / 250.0).reshape(-1, 3)
        stains = np.stack([[row["h_r"], row["h_g"], row["h_b"]], [row["e_r"], row["e_g"], row["e_b"]]], 1)
        hematoxylin = (density @ np.linalg.pinv(stains).T)[:, 0].reshape(mask.shape)
        assert (hematoxylin[tumour] > np.median(hematoxylin[stroma])).mean() > 0.9, row["slide"]
        brightness = rgb.sum(-1)
        assert (brightness[tumour] < np.median(brightness[stroma])).mean() > 0.55, row["slide"]
        assert np.median(brightness[glass]) > 700  # white glass outside the tissue outline


def test_heldout_styles_lie_between_training_styles(regions_root):
    paths = regions_paths(regions_root)
    polygons = read_region_polygons(paths["database"])
    class_map = parse_class_map(CLASS_MAP)
    means = {}
    for row in read_slides_csv(paths["slides_csv"]):
        rgb = _slide_rgb(paths["slides_dir"] / row["slide"])
        tissue = slide_mask(polygons, row["slide"], class_map, rgb.shape[:2]) > 0
        means[row["slide"]] = (row["split"], row["style_t"], rgb[tissue].mean(0))
    train_t = np.array([t for split, t, _ in means.values() if split == "train"])
    train_rgb = np.stack([m for split, _, m in means.values() if split == "train"])
    assert train_t.min() < -0.5 and train_t.max() > 0.5
    for split, t, mean in means.values():
        if split == "heldout":
            assert train_t.min() < t < train_t.max() and np.abs(train_t - t).min() > 0.05
            assert np.abs(train_rgb - mean).max(1).min() > 2.0  # its colour is none of the training slides'


def test_styles_of_larger_sets_interleave():
    styles = slide_styles(SyntheticRegionsConfig(num_slides=9, heldout=3))
    train = sorted(s.t for split, s in styles if split == "train")
    for split, style in styles:
        if split == "heldout":
            above = next(i for i, t in enumerate(train) if t > style.t)
            assert 0 < above < len(train) and min(style.t - train[above - 1], train[above] - style.t) > 0.05


def test_bad_config_and_command_line(tmp_path, capsys):
    with pytest.raises(DataError, match="heldout"):
        generate_synthetic_regions(tmp_path / "x", SyntheticRegionsConfig(num_slides=2, heldout=2), progress=False)
    assert not (tmp_path / "x").exists()
    assert main(["--root", str(tmp_path / "y"), "--size", "32", "--quiet"]) == 2
    assert "size" in capsys.readouterr().err

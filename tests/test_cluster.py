"""Patch clustering: interpretable features, separation of obvious groups, the CSV, errors, determinism."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import cluster
from tools.cluster import FEATURE_NAMES, cluster_patches, patch_features
from test_segmentation import write_tiled_folder


@pytest.fixture()
def two_groups(tmp_path) -> Path:
    """Four tiles of many small nuclei ('dense_*') and four of few large nuclei ('sparse_*') in one folder."""
    root = tmp_path / "tiles"
    write_tiled_folder(root, 4, size=48, count=14, radius=2, seed=1, prefix="dense")
    write_tiled_folder(root, 4, size=48, count=2, radius=8, seed=2, prefix="sparse")
    return root


def test_features_measure_what_they_name():
    image = np.full((50, 40, 3), 230, np.uint8)
    instances = np.zeros((50, 40), np.int32)
    instances[0:10, 0:10] = 1  # a square: eccentricity 0
    instances[20:24, 0:16] = 4  # a 4 x 16 bar: elongated
    image[instances > 0] = (60, 30, 110)
    values = dict(zip(FEATURE_NAMES, patch_features(image, instances)))
    assert len(values) == len(FEATURE_NAMES) == 13
    assert values["nuclei_per_1e4_px"] == pytest.approx(2 / 2000 * 1e4)
    assert values["nucleus_area_mean"] == pytest.approx(82.0)
    assert values["nucleus_area_std"] == pytest.approx(18.0)
    assert values["foreground_fraction"] == pytest.approx(164 / 2000)
    assert 0.4 < values["nucleus_eccentricity_mean"] < 0.5  # (0 + ~0.97) / 2
    blank = dict(zip(FEATURE_NAMES, patch_features(np.full((50, 40, 3), 230, np.uint8), np.zeros((50, 40), np.int32))))
    assert blank["nuclei_per_1e4_px"] == blank["nucleus_area_mean"] == blank["foreground_fraction"] == 0.0
    assert blank["glcm_contrast"] == 0.0 and values["glcm_contrast"] > 0
    assert values["haematoxylin_mean"] > blank["haematoxylin_mean"]
    with pytest.raises(ValueError, match="inst_mask"):
        patch_features(image, instances[:10])


def test_k2_separates_dense_small_from_sparse_large(two_groups):
    rows = cluster_patches(two_groups, k=2, seed=0)
    assert len(rows) == 8
    groups = {name: {r["cluster"] for r in rows if r["name"].startswith(name)} for name in ("dense", "sparse")}
    assert len(groups["dense"]) == len(groups["sparse"]) == 1 and groups["dense"] != groups["sparse"]
    assert all(r["distance"] >= 0 for r in rows)


def test_clustering_is_deterministic_by_seed(two_groups):
    write_tiled_folder(two_groups, 5, size=48, count=6, radius=4, seed=3, prefix="medium")
    first = cluster_patches(two_groups, k=3, seed=7)
    again = cluster_patches(two_groups, k=3, seed=7)
    assert [(r["name"], r["cluster"], r["distance"]) for r in first] == [(r["name"], r["cluster"], r["distance"]) for r in again]


def test_k_larger_than_the_number_of_patches_is_an_error(two_groups):
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of patches in .*tiles \(8\), got 9"):
        cluster_patches(two_groups, k=9)


def test_cli_writes_csv_and_examples(two_groups, tmp_path, capsys):
    out = tmp_path / "out" / "clusters.csv"
    assert cluster.main(["--tiles", str(two_groups), "--k", "2", "--out", str(out)]) == 0
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["name", "cluster", "distance", *FEATURE_NAMES]
    assert sorted(r["name"] for r in table) == sorted([f"dense_{i:02d}" for i in range(4)] + [f"sparse_{i:02d}" for i in range(4)])
    assert {r["cluster"] for r in table} == {"0", "1"}
    assert "cluster sizes: 0: 4, 1: 4" in capsys.readouterr().out
    with Image.open(out.with_suffix(".png")) as sheet:
        assert sheet.height > 2 * 96 and sheet.width > 4 * 96  # two rows of four examples

    assert cluster.main(["--tiles", str(two_groups), "--k", "2", "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cluster.main(["--tiles", str(two_groups), "--k", "20", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--k must be between 1 and the number of patches" in err and "(8), got 20" in err
    assert cluster.main(["--tiles", str(tmp_path / "missing"), "--k", "2", "--out", str(out), "--overwrite"]) == 2
    assert "missing: not a folder" in capsys.readouterr().err

"""The tools around style-extracting diffusion: region slides cut into tile pairs, generated (flat) tile folders
read as tile pairs, and the comparison table of scored segmentation runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.annotations import DataError
from data.synthetic_regions import SyntheticRegionsConfig, generate_synthetic_regions, read_slides_csv
from data.tile_pairs import list_pairs, read_pair
from tools import compare_segmentation, region_tiles


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regions") / "data"
    return generate_synthetic_regions(root, SyntheticRegionsConfig(num_slides=3, size=128, heldout=1, nests_per_slide=1),
                                      progress=False)


def test_region_tiles_cut_a_split_on_a_grid(regions, tmp_path):
    out = tmp_path / "tiles"
    assert region_tiles.main(["--data_root", str(regions), "--split", "train", "--tile_size", "16", "--per_slide", "5",
                              "--out", str(out)]) == 0
    pairs = list_pairs(out)
    train = [Path(r["slide"]).stem.replace("_", "-") for r in read_slides_csv(regions / "slides.csv") if r["split"] == "train"]
    assert sorted({p.slide for p in pairs}) == sorted(train) and len(pairs) == 5 * len(train)
    for pair in pairs:
        row, col = (int(v) for v in pair.name.split("_")[1].split("-"))
        image, mask = read_pair(pair, 3)
        assert image.shape == (16, 16, 3) and mask.max() <= 2 and (mask > 0).mean() >= 0.5
        assert row * 16 <= 128 - 16 and col * 16 <= 128 - 16
    assert region_tiles.main(["--data_root", str(regions), "--out", str(out)]) == 2  # exists, no --overwrite
    assert region_tiles.main(["--data_root", str(regions), "--class_map", "tumour:1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_flat_generated_folders_are_tile_pairs(tmp_path):
    for n in range(2):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / f"img_{n:05d}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / f"seg_{n:05d}.png")
    pairs = list_pairs(tmp_path)
    assert [p.name for p in pairs] == ["00000", "00001"] and pairs[0].slide != pairs[1].slide
    assert read_pair(pairs[1], 2)[1].trace() == 8
    (tmp_path / "seg_00001.png").unlink()
    with pytest.raises(DataError, match="img_00001.png: no mask"):
        list_pairs(tmp_path)


def scored(folder: Path, iou: float, var: float, test_dir: str = "test") -> str:
    folder.mkdir()
    metrics = {"iou": iou, "dice": iou + 0.1, "slide_iou_mean": iou, "slide_iou_var": var, "tiles": 8, "slides": 2,
               "test_dir": test_dir}
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def test_comparison_table(tmp_path, capsys):
    runs = [f"real={scored(tmp_path / 'a', 0.5, 0.01)}", f"syn={scored(tmp_path / 'b', 0.7, 0.0025)}"]
    out = tmp_path / "table.csv"
    assert compare_segmentation.main(["--runs", *runs, "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["run"], float(r["iou"]), float(r["slide_iou_var"])) for r in rows] == [("real", 0.5, 0.01), ("syn", 0.7, 0.0025)]
    assert out.with_suffix(".png").is_file() and "syn" in capsys.readouterr().out
    other = f"other={scored(tmp_path / 'c', 0.1, 0.0, test_dir='elsewhere')}"
    assert compare_segmentation.main(["--runs", *runs, other, "--out", str(tmp_path / "t2.csv")]) == 2
    assert compare_segmentation.main(["--runs", f"x={tmp_path}", "--out", str(tmp_path / "t3.csv")]) == 2
    assert not (tmp_path / "t2.csv").exists() and not (tmp_path / "t3.csv").exists()

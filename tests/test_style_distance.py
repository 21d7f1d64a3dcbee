"""Style distance of STEDM output folders: the CIELAB maths, same-source exclusion, and `tools.evaluate` end to end."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from metrics.style_distance import delta_e, is_same_source, mean_lab, read_style_distances, summarize
from tools import evaluate

SIZE = 8
COLUMNS = ["file", "layout_unit", "style_units", "style_files", "layout_file"]
TILE, STYLE_A, STYLE_B, LAYOUT = (200, 90, 120), (150, 60, 160), (170, 80, 150), (230, 200, 210)


def uniform(rgb: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    """A size x size uint8 image of one colour."""
    return np.full((size, size, 3), rgb, dtype=np.uint8)


def lab(rgb: tuple[int, int, int]) -> np.ndarray:
    """L*a*b* of one 8-bit RGB colour, straight from skimage."""
    return rgb2lab(np.array([[rgb]], dtype=np.float64) / 255.0)[0, 0]


def write_sample(folder: Path, index: int, tile: tuple, styles: list[tuple], layout: tuple | None,
                 layout_unit: str, style_units: list[str]) -> dict[str, str]:
    """Write one generated tile with its style crops (and layout patch) and return its samples.csv row."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(uniform(tile)).save(folder / f"img_{index:05d}.png")
    Image.fromarray(np.zeros((SIZE, SIZE), dtype=np.uint8)).save(folder / f"seg_{index:05d}.png")
    style_files = []
    for k, rgb in enumerate(styles):
        style_files.append(f"style_{index:05d}_{k}.png")
        Image.fromarray(uniform(rgb)).save(folder / style_files[-1])
    layout_file = ""
    if layout is not None:
        layout_file = f"real_{index:05d}.png"
        Image.fromarray(uniform(layout)).save(folder / layout_file)
    return {"file": f"img_{index:05d}.png", "layout_unit": layout_unit, "style_units": ";".join(style_units),
            "style_files": ";".join(style_files), "layout_file": layout_file}


def write_samples_csv(folder: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> None:
    """Write samples.csv with the given columns."""
    with (folder / "samples.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def stedm_folder(tmp_path) -> Path:
    """Four tiles: closer to style, closer to layout, same-source (closer to style), and one without a layout patch."""
    folder = tmp_path / "stedm_samples"
    rows = [
        write_sample(folder, 0, TILE, [STYLE_A, STYLE_B], LAYOUT, "slide_1", ["slide_2", "slide_3"]),
        write_sample(folder, 1, LAYOUT, [STYLE_A], (225, 195, 205), "slide_2", ["slide_1"]),
        write_sample(folder, 2, TILE, [STYLE_B], LAYOUT, "slide_3", ["slide_3"]),
        write_sample(folder, 3, TILE, [STYLE_A], None, "slide_4", ["slide_1"]),
    ]
    write_samples_csv(folder, rows)
    return folder


def test_uniform_colours_give_the_delta_e_of_skimage():
    assert delta_e(mean_lab([uniform((255, 255, 255))]), mean_lab([uniform((0, 0, 0))])) == pytest.approx(100.0, abs=1e-3)
    np.testing.assert_allclose(mean_lab([uniform(TILE)]), lab(TILE), atol=1e-9)
    pooled = mean_lab([uniform(STYLE_A, 4), uniform(STYLE_B, 8)])
    np.testing.assert_allclose(pooled, (lab(STYLE_A) * 16 + lab(STYLE_B) * 64) / 80, atol=1e-9)
    expected = np.sqrt(((lab(TILE) - (lab(STYLE_A) + lab(STYLE_B)) / 2) ** 2).sum())
    assert delta_e(mean_lab([uniform(TILE)]), mean_lab([uniform(STYLE_A), uniform(STYLE_B)])) == pytest.approx(expected)


def test_folder_distances_use_slide_references_and_exclude_same_source(stedm_folder):
    """References pool every image of a unit in the folder: its style crops and the real patches of its layouts."""
    rows = read_style_distances(stedm_folder)
    ref = {"slide_1": mean_lab([uniform(LAYOUT), uniform(STYLE_A), uniform(STYLE_A)]),
           "slide_2": mean_lab([uniform(STYLE_A), uniform((225, 195, 205))]),
           "slide_3": mean_lab([uniform(STYLE_B), uniform(STYLE_B), uniform(LAYOUT)])}
    tile = lab(TILE)
    assert rows[0].d_style == pytest.approx(delta_e(tile, (ref["slide_2"] + ref["slide_3"]) / 2))
    assert rows[0].d_layout == pytest.approx(delta_e(tile, ref["slide_1"]))
    assert rows[1].d_style == pytest.approx(delta_e(lab(LAYOUT), ref["slide_1"]))
    assert rows[1].d_layout == pytest.approx(delta_e(lab(LAYOUT), ref["slide_2"]))
    assert rows[2].d_style == pytest.approx(rows[2].d_layout) and rows[2].same_source and not rows[0].same_source
    assert rows[3].d_layout is None  # slide_4 has no image in the folder
    summary = summarize(rows)
    cross = [r for r in rows if r.d_layout is not None and not r.same_source]
    assert summary["closer_to_style"] == pytest.approx(np.mean([r.d_style < r.d_layout for r in cross]))
    assert summary["style_rows"] == 4 and summary["layout_rows"] == 3 and summary["cross_source_rows"] == 2
    assert summary["style_distance"] == pytest.approx(np.mean([r.d_style for r in rows]))
    assert summary["layout_distance"] == pytest.approx(np.mean([r.d_layout for r in rows[:3]]))
    assert is_same_source("a", ["a", "a"]) and not is_same_source("a", ["a", "b"]) and not is_same_source("a", [])


def test_a_tile_in_its_style_slides_stain_is_closer_to_it_whatever_its_content(tmp_path):
    """A dark (tumour-like) tile in slide B's stain: its own layout patch of slide A is dark too, but slide A's
    reference pools A's pale patches, so the tile counts as following its style."""
    folder = tmp_path / "content"
    dark_a, pale_a, dark_b, pale_b, tile = (140, 75, 135), (245, 225, 235), (120, 40, 110), (200, 110, 170), (150, 80, 140)
    rows = [write_sample(folder, 0, tile, [dark_b, pale_b], dark_a, "A", ["B", "B"]),
            write_sample(folder, 1, pale_a, [dark_b], pale_a, "A", ["B"])]
    write_samples_csv(folder, rows)
    first = read_style_distances(folder)[0]
    assert delta_e(lab(tile), lab(dark_a)) < first.d_style < first.d_layout  # its own patch alone would say "layout"


def test_no_cross_source_rows_give_no_fraction(tmp_path):
    folder = tmp_path / "same"
    write_samples_csv(folder, [write_sample(folder, 0, TILE, [STYLE_A], LAYOUT, "s", ["s"])])
    summary = summarize(read_style_distances(folder))
    assert summary["closer_to_style"] is None and summary["cross_source_rows"] == 0 and summary["layout_rows"] == 1


def test_cli_end_to_end(stedm_folder, capsys):
    out = stedm_folder / "style.json"
    assert evaluate.main(["--fake", str(stedm_folder), "--metrics", "style_distance", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    for key in ("style_distance", "layout_distance", "closer_to_style", "style_rows"):
        assert key in saved
    assert saved["style_rows"] == 4 and saved["closer_to_style"] == pytest.approx(0.5)
    per_tile = list(csv.DictReader((stedm_folder / "style_distance.csv").open()))
    assert [r["file"] for r in per_tile] == [f"img_{i:05d}.png" for i in range(4)]
    assert set(COLUMNS[:3] + ["d_style", "d_layout"]) <= set(per_tile[0])
    assert per_tile[0]["style_units"] == "slide_2;slide_3" and per_tile[3]["d_layout"] == ""
    assert np.mean([float(r["d_style"]) for r in per_tile]) == pytest.approx(saved["style_distance"], abs=1e-3)
    with Image.open(stedm_folder / "style_distance.png") as plot:
        assert plot.size[0] > 100
    assert (stedm_folder / "style.csv").is_file()
    assert evaluate.main(["--fake", str(stedm_folder), "--metrics", "style_distance", "--out", str(stedm_folder / "again.json")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def outputs(folder: Path) -> set[str]:
    """Names of the result files in the folder (everything but the generator's own images)."""
    return {p.name for p in folder.iterdir() if p.suffix in (".json", ".csv", ".png") and not p.name.startswith(("img_", "seg_", "style_0", "real_"))}


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "samples.csv").unlink(), "samples.csv"),
    (lambda f: (f / "style_00001_0.png").unlink(), "style_00001_0.png"),
    (lambda f: write_samples_csv(f, [], ["file", "layout_unit"]), "style_units"),
])
def test_bad_input_exits_2_and_writes_nothing(stedm_folder, tmp_path, capsys, damage, expected):
    damage(stedm_folder)
    before = outputs(stedm_folder)
    out = stedm_folder / "style.json"
    assert evaluate.main(["--fake", str(stedm_folder), "--metrics", "style_distance", "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert outputs(stedm_folder) == before and not out.exists()


def test_flag_errors(stedm_folder, tmp_path, capsys):
    assert evaluate.main(["--metrics", "style_distance", "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --fake" in capsys.readouterr().err
    assert evaluate.main(["--fake", str(stedm_folder), "--metrics", "style_distance", "--out", str(tmp_path / "style_distance.json")]) == 2
    assert not list(tmp_path.glob("*.json"))

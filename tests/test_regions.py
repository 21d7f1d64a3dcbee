"""Region polygons from SlideRunner databases and their label masks."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import polygon as draw_polygon

from data.annotations import DataError
from data.regions import (
    IGNORE,
    labelled_polygons,
    paint_order,
    parse_class_map,
    polygon_pixels,
    rasterise,
    read_region_masks,
    read_region_polygons,
    region_classes,
    region_summary,
    slide_mask,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUMORZONE = SHARED / "annotations" / "CCMCT_Tumorzone.sqlite"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real reference data {path} is absent (expected in ../shared/data next to the project)")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_region_db(path: Path, polygons: list[dict], new_schema: bool = True) -> Path:
    """A SlideRunner database with polygons {"slide", "cls", "coords" (drawing order), "order", "deleted"}."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE Slides (uid INTEGER PRIMARY KEY, filename TEXT)")
    con.execute("CREATE TABLE Classes (uid INTEGER PRIMARY KEY, name TEXT)")
    extra = ", guid TEXT, deleted INTEGER DEFAULT 0" if new_schema else ""
    con.execute(
        f"CREATE TABLE Annotations (uid INTEGER PRIMARY KEY, slide INTEGER, type INTEGER, agreedClass INTEGER{extra})"
    )
    order_col = ", orderIdx INTEGER" if new_schema else ""
    con.execute("CREATE TABLE Annotations_coordinates (uid INTEGER PRIMARY KEY, coordinateX INTEGER, "
                f"coordinateY INTEGER, slide INTEGER, annoId INTEGER{order_col})")
    con.executemany("INSERT INTO Slides VALUES (?, ?)", [(1, "a.svs"), (2, "b.svs")])
    con.executemany("INSERT INTO Classes VALUES (?, ?)", [(1, "Tumor"), (2, "Stroma"), (3, "Exclude")])
    for uid, poly in enumerate(polygons, 1):
        if new_schema:
            con.execute("INSERT INTO Annotations VALUES (?, ?, 3, ?, 'g', ?)",
                        (uid, poly["slide"], poly["cls"], poly.get("deleted", 0)))
        else:
            con.execute("INSERT INTO Annotations VALUES (?, ?, 3, ?)", (uid, poly["slide"], poly["cls"]))
        coords = list(enumerate(poly["coords"], 1))
        for index in poly.get("order", range(len(coords))):
            idx, (x, y) = coords[index]
            row = (x, y, poly["slide"], uid, idx) if new_schema else (x, y, poly["slide"], uid)
            marks = ", ".join("?" * len(row))
            cols = "coordinateX, coordinateY, slide, annoId" + (", orderIdx" if new_schema else "")
            con.execute(f"INSERT INTO Annotations_coordinates ({cols}) VALUES ({marks})", row)
    con.commit()
    con.close()
    return path


SQUARE = [(10, 10), (50, 10), (50, 50), (10, 50)]
INNER = [(20, 20), (40, 20), (40, 40), (20, 40)]
CORNER = [(30, 30), (60, 30), (60, 60), (30, 60)]


# ---------------------------------------------------------------- the real CCMCT tumour-zone database


def test_real_tumorzone_counts_and_unchanged():
    path = _need(TUMORZONE)
    before = _digest(path)
    summary = region_summary(path)
    assert summary["polygons"] == 113
    assert summary["slides"] == 32
    assert summary["vertices"] == 67_489
    assert summary["per_class"] == {
        "Tumorzone": 41,
        "nicht tumorgewebe excludieren": 63,
        "Nekrosezone": 6,
        "unscharfe scan-area": 3,
    }
    polygons = read_region_polygons(path)
    sizes = [len(p.vertices) for p in polygons]
    assert min(sizes) == 34 and max(sizes) == 4452
    assert _digest(path) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(path.name + "-")], "side files left"


def test_real_polygon_rasterises_like_skimage():
    path = _need(TUMORZONE)
    # the smallest tumour zone (306 vertices); scikit-image's own rasteriser is slow on the larger ones
    polygon = min((p for p in read_region_polygons(path) if p.class_name == "Tumorzone"), key=lambda p: len(p.vertices))
    downsample = 24.0
    x, y = polygon.vertices[:, 0] / downsample, polygon.vertices[:, 1] / downsample
    shape = (int(y.max()) + 4, int(x.max()) + 4)
    expected = np.zeros(shape, np.uint8)
    rr, cc = draw_polygon(y, x, shape=shape)
    expected[rr, cc] = 1
    mask = slide_mask([polygon], polygon.slide, {"Tumorzone": 1}, shape, downsample)
    assert mask.sum() > 100
    np.testing.assert_array_equal(mask, expected)


def test_real_unknown_class_names_file_and_classes():
    path = _need(TUMORZONE)
    with pytest.raises(DataError) as info:
        read_region_masks(path, "tumor:1,stroma:0", {"x.svs": (10, 10)})
    message = str(info.value)
    assert str(path) in message and "'tumor'" in message and "Tumorzone" in message and "Nekrosezone" in message


# ---------------------------------------------------------------- written fixtures


def test_vertex_order_deleted_and_old_schema(tmp_path):
    # vertices stored shuffled, orderIdx gives the drawing order; a deleted polygon is left out
    polys = [
        {"slide": 1, "cls": 1, "coords": SQUARE, "order": [2, 0, 3, 1]},
        {"slide": 2, "cls": 2, "coords": INNER, "deleted": 1},
    ]
    new = read_region_polygons(write_region_db(tmp_path / "new.sqlite", polys))
    assert len(new) == 1 and new[0].slide == "a.svs" and new[0].class_name == "Tumor"
    np.testing.assert_array_equal(new[0].vertices, np.asarray(SQUARE, float))
    old = read_region_polygons(write_region_db(tmp_path / "old.sqlite", [dict(polys[0], order=[0, 1, 2, 3]), polys[1]],
                                               new_schema=False))
    assert [p.class_name for p in old] == ["Tumor", "Stroma"]  # no `deleted` column: both kept
    assert region_classes(tmp_path / "old.sqlite") == ["Tumor", "Stroma", "Exclude"]


def test_painting_order_and_ignore(tmp_path):
    polys = [
        {"slide": 1, "cls": 3, "coords": CORNER},   # exclude, stored first
        {"slide": 1, "cls": 1, "coords": INNER},    # tumour inside the stroma
        {"slide": 1, "cls": 2, "coords": SQUARE},   # stroma
        {"slide": 2, "cls": 1, "coords": SQUARE},
    ]
    path = write_region_db(tmp_path / "r.sqlite", polys)
    class_map = parse_class_map("exclude:ignore, stroma:1, tumor:2")
    assert paint_order(class_map) == ["stroma", "tumor", "exclude"]
    masks = read_region_masks(path, class_map, {"a.svs": (70, 70)})
    mask = masks["a.svs"]
    assert mask[5, 5] == 0                      # background
    assert mask[15, 15] == 1                    # stroma only
    assert mask[25, 25] == 2                    # tumour painted over stroma
    assert mask[45, 45] == IGNORE and mask[55, 55] == IGNORE  # exclusion painted last
    # half resolution: the same layout at (row, col) / 2
    half = read_region_masks(path, class_map, {"a.svs": (35, 35)}, downsample=2.0)["a.svs"]
    assert half[12, 12] == 2 and half[7, 7] == 1 and half[27, 27] == IGNORE
    # classes left out of the map are not painted
    only = labelled_polygons(read_region_polygons(path, slides=["a.svs"]), {"Tumor": 5})
    assert len(only) == 1 and only[0][1] == 5


def test_polygon_pixels_match_skimage_on_awkward_polygons():
    # integer and half-integer vertices put edges and vertices on pixel centres; some outlines cross themselves
    rng = np.random.default_rng(0)
    shape = (20, 22)
    for case in range(600):
        n = int(rng.integers(3, 12))
        if case % 3 == 0:
            rows, cols = rng.integers(-3, 25, n).astype(float), rng.integers(-3, 25, n).astype(float)
        elif case % 3 == 1:
            rows, cols = rng.uniform(-3, 25, n), rng.uniform(-3, 25, n)
        else:
            rows, cols = rng.integers(-6, 50, n) / 2.0, rng.integers(-6, 50, n) / 4.0
        expected = draw_polygon(rows, cols, shape=shape)
        found = polygon_pixels(rows, cols, shape)
        np.testing.assert_array_equal(found[0], expected[0], err_msg=f"case {case}")
        np.testing.assert_array_equal(found[1], expected[1], err_msg=f"case {case}")


def test_rasterise_window_origin_matches_full_mask():
    polys = [(np.asarray(SQUARE, float), 1), (np.asarray(INNER, float), 2)]
    full = rasterise(polys, (64, 64))
    window = rasterise(polys, (20, 24), origin=(16.0, 8.0))
    np.testing.assert_array_equal(window, full[8:28, 16:40])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("tumor", "class name:label"),
        ("tumor:x", "integer or 'ignore'"),
        ("tumor:300", "0..254"),
        ("tumor:1,Tumor:2", "twice"),
        ("", "at least one"),
    ],
)
def test_class_map_errors(text, fragment):
    with pytest.raises(DataError, match="--class_map") as info:
        parse_class_map(text)
    assert fragment in str(info.value)


def test_bad_databases(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_region_polygons(tmp_path / "missing.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 10)
    with pytest.raises(DataError, match="not a SlideRunner database"):
        read_region_polygons(bad)
    short = write_region_db(tmp_path / "short.sqlite", [{"slide": 1, "cls": 1, "coords": SQUARE[:2]}])
    with pytest.raises(DataError, match="2 vertices"):
        read_region_polygons(short)

"""Bad inputs of the annotation and slide readers: malformed records, SlideRunner databases with changes waiting
beside them, and unreadable tiles. Each case exits 2 with a message naming the file and the record (or position)
and leaves every file as it was."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np
import openslide
import pytest
import torch

import dataloader
from common.cli import run_main
from data.annotations import Annotation
from data.meningioma import read_meningioma
from data.midog import read_midog_json
from data.region_patches import RegionPatches, RegionSlides
from data.regions import read_region_polygons
from data.sliderunner import read_sliderunner
from data.style_sampling import read_crop, tissue_map
from data.synthetic import write_pyramid
from data.wsi import PatchOptions, WSIEvalPatches, read_patch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU = SHARED / "slides" / "CMU-1-Small-Region.svs"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show that nothing was written, created or changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(call: Callable[[], object], folder: Path, capsys) -> str:
    """Run `call` as a program's main does; assert exit code 2 and no change under `folder`; return the message."""
    before = snapshot(folder)
    capsys.readouterr()
    assert run_main(lambda _argv: call()) == 2
    assert snapshot(folder) == before
    return capsys.readouterr().err


def assert_words(message: str, *words: str) -> None:
    assert message.startswith("error: ") and message.count("\n") == 1, message
    for word in words:
        assert word in message, (word, message)


# ---------------------------------------------------------------- MIDOG JSON


def midog_doc() -> dict:
    return {
        "images": [{"id": 1, "file_name": "001.tiff", "tumor_type": "human breast cancer"},
                   {"id": 2, "file_name": "002.tiff", "tumor_type": "canine lung"}],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 20, 60, 70], "labels": [1, 2, 1]},
            {"id": 8, "image_id": 2, "category_id": 2, "bbox": [0.5, 0, 50.5, 50], "labels": [2, 2]},
        ],
    }


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("table, index, key, value, words", [
    ("annotations", 1, "bbox", [NAN, 0, 50, 50], ["annotations[1] (annotation 8)", "four finite numbers", "nan"]),
    ("annotations", 1, "bbox", [0, 0, INF, 50], ["annotations[1]", "four finite numbers", "inf"]),
    ("annotations", 0, "bbox", ["10", "20", "60", "70"], ["annotations[0] (annotation 7)", "four finite numbers"]),
    ("annotations", 0, "bbox", [10, 20, True, 70], ["annotations[0]", "four finite numbers"]),
    ("annotations", 0, "bbox", [[10], 20, 60, 70], ["annotations[0]", "four finite numbers"]),
    ("annotations", 0, "id", [7], ["annotations[0]", "integer or string 'id'", "[7]"]),
    ("annotations", 1, "id", {"n": 8}, ["annotations[1]", "integer or string 'id'"]),
    ("annotations", 0, "image_id", [1], ["annotations[0] (annotation 7)", "'image_id'", "[1]"]),
    ("annotations", 0, "image_id", 9, ["annotations[0] (annotation 7)", "'image_id'", "9"]),
    ("annotations", 0, "category_id", [1], ["annotations[0] (annotation 7)", "'category_id' among [1, 2]"]),
    ("annotations", 0, "category_id", "mitotic figure", ["annotations[0]", "'category_id'", "'mitotic figure'"]),
    ("annotations", 0, "category_id", 1.0, ["annotations[0]", "'category_id'", "1.0"]),
    ("annotations", 0, "labels", "121", ["annotations[0] (annotation 7)", "'labels'", "list of category ids"]),
    ("annotations", 0, "labels", 1, ["annotations[0]", "'labels'", "list of category ids among [1, 2]"]),
    ("annotations", 0, "labels", [[1], 2], ["annotations[0]", "'labels'", "[[1], 2]"]),
    ("annotations", 1, "labels", [2, 5], ["annotations[1] (annotation 8)", "'labels'", "[2, 5]"]),
    ("images", 0, "id", [1], ["images[0]", "integer or string 'id'", "[1]"]),
    ("images", 1, "file_name", ["002.tiff"], ["images[1] (id 2)", "'file_name' string"]),
    ("images", 1, "file_name", None, ["images[1] (id 2)", "'file_name' string"]),
    ("images", 0, "tumor_type", ["breast"], ["images[0] (id 1)", "'tumor_type' string"]),
    ("categories", 1, "id", [2], ["categories[1]", "integer or string 'id'"]),
    ("categories", 0, "name", 1, ["categories[0] (id 1)", "'name' string"]),
    ("categories", 0, "name", ["mitotic figure"], ["categories[0] (id 1)", "'name' string"]),
])
def test_malformed_midog_records(tmp_path, capsys, table, index, key, value, words):
    doc = midog_doc()
    doc[table][index][key] = value
    path = tmp_path / "midog.json"
    path.write_text(json.dumps(doc))
    for call in (lambda: read_midog_json(path), lambda: dataloader.print_summary(["--summary", str(path)])):
        assert_words(refused(call, tmp_path, capsys), str(path), *words)


def test_midog_valid_document_still_reads(tmp_path):
    path = tmp_path / "midog.json"
    path.write_text(json.dumps(midog_doc()))
    assert [(a.x, a.y, a.uid) for a in read_midog_json(path)] == [(35.0, 45.0, "7"), (25.5, 25.0, "8")]


# ---------------------------------------------------------------- SlideRunner databases


def write_db(path: Path, old_schema: bool = False, journal_mode: str = "delete") -> Path:
    """A small SlideRunner database: a spot (uid 1, class 1, two votes), a square polygon (uid 2, class 2).

    Ids are plain INTEGER columns (no primary key), as nothing in SQLite stops other values there either.
    `old_schema` leaves out deleted, guid and orderIdx, like the real CCMCT tumour-zone database.
    """
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode = {journal_mode}")
    extra = "" if old_schema else ", guid TEXT, deleted INTEGER DEFAULT 0"
    order = "" if old_schema else ", orderIdx INTEGER"
    con.execute("CREATE TABLE Slides (uid INTEGER, filename TEXT, width INTEGER, height INTEGER)")
    con.execute("CREATE TABLE Classes (uid INTEGER, name TEXT)")
    con.execute("CREATE TABLE Persons (uid INTEGER, name TEXT)")
    con.execute(f"CREATE TABLE Annotations (uid INTEGER, slide INTEGER, type INTEGER, agreedClass INTEGER{extra})")
    con.execute("CREATE TABLE Annotations_coordinates (uid INTEGER, coordinateX INTEGER, coordinateY INTEGER, "
                f"slide INTEGER, annoId INTEGER{order})")
    con.execute("CREATE TABLE Annotations_label (uid INTEGER, person INTEGER, class INTEGER, annoId INTEGER)")
    con.execute("INSERT INTO Slides (uid, filename) VALUES (1, 'a.svs')")
    con.executemany("INSERT INTO Classes VALUES (?, ?)", [(1, "mitotic figure"), (2, "not mitotic figure")])
    con.executemany("INSERT INTO Persons VALUES (?, ?)", [(1, "Alice"), (2, "Bob")])
    con.executemany("INSERT INTO Annotations (uid, slide, type, agreedClass) VALUES (?, 1, ?, ?)",
                    [(1, 1, 1), (2, 3, 2)])
    vertices = [(1, 10.5, 20, 1), (2, 0, 0, 2), (3, 40, 0, 2), (4, 40, 40, 2), (5, 0, 40, 2)]
    con.executemany("INSERT INTO Annotations_coordinates (uid, coordinateX, coordinateY, slide, annoId) "
                    "VALUES (?, ?, ?, 1, ?)", vertices)
    if not old_schema:
        con.execute("UPDATE Annotations_coordinates SET orderIdx = uid")
    con.executemany("INSERT INTO Annotations_label VALUES (?, ?, ?, ?)", [(1, 1, 1, 1), (2, 2, 2, 1)])
    con.commit()
    con.close()
    return path


def damaged(path: Path, sql: str, old_schema: bool = False) -> Path:
    write_db(path, old_schema)
    con = sqlite3.connect(path)
    con.execute(sql)
    con.commit()
    con.close()
    return path


# (statement, words), for the spot (annotation 1) and the polygon (annotation 2)
SPOT_FAULTS = [
    ("UPDATE Annotations SET type = 'spot' WHERE uid = 1", ["annotation 1", "integer type", "'spot'"]),
    ("UPDATE Annotations SET type = 1.5 WHERE uid = 1", ["annotation 1", "integer type", "1.5"]),
    ("UPDATE Annotations SET type = NULL WHERE uid = 1", ["annotation 1", "integer type", "None"]),
    ("UPDATE Annotations SET agreedClass = 'mitotic figure' WHERE uid = 1",
     ["annotation 1", "agreedClass to be an integer id", "'mitotic figure'"]),
    ("UPDATE Annotations SET agreedClass = 1.25 WHERE uid = 1",
     ["annotation 1", "agreedClass to be an integer id", "1.25"]),
    ("UPDATE Annotations SET uid = x'0102' WHERE uid = 1", ["uid b'\\x01\\x02'", "integer uid"]),
    ("UPDATE Annotations_coordinates SET coordinateX = 'abc' WHERE uid = 1",
     ["annotation 1", "Annotations_coordinates row 1", "finite numbers", "'abc'"]),
    ("UPDATE Annotations_coordinates SET coordinateY = NULL WHERE uid = 1",
     ["annotation 1", "Annotations_coordinates row 1", "finite numbers", "None"]),
    ("UPDATE Annotations_coordinates SET coordinateX = 9e999 WHERE uid = 1",
     ["annotation 1", "Annotations_coordinates row 1", "finite numbers", "inf"]),
    ("UPDATE Annotations_coordinates SET coordinateX = x'00' WHERE uid = 1",
     ["annotation 1", "Annotations_coordinates row 1", "finite numbers"]),
    ("UPDATE Annotations_label SET class = 'mitotic figure' WHERE uid = 2",
     ["Annotations_label row 2 (annotation 1)", "class to be an integer id", "'mitotic figure'"]),
    ("UPDATE Annotations_label SET person = x'01' WHERE uid = 1",
     ["Annotations_label row 1 (annotation 1)", "person to be an integer id"]),
    ("UPDATE Slides SET filename = NULL WHERE uid = 1", ["Slides row 1", "text filename"]),
]
POLYGON_FAULTS = [
    ("UPDATE Annotations SET type = 'polygon' WHERE uid = 2", ["annotation 2", "integer type", "'polygon'"]),
    ("UPDATE Annotations SET type = 2.5 WHERE uid = 2", ["annotation 2", "integer type", "2.5"]),
    ("UPDATE Annotations SET agreedClass = 'tumor' WHERE uid = 2",
     ["annotation 2", "agreedClass to be an integer id", "'tumor'"]),
    ("UPDATE Annotations SET uid = x'02' WHERE uid = 2", ["uid b'\\x02'", "integer uid"]),
    ("UPDATE Annotations_coordinates SET coordinateX = 'left' WHERE uid = 3",
     ["annotation 2", "Annotations_coordinates row 3", "finite numbers", "'left'"]),
    ("UPDATE Annotations_coordinates SET coordinateY = NULL WHERE uid = 4",
     ["annotation 2", "Annotations_coordinates row 4", "finite numbers", "None"]),
    ("UPDATE Annotations_coordinates SET coordinateY = -9e999 WHERE uid = 5",
     ["annotation 2", "Annotations_coordinates row 5", "finite numbers", "-inf"]),
    ("UPDATE Annotations_label SET class = 2.5 WHERE uid = 1",
     ["Annotations_label row 1", "class to be an integer id"]),
]


@pytest.mark.parametrize("sql, words", SPOT_FAULTS)
def test_malformed_sliderunner_records(tmp_path, capsys, sql, words):
    path = damaged(tmp_path / "spots.sqlite", sql)
    for call in (lambda: read_sliderunner(path), lambda: dataloader.print_summary(["--summary", str(path)])):
        assert_words(refused(call, tmp_path, capsys), str(path), *words)


@pytest.mark.parametrize("sql, words", POLYGON_FAULTS)
def test_malformed_region_polygons_old_schema(tmp_path, capsys, sql, words):
    path = damaged(tmp_path / "regions.sqlite", sql, old_schema=True)
    assert_words(refused(lambda: read_region_polygons(path), tmp_path, capsys), str(path), *words)


def test_well_formed_databases_still_read(tmp_path):
    path = write_db(tmp_path / "spots.sqlite")
    [spot] = read_sliderunner(path)
    assert (spot.x, spot.y, spot.soft) == (10.5, 20.0, 0.5)
    [polygon] = read_region_polygons(write_db(tmp_path / "old.sqlite", old_schema=True))
    assert polygon.vertices.tolist() == [[0, 0], [40, 0], [40, 40], [0, 40]]


# ---------------------------------------------------------------- SlideRunner databases: WAL and journals


def pending_wal(folder: Path) -> Path:
    """A WAL-mode database copied while a writer held changes in its -wal file (not yet checkpointed)."""
    source = write_db(folder.parent / f"{folder.name}-source.sqlite", journal_mode="wal")
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("INSERT INTO Annotations (uid, slide, type, agreedClass) VALUES (3, 1, 1, 2)")
    writer.commit()
    folder.mkdir()
    for side in source.parent.glob(source.name + "*"):
        shutil.copyfile(side, folder / side.name.replace(f"{folder.name}-source", "db"))
    writer.close()
    assert (folder / "db.sqlite-wal").stat().st_size > 0
    return folder / "db.sqlite"


def hot_journal(folder: Path) -> Path:
    """A database copied in the middle of a write that spilled into the main file (its -journal is hot)."""
    source = write_db(folder.parent / f"{folder.name}-source.sqlite")
    writer = sqlite3.connect(source, isolation_level=None)
    writer.execute("PRAGMA cache_size = 1")
    writer.execute("BEGIN")
    writer.executemany("INSERT INTO Persons VALUES (?, ?)", [(i, "x" * 3000) for i in range(3, 200)])
    folder.mkdir()
    for side in source.parent.glob(source.name + "*"):
        shutil.copyfile(side, folder / side.name.replace(f"{folder.name}-source", "db"))
    writer.execute("ROLLBACK")
    writer.close()
    assert (folder / "db.sqlite-journal").read_bytes()[:1] not in (b"", b"\x00")
    return folder / "db.sqlite"


@pytest.mark.parametrize("make, words", [
    (pending_wal, ["db.sqlite-wal", "changes not yet written", "open and close it once in SlideRunner",
                   "sqlite3", "written back"]),
    (hot_journal, ["db.sqlite-journal", "unfinished write", "half-written", "open and close it once in SlideRunner",
                   "sqlite3", "rolled back"]),
])
def test_changes_waiting_beside_the_database_are_refused(tmp_path, capsys, make, words):
    path = make(tmp_path / "copy")
    for call in (lambda: read_sliderunner(path), lambda: read_region_polygons(path),
                 lambda: dataloader.print_summary(["--summary", str(path)])):
        assert_words(refused(call, tmp_path, capsys), str(path), *words)


def test_clean_wal_database_reads_without_side_files(tmp_path):
    path = write_db(tmp_path / "wal.sqlite", journal_mode="wal")
    with open(path, "rb") as fh:
        assert fh.read(20)[18:20] == b"\x02\x02"  # WAL mode in the header
    before = snapshot(tmp_path)
    assert len(read_sliderunner(path)) == 1 and len(read_region_polygons(path)) == 1
    assert snapshot(tmp_path) == before


def test_empty_journal_and_empty_wal_are_no_pending_changes(tmp_path):
    path = write_db(tmp_path / "db.sqlite")
    (tmp_path / "db.sqlite-journal").write_bytes(b"")
    (tmp_path / "db.sqlite-wal").write_bytes(b"")
    before = snapshot(tmp_path)
    assert len(read_sliderunner(path)) == 1
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- meningioma point files


@pytest.mark.parametrize("name, text, words", [
    ("s1.txt", "nan\tnan\n1\t2\n", ["line 1", "finite coordinates", "nan"]),
    ("s2.txt", "x\ty\n1\t2\n3\tinf\n", ["line 3", "finite coordinates", "inf"]),
    ("s3.txt", "1\t2\n-Infinity\t4\n", ["line 2", "finite coordinates", "-Infinity"]),
    ("s4.txt", "12\tabc\n1\t2\n", ["line 1", "expected 'x<TAB>y'", "abc"]),
    ("s5.csv", '1,s,r,"1 2",NOT,a\n2,s,r,"nan 4",MITE,a\n', ["line 2", "finite coordinates", "nan 4"]),
    ("s6.csv", 'id,slide,region,position,score,reader\n1,s,r,"5 inf",NOT,a\n', ["line 2", "finite coordinates"]),
    ("s7.csv", '1,s,r,"[1] 2",NOT,a\n', ["line 1", "'\"x y\"' at field 3"]),
])
def test_malformed_meningioma_points(tmp_path, capsys, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    assert_words(refused(lambda: read_meningioma(path), tmp_path, capsys), str(path), *words)


# ---------------------------------------------------------------- unreadable tiles


@pytest.fixture()
def small_slide(tmp_path) -> Path:
    """A 256 x 256 px tiled TIFF that openslide reads."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.tif"
    write_pyramid(path, rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), mpp=0.5)
    return path


def failing_read(error: Exception):
    def read_region(self, location, level, size):
        raise error
    return read_region


ERRORS = [(openslide.OpenSlideError("Corrupt JPEG data: premature end of data segment"), "Corrupt JPEG data"),
          (OSError(5, "Input/output error"), "[Errno 5] Input/output error")]


def eval_item(path: Path, x: float, y: float, size: int = 32) -> Callable[[], object]:
    annotation = Annotation(slide=path.name, x=x, y=y, class_name="mitotic figure", label=1, soft=1.0, uid="1")
    dataset = WSIEvalPatches([annotation], {path.name: path}, PatchOptions(tile_size=size))
    return lambda: dataset[0]


def region_read(path: Path, style: bool) -> Callable[[], object]:
    """An item of a region set on `path` (patch at level-0 top-left 64, 96), or its nearby style crops."""
    slides = RegionSlides(path.parent, {path.name: path}, {path.name: "train"},
                          {path.name: np.ones((256, 256), np.uint8)}, num_classes=2)
    dataset = RegionPatches(slides, [(path.name, 64, 96)], tile_size=32, num_style=1, style_mode="nearby", radius=8)
    if style:
        return lambda: dataset.style_crops(path.name, np.random.default_rng(0), position=(80.0, 112.0))
    return lambda: dataset[0]


@pytest.mark.parametrize("error, reason", ERRORS, ids=["openslide", "oserror"])
@pytest.mark.parametrize("call, position", [
    (lambda p: eval_item(p, 100, 120), "level 0, x 84, y 104"),
    (lambda p: region_read(p, style=False), "level 0, x 64, y 96"),
    (lambda p: region_read(p, style=True), "level 0, x "),
    (lambda p: (lambda: read_crop(openslide.OpenSlide(str(p)), 50, 60, 20)), "level 0, x 40, y 50"),
    (lambda p: (lambda: tissue_map(openslide.OpenSlide(str(p)))), "level 0, x 0, y 0 (256 x 256 px)"),
])
def test_unreadable_tile_names_slide_and_position(small_slide, tmp_path, capsys, monkeypatch, error, reason, call,
                                                 position):
    monkeypatch.setattr(openslide.OpenSlide, "read_region", failing_read(error))
    message = refused(call(small_slide), tmp_path, capsys)
    assert_words(message, str(small_slide), "cannot read the tile at", position, reason, "damaged")


def test_unreadable_tile_in_a_dataloader_worker_keeps_its_message(small_slide, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(openslide.OpenSlide, "read_region", failing_read(ERRORS[0][0]))
    annotation = Annotation(slide=small_slide.name, x=100, y=120, class_name="mitotic figure", label=1, soft=1.0,
                            uid="1")
    dataset = WSIEvalPatches([annotation], {small_slide.name: small_slide}, PatchOptions(tile_size=32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1,
                                         collate_fn=lambda batch: batch, multiprocessing_context="fork")
    message = refused(lambda: next(iter(loader)), tmp_path, capsys)
    assert message == (f"error: {small_slide}: cannot read the tile at level 0, x 84, y 104 (32 x 32 px): Corrupt JPEG"
                       " data: premature end of data segment; the slide file is damaged or truncated (replace it with"
                       " an intact copy)\n")


@pytest.fixture()
def broken_svs(tmp_path) -> tuple[Path, int, int]:
    """A copy of the real SVS slide with the middle half of one level-0 tile's JPEG data zeroed, and that tile's
    top-left corner."""
    if not CMU.is_file():
        pytest.skip(f"real reference data {CMU} is absent (expected in ../shared/data next to the project)")
    import tifffile

    with tifffile.TiffFile(CMU) as tiff:
        page = tiff.pages[0]
        offsets, counts, tile, width = page.dataoffsets, page.databytecounts, page.tilewidth, page.imagewidth
    index = len(offsets) // 2
    across = -(-width // tile)
    path = tmp_path / "CMU-1-broken.svs"
    data = bytearray(CMU.read_bytes())
    start, length = offsets[index] + counts[index] // 4, counts[index] // 2
    data[start:start + length] = bytes(length)
    path.write_bytes(bytes(data))
    return path, (index % across) * tile, (index // across) * tile


def test_real_svs_with_a_damaged_tile(broken_svs, tmp_path, capsys):
    path, x, y = broken_svs
    with openslide.OpenSlide(str(path)) as slide:
        message = refused(lambda: read_patch(slide, x + 40, y + 40, 16), tmp_path, capsys)
    assert_words(message, str(path), f"level 0, x {x + 32}, y {y + 32} (16 x 16 px)", "Corrupt JPEG data", "damaged")
    message = refused(eval_item(path, x + 100, y + 100), tmp_path, capsys)
    assert_words(message, str(path), f"level 0, x {x + 84}, y {y + 84}", "damaged")
    with openslide.OpenSlide(str(path)) as slide:  # the other tiles still read
        assert read_patch(slide, 100, 100, 16).shape == (16, 16, 3)

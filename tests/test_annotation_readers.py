"""Annotation readers: SlideRunner sqlite, MIDOG JSON and meningioma point files."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

import dataloader
from data.annotations import Annotation, ClassMap, DataError
from data.meningioma import read_meningioma
from data.midog import midog_images, midog_summary, read_midog_json
from data.sliderunner import read_sliderunner, sliderunner_classes, sliderunner_slides, sliderunner_summary

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MIDOG_DB = SHARED / "annotations" / "MIDOG.sqlite"
MIDOGPP = SHARED / "annotations" / "MIDOGpp.json"
EXPERTS = ("expert 1", "expert 2", "expert 3")


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real reference data {path} is absent (expected in ../shared/data next to the project)")
    return path


# ---------------------------------------------------------------- SlideRunner fixture writer

CCMCT_CLASSES = {1: "Mitotic figure", 2: "Mitotic figure lookalike", 3: "Granulocyte", 4: "Tumor cell"}
PERSONS = {1: "Alice", 2: "Bob", 3: "Carol"}


def write_sliderunner_db(
    path: Path,
    annotations: list[dict],
    *,
    slides: tuple[str, ...] = ("a.svs", "b.svs"),
    classes: dict[int, str] = CCMCT_CLASSES,
    persons: dict[int, str] = PERSONS,
    old_schema: bool = False,
    agreed_column: bool = True,
) -> Path:
    """Write a SlideRunner database; `old_schema` leaves out deleted, guid, coordinateZ and orderIdx.

    Each annotation: {"slide": slide uid, "type": int, "cls": agreed class uid, "coords": [(x, y), ...] in
    drawing order, "votes": [(person uid, class uid), ...], "deleted": 0/1, "order": optional storage order}.
    """
    con = sqlite3.connect(path)
    anno_cols = ["uid INTEGER PRIMARY KEY", "slide INTEGER", "type INTEGER"]
    coord_cols = ["uid INTEGER PRIMARY KEY", "coordinateX INTEGER", "coordinateY INTEGER", "slide INTEGER",
                  "annoId INTEGER"]
    if agreed_column:
        anno_cols.append("agreedClass INTEGER")
    if not old_schema:
        anno_cols += ["guid TEXT", "deleted INTEGER DEFAULT 0"]
        coord_cols += ["coordinateZ INTEGER DEFAULT 0", "orderIdx INTEGER"]
    con.execute("CREATE TABLE Slides (uid INTEGER PRIMARY KEY, filename TEXT, width INTEGER, height INTEGER)")
    con.execute("CREATE TABLE Classes (uid INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE TABLE Persons (uid INTEGER PRIMARY KEY, name TEXT)")
    con.execute(f"CREATE TABLE Annotations ({', '.join(anno_cols)})")
    con.execute(f"CREATE TABLE Annotations_coordinates ({', '.join(coord_cols)})")
    con.execute("CREATE TABLE Annotations_label (uid INTEGER PRIMARY KEY, person INTEGER, class INTEGER, "
                "annoId INTEGER)")
    con.executemany("INSERT INTO Slides (uid, filename) VALUES (?, ?)", list(enumerate(slides, start=1)))
    con.executemany("INSERT INTO Classes VALUES (?, ?)", list(classes.items()))
    con.executemany("INSERT INTO Persons VALUES (?, ?)", list(persons.items()))
    for uid, anno in enumerate(annotations, start=1):
        values = {"uid": uid, "slide": anno.get("slide", 1), "type": anno["type"]}
        if agreed_column:
            values["agreedClass"] = anno.get("cls")
        if not old_schema:
            values.update(guid=f"guid-{uid}", deleted=anno.get("deleted", 0))
        con.execute(f"INSERT INTO Annotations ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))
        coords = list(enumerate(anno["coords"], start=1))
        for index in anno.get("order", range(len(coords))):
            order_idx, (x, y) = coords[index]
            row = {"coordinateX": x, "coordinateY": y, "slide": values["slide"], "annoId": uid}
            if not old_schema:
                row["orderIdx"] = order_idx
            con.execute(f"INSERT INTO Annotations_coordinates ({', '.join(row)}) VALUES "
                        f"({', '.join('?' * len(row))})", list(row.values()))
        for person, cls in anno.get("votes", ()):
            con.execute("INSERT INTO Annotations_label (person, class, annoId) VALUES (?, ?, ?)",
                        (person, cls, uid))
    con.commit()
    con.close()
    return path


# L-shaped polygon: area centroid (5/3, 5/3) + offset, vertex mean (2, 2) + offset.
L_SHAPE = [(100, 200), (104, 200), (104, 202), (102, 202), (102, 204), (100, 204)]


@pytest.fixture()
def ccmct_db(tmp_path: Path) -> Path:
    return write_sliderunner_db(tmp_path / "ccmct.sqlite", [
        {"type": 1, "cls": 1, "coords": [(10.5, 20.25)], "votes": [(1, 1), (2, 2)]},
        {"type": 1, "cls": 2, "coords": [(30, 40)], "votes": [(1, 2), (2, 1), (3, 1)]},
        {"type": 1, "cls": 1, "coords": [(50, 60)], "deleted": 1},
        {"type": 3, "cls": 1, "coords": L_SHAPE, "order": [3, 0, 5, 1, 4, 2], "slide": 2},
        {"type": 5, "cls": 3, "coords": [(10, 20), (30, 60)], "slide": 2},
        {"type": 2, "cls": 2, "coords": [(0, 0), (8, 4)], "slide": 2},
        {"type": 4, "cls": 4, "coords": [(70, 80)], "votes": [(1, 1), (1, 4)]},
        {"type": 6, "cls": 4, "coords": []},
    ])


CCMCT_MAP = ClassMap(mitotic=("mitotic FIGURE",), negative=("Mitotic figure lookalike", "granulocyte"))
ALL_TYPES = (1, 2, 3, 4, 5)


# ---------------------------------------------------------------- SlideRunner: hand-made databases

def test_sliderunner_spots_classes_and_deleted(ccmct_db: Path) -> None:
    spots = read_sliderunner(ccmct_db, CCMCT_MAP)
    assert [(a.uid, a.slide, a.x, a.y, a.class_name, a.label, a.kind) for a in spots] == [
        ("1", "a.svs", 10.5, 20.25, "Mitotic figure", 1, "spot"),
        ("2", "a.svs", 30.0, 40.0, "Mitotic figure lookalike", 0, "spot"),
    ]
    every = read_sliderunner(ccmct_db, ClassMap(mitotic=("Mitotic figure",)), types=ALL_TYPES)
    assert [a.uid for a in every] == ["1", "2", "4", "5", "6", "7"]
    assert {a.uid: a.label for a in every} == {"1": 1, "2": 0, "4": 1, "5": 0, "6": 0, "7": 0}


def test_sliderunner_polygon_circle_rectangle_geometry(ccmct_db: Path) -> None:
    shapes = {a.kind: a for a in read_sliderunner(ccmct_db, CCMCT_MAP, types=ALL_TYPES) if a.kind != "spot"}
    polygon = shapes["polygon"]
    assert polygon.slide == "b.svs"
    assert polygon.bounds == (100.0, 200.0, 104.0, 204.0)
    assert polygon.x == pytest.approx(100 + 5 / 3) and polygon.y == pytest.approx(200 + 5 / 3)
    assert shapes["circle"].bounds == (10.0, 20.0, 30.0, 60.0)
    assert (shapes["circle"].x, shapes["circle"].y) == (20.0, 40.0)
    assert (shapes["rectangle"].x, shapes["rectangle"].y, shapes["rectangle"].bounds) == (4.0, 2.0, (0, 0, 8, 4))


def test_sliderunner_soft_labels_from_votes(ccmct_db: Path) -> None:
    binned = {a.uid: a for a in read_sliderunner(ccmct_db, CCMCT_MAP, types=ALL_TYPES)}
    continuous = {a.uid: a.soft for a in read_sliderunner(ccmct_db, CCMCT_MAP, types=ALL_TYPES, soft="continuous")}
    assert binned["1"].votes == (("Alice", "Mitotic figure"), ("Bob", "Mitotic figure lookalike"))
    assert binned["1"].soft == 0.5 and continuous["1"] == 0.5
    assert binned["2"].label == 0 and binned["2"].soft == 0.5 and continuous["2"] == pytest.approx(2 / 3)
    assert binned["4"].soft == 1.0 and continuous["4"] == 1.0  # no votes: soft = hard label
    only_alice = {a.uid: a for a in read_sliderunner(ccmct_db, CCMCT_MAP, annotators=["alice"], soft="continuous")}
    assert only_alice["1"].votes == (("Alice", "Mitotic figure"),) and only_alice["1"].soft == 1.0
    assert only_alice["2"].soft == 0.0
    with pytest.raises(DataError, match="Dave"):
        read_sliderunner(ccmct_db, CCMCT_MAP, annotators=["Dave"])


def test_sliderunner_latest_vote_of_a_person_counts_once(ccmct_db: Path) -> None:
    tumor = ClassMap(mitotic=("Mitotic figure",), negative=("Tumor cell",))
    [special] = read_sliderunner(ccmct_db, tumor, types=(4,), soft="continuous")
    assert special.votes == (("Alice", "Tumor cell"),) and special.soft == 0.0


def test_sliderunner_summary_and_listing(ccmct_db: Path) -> None:
    summary = sliderunner_summary(ccmct_db)
    assert summary["format"] == "sliderunner" and summary["file"] == str(ccmct_db)
    assert (summary["slides"], summary["slides_with_annotations"], summary["annotations"]) == (2, 2, 7)
    assert summary["per_class"] == {"Mitotic figure": 2, "Mitotic figure lookalike": 2, "Granulocyte": 1,
                                    "Tumor cell": 2}
    assert summary["per_type"] == {"spot": 3, "polygon": 1, "circle": 1, "rectangle": 1, "image": 1}
    assert summary["per_slide"] == {"a.svs": 4, "b.svs": 3}
    assert sliderunner_slides(ccmct_db) == ["a.svs", "b.svs"]
    assert sliderunner_classes(ccmct_db) == list(CCMCT_CLASSES.values())


def test_sliderunner_old_schema(tmp_path: Path) -> None:
    db = write_sliderunner_db(tmp_path / "old.sqlite", [
        {"type": 1, "cls": 1, "coords": [(5, 6)], "votes": [(1, 1)]},
        {"type": 3, "cls": 2, "coords": L_SHAPE},
        {"type": 1, "cls": 4, "coords": [(7.5, 8.5)]},
    ], old_schema=True)
    spots = read_sliderunner(db, ClassMap(), types=ALL_TYPES)
    assert [(a.uid, a.x, a.y, a.label, a.soft) for a in spots[::2]] == [("1", 5.0, 6.0, 1, 1.0),
                                                                       ("3", 7.5, 8.5, 0, 0.0)]
    assert spots[1].x == pytest.approx(100 + 5 / 3) and spots[1].bounds == (100.0, 200.0, 104.0, 204.0)
    assert sliderunner_summary(db)["annotations"] == 3


def test_sliderunner_majority_vote_without_agreed_class(tmp_path: Path) -> None:
    db = write_sliderunner_db(tmp_path / "votes.sqlite", [
        {"type": 1, "coords": [(1, 1)], "votes": [(1, 1), (2, 2), (3, 2)]},
        {"type": 1, "coords": [(2, 2)], "votes": [(1, 1), (2, 1), (3, 3)]},
        {"type": 1, "coords": [(3, 3)]},
    ], old_schema=True, agreed_column=False)
    spots = read_sliderunner(db, ClassMap(mitotic=("Mitotic figure",)), soft="continuous")
    assert [(a.uid, a.class_name, a.label) for a in spots] == [("1", "Mitotic figure lookalike", 0),
                                                              ("2", "Mitotic figure", 1)]
    assert spots[0].soft == pytest.approx(1 / 3) and spots[1].soft == pytest.approx(2 / 3)


def test_sliderunner_bad_inputs(tmp_path: Path, ccmct_db: Path) -> None:
    with pytest.raises(DataError, match="missing.sqlite"):
        read_sliderunner(tmp_path / "missing.sqlite")
    empty = write_sliderunner_db(tmp_path / "empty.sqlite", [])
    with pytest.raises(DataError, match="empty.sqlite.*no annotations"):
        read_sliderunner(empty, ClassMap(mitotic=("Mitotic figure",)))
    assert sliderunner_summary(empty)["annotations"] == 0
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DataError, match="other.sqlite.*not a SlideRunner"):
        read_sliderunner(other)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some text " * 20)
    with pytest.raises(DataError, match="notes.sqlite.*not a SlideRunner"):
        sliderunner_summary(text)
    with pytest.raises(DataError, match=r"unknown class name.*'Eosinophil'.*Granulocyte"):
        read_sliderunner(ccmct_db, ClassMap(mitotic=("Mitotic figure",), negative=("Eosinophil",)))
    with pytest.raises(DataError, match="soft"):
        read_sliderunner(ccmct_db, CCMCT_MAP, soft="fuzzy")


def test_sliderunner_opens_read_only(ccmct_db: Path) -> None:
    before = ccmct_db.read_bytes()
    ccmct_db.chmod(0o444)
    read_sliderunner(ccmct_db, CCMCT_MAP)
    sliderunner_summary(ccmct_db)
    assert ccmct_db.read_bytes() == before


# ---------------------------------------------------------------- MIDOG JSON: hand-made file

def test_midog_json_fixture(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 1, "file_name": "001.tiff", "width": 100, "height": 80, "tumor_type": "Human Melanoma"},
                   {"id": 2, "file_name": "002.tiff", "width": 90, "height": 70, "tumor_type": "canine lung"}],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 20, 60, 70], "labels": [1, 2, 1]},
            {"id": 8, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "labels": [2, 2]},
        ],
    }
    path = tmp_path / "midog.json"
    path.write_text(json.dumps(doc))
    [melanoma] = read_midog_json(path, tumor_types=["human melanoma"], soft="continuous")
    assert (melanoma.slide, melanoma.x, melanoma.y, melanoma.bounds) == ("001.tiff", 35.0, 45.0, (10, 20, 60, 70))
    assert melanoma.label == 1 and melanoma.soft == pytest.approx(2 / 3) and melanoma.uid == "7"
    assert [a.soft for a in read_midog_json(path)] == [0.5, 0.0]
    summary = midog_summary(path)
    assert summary["per_tumor_type"] == {"Human Melanoma": {"mitotic figure": 1},
                                         "canine lung": {"not mitotic figure": 1}}
    assert midog_images(path)[1] == {"file_name": "002.tiff", "width": 90, "height": 70, "tumor_type": "canine lung"}
    doc["annotations"][0]["bbox"] = [10, 20, 5, 5]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation 7.*\[x1, y1, x2, y2\]"):
        read_midog_json(path)


# ---------------------------------------------------------------- real files

def test_real_midog_sqlite_counts() -> None:
    summary = sliderunner_summary(_need(MIDOG_DB))
    assert summary["per_class"] == {"mitotic figure": 1721, "not mitotic figure": 2714}
    assert (summary["slides"], summary["slides_with_annotations"], summary["annotations"]) == (200, 150, 4435)
    assert summary["per_type"] == {"spot": 4435}
    spots = read_sliderunner(MIDOG_DB)
    assert Counter(a.class_name for a in spots) == {"mitotic figure": 1721, "not mitotic figure": 2714}
    assert Counter(a.label for a in spots) == {1: 1721, 0: 2714}
    assert any(not a.x.is_integer() for a in spots)  # some coordinates are stored as REAL
    assert sliderunner_slides(MIDOG_DB)[:2] == ["001.tiff", "002.tiff"]


def test_real_midogpp_counts() -> None:
    summary = midog_summary(_need(MIDOGPP))
    assert summary["per_class"] == {"mitotic figure": 11937, "not mitotic figure": 14349}
    assert summary["slides"] == 553 and summary["annotations"] == 26286
    assert summary["per_tumor_type"]["canine cutaneous mast cell tumor"] == {"mitotic figure": 2327,
                                                                            "not mitotic figure": 1366}
    spots = read_midog_json(MIDOGPP)
    assert Counter(a.label for a in spots) == {1: 11937, 0: 14349}
    breast = midog_summary(MIDOGPP, tumor_types=["Human Breast Cancer"])
    assert breast["slides"] == 200 and breast["annotations"] == 4435


def test_real_midog2021_subset_matches_sqlite() -> None:
    db = read_sliderunner(_need(MIDOG_DB), annotators=EXPERTS, soft="continuous")
    js = read_midog_json(_need(MIDOGPP), tumor_types=["human breast cancer"], soft="continuous")
    assert len(db) == len(js) == 4435
    assert {i["file_name"] for i in midog_images(MIDOGPP) if i["tumor_type"] == "human breast cancer"} == set(
        sliderunner_slides(MIDOG_DB))
    def key(a: Annotation) -> tuple:
        return a.slide, a.x, a.y, a.class_name

    for a, b in zip(sorted(db, key=key), sorted(js, key=key)):
        assert a.slide == b.slide and a.class_name == b.class_name
        assert abs(a.x - b.x) <= 1 and abs(a.y - b.y) <= 1
        assert a.soft == pytest.approx(b.soft)  # the experts' votes are the MIDOG++ labels


def test_real_files_unknown_names() -> None:
    with pytest.raises(DataError, match=r"MIDOG.sqlite.*'Mitotic figure lookalike'.*not mitotic figure"):
        read_sliderunner(_need(MIDOG_DB), ClassMap(negative=("Mitotic figure lookalike",)))
    with pytest.raises(DataError, match=r"MIDOGpp.json.*'granulocyte'"):
        read_midog_json(_need(MIDOGPP), ClassMap(mitotic=("granulocyte",)))
    with pytest.raises(DataError, match=r"unknown tumor type.*'feline lymphoma'.*human melanoma"):
        read_midog_json(MIDOGPP, tumor_types=["feline lymphoma"])


# ---------------------------------------------------------------- meningioma point files

def test_meningioma_folder(tmp_path: Path) -> None:
    (tmp_path / "slide1.txt").write_text("x\ty\n10\t20\n\n30.5\t40\n")
    (tmp_path / "slide2.csv").write_text(
        "id,slide,region,position,score,reader\n"
        '1,slide2,r1,"100 200",NOT,a\n'
        "2,slide2,r1,300 400,INDET,a\n"
        '3,slide2,r2,"500 600", mite ,b\n'
    )
    (tmp_path / "notes.md").write_text("not a point file")
    points = read_meningioma(tmp_path)
    assert [(a.slide, a.x, a.y, a.class_name, a.label, a.soft) for a in points] == [
        ("slide1", 10.0, 20.0, "mitotic figure", 1, 1.0),
        ("slide1", 30.5, 40.0, "mitotic figure", 1, 1.0),
        ("slide2", 100.0, 200.0, "not mitotic figure", 0, 0.0),
        ("slide2", 300.0, 400.0, "indeterminate", 0, 0.5),
        ("slide2", 500.0, 600.0, "mitotic figure", 1, 1.0),
    ]
    assert len({a.uid for a in points}) == 5
    assert [a.label for a in read_meningioma(tmp_path / "slide2.csv", indeterminate="mitotic")] == [0, 1, 1]
    assert [a.class_name for a in read_meningioma([tmp_path / "slide2.csv"], indeterminate="skip")] == [
        "not mitotic figure", "mitotic figure"]


def test_meningioma_bad_inputs(tmp_path: Path) -> None:
    bad = tmp_path / "slide3.csv"
    bad.write_text('1,s,r,"1 2",NOT,a\n\n2,s,r,"3 4",MAYBE,a\n')
    with pytest.raises(DataError, match=r"slide3.csv: line 3.*MAYBE"):
        read_meningioma(bad)
    bad.write_text('1,s,r,"1 2",NOT,a\n2,s,r,"three four",MITE,a\n')
    with pytest.raises(DataError, match=r"slide3.csv: line 2"):
        read_meningioma(bad)
    txt = tmp_path / "slide4.txt"
    txt.write_text("1\t2\n3\t4\t5\n")
    with pytest.raises(DataError, match=r"slide4.txt: line 2"):
        read_meningioma(txt)
    with pytest.raises(DataError, match="nowhere"):
        read_meningioma(tmp_path / "nowhere")
    with pytest.raises(DataError, match="indeterminate"):
        read_meningioma(txt, indeterminate="maybe")


def test_summary_command_prints_json(shared_data, capsys):
    import json

    import dataloader

    assert dataloader.main(["--summary", str(shared_data / "annotations" / "MIDOG.sqlite")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["per_class"] == {"mitotic figure": 1721, "not mitotic figure": 2714}
    assert summary["slides"] == 200 and len(summary["per_slide"]) >= 150
    assert dataloader.main(["--summary", str(shared_data / "missing.sqlite")]) == 2


def test_negative_classes_all_takes_every_class_that_is_not_mitotic(ccmct_db: Path) -> None:
    config = {"dataset": "canine", "mitotic_classes": None, "indeterminate": "negative", "soft_mode": "binned",
              "annotators": None, "tumor_types": None}
    default = dataloader.read_annotations(ccmct_db, {**config, "negative_classes": None})
    every = dataloader.read_annotations(ccmct_db, {**config, "negative_classes": ["all"]})
    assert {a.class_name for a in default if a.label == 0} == {"Mitotic figure lookalike"}
    extra = {a.uid for a in every} - {a.uid for a in default}
    assert extra and all(a.label == 0 and a.class_name != "Mitotic figure lookalike" for a in every if a.uid in extra)

"""The synthetic demo dataset: determinism, readable slides, the SlideRunner database, content, atomic reuse."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from data.annotations import DataError
from data.synthetic import (
    ANNOTATORS,
    annotator_votes,
    draw_lookalike,
    draw_mitosis,
    EDGE_MARGIN,
    LOOKALIKE_CLASS,
    MITOTIC_CLASS,
    SyntheticConfig,
    generate_synthetic_dataset,
    main,
    render_tissue,
    synthetic_paths,
)

SMALL = SyntheticConfig(num_slides=2, size=768, seed=0, mitotic_per_slide=12, lookalike_per_slide=20)
TABLES = ("Slides", "Classes", "Persons", "Annotations", "Annotations_coordinates", "Annotations_label")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "demo", SMALL, progress=False)


def rows(database: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY uid").fetchall() for table in TABLES}
    finally:
        con.close()


def spots(database: Path) -> list[tuple[str, int, int, str, tuple[str, ...]]]:
    """(slide file, x, y, agreed class, votes ordered by person) for every annotation."""
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        found = con.execute(
            "SELECT a.uid, s.filename, c.coordinateX, c.coordinateY, k.name FROM Annotations a "
            "JOIN Slides s ON s.uid = a.slide JOIN Annotations_coordinates c ON c.annoId = a.uid "
            "JOIN Classes k ON k.uid = a.agreedClass ORDER BY a.uid"
        ).fetchall()
        votes: dict[int, list[tuple[str, str]]] = {}
        for anno, person, name in con.execute(
            "SELECT l.annoId, p.name, k.name FROM Annotations_label l JOIN Persons p ON p.uid = l.person "
            "JOIN Classes k ON k.uid = l.class"
        ):
            votes.setdefault(anno, []).append((person, name))
    finally:
        con.close()
    return [(f, x, y, k, tuple(name for _, name in sorted(votes[uid]))) for uid, f, x, y, k in found]


def pixel_digests(slides_dir: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(slides_dir.glob("*.tif")):
        with tifffile.TiffFile(path) as tif:
            digests[path.name] = "".join(hashlib.sha256(page.asarray().tobytes()).hexdigest() for page in tif.pages)
    return digests


def test_files_layout_and_splits(dataset: Path) -> None:
    paths = synthetic_paths(dataset)
    assert sorted(p.name for p in paths["slides_dir"].iterdir()) == ["synthetic_000.tif", "synthetic_001.tif"]
    assert paths["database"].is_file()
    with open(paths["splits"], newline="") as handle:
        assert list(csv.DictReader(handle)) == [
            {"slide": "synthetic_000.tif", "split": "train"},
            {"slide": "synthetic_001.tif", "split": "val"},
        ]
    assert "seed 0" in (dataset / "README.txt").read_text()
    record = json.loads((dataset / "synthetic.json").read_text())
    assert record["size"] == 768 and record["num_slides"] == 2
    assert not [p for p in dataset.parent.iterdir() if p.name.endswith(".tmp")]


def test_same_seed_same_data_other_seed_other_data(dataset: Path, tmp_path: Path) -> None:
    again = generate_synthetic_dataset(tmp_path / "again", SMALL, progress=False)
    first, second = synthetic_paths(dataset), synthetic_paths(again)
    assert pixel_digests(first["slides_dir"]) == pixel_digests(second["slides_dir"])
    for name in ("synthetic_000.tif", "synthetic_001.tif"):
        assert (first["slides_dir"] / name).read_bytes() == (second["slides_dir"] / name).read_bytes()
    assert rows(first["database"]) == rows(second["database"])

    other_config = replace(SMALL, seed=1)
    other = synthetic_paths(generate_synthetic_dataset(tmp_path / "other", other_config, progress=False))
    mine, theirs = pixel_digests(first["slides_dir"]), pixel_digests(other["slides_dir"])
    assert all(mine[name] != theirs[name] for name in mine)
    assert rows(first["database"])["Annotations_coordinates"] != rows(other["database"])["Annotations_coordinates"]


def test_openslide_reads_pyramid_mpp_and_the_written_pixels(dataset: Path) -> None:
    paths = synthetic_paths(dataset)
    centres = spots(paths["database"])
    for path in sorted(paths["slides_dir"].glob("*.tif")):
        level0 = tifffile.imread(path, key=0)
        with openslide.OpenSlide(str(path)) as slide:
            assert slide.level_count > 1
            assert slide.dimensions == (768, 768)
            assert slide.level_dimensions[1] == (384, 384)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
            mine = [(x, y) for f, x, y, _, _ in centres if f == path.name]
            assert len(mine) == 32
            for x, y in mine[:6]:
                region = np.asarray(slide.read_region((x - 32, y - 32), 0, (64, 64)))
                assert (region[..., 3] == 255).all()
                np.testing.assert_array_equal(region[..., :3], level0[y - 32 : y + 32, x - 32 : x + 32])
            low = np.asarray(slide.read_region((0, 0), 1, (384, 384)))[..., :3].astype(float)
            expected = level0.reshape(384, 2, 384, 2, 3).mean(axis=(1, 3))
            assert np.abs(low - expected).max() <= 1.0


def test_database_counts_annotators_and_soft_labels(dataset: Path) -> None:
    database = synthetic_paths(dataset)["database"]
    table = rows(database)
    assert [(name, w, h) for _, name, w, h, *_ in table["Slides"]] == [
        ("synthetic_000.tif", 768, 768),
        ("synthetic_001.tif", 768, 768),
    ]
    assert sorted(name for _, name, _ in table["Classes"]) == sorted([MITOTIC_CLASS, LOOKALIKE_CLASS])
    assert sorted(name for _, name, _ in table["Persons"]) == sorted(ANNOTATORS)
    assert {row[5] for row in table["Annotations"]} == {1}
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone() == (0,)
    con.close()

    found = spots(database)
    per_slide = Counter((f, k) for f, _, _, k, _ in found)
    for name in ("synthetic_000.tif", "synthetic_001.tif"):
        assert per_slide[(name, MITOTIC_CLASS)] == 12
        assert per_slide[(name, LOOKALIKE_CLASS)] == 20
    assert all(len(votes) == 2 for *_, votes in found)
    assert all(EDGE_MARGIN <= x < 768 - EDGE_MARGIN and EDGE_MARGIN <= y < 768 - EDGE_MARGIN for _, x, y, _, _ in found)
    soft = [sum(v == MITOTIC_CLASS for v in votes) / 2 for *_, votes in found]
    assert {0.0, 0.5, 1.0} <= set(soft)
    dissent = [(k, votes) for _, _, _, k, votes in found if len(set(votes)) > 1]
    assert len(dissent) == round(0.12 * len(found))
    assert all(k in votes for k, votes in dissent)
    assert all(votes == (k, k) for _, _, _, k, votes in found if (k, votes) not in dissent)


def test_mitoses_are_darker_than_background() -> None:
    image, objects = render_tissue(np.random.default_rng(7), 768, 768, mitotic=12, lookalikes=12)
    grey = image.astype(float).mean(axis=2)
    centres = np.array([(o.y, o.x) for o in objects])
    mitotic = [grey[o.y - 6 : o.y + 7, o.x - 6 : o.x + 7].mean() for o in objects if o.class_name == MITOTIC_CLASS]
    rng = np.random.default_rng(0)
    background = []
    while len(background) < 200:
        y, x = rng.integers(10, 758, 2)
        if ((centres - (y, x)) ** 2).sum(1).min() > 40**2:
            background.append(grey[y - 6 : y + 7, x - 6 : x + 7].mean())
    assert len(mitotic) == 12
    assert np.mean(mitotic) < np.mean(background) - 40


def test_second_call_reuses_and_other_parameters_raise(dataset: Path) -> None:
    files = [p for p in dataset.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert generate_synthetic_dataset(dataset, SMALL, progress=False) == dataset
    assert {p: p.stat().st_mtime_ns for p in files} == before
    with pytest.raises(DataError, match=re.escape(str(dataset))) as error:
        generate_synthetic_dataset(dataset, replace(SMALL, seed=5), progress=False)
    assert "seed" in str(error.value)
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_foreign_folder_and_bad_parameters_raise(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="no synthetic.json"):
        generate_synthetic_dataset(foreign, SMALL, progress=False)
    with pytest.raises(DataError, match="size"):
        generate_synthetic_dataset(tmp_path / "tiny", SyntheticConfig(size=100), progress=False)
    crowded = SyntheticConfig(num_slides=1, size=256, mitotic_per_slide=200, lookalike_per_slide=0)
    with pytest.raises(DataError, match="room for only"):
        generate_synthetic_dataset(tmp_path / "crowded", crowded, progress=False)
    assert not (tmp_path / "crowded").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]


def test_cli_generates_then_refuses_other_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cli"
    args = ["--root", str(root), "--num_slides", "1", "--size", "256", "--quiet"]
    small = ["--mitotic_per_slide", "2", "--lookalike_per_slide", "3"]
    assert main(args + small) == 0
    with openslide.OpenSlide(str(root / "WSI" / "synthetic_000.tif")) as slide:
        assert slide.dimensions == (256, 256)
    with open(root / "splits.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"slide": "synthetic_000.tif", "split": "train"}]
    assert main(args + small + ["--seed", "4"]) == 2
    assert str(root) in capsys.readouterr().err


def test_annotators_disagree_on_the_ambiguous_objects() -> None:
    ambiguity = np.linspace(0.0, 1.0, 200)
    votes = annotator_votes(np.random.default_rng(0), [1] * 100 + [2] * 100, 0.1, ambiguity)
    dissent = np.array([first != second for first, second in votes])
    assert dissent.sum() == 20
    assert ambiguity[dissent].mean() > 0.65 > ambiguity[~dissent].mean()
    uniform = annotator_votes(np.random.default_rng(0), [1] * 200, 0.1)
    assert sum(first != second for first, second in uniform) == 20


def test_an_ambiguous_mitosis_is_paler_and_an_ambiguous_lookalike_darker() -> None:
    clear_alpha, clear_h, _ = draw_mitosis(np.random.default_rng(1), "plate", 0.0)
    vague_alpha, vague_h, _ = draw_mitosis(np.random.default_rng(1), "plate", 1.0)
    assert (vague_alpha * vague_h).sum() < 0.95 * (clear_alpha * clear_h).sum()
    clear = draw_lookalike(np.random.default_rng(1), "pyknotic", 0.0)
    vague = draw_lookalike(np.random.default_rng(1), "pyknotic", 1.0, np.random.default_rng(2))
    assert vague[2].mean() > clear[2].mean() and vague[0].sum() < 0.5 * clear[0].sum()

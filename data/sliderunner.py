"""Read SlideRunner sqlite databases (opened read-only; older schemas tolerated)."""
from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data.annotations import (
    DEFAULT_SOFT_THRESHOLDS,
    Annotation,
    ClassMap,
    DataError,
    check_soft_mode,
    normalise,
    soft_from_votes,
)

KIND_OF_TYPE = {1: "spot", 2: "rectangle", 3: "polygon", 4: "spot", 5: "circle"}
TYPE_NAMES = {**KIND_OF_TYPE, 6: "image"}
REQUIRED_TABLES = ("Slides", "Classes", "Annotations", "Annotations_coordinates")


@dataclass(frozen=True)
class _Record:
    """One non-deleted annotation as stored, before class mapping and geometry."""

    uid: int
    slide: str
    type: int
    class_name: str | None
    coords: tuple[tuple[float, float], ...]
    votes: tuple[tuple[str, str], ...]


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a SlideRunner database read-only and immutable (no side files) and check that it holds its tables."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: SlideRunner database not found")
    con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        con.close()
        raise DataError(f"{p}: not a SlideRunner database ({exc})") from exc
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        con.close()
        raise DataError(f"{p}: not a SlideRunner database (missing tables {missing})")
    return con


def _tables(con: sqlite3.Connection) -> set[str]:
    return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info(`{table}`)")}


def _persons(con: sqlite3.Connection, tables: set[str]) -> dict[int, str]:
    if "Persons" not in tables:
        return {}
    return {uid: str(name) for uid, name in con.execute("SELECT uid, name FROM Persons") if name is not None}


def _voters(con: sqlite3.Connection, tables: set[str]) -> set[int]:
    """Ids of the persons who cast at least one vote (also those missing from Persons)."""
    if "Annotations_label" not in tables:
        return set()
    return {int(p) for (p,) in con.execute("SELECT DISTINCT person FROM Annotations_label") if p is not None}


def _wanted_persons(
    persons: dict[int, str], voters: set[int], annotators: Sequence[str] | None, source: Path
) -> set[int] | None:
    """Person ids whose votes count, or None for everyone.

    Each annotator is a person's name (case-insensitive) or, when no name matches, a person id (Persons.uid).
    """
    if annotators is None:
        return None
    by_name = {normalise(name): uid for uid, name in persons.items()}
    ids = set(persons) | voters
    wanted: set[int] = set()
    missing: list[str] = []
    for annotator in annotators:
        text = str(annotator).strip()
        uid = by_name.get(normalise(text))
        if uid is None and text.isdigit() and int(text) in ids:
            uid = int(text)
        if uid is None:
            missing.append(text)
        else:
            wanted.add(uid)
    if missing:
        known = ", ".join(f"{uid} {persons.get(uid, '(unnamed)')}" for uid in sorted(ids))
        raise DataError(f"{source}: unknown annotator(s) {missing}; the persons there are (id name) {known}")
    return wanted


def _votes(
    con: sqlite3.Connection,
    tables: set[str],
    classes: dict[int, str],
    persons: dict[int, str],
    wanted: set[int] | None,
) -> dict[int, tuple[tuple[str, str], ...]]:
    """Per annotation id: one (person, class) vote per person, the latest row winning."""
    if "Annotations_label" not in tables:
        return {}
    per_anno: dict[int, dict[int, str]] = defaultdict(dict)
    rows = con.execute("SELECT annoId, person, class FROM Annotations_label ORDER BY uid")
    for anno_id, person, class_id in rows:
        if class_id not in classes or (wanted is not None and person not in wanted):
            continue
        per_anno[anno_id][person] = classes[class_id]
    return {
        anno_id: tuple((persons.get(person, f"person {person}"), name) for person, name in by_person.items())
        for anno_id, by_person in per_anno.items()
    }


def _coordinates(con: sqlite3.Connection) -> dict[int, list[tuple[float, float]]]:
    order = "annoId, orderIdx, uid" if "orderIdx" in _columns(con, "Annotations_coordinates") else "annoId, uid"
    coords: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for anno_id, x, y in con.execute(
        f"SELECT annoId, coordinateX, coordinateY FROM Annotations_coordinates ORDER BY {order}"
    ):
        if x is not None and y is not None:
            coords[anno_id].append((float(x), float(y)))
    return coords


def _majority(votes: tuple[tuple[str, str], ...]) -> str | None:
    """The most voted class; ties go to the class voted first."""
    if not votes:
        return None
    return Counter(name for _, name in votes).most_common(1)[0][0]


def _slides_and_classes(con: sqlite3.Connection) -> tuple[dict[int, str], dict[int, str]]:
    """Slide filenames and the (non-null) class names of an open database, by uid."""
    slides = {uid: str(name) for uid, name in con.execute("SELECT uid, filename FROM Slides ORDER BY uid")}
    classes = {uid: str(name) for uid, name in con.execute("SELECT uid, name FROM Classes ORDER BY uid")
               if name is not None}
    return slides, classes


def _load(path: str | Path, annotators: Sequence[str] | None = None) -> tuple[list[str], list[str], list[_Record]]:
    """Slide filenames, class names and the non-deleted annotations of one database."""
    source = Path(path)
    con = open_readonly(source)
    try:
        tables = _tables(con)
        slides, classes = _slides_and_classes(con)
        persons = _persons(con, tables)
        wanted = _wanted_persons(persons, _voters(con, tables), annotators, source)
        votes = _votes(con, tables, classes, persons, wanted)
        coords = _coordinates(con)
        columns = _columns(con, "Annotations")
        agreed = "agreedClass" if "agreedClass" in columns else "NULL"
        where = "WHERE COALESCE(deleted, 0) = 0" if "deleted" in columns else ""
        rows = con.execute(f"SELECT uid, slide, type, {agreed} FROM Annotations {where} ORDER BY uid").fetchall()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{source}: unreadable SlideRunner database ({exc})") from exc
    finally:
        con.close()
    records = []
    for uid, slide_id, kind, agreed_id in rows:
        if slide_id not in slides:
            raise DataError(f"{source}: annotation {uid} refers to slide id {slide_id}, which is not in Slides")
        anno_votes = votes.get(uid, ())
        class_name = classes.get(agreed_id) if agreed_id is not None else None
        records.append(_Record(
            uid=int(uid),
            slide=slides[slide_id],
            type=int(kind) if kind is not None else 0,
            class_name=class_name if class_name is not None else _majority(anno_votes),
            coords=tuple(coords.get(uid, ())),
            votes=anno_votes,
        ))
    return list(slides.values()), list(classes.values()), records


def _polygon_centroid(points: np.ndarray) -> tuple[float, float]:
    """Area centroid of a simple polygon; the vertex mean when its area is zero."""
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-9:
        return float(x.mean()), float(y.mean())
    return float(((x + xn) * cross).sum() / (6 * area)), float(((y + yn) * cross).sum() / (6 * area))


def _geometry(record: _Record) -> tuple[float, float, tuple[float, float, float, float] | None]:
    """Centre (x, y) and bounds (x1, y1, x2, y2) of a record; spots have no bounds."""
    if record.type in (1, 4):
        x, y = record.coords[0]
        return x, y, None
    points = np.asarray(record.coords, dtype=np.float64)
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    bounds = (float(x1), float(y1), float(x2), float(y2))
    if record.type == 3 and len(points) >= 3:
        cx, cy = _polygon_centroid(points)
    else:
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return float(cx), float(cy), bounds


def read_sliderunner(
    path: str | Path,
    class_map: ClassMap = ClassMap(),
    types: Sequence[int] = (1, 4),
    soft: str = "binned",
    annotators: Sequence[str] | None = None,
    thresholds: Sequence[float] = DEFAULT_SOFT_THRESHOLDS,
) -> list[Annotation]:
    """Annotations of the mitotic and negative classes of a SlideRunner database, in level-0 pixels.

    Soft labels come from the votes of `annotators` (names or person ids; everyone by default), reduced by
    `soft` (binned, thresholds with `thresholds`, or continuous).
    """
    check_soft_mode(soft)
    bad_types = [t for t in types if t not in KIND_OF_TYPE]
    if bad_types:
        raise DataError(f"types: expected SlideRunner types among {sorted(KIND_OF_TYPE)}, got {bad_types}")
    _, classes, records = _load(path, annotators)
    class_map.check(classes, str(path))
    out = []
    for record in records:
        if record.type not in types or record.class_name is None:
            continue
        label = class_map.label_of(record.class_name)
        if label is None:
            continue
        if not record.coords:
            raise DataError(f"{path}: annotation {record.uid} has no coordinates")
        x, y, bounds = _geometry(record)
        vote_labels = [class_map.label_of(name) for _, name in record.votes]
        out.append(Annotation(
            slide=record.slide,
            x=x,
            y=y,
            class_name=record.class_name,
            label=label,
            soft=soft_from_votes(vote_labels, label, soft, thresholds),
            uid=str(record.uid),
            kind=KIND_OF_TYPE[record.type],
            bounds=bounds,
            votes=record.votes,
        ))
    if not out:
        raise DataError(
            f"{path}: no annotations of types {list(types)} with the classes {list(class_map.mitotic)}"
            f" / {list(class_map.negative) if class_map.negative is not None else 'any other'}"
        )
    return out


def sliderunner_slides(path: str | Path) -> list[str]:
    """Filenames of the slides in the database, in database order."""
    con = open_readonly(path)
    try:
        return [str(name) for (name,) in con.execute("SELECT filename FROM Slides ORDER BY uid")]
    finally:
        con.close()


def sliderunner_classes(path: str | Path) -> list[str]:
    """Class names of the database, in database order."""
    con = open_readonly(path)
    try:
        return [str(name) for (name,) in con.execute("SELECT name FROM Classes ORDER BY uid") if name is not None]
    finally:
        con.close()


def sliderunner_summary(path: str | Path) -> dict:
    """Counts of the non-deleted annotations: per class (agreed class), per type and per slide."""
    slides, _, records = _load(path)
    per_class = Counter(r.class_name for r in records if r.class_name is not None)
    per_type = Counter(TYPE_NAMES.get(r.type, f"type {r.type}") for r in records)
    per_slide = Counter(r.slide for r in records)
    return {
        "file": str(path),
        "format": "sliderunner",
        "slides": len(slides),
        "slides_with_annotations": len(per_slide),
        "annotations": len(records),
        "per_class": dict(per_class),
        "per_type": dict(per_type),
        "per_slide": dict(per_slide),
    }

"""Read SlideRunner sqlite databases (opened read-only; older schemas tolerated)."""
from __future__ import annotations

import math
import shlex
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

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
TYPE_LIST = "1 spot, 2 rectangle, 3 polygon, 4 special spot, 5 circle, 6 image"


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
    """Open a SlideRunner database read-only and immutable (no side files) and check that it holds its tables.

    An immutable open would ignore changes waiting beside the database, so a non-empty `-wal` file or a hot
    `-journal` file is refused first.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: SlideRunner database not found")
    check_no_pending_changes(p)
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


def check_no_pending_changes(path: Path) -> None:
    """DataError naming the database and the file when changes wait beside it: a non-empty write-ahead log
    (`-wal`) or a hot rollback journal (`-journal`, non-empty with a live header)."""
    real = path.resolve()
    wal = real.with_name(real.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise DataError(f"{path}: {wal} holds changes not yet written into the database (it is open in SlideRunner,"
                        f" or was not closed cleanly); {_write_back(path, 'the changes are written back into it')}")
    journal = real.with_name(real.name + "-journal")
    if journal.is_file() and _live_journal(journal):
        raise DataError(f"{path}: {journal} is the journal of an unfinished write, so the database may be"
                        f" half-written; {_write_back(path, 'the unfinished write is rolled back')}")


def _write_back(path: Path, what: str) -> str:
    return (f"open and close it once in SlideRunner (or run `sqlite3 {shlex.quote(str(path))} .tables`) so that"
            f" {what}, then try again")


def _live_journal(journal: Path) -> bool:
    """Whether a rollback journal still holds a transaction (SQLite ignores empty or zeroed journals)."""
    with journal.open("rb") as fh:
        first = fh.read(1)
    return first not in (b"", b"\x00")


def _tables(con: sqlite3.Connection) -> set[str]:
    return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info(`{table}`)")}


def _persons(con: sqlite3.Connection, tables: set[str]) -> dict[int, str]:
    if "Persons" not in tables:
        return {}
    return {uid: str(name) for uid, name in con.execute("SELECT uid, name FROM Persons") if name is not None}


class _Vote(NamedTuple):
    anno_id: Any
    person: int | None
    class_id: int | None


def _label_rows(con: sqlite3.Connection, tables: set[str], source: Path) -> list[_Vote]:
    """Every vote (Annotations_label row) in row order; DataError for a person or class that is not an integer id."""
    if "Annotations_label" not in tables:
        return []
    out = []
    for uid, anno_id, person, class_id in con.execute(
        "SELECT uid, annoId, person, class FROM Annotations_label ORDER BY uid"
    ):
        where = f"{source}: Annotations_label row {uid!r} (annotation {anno_id!r})"
        out.append(_Vote(anno_id, _optional_id(person, where, "person"), _optional_id(class_id, where, "class")))
    return out


def _voters(votes: Sequence[_Vote]) -> set[int]:
    """Ids of the persons who cast at least one vote (also those missing from Persons)."""
    return {vote.person for vote in votes if vote.person is not None}


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
    rows: Sequence[_Vote],
    classes: dict[int, str],
    persons: dict[int, str],
    wanted: set[int] | None,
) -> dict[Any, tuple[tuple[str, str], ...]]:
    """Per annotation id: one (person, class) vote per person, the latest row winning."""
    per_anno: dict[Any, dict[int | None, str]] = defaultdict(dict)
    for anno_id, person, class_id in rows:
        if class_id not in classes or (wanted is not None and person not in wanted):
            continue
        per_anno[anno_id][person] = classes[class_id]
    return {
        anno_id: tuple((persons.get(person, f"person {person}"), name) for person, name in by_person.items())
        for anno_id, by_person in per_anno.items()
    }


def _coordinates(con: sqlite3.Connection) -> dict[Any, list[tuple[Any, Any, Any]]]:
    """The coordinate rows (row uid, x, y) of every annotation id, in vertex order, unchecked."""
    order = "annoId, orderIdx, uid" if "orderIdx" in _columns(con, "Annotations_coordinates") else "annoId, uid"
    coords: dict[Any, list[tuple[Any, Any, Any]]] = defaultdict(list)
    for row_uid, anno_id, x, y in con.execute(
        f"SELECT uid, annoId, coordinateX, coordinateY FROM Annotations_coordinates ORDER BY {order}"
    ):
        coords[anno_id].append((row_uid, x, y))
    return coords


def points_of(source: Path, uid: int, rows: Sequence[tuple[Any, Any, Any]]) -> tuple[tuple[float, float], ...]:
    """The (x, y) of an annotation's coordinate rows; DataError naming the row when one is not two finite numbers."""
    points = []
    for row_uid, x, y in rows:
        if not (_is_finite(x) and _is_finite(y)):
            raise DataError(f"{source}: annotation {uid}: Annotations_coordinates row {row_uid!r}: expected finite"
                            f" numbers coordinateX, coordinateY, got {x!r}, {y!r}")
        points.append((float(x), float(y)))
    return tuple(points)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _as_int(value: Any) -> int | None:
    """An integer stored as INTEGER (or as an integral REAL), else None."""
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _optional_id(value: Any, where: str, column: str) -> int | None:
    """None for NULL, the integer id otherwise; DataError naming `where` for any other value."""
    if value is None:
        return None
    number = _as_int(value)
    if number is None:
        raise DataError(f"{where}: expected {column} to be an integer id or NULL, got {value!r}")
    return number


class AnnotationRow(NamedTuple):
    """One non-deleted row of the Annotations table, its values checked."""

    uid: int
    slide: Any
    type: int
    agreed: int | None


def annotation_rows(con: sqlite3.Connection, source: Path) -> list[AnnotationRow]:
    """The non-deleted annotations in uid order; DataError naming the annotation for a uid, type or agreedClass
    that is not an integer (a NULL agreedClass means no class)."""
    columns = _columns(con, "Annotations")
    agreed = "agreedClass" if "agreedClass" in columns else "NULL"
    where = "WHERE COALESCE(deleted, 0) = 0" if "deleted" in columns else ""
    out = []
    for uid, slide_id, kind, agreed_id in con.execute(
        f"SELECT uid, slide, type, {agreed} FROM Annotations {where} ORDER BY uid"
    ):
        number = _as_int(uid)
        if number is None:
            raise DataError(f"{source}: Annotations row with uid {uid!r}: expected an integer uid")
        kind_id = _as_int(kind)
        if kind_id is None:
            raise DataError(f"{source}: annotation {number}: expected an integer type ({TYPE_LIST}), got {kind!r}")
        agreed_id = _optional_id(agreed_id, f"{source}: annotation {number}", "agreedClass")
        out.append(AnnotationRow(number, slide_id, kind_id, agreed_id))
    return out


def _majority(votes: tuple[tuple[str, str], ...]) -> str | None:
    """The most voted class; ties go to the class voted first."""
    if not votes:
        return None
    return Counter(name for _, name in votes).most_common(1)[0][0]


def _slides_and_classes(con: sqlite3.Connection, source: Path) -> tuple[dict[Any, str], dict[Any, str]]:
    """Slide filenames and the (non-null) class names of an open database, by uid."""
    slides = {}
    for uid, name in con.execute("SELECT uid, filename FROM Slides ORDER BY uid"):
        if not isinstance(name, str):
            raise DataError(f"{source}: Slides row {uid!r}: expected a text filename, got {name!r}")
        slides[uid] = name
    classes = {uid: str(name) for uid, name in con.execute("SELECT uid, name FROM Classes ORDER BY uid")
               if name is not None}
    return slides, classes


def _load(path: str | Path, annotators: Sequence[str] | None = None) -> tuple[list[str], list[str], list[_Record]]:
    """Slide filenames, class names and the non-deleted annotations of one database."""
    source = Path(path)
    con = open_readonly(source)
    try:
        tables = _tables(con)
        slides, classes = _slides_and_classes(con, source)
        persons = _persons(con, tables)
        label_rows = _label_rows(con, tables, source)
        wanted = _wanted_persons(persons, _voters(label_rows), annotators, source)
        votes = _votes(label_rows, classes, persons, wanted)
        coords = _coordinates(con)
        rows = annotation_rows(con, source)
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{source}: unreadable SlideRunner database ({exc})") from exc
    finally:
        con.close()
    records = []
    for row in rows:
        if row.slide not in slides:
            raise DataError(f"{source}: annotation {row.uid} refers to slide id {row.slide}, which is not in Slides")
        anno_votes = votes.get(row.uid, ())
        class_name = classes.get(row.agreed) if row.agreed is not None else None
        records.append(_Record(
            uid=row.uid,
            slide=slides[row.slide],
            type=row.type,
            class_name=class_name if class_name is not None else _majority(anno_votes),
            coords=points_of(source, row.uid, coords.get(row.uid, ())),
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
        return list(_slides_and_classes(con, Path(path))[0].values())
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: unreadable SlideRunner database ({exc})") from exc
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

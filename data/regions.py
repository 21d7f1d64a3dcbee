"""Region annotations (SlideRunner polygons, type 3) and their rasterisation into label masks.

Databases are opened read-only through an immutable URI, so reading never writes the file or leaves side
files. Older schemas are tolerated (no `deleted`, `guid` or `orderIdx` columns): the columns are looked up
with `PRAGMA table_info`. The vertices of a polygon are its coordinate rows ordered by `orderIdx` (then by row
id), in level-0 pixels; its class is the name of the agreed class (the annotators' majority vote when no class
was agreed).

Label masks: background is 0; the polygons are painted class by class in the order the classes appear in the
class map (`"stroma:1,tumor:2"` paints tumour over stroma), and classes mapped to `ignore` are painted last, so
an exclusion region always wins (IGNORE, 255, in the mask). Within one class, polygons are painted in database
order. A polygon covers exactly the pixels `skimage.draw.polygon` gives for its vertices; `polygon_pixels`
computes them scanline by scanline, as scikit-image's own loop over the bounding box takes minutes for the
outlines of thousands of vertices found in real tumour-zone annotations.
"""
from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from data.annotations import DataError, normalise
from data.sliderunner import (
    _coordinates, _label_rows, _majority, _persons, _slides_and_classes, _tables, _votes, annotation_rows,
    open_readonly, points_of, sliderunner_classes,
)

POLYGON_TYPE = 3
IGNORE = 255
MAX_LABEL = 254
VERTEX_EPS = 1e-12


@dataclass(frozen=True)
class RegionPolygon:
    """One polygon annotation: its slide, class name, database id and vertices (N x 2, x and y, level 0)."""

    slide: str
    class_name: str | None
    uid: int
    vertices: np.ndarray


def read_region_polygons(path: str | Path, slides: Iterable[str] | None = None) -> list[RegionPolygon]:
    """The non-deleted polygon annotations of a SlideRunner database (optionally of some slides only).

    DataError naming the file and the record when a polygon has fewer than 3 vertices, refers to an unknown slide,
    has a vertex that is not two finite numbers, or when any annotation's type or class is not an integer.
    """
    source = Path(path)
    con = open_readonly(source)
    try:
        tables = _tables(con)
        slide_names, classes = _slides_and_classes(con, source)
        votes = _votes(_label_rows(con, tables, source), classes, _persons(con, tables), None)
        rows = [row for row in annotation_rows(con, source) if row.type == POLYGON_TYPE]
        coords = _coordinates(con)
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{source}: unreadable SlideRunner database ({exc})") from exc
    finally:
        con.close()
    wanted = None if slides is None else set(slides)
    out = []
    for row in rows:
        if row.slide not in slide_names:
            raise DataError(f"{source}: polygon {row.uid} refers to slide id {row.slide}, which is not in Slides")
        slide = slide_names[row.slide]
        if wanted is not None and slide not in wanted:
            continue
        points = points_of(source, row.uid, coords.get(row.uid, ()))
        if len(points) < 3:
            raise DataError(f"{source}: polygon {row.uid} on {slide} has {len(points)} vertices, expected at least 3")
        name = classes.get(row.agreed) if row.agreed is not None else None
        out.append(RegionPolygon(
            slide=slide,
            class_name=name if name is not None else _majority(votes.get(row.uid, ())),
            uid=row.uid,
            vertices=np.asarray(points, dtype=np.float64),
        ))
    return out


def region_classes(path: str | Path) -> list[str]:
    """Class names of the database, in database order."""
    return sliderunner_classes(path)


def region_summary(path: str | Path) -> dict:
    """Counts of the polygons: in all, per class, per slide, and their vertices."""
    polygons = read_region_polygons(path)
    return {
        "file": str(path),
        "polygons": len(polygons),
        "slides": len({p.slide for p in polygons}),
        "vertices": int(sum(len(p.vertices) for p in polygons)),
        "per_class": dict(Counter(p.class_name for p in polygons if p.class_name is not None)),
        "per_slide": dict(Counter(p.slide for p in polygons)),
    }


# ---------------------------------------------------------------------------------------------
# Class maps
# ---------------------------------------------------------------------------------------------


def parse_class_map(text: str | Mapping[str, int | str], option: str = "--class_map") -> dict[str, int]:
    """`"tumor:1,stroma:0,exclude:ignore"` -> {"tumor": 1, "stroma": 0, "exclude": IGNORE}, in the given order.

    Labels are integers in 0..MAX_LABEL or `ignore`; names keep their spelling (matched case-insensitively).
    Everything after the last colon of an entry is the label, so names may contain spaces and colons.
    """
    items = list(text.items()) if isinstance(text, Mapping) else []
    if isinstance(text, str):
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            name, sep, label = entry.rpartition(":")
            if not sep or not name.strip():
                raise DataError(f"{option}: expected entries 'class name:label', got {entry!r}")
            items.append((name.strip(), label.strip()))
    out: dict[str, int] = {}
    seen: set[str] = set()
    for name, label in items:
        key = normalise(str(name))
        if key in seen:
            raise DataError(f"{option}: class {name!r} is given twice")
        seen.add(key)
        out[str(name)] = _parse_label(label, option, name)
    if not out:
        raise DataError(f"{option}: expected at least one 'class name:label' entry, got {text!r}")
    return out


def _parse_label(label: int | str, option: str, name: str) -> int:
    if isinstance(label, str) and label.strip().lower() == "ignore":
        return IGNORE
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise DataError(f"{option}: label of {name!r} must be an integer or 'ignore', got {label!r}") from None
    if not 0 <= value <= MAX_LABEL and value != IGNORE:
        raise DataError(f"{option}: label of {name!r} must be in 0..{MAX_LABEL} or 'ignore', got {value}")
    return value


def check_class_map(class_map: Mapping[str, int], available: Iterable[str], source: str | Path) -> None:
    """DataError naming `source` and its classes when a class of the map is not among `available`."""
    available = list(available)
    known = {normalise(n) for n in available}
    missing = [name for name in class_map if normalise(name) not in known]
    if missing:
        raise DataError(f"{source}: unknown class name(s) {missing}; the classes there are {sorted(set(available))}")


def paint_order(class_map: Mapping[str, int]) -> list[str]:
    """Normalised class names in painting order: the map's order, classes mapped to IGNORE last."""
    names = [normalise(n) for n in class_map]
    labels = list(class_map.values())
    return [n for n, v in zip(names, labels) if v != IGNORE] + [n for n, v in zip(names, labels) if v == IGNORE]


def labelled_polygons(
    polygons: Sequence[RegionPolygon], class_map: Mapping[str, int]
) -> list[tuple[np.ndarray, int]]:
    """(vertices, label) pairs in painting order; polygons of classes outside the map are left out."""
    label_of = {normalise(n): v for n, v in class_map.items()}
    rank = {name: i for i, name in enumerate(paint_order(class_map))}
    chosen = [p for p in polygons if p.class_name is not None and normalise(p.class_name) in label_of]
    chosen.sort(key=lambda p: rank[normalise(p.class_name)])  # stable: database order within a class
    return [(p.vertices, label_of[normalise(p.class_name)]) for p in chosen]


# ---------------------------------------------------------------------------------------------
# Rasterisation
# ---------------------------------------------------------------------------------------------


def polygon_pixels(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rr, cc) of the pixels of `shape` that scikit-image's `skimage.draw.polygon(rows, cols, shape)` returns.

    The pixel rule is scikit-image's (O'Rourke's crossing test: pixel centres inside the polygon, on an edge or
    on a vertex, even-odd for self-intersecting outlines), evaluated one scanline at a time: every edge is
    intersected with the rows it spans, so the cost grows with the outline and the bounding box area, not with
    their product (a polygon of thousands of vertices takes milliseconds instead of minutes). The pixels are
    returned in row-major order.
    """
    ys = np.asarray(rows, dtype=np.float64)
    xs = np.asarray(cols, dtype=np.float64)
    height, width = int(shape[0]), int(shape[1])
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(ys) == 0 or height <= 0 or width <= 0:
        return empty
    r0, r1 = max(int(np.floor(ys.min())), 0), min(int(np.ceil(ys.max())), height - 1)
    c0, c1 = max(int(np.floor(xs.min())), 0), min(int(np.ceil(xs.max())), width - 1)
    if r0 > r1 or c0 > c1:
        return empty
    box_h, box_w = r1 - r0 + 1, c1 - c0 + 1
    yp, xp = np.roll(ys, 1), np.roll(xs, 1)  # the previous vertex of each edge
    lo, hi = np.minimum(ys, yp), np.maximum(ys, yp)
    parity = np.zeros((box_h, box_w), dtype=bool)
    for right in (True, False):
        # rightward crossings: rows y with (ys > y) != (yp > y), i.e. lo <= y < hi, counted where crossing > x;
        # leftward crossings: rows y with (ys < y) != (yp < y), i.e. lo < y <= hi, counted where crossing < x.
        first = np.maximum(np.ceil(lo) if right else np.floor(lo) + 1, r0)
        last = np.minimum(np.ceil(hi) - 1 if right else np.floor(hi), r1)
        spans = np.maximum(last - first + 1, 0).astype(np.int64)
        total = int(spans.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(ys)), spans)
        y = first[edge] + (np.arange(total) - np.repeat(np.cumsum(spans) - spans, spans))
        y0, y1 = ys[edge] - y, yp[edge] - y
        # the column nearest to the crossing decides with scikit-image's own arithmetic; columns further away
        # are at least half a pixel from it, so rounding cannot flip them
        near = np.rint((xs[edge] * y1 - xp[edge] * y0) / (y1 - y0))
        side = ((xs[edge] - near) * y1 - (xp[edge] - near) * y0) / (y1 - y0)
        # rightward crossings count for the columns x < bound, leftward ones for x >= bound
        bound = np.where(side > 0, near + 1, near) if right else np.where(side < 0, near, near + 1)
        bound = np.clip(bound - c0, 0, box_w).astype(np.int64)
        toggles = np.zeros((box_h, box_w + 1), dtype=np.uint8)  # wraps modulo 256: parity is kept
        np.add.at(toggles, ((y - r0).astype(np.int64), bound), 1)
        toggles &= 1
        below = np.bitwise_xor.accumulate(toggles, axis=1)  # parity of the crossings with bound <= x
        odd = below[:, :box_w] ^ below[:, -1:] if right else below[:, :box_w]
        parity |= odd.astype(bool)
    vy, vx = np.rint(ys), np.rint(xs)
    on = (np.abs(ys - vy) < VERTEX_EPS) & (np.abs(xs - vx) < VERTEX_EPS)
    on &= (vy >= r0) & (vy <= r1) & (vx >= c0) & (vx <= c1)
    parity[vy[on].astype(np.int64) - r0, vx[on].astype(np.int64) - c0] = True
    rr, cc = np.nonzero(parity)
    return rr + r0, cc + c0


def rasterise(
    polygons: Sequence[tuple[np.ndarray, int]],
    shape: tuple[int, int],
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """uint8 label mask (H x W) of (vertices, label) pairs painted in the given order over background 0.

    Vertices are level-0 (x, y); pixel (row, col) of the mask covers level-0 (origin + (col, row) * downsample),
    so a pyramid level is rasterised with its `level_downsamples` factor and a window with its top-left corner
    as `origin`. A polygon takes the pixels `skimage.draw.polygon` gives for its scaled vertices (`polygon_pixels`).
    """
    if not np.isfinite(downsample) or downsample <= 0:
        raise DataError(f"downsample: expected a positive finite number, got {downsample}")
    height, width = int(shape[0]), int(shape[1])
    if height < 0 or width < 0:
        raise DataError(f"shape: expected non-negative height and width, got {tuple(shape)}")
    mask = np.zeros((height, width), dtype=np.uint8)
    for vertices, label in polygons:
        if not (0 <= label <= MAX_LABEL or label == IGNORE):
            raise DataError(f"label: expected 0..{MAX_LABEL} or {IGNORE} (ignore), got {label}")
        points = np.asarray(vertices, dtype=np.float64)
        rows = (points[:, 1] - origin[1]) / downsample
        cols = (points[:, 0] - origin[0]) / downsample
        rr, cc = polygon_pixels(rows, cols, (height, width))
        mask[rr, cc] = label
    return mask


def slide_mask(
    polygons: Sequence[RegionPolygon],
    slide: str,
    class_map: Mapping[str, int],
    shape: tuple[int, int],
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Label mask of one slide's polygons under `class_map` (see `rasterise` and the painting order above)."""
    return rasterise(labelled_polygons([p for p in polygons if p.slide == slide], class_map), shape, downsample, origin)


def level_mask(
    reader, polygons: Sequence[RegionPolygon], slide: str, class_map: Mapping[str, int], level: int
) -> np.ndarray:
    """Label mask of a slide at pyramid `level` of an openslide-like `reader` (level_dimensions/downsamples)."""
    if not 0 <= level < reader.level_count:
        raise DataError(f"{slide}: level {level} out of range (the slide has {reader.level_count} levels)")
    width, height = reader.level_dimensions[level]
    return slide_mask(polygons, slide, class_map, (height, width), float(reader.level_downsamples[level]))


def read_region_masks(
    path: str | Path, class_map: str | Mapping[str, int], shapes: Mapping[str, tuple[int, int]], downsample: float = 1.0
) -> dict[str, np.ndarray]:
    """Label masks of the slides in `shapes` ({slide: (height, width)} at `downsample`), checked against the
    database's classes (DataError naming the file and its classes for an unknown class name)."""
    mapping = parse_class_map(class_map) if isinstance(class_map, str) else dict(class_map)
    check_class_map(mapping, region_classes(path), path)
    polygons = read_region_polygons(path, slides=shapes)
    return {slide: slide_mask(polygons, slide, mapping, shape, downsample) for slide, shape in shapes.items()}

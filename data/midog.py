"""Read MIDOG / MIDOG++ COCO-like JSON annotations (bbox is [x1, y1, x2, y2], votes in `labels`)."""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from data.annotations import (
    DEFAULT_SOFT_THRESHOLDS,
    Annotation,
    ClassMap,
    DataError,
    check_soft_mode,
    normalise,
    soft_from_votes,
)

SHOWN = 80  # characters of a bad value shown in a message


class _Entry(NamedTuple):
    """One annotation entry, checked: its image, category name, [x1, y1, x2, y2] box and votes (category ids)."""

    image: dict
    name: str
    box: tuple[float, float, float, float]
    labels: tuple


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def _is_id(value: Any) -> bool:
    """An id is an integer or a string (JSON lists, objects, booleans and floats are not ids)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load(path: str | Path) -> tuple[dict[Any, dict], dict[Any, str], list[dict]]:
    """Images by id, category names by id, and the annotation entries of one file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: MIDOG JSON file not found")
    try:
        with p.open(encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: unreadable MIDOG JSON ({exc})") from exc
    keys = ("images", "annotations", "categories")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in keys):
        raise DataError(f"{p}: expected a JSON object with lists 'images', 'annotations' and 'categories'")
    images = {_checked_image(img, f"{p}: images[{index}]")["id"]: img for index, img in enumerate(doc["images"])}
    categories = dict(
        _checked_category(cat, f"{p}: categories[{index}]") for index, cat in enumerate(doc["categories"])
    )
    return images, categories, doc["annotations"]


def _checked_image(img: Any, where: str) -> dict:
    """An image record with an integer or string id, a file name and a text (or absent) tumor_type."""
    if not isinstance(img, dict):
        raise DataError(f"{where}: expected a JSON object, got {_shown(img)}")
    if not _is_id(img.get("id")):
        raise DataError(f"{where}: expected an integer or string 'id', got {_shown(img.get('id'))}")
    name = img.get("file_name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where} (id {img['id']!r}): expected a 'file_name' string, got {_shown(name)}")
    if img.get("tumor_type") is not None and not isinstance(img["tumor_type"], str):
        raise DataError(f"{where} (id {img['id']!r}): expected a 'tumor_type' string, got {_shown(img['tumor_type'])}")
    return img


def _checked_category(cat: Any, where: str) -> tuple[Any, str]:
    """(id, name) of a category record with an integer or string id and a string name."""
    if not isinstance(cat, dict):
        raise DataError(f"{where}: expected a JSON object, got {_shown(cat)}")
    if not _is_id(cat.get("id")):
        raise DataError(f"{where}: expected an integer or string 'id', got {_shown(cat.get('id'))}")
    if not isinstance(cat.get("name"), str):
        raise DataError(f"{where} (id {cat['id']!r}): expected a 'name' string, got {_shown(cat.get('name'))}")
    return cat["id"], cat["name"]


def _tumor_type(image: dict) -> str | None:
    value = image.get("tumor_type")
    return None if value is None else str(value)


def _selected_images(images: dict[Any, dict], tumor_types: Sequence[str] | None, source: str) -> set:
    """Ids of the images of the wanted tumour types (all images when `tumor_types` is None)."""
    if tumor_types is None:
        return set(images)
    available = sorted({t for t in (_tumor_type(img) for img in images.values()) if t is not None})
    known = {normalise(t) for t in available}
    unknown = [t for t in tumor_types if normalise(t) not in known]
    if unknown:
        raise DataError(f"{source}: unknown tumor type(s) {unknown}; the tumor types there are {available}")
    wanted = {normalise(t) for t in tumor_types}
    return {
        image_id for image_id, img in images.items()
        if _tumor_type(img) is not None and normalise(_tumor_type(img)) in wanted
    }


def _entry_fields(entry: Any, index: int, images: dict, categories: dict, source: str) -> _Entry:
    """The image, category name, [x1, y1, x2, y2] box and votes of annotation entry `index`, checked."""
    where = f"{source}: annotations[{index}]"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object, got {_shown(entry)}")
    if "id" in entry and not _is_id(entry["id"]):
        raise DataError(f"{where}: expected an integer or string 'id', got {_shown(entry['id'])}")
    where = f"{where} (annotation {entry.get('id', '?')})"
    image_id, category_id = entry.get("image_id"), entry.get("category_id")
    if not _is_id(image_id) or image_id not in images:
        raise DataError(f"{where}: expected an 'image_id' of the images, got {_shown(image_id)}")
    if not _is_id(category_id) or category_id not in categories:
        raise DataError(f"{where}: expected a 'category_id' among {sorted(categories, key=str)},"
                        f" got {_shown(category_id)}")
    return _Entry(images[image_id], categories[category_id], _checked_box(entry.get("bbox"), where),
                  _checked_labels(entry.get("labels"), categories, where))


def _checked_box(box: Any, where: str) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 of a bbox of four finite numbers with x1 <= x2 and y1 <= y2."""
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise DataError(f"{where}: expected bbox [x1, y1, x2, y2] of four finite numbers, got {_shown(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise DataError(f"{where}: expected bbox [x1, y1, x2, y2] with x1 <= x2, y1 <= y2, got {_shown(box)}")
    return x1, y1, x2, y2


def _checked_labels(labels: Any, categories: dict, where: str) -> tuple:
    """The votes of an entry: absent, or a list of category ids."""
    if labels is None:
        return ()
    if not isinstance(labels, list) or not all(_is_id(v) and v in categories for v in labels):
        raise DataError(f"{where}: expected 'labels' to be a list of category ids among "
                        f"{sorted(categories, key=str)}, got {_shown(labels)}")
    return tuple(labels)


def _checked_entries(entries: list, images: dict, categories: dict, source: str) -> list[_Entry]:
    return [_entry_fields(entry, index, images, categories, source) for index, entry in enumerate(entries)]


def _vote_positions(entries: list[_Entry], annotators: Sequence[str] | None, source: str) -> set[int] | None:
    """0-based positions in `labels` of the votes that count (None: all): "2" or "annotator 2" is the second."""
    if annotators is None:
        return None
    most = max((len(e.labels) for e in entries), default=0)
    positions: set[int] = set()
    for annotator in annotators:
        text = normalise(str(annotator)).removeprefix("annotator ").strip()
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise DataError(f"{source}: unknown annotator {annotator!r}; MIDOG votes are numbered by their position in "
                            f"'labels': 1 to {most} (or 'annotator 1' ...)")
        positions.add(int(text) - 1)
    return positions


def read_midog_json(
    path: str | Path,
    class_map: ClassMap = ClassMap(),
    tumor_types: Sequence[str] | None = None,
    soft: str = "binned",
    annotators: Sequence[str] | None = None,
    thresholds: Sequence[float] = DEFAULT_SOFT_THRESHOLDS,
) -> list[Annotation]:
    """Spot annotations (bbox centres) of the mitotic and negative classes, optionally of some tumour types.

    Soft labels come from the votes in `labels` (two experts, and a third one where they disagreed), those of
    `annotators` only when given (vote positions, 1-based), reduced by `soft` (binned, thresholds, continuous).
    """
    check_soft_mode(soft)
    source = str(path)
    images, categories, raw = _load(path)
    entries = _checked_entries(raw, images, categories, source)
    class_map.check(categories.values(), source)
    selected = _selected_images(images, tumor_types, source)
    positions = _vote_positions(entries, annotators, source)
    out = []
    for index, (item, entry) in enumerate(zip(raw, entries)):
        if item["image_id"] not in selected:
            continue
        label = class_map.label_of(entry.name)
        if label is None:
            continue
        votes = tuple(
            (f"annotator {i + 1}", categories[vote])
            for i, vote in enumerate(entry.labels)
            if positions is None or i in positions
        )
        x1, y1, x2, y2 = entry.box
        out.append(Annotation(
            slide=str(entry.image["file_name"]),
            x=(x1 + x2) / 2.0,
            y=(y1 + y2) / 2.0,
            class_name=entry.name,
            label=label,
            soft=soft_from_votes([class_map.label_of(v) for _, v in votes], label, soft, thresholds),
            uid=str(item.get("id", index)),
            kind="spot",
            bounds=entry.box,
            votes=votes,
        ))
    if not out:
        raise DataError(f"{source}: no annotations of the classes {list(class_map.mitotic)}"
                        f" / {list(class_map.negative) if class_map.negative is not None else 'any other'}"
                        f"{'' if tumor_types is None else f' for tumor types {list(tumor_types)}'}")
    return out


def midog_images(path: str | Path) -> list[dict]:
    """The images of the file: file_name, width, height, tumor_type (None where absent)."""
    images, _, _ = _load(path)
    return [
        {
            "file_name": str(img["file_name"]),
            "width": img.get("width"),
            "height": img.get("height"),
            "tumor_type": _tumor_type(img),
        }
        for img in images.values()
    ]


def midog_summary(path: str | Path, tumor_types: Sequence[str] | None = None) -> dict:
    """Counts of the annotations per class, per slide and per tumour type (optionally of some tumour types)."""
    source = str(path)
    images, categories, entries = _load(path)
    selected = _selected_images(images, tumor_types, source)
    per_class: Counter = Counter()
    per_slide: Counter = Counter()
    per_tumor_type: dict[str, Counter] = defaultdict(Counter)
    for item, entry in zip(entries, _checked_entries(entries, images, categories, source)):
        if item["image_id"] not in selected:
            continue
        per_class[entry.name] += 1
        per_slide[str(entry.image["file_name"])] += 1
        per_tumor_type[_tumor_type(entry.image) or "unknown"][entry.name] += 1
    total = sum(per_class.values())
    return {
        "file": source,
        "format": "midog_json",
        "slides": len(selected),
        "slides_with_annotations": len(per_slide),
        "annotations": total,
        "per_class": dict(per_class),
        "per_type": {"spot": total} if total else {},
        "per_slide": dict(per_slide),
        "per_tumor_type": {t: dict(c) for t, c in per_tumor_type.items()},
    }

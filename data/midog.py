"""Read MIDOG / MIDOG++ COCO-like JSON annotations (bbox is [x1, y1, x2, y2], votes in `labels`)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from data.annotations import (
    DEFAULT_SOFT_THRESHOLDS,
    Annotation,
    ClassMap,
    DataError,
    check_soft_mode,
    normalise,
    soft_from_votes,
)


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
    try:
        images = {img["id"]: img for img in doc["images"]}
        categories = {cat["id"]: str(cat["name"]) for cat in doc["categories"]}
    except (KeyError, TypeError) as exc:
        raise DataError(f"{p}: every image needs an 'id' and every category an 'id' and a 'name' ({exc})") from exc
    for img in images.values():
        if "file_name" not in img:
            raise DataError(f"{p}: image {img['id']} has no 'file_name'")
    return images, categories, doc["annotations"]


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


def _entry_fields(entry: dict, images: dict, categories: dict, source: str) -> tuple[dict, str, list[float]]:
    """The image, category name and [x1, y1, x2, y2] box of one annotation entry, checked."""
    if not isinstance(entry, dict):
        raise DataError(f"{source}: expected every annotation to be a JSON object, got {entry!r}")
    ident = entry.get("id", "?")
    image = images.get(entry.get("image_id"))
    if image is None:
        raise DataError(f"{source}: annotation {ident} refers to unknown image_id {entry.get('image_id')!r}")
    name = categories.get(entry.get("category_id"))
    if name is None:
        raise DataError(f"{source}: annotation {ident} has unknown category_id {entry.get('category_id')!r}")
    box = entry.get("bbox")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: annotation {ident}: expected bbox [x1, y1, x2, y2], got {box!r}") from exc
    if x2 < x1 or y2 < y1:
        raise DataError(f"{source}: annotation {ident}: expected bbox [x1, y1, x2, y2] with x1 <= x2, y1 <= y2,"
                        f" got {box!r}")
    return image, name, [x1, y1, x2, y2]


def _vote_positions(entries: list[dict], annotators: Sequence[str] | None, source: str) -> set[int] | None:
    """0-based positions in `labels` of the votes that count (None: all): "2" or "annotator 2" is the second."""
    if annotators is None:
        return None
    most = max((len(e.get("labels") or ()) for e in entries if isinstance(e, dict)), default=0)
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
    images, categories, entries = _load(path)
    class_map.check(categories.values(), source)
    selected = _selected_images(images, tumor_types, source)
    positions = _vote_positions(entries, annotators, source)
    out = []
    for index, entry in enumerate(entries):
        image, name, (x1, y1, x2, y2) = _entry_fields(entry, images, categories, source)
        if entry["image_id"] not in selected:
            continue
        label = class_map.label_of(name)
        if label is None:
            continue
        votes = tuple(
            (f"annotator {i + 1}", categories[vote])
            for i, vote in enumerate(entry.get("labels") or ())
            if vote in categories and (positions is None or i in positions)
        )
        out.append(Annotation(
            slide=str(image["file_name"]),
            x=(x1 + x2) / 2.0,
            y=(y1 + y2) / 2.0,
            class_name=name,
            label=label,
            soft=soft_from_votes([class_map.label_of(v) for _, v in votes], label, soft, thresholds),
            uid=str(entry.get("id", index)),
            kind="spot",
            bounds=(x1, y1, x2, y2),
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
    for entry in entries:
        image, name, _ = _entry_fields(entry, images, categories, source)
        if entry["image_id"] not in selected:
            continue
        per_class[name] += 1
        per_slide[str(image["file_name"])] += 1
        per_tumor_type[_tumor_type(image) or "unknown"][name] += 1
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

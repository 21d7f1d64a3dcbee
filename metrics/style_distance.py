"""Style adherence of style-extracting diffusion (STEDM) output: colour distance of each tile to the stain of its
style slide and to that of its layout's slide.

Convention: colours are CIELAB from `skimage.color.rgb2lab` applied to the 8-bit RGB image divided by 255
(sRGB, illuminant D65, 2-degree observer, skimage's defaults). A set of images is summarised by its mean
L*a*b*: the mean over all of its pixels of the per-pixel L*a*b* values (not the L*a*b* of the mean RGB), with
every pixel of every image in the set weighted equally. Distances are CIE76 Delta E: the Euclidean distance
between two mean L*a*b* colours.

Reference colour of a unit (a slide): the mean L*a*b* over every image of that unit in the folder, i.e. the style
crops drawn from it and the real patches whose layouts came from it. Both are tissue crops at random positions of
the slide, so a reference is the slide's stain, not the colour of one patch's content (a tumour patch is darker
than a stroma patch of the same slide).

Per generated tile (one row of the generator's samples.csv):
  d_style  = Delta E between the tile's mean L*a*b* and the reference of its style unit(s) (pooled when several);
  d_layout = Delta E between the tile's mean L*a*b* and the reference of its layout unit (undefined when the
             folder holds no image of that unit).
A tile whose style units all equal its layout unit is "same-source": its style and layout share a slide, so
nothing tells which one it follows, and it is left out of `closer_to_style`.

Summary: `style_distance` is the mean d_style over all tiles, `layout_distance` the mean d_layout over tiles with
a defined d_layout, `closer_to_style` the share of cross-source tiles with d_style < d_layout (strictly; None when
there are none), `style_rows` the number of tiles; `layout_rows` and `cross_source_rows` count the tiles behind
`layout_distance` and `closer_to_style`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from skimage.color import rgb2lab

from common.errors import DataError
from common.files import read_csv_rows

SAMPLES_CSV = "samples.csv"
COLUMNS = ("file", "layout_unit", "style_units", "style_files", "layout_file")


@dataclass(frozen=True)
class StyleRow:
    """The distances of one generated tile to the references of its style unit(s) and of its layout unit."""

    file: str
    layout_unit: str
    style_units: tuple[str, ...]
    d_style: float
    d_layout: float | None

    @property
    def same_source(self) -> bool:
        """True when every style crop comes from the layout's own unit."""
        return is_same_source(self.layout_unit, self.style_units)


def lab_sum(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of the per-pixel L*a*b* values of an (H, W, 3) uint8 RGB image, and its pixel count."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    lab = rgb2lab(image.astype(np.float64) / 255.0).reshape(-1, 3)
    return lab.sum(axis=0), len(lab)


def mean_lab(images: Sequence[np.ndarray]) -> np.ndarray:
    """Mean L*a*b* over all pixels of all images (each pixel weighted equally)."""
    if not images:
        raise ValueError("mean_lab needs at least one image")
    sums, counts = zip(*(lab_sum(image) for image in images))
    return np.sum(sums, axis=0) / sum(counts)


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """CIE76 Delta E: Euclidean distance between two L*a*b* colours."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def is_same_source(layout_unit: str, style_units: Sequence[str]) -> bool:
    """True when there are style units and all of them equal the layout unit."""
    return bool(style_units) and all(unit == layout_unit for unit in style_units)


def summarize(rows: Sequence[StyleRow]) -> dict[str, Any]:
    """The summary numbers of the module docstring (None where no row defines them)."""
    layout = [r for r in rows if r.d_layout is not None]
    cross = [r for r in layout if not r.same_source]
    return {
        "style_distance": _mean([r.d_style for r in rows]),
        "layout_distance": _mean([r.d_layout for r in layout]),
        "closer_to_style": _mean([float(r.d_style < r.d_layout) for r in cross]),
        "style_rows": len(rows),
        "layout_rows": len(layout),
        "cross_source_rows": len(cross),
    }


def _mean(values: Sequence[float]) -> float | None:
    """Mean of the values, or None when there are none."""
    return float(np.mean(values)) if values else None


def split_list(text: str | None) -> list[str]:
    """The non-empty items of a ';'-joined CSV cell."""
    return [item.strip() for item in (text or "").split(";") if item.strip()]


def read_rgb(path: Path, where: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a missing or unreadable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist (expected an RGB image listed in {SAMPLES_CSV})")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{where}: {path} is not a readable image ({err})") from None


@dataclass(frozen=True)
class SampleRow:
    """One samples.csv row: the tile, its layout unit and real patch, its style crops and their units."""

    where: str
    file: str
    layout_unit: str
    layout_file: str
    style_units: tuple[str, ...]
    style_files: tuple[str, ...]


def parse_row(row: dict[str, str], where: str) -> SampleRow:
    """A samples.csv row, checked (DataError naming the line)."""
    style_files, style_units = split_list(row["style_files"]), split_list(row["style_units"])
    if not style_files:
        raise DataError(f"{where}: style_files is empty (expected ';'-joined file names of the style crops)")
    if len(style_units) != len(style_files):
        raise DataError(f"{where}: {len(style_units)} style_units for {len(style_files)} style_files (expected one unit per crop)")
    if not (row["file"] or "").strip():
        raise DataError(f"{where}: file is empty (expected the generated tile, e.g. img_00000.png)")
    return SampleRow(where, row["file"].strip(), (row["layout_unit"] or "").strip(), (row["layout_file"] or "").strip(),
                     tuple(style_units), tuple(style_files))


def check_distinct_files(rows: Sequence[SampleRow]) -> None:
    """DataError naming the line when a generated tile is listed twice."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.file in seen:
            raise DataError(f"{row.where}: file {row.file!r} is also listed at {seen[row.file]}; expected each "
                            "generated tile once")
        seen[row.file] = row.where.rsplit(", ", 1)[-1]


def unit_references(folder: Path, rows: Sequence[SampleRow]) -> dict[str, np.ndarray]:
    """Reference mean L*a*b* of every unit: over all its style crops and real layout patches in the folder."""
    sums: dict[str, list] = {}
    for row in rows:
        images = list(zip(row.style_units, row.style_files))
        if row.layout_file:
            images.append((row.layout_unit, row.layout_file))
        for unit, name in images:
            total, count = lab_sum(read_rgb(folder / name, row.where))
            entry = sums.setdefault(unit, [np.zeros(3), 0])
            entry[0] = entry[0] + total
            entry[1] += count
    return {unit: total / count for unit, (total, count) in sums.items()}


def pooled(references: dict[str, np.ndarray], units: Sequence[str]) -> np.ndarray:
    """The mean of the references of the given units, one per crop."""
    return np.mean([references[unit] for unit in units], axis=0)


def score_row(folder: Path, row: SampleRow, references: dict[str, np.ndarray]) -> StyleRow:
    """Distances of one tile to the references of its style units and of its layout unit."""
    tile = mean_lab([read_rgb(folder / row.file, row.where)])
    layout = references.get(row.layout_unit)
    d_layout = delta_e(tile, layout) if layout is not None and row.layout_unit else None
    return StyleRow(row.file, row.layout_unit, row.style_units, delta_e(tile, pooled(references, row.style_units)), d_layout)


def read_style_distances(folder: str | Path, limit: int | None = None, flag: str = "--fake") -> list[StyleRow]:
    """Score the first `limit` (default all) rows of a STEDM output folder's samples.csv."""
    folder = Path(folder)
    csv_path = folder / SAMPLES_CSV
    if not folder.is_dir() or not csv_path.is_file():
        raise DataError(f"{flag} {folder}: no {SAMPLES_CSV}; expected a STEDM output folder whose {SAMPLES_CSV} has "
                        f"the columns {','.join(COLUMNS)}")
    rows = read_csv_rows(csv_path, COLUMNS, flag)
    if not rows:
        raise DataError(f"{flag} {csv_path}: no rows (expected one row per generated tile)")
    rows = rows[:limit] if limit else rows
    parsed = [parse_row(row, f"{csv_path}, line {line}") for line, row in enumerate(rows, start=2)]
    check_distinct_files(parsed)
    references = unit_references(folder, parsed)
    return [score_row(folder, row, references) for row in parsed]

"""Layouts and style sources for styled generation, and how they are paired.

A layout source yields (image, labels, unit) triples: the run's own validation patches, a tile-pair folder
(`images/` + `masks/`, unit = slide prefix of the tile name) or a region set folder. A style source yields
reference crops of a named unit: the run's own slides (by split), a folder of whole-slide images (one unit per
slide; crops at random tissue positions) or a folder of images (unit = the name before the first '_', or the
file itself; crops at random positions of random images of the unit).

Pairing (`--pairing`):
- `random`: each layout takes a style unit drawn uniformly from the style source;
- `same_slide`: each layout takes the style of its own unit (reconstruction: the style source must hold it);
- `cross`: each layout takes a unit drawn uniformly among the style units other than its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import openslide
from PIL import Image

from data.annotations import DataError
from data.style_sampling import multi_patch_crops, tissue_map, to_style_array
from data.tile_pairs import list_pairs, read_pair, slide_names

PAIRINGS = ("random", "same_slide", "cross")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class LayoutSource(Protocol):
    """Layouts: __len__, layout(i) -> (uint8 S x S x 3 image, uint8 S x S labels), unit_of(i) -> str."""

    def __len__(self) -> int: ...

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def unit_of(self, index: int) -> str: ...


@dataclass
class TileLayouts:
    """The tiles of a tile-pair folder as layouts (class indices of the masks, checked against `num_classes`)."""

    folder: Path
    num_classes: int

    def __post_init__(self) -> None:
        self.pairs = list_pairs(self.folder)

    def __len__(self) -> int:
        return len(self.pairs)

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = read_pair(self.pairs[index], self.num_classes)
        return image, mask.astype(np.uint8)

    def unit_of(self, index: int) -> str:
        return self.pairs[index].slide


@dataclass
class StyleSource:
    """Named units and a function drawing n reference crops of a unit: float32 n x 3 x S x S in [-1, 1]."""

    name: str
    units: list[str]
    draw: Callable[[str, np.random.Generator, int], np.ndarray]

    def crops(self, unit: str, rng: np.random.Generator, count: int) -> np.ndarray:
        return self.draw(unit, rng, count)


def dataset_styles(dataset: Any, units: Sequence[str], name: str) -> StyleSource:
    """Units of a training data set (anything with `style_crops(unit, rng, count, mode)`) as a style source."""
    if not units:
        raise DataError(f"--styles {name}: the data set has no such units")
    return StyleSource(name, list(units), lambda unit, rng, count: dataset.style_crops(unit, rng, count=count, mode="multi_patch"))


def slide_folder_styles(folder: Path, size: int, files: Sequence[Path]) -> StyleSource:
    """Whole-slide images as style units: crops of `size` px at random tissue positions of level 0."""
    readers: dict[str, Any] = {}

    def draw(unit: str, rng: np.random.Generator, count: int) -> np.ndarray:
        if unit not in readers:
            path = folder / unit
            try:
                reader = openslide.OpenSlide(str(path))
            except (openslide.OpenSlideError, OSError) as err:
                raise DataError(f"--styles: slide file {path} cannot be read by openslide: {err}") from None
            readers[unit] = (reader, tissue_map(reader))
        reader, tissue = readers[unit]
        return to_style_array(multi_patch_crops(reader, size, count, rng, tissue, name=str(folder / unit)))

    return StyleSource(str(folder), [p.name for p in files], draw)


def fitted(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random size x size crop of an image (first scaled up so its shorter side is at least `size`)."""
    height, width = image.shape[:2]
    if min(height, width) < size:
        scale = size / min(height, width)
        resized = Image.fromarray(image).resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
        image = np.asarray(resized)
        height, width = image.shape[:2]
    y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    return image[y:y + size, x:x + size]


def image_folder_styles(folder: Path, size: int, files: Sequence[Path]) -> StyleSource:
    """Images as style units (grouped by the name before the first '_'): random crops of random images of a unit."""
    groups: dict[str, list[Path]] = {}
    for path, unit in zip(files, slide_names([p.stem for p in files]).values()):
        groups.setdefault(unit, []).append(path)

    def draw(unit: str, rng: np.random.Generator, count: int) -> np.ndarray:
        crops = []
        for _ in range(count):
            path = groups[unit][int(rng.integers(len(groups[unit])))]
            try:
                with Image.open(path) as handle:
                    image = np.asarray(handle.convert("RGB"))
            except (OSError, ValueError) as err:
                raise DataError(f"--styles: {path} cannot be read as an image ({err})") from None
            crops.append(fitted(image, size, rng))
        return to_style_array(np.stack(crops))

    return StyleSource(str(folder), sorted(groups), draw)


def folder_styles(folder: str | Path, size: int) -> StyleSource:
    """A folder of whole-slide images or of plain images as a style source (DataError when it holds neither)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--styles {folder}: expected heldout, train, all, or a folder of slides or images")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    slides = [p for p in files if p not in images and openslide.OpenSlide.detect_format(str(p))]
    if slides:
        return slide_folder_styles(folder, size, slides)
    if images:
        return image_folder_styles(folder, size, images)
    raise DataError(f"--styles {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) or slide files in the folder")


def pair_styles(layout_units: Sequence[str], style_units: Sequence[str], pairing: str, rng: np.random.Generator) -> list[str]:
    """The style unit of every layout under `pairing` (DataError when a layout has no admissible unit)."""
    if pairing not in PAIRINGS:
        raise DataError(f"--pairing: expected one of {list(PAIRINGS)}, got {pairing!r}")
    if not style_units:
        raise DataError("--styles: the style source has no units")
    available = set(style_units)
    picks = []
    for unit in layout_units:
        if pairing == "same_slide":
            if unit not in available:
                raise DataError(f"--pairing same_slide: layout unit {unit} is not among the style units (give --styles all or a source that holds it)")
            picks.append(unit)
            continue
        choices = list(style_units) if pairing == "random" else [u for u in style_units if u != unit]
        if not choices:
            raise DataError(f"--pairing cross: no style unit other than the layout's own ({unit})")
        picks.append(choices[int(rng.integers(len(choices)))])
    return picks

"""Patches of region-annotated slides for style-extracting diffusion: image, one-hot region layout and style crops.

The slides of a set (the layout of `data.synthetic_regions`: `WSI/`, `Annotations/regions.sqlite`, `slides.csv`
with a `split` column) are small enough that each slide's level-0 label mask is rasterised once when the set is
opened. Patch positions are drawn at random (seeded) among those whose patch is at least `min_tissue` labelled
tissue. Each sample is

- `image`: float32 3 x tile x tile in [-1, 1], read at level 0;
- `semantic`: float32 K x tile x tile, the one-hot layout (K: classes of the class map incl. background 0; pixels
  of ignored regions are all zero);
- `style`: float32 n x 3 x tile x tile in [-1, 1], reference crops drawn with `data.style_sampling.sample_style`
  (the labelled tissue of the slide serves as its tissue map);
- `meta`: slide, and the level-0 centre x, y of the patch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import openslide

from data.annotations import DataError
from data.base import SeededDataset, dihedral
from data.regions import IGNORE, check_class_map, parse_class_map, read_region_polygons, region_classes, slide_mask
from data.style_sampling import STYLE_MODES, TissueMap, read_crop, sample_style, to_style_array
from data.synthetic_regions import read_slides_csv, regions_paths

MIN_TISSUE = 0.5


@dataclass(frozen=True)
class RegionSlides:
    """The slides of a region set, their split and their level-0 label masks under a class map."""

    root: Path
    paths: dict[str, Path]
    splits: dict[str, str]
    masks: dict[str, np.ndarray]
    num_classes: int

    def names(self, split: str = "all") -> list[str]:
        """Slide names of a split ("train", "heldout", or "all"), in slides.csv order."""
        return [name for name, s in self.splits.items() if split == "all" or s == split]


def open_region_slides(root: str | Path, class_map: str | Mapping[str, int]) -> RegionSlides:
    """Read slides.csv and the polygons of `root` and rasterise every slide's label mask (DataError on bad input)."""
    root = Path(root)
    files = regions_paths(root)
    for key in ("database", "slides_csv"):
        if not files[key].is_file():
            raise DataError(f"{root}: expected a region set (WSI/, Annotations/regions.sqlite, slides.csv); {files[key]} is missing")
    mapping = parse_class_map(class_map) if isinstance(class_map, str) else dict(class_map)
    check_class_map(mapping, region_classes(files["database"]), files["database"])
    labels = [v for v in mapping.values() if v != IGNORE]
    num_classes = max(labels, default=0) + 1
    if num_classes < 2:
        raise DataError(f"--class_map {class_map}: needs at least one class with a label above 0")
    rows = read_slides_csv(files["slides_csv"])
    splits = {row["slide"]: row["split"] for row in rows}
    paths, masks = {}, {}
    polygons = read_region_polygons(files["database"], slides=list(splits))
    for name in splits:
        path = files["slides_dir"] / name
        if not path.is_file():
            raise DataError(f"{files['slides_csv']}: slide {name} is not in {files['slides_dir']}")
        try:
            with openslide.OpenSlide(str(path)) as slide:
                width, height = slide.dimensions
        except (openslide.OpenSlideError, OSError) as err:
            raise DataError(f"slide file {path} cannot be read by openslide: {err}") from None
        paths[name] = path
        masks[name] = slide_mask(polygons, name, mapping, (height, width))
    return RegionSlides(root, paths, splits, masks, num_classes)


def tissue_positions(
    slides: RegionSlides, names: Sequence[str], tile_size: int, per_slide: int, seed: int, min_tissue: float = MIN_TISSUE
) -> list[tuple[str, int, int]]:
    """`per_slide` seeded top-left corners (slide, x, y) per slide whose patch is >= `min_tissue` labelled tissue."""
    positions = []
    for index, name in enumerate(names):
        tissue = (slides.masks[name] > 0) & (slides.masks[name] != IGNORE)
        height, width = tissue.shape
        if tile_size > min(height, width):
            raise DataError(f"{name}: --tile_size {tile_size} does not fit a {width} x {height} slide")
        # share of tissue of every patch, from the summed-area table
        table = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        s = tile_size
        share = (table[s:, s:] - table[:-s, s:] - table[s:, :-s] + table[:-s, :-s]) / float(s * s)
        ys, xs = np.nonzero(share >= min_tissue)
        if len(ys) == 0:
            raise DataError(f"{name}: no {tile_size} px patch with a tissue share >= {min_tissue}")
        rng = np.random.default_rng([seed, index, 7])
        picks = rng.choice(len(ys), size=per_slide, replace=len(ys) < per_slide)
        positions += [(name, int(xs[i]), int(ys[i])) for i in picks]
    return positions


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """uint8 H x W labels -> float32 K x H x W; labels outside 0..K-1 (ignored regions) are all zero."""
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


class RegionPatches(SeededDataset):
    """Patches at fixed positions (slide, x, y top-left, level 0) with their layout and style crops."""

    def __init__(
        self,
        slides: RegionSlides,
        positions: Sequence[tuple[str, int, int]],
        tile_size: int,
        num_style: int,
        style_mode: str,
        augment: bool = False,
        seed: int = 0,
        radius: float = 128.0,
    ) -> None:
        if style_mode not in STYLE_MODES:
            raise DataError(f"--style_sampling: expected one of {list(STYLE_MODES)}, got {style_mode!r}")
        if not positions:
            raise DataError(f"{slides.root}: no patch positions")
        self.slides = slides
        self.positions = list(positions)
        self.tile_size = tile_size
        self.num_style = num_style
        self.style_mode = style_mode
        self.augment = augment
        self.seed = seed
        self.radius = radius

    def __len__(self) -> int:
        return len(self.positions)

    def reader(self, name: str) -> Any:
        return self.handle(name, lambda: openslide.OpenSlide(str(self.slides.paths[name])))

    def tissue(self, name: str) -> TissueMap:
        mask = self.slides.masks[name]
        return TissueMap((mask > 0) & (mask != IGNORE), 1.0)

    def read(self, name: str, x: int, y: int) -> np.ndarray:
        """uint8 tile x tile x 3 patch with top-left level-0 (x, y) (transparent pixels as white)."""
        s = self.tile_size
        return read_crop(self.reader(name), x + s / 2, y + s / 2, s)

    def style_crops(self, name: str, rng: np.random.Generator, count: int | None = None, mode: str | None = None,
                    position: tuple[float, float] | None = None, content: np.ndarray | None = None) -> np.ndarray:
        """float32 n x 3 x tile x tile style crops of slide `name` in [-1, 1] (default: this set's mode and n)."""
        crops = sample_style(mode or self.style_mode, rng, size=self.tile_size, count=self.num_style if count is None else count,
                             reader=self.reader(name), position=position, content=content, radius=self.radius,
                             tissue=self.tissue(name), name=name)
        return to_style_array(crops)

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The unaugmented patch (uint8 H x W x 3) and label mask (uint8 H x W) of item `index`."""
        name, x, y = self.positions[self.wrap(index)]
        s = self.tile_size
        return self.read(name, x, y), self.slides.masks[name][y:y + s, x:x + s]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.wrap(index)
        name, x, y = self.positions[item]
        patch, labels = self.layout(item)
        s = self.tile_size
        style = self.style_crops(name, self.sample_rng(index, 1), position=(x + s / 2, y + s / 2), content=patch)
        k = self.dihedral_k(index)
        patch, labels = dihedral(patch, k), dihedral(labels, k)
        image = np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1.0
        return {
            "image": image.astype(np.float32),
            "semantic": one_hot(np.ascontiguousarray(labels), self.slides.num_classes),
            "style": style,
            "meta": {"slide": name, "x": x + s // 2, "y": y + s // 2},
        }

"""Patches of region-annotated slides for style-extracting diffusion: image, one-hot region layout and style crops.

Two kinds of region sets open into the same `RegionSlides`:
- a set folder in the layout of `data.synthetic_regions` (`WSI/`, `Annotations/regions.sqlite`, `slides.csv` with
  a `split` column): `open_region_slides`;
- whole-slide images of any format openslide reads (`--slides_dir`) with polygons (type 3) in a SlideRunner
  database (`--annotation_file`): `open_wsi_regions`. Slides with polygons are training slides, the others are
  held out (style sources only), unless `--split_file` (columns slide, split: train / heldout) says otherwise.

Each slide is read at one pyramid level (`--level`, or the level whose microns per pixel are nearest `--mpp`), and
its label mask is rasterised once at that level. Patch positions are drawn at random (seeded) among those whose
patch is at least `min_tissue` labelled tissue. Each sample is

- `image`: float32 3 x tile x tile in [-1, 1], read at the slide's level;
- `semantic`: float32 K x tile x tile, the one-hot layout (K: classes of the class map incl. background 0; pixels
  of ignored regions are all zero);
- `style`: float32 n x 3 x tile x tile in [-1, 1], reference crops drawn with `data.style_sampling.sample_style`
  at the same level (the labelled tissue of the slide serves as its tissue map; `nearby` crops lie within
  `radius` px of the slide's level from the patch centre, one patch size in the data loader, as the original
  work's relative distance 1);
- `meta`: slide, and the level-0 centre x, y of the patch.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import openslide

from data.annotations import DataError
from data.base import SeededDataset
from data.regions import IGNORE, check_class_map, parse_class_map, read_region_polygons, region_classes, slide_mask
from data.splits import pick_labelled
from data.style_sampling import STYLE_MODES, TissueMap, read_crop, sample_style, to_style_array
from data.synthetic_regions import read_slides_csv, regions_paths

MIN_TISSUE = 0.5
# Label masks are held in memory, one byte per pixel of the chosen level: refuse levels above this size.
MAX_MASK_PIXELS = 1 << 28
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class RegionSlides:
    """The slides of a region set: files, splits, the level each is read at (and its downsample), their label
    masks at that level under a class map, and which training slides are labelled (the others: style only)."""

    root: Path
    paths: dict[str, Path]
    splits: dict[str, str]
    masks: dict[str, np.ndarray]
    num_classes: int
    levels: dict[str, int] = field(default_factory=dict)
    downsamples: dict[str, float] = field(default_factory=dict)
    labelled: frozenset[str] | None = None

    def names(self, split: str = "all") -> list[str]:
        """Slide names of a split ("train", "heldout", or "all"), in their listing order."""
        return [name for name, s in self.splits.items() if split == "all" or s == split]

    def labelled_names(self) -> list[str]:
        """The training slides whose layouts are trained on (all of them unless --labelled_per_class)."""
        return [n for n in self.names("train") if self.labelled is None or n in self.labelled]

    def level(self, name: str) -> int:
        return self.levels.get(name, 0)

    def downsample(self, name: str) -> float:
        return self.downsamples.get(name, 1.0)


def mapping_of(class_map: str | Mapping[str, int], database: Path) -> tuple[dict[str, int], int]:
    """The parsed class map, checked against the database's classes, and the number of classes K."""
    mapping = parse_class_map(class_map) if isinstance(class_map, str) else dict(class_map)
    check_class_map(mapping, region_classes(database), database)
    num_classes = max((v for v in mapping.values() if v != IGNORE), default=0) + 1
    if num_classes < 2:
        raise DataError(f"--class_map {class_map}: needs at least one class with a label above 0")
    return mapping, num_classes


def choose_level(slide: Any, name: str, level: int | None, mpp: float | None) -> int:
    """--level, or the level whose microns per pixel are nearest --mpp (DataError when the slide has no mpp)."""
    if mpp is None:
        level = level or 0
        if not 0 <= level < slide.level_count:
            raise DataError(f"{name}: --level {level} out of range (the slide has {slide.level_count} levels)")
        return level
    base = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    if base is None:
        raise DataError(f"{name}: the slide states no microns per pixel ({openslide.PROPERTY_NAME_MPP_X}); give --level instead of --mpp")
    per_level = [float(base) * float(d) for d in slide.level_downsamples]
    return int(np.argmin([abs(np.log(m / mpp)) for m in per_level]))


def rasterised_slides(root: Path, database: Path, paths: Mapping[str, Path], splits: Mapping[str, str],
                      class_map: str | Mapping[str, int], level: int | None = None, mpp: float | None = None) -> RegionSlides:
    """Open every slide, choose its level and rasterise its polygons there (DataError on bad input)."""
    mapping, num_classes = mapping_of(class_map, database)
    polygons = read_region_polygons(database, slides=list(paths))
    masks, levels, downsamples = {}, {}, {}
    for name, path in paths.items():
        try:
            with openslide.OpenSlide(str(path)) as slide:
                levels[name] = choose_level(slide, name, level, mpp)
                width, height = slide.level_dimensions[levels[name]]
                downsamples[name] = float(slide.level_downsamples[levels[name]])
        except (openslide.OpenSlideError, OSError) as err:
            raise DataError(f"slide file {path} cannot be read by openslide: {err}") from None
        if width * height > MAX_MASK_PIXELS:
            raise DataError(f"{path}: level {levels[name]} is {width} x {height} px, too large to rasterise in memory; "
                            "choose a coarser --level or a larger --mpp")
        masks[name] = slide_mask(polygons, name, mapping, (height, width), downsamples[name])
    return RegionSlides(root, dict(paths), dict(splits), masks, num_classes, levels, downsamples)


def open_region_slides(root: str | Path, class_map: str | Mapping[str, int], level: int | None = None,
                       mpp: float | None = None) -> RegionSlides:
    """A set folder (slides.csv, WSI/, Annotations/regions.sqlite): its slides and label masks."""
    root = Path(root)
    files = regions_paths(root)
    for key in ("database", "slides_csv"):
        if not files[key].is_file():
            raise DataError(f"{root}: expected a region set (WSI/, Annotations/regions.sqlite, slides.csv); {files[key]} is missing")
    splits = {row["slide"]: row["split"] for row in read_slides_csv(files["slides_csv"])}
    paths = {}
    for name in splits:
        paths[name] = files["slides_dir"] / name
        if not paths[name].is_file():
            raise DataError(f"{files['slides_csv']}: slide {name} is not in {files['slides_dir']}")
    return rasterised_slides(root, files["database"], paths, splits, class_map, level, mpp)


def read_split_file(path: Path, slides: Sequence[str]) -> dict[str, str]:
    """slide -> split of a CSV with columns slide, split (train or heldout); slides it does not list are held out."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise DataError(f"--split_file {path}: cannot be read ({err})") from None
    if not rows or not {"slide", "split"} <= set(rows[0]):
        raise DataError(f"--split_file {path}: expected a CSV with columns slide,split")
    splits = {}
    for row in rows:
        if row["split"] not in SPLITS:
            raise DataError(f"--split_file {path}: split of {row['slide']} is {row['split']!r}, expected one of {list(SPLITS)}")
        splits[row["slide"]] = row["split"]
    unknown = sorted(set(splits) - set(slides))
    if unknown:
        raise DataError(f"--split_file {path}: slide(s) {unknown[:3]} are not in --slides_dir")
    return {name: splits.get(name, "heldout") for name in slides}


def open_wsi_regions(slides_dir: str | Path, database: str | Path, class_map: str | Mapping[str, int],
                     split_file: str | Path | None = None, level: int | None = None, mpp: float | None = None) -> RegionSlides:
    """Slides of --slides_dir that the database names (by file name) with their polygons rasterised; slides with
    polygons train and the others are held out, unless a split file says otherwise."""
    folder, database = Path(slides_dir), Path(database)
    if not folder.is_dir():
        raise DataError(f"--slides_dir {folder}: not a folder")
    if not database.is_file():
        raise DataError(f"--annotation_file {database}: file does not exist")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and openslide.OpenSlide.detect_format(str(p))}
    if not files:
        raise DataError(f"--slides_dir {folder}: no slide file openslide can read")
    annotated = {p.slide for p in read_region_polygons(database, slides=list(files))}
    if not annotated:
        raise DataError(f"--annotation_file {database}: no polygon (type 3) on any slide of {folder} ({len(files)} slides there)")
    if split_file:
        splits = read_split_file(Path(split_file), list(files))
    else:
        splits = {name: "train" if name in annotated else "heldout" for name in files}
    return rasterised_slides(folder, database, files, splits, class_map, level, mpp)


def slide_classes(split_file: str | Path) -> dict[str, str] | None:
    """slide -> class of a split file's optional `class` column (None without one)."""
    with open(split_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "class" not in rows[0]:
        return None
    return {row["slide"]: row["class"] for row in rows}


def with_labelled(slides: RegionSlides, per_class: int | None, classes: Mapping[str, str] | None, seed: int) -> RegionSlides:
    """The set with only `per_class` seeded training slides per class labelled (--labelled_per_class)."""
    if per_class is None:
        return slides
    train = slides.names("train")
    kept = pick_labelled({name: (classes or {}).get(name, "all") for name in train}, per_class, seed)
    return RegionSlides(slides.root, slides.paths, slides.splits, slides.masks, slides.num_classes, slides.levels,
                        slides.downsamples, frozenset(kept))


def tissue_share(slides: RegionSlides, name: str, tile_size: int) -> np.ndarray:
    """Labelled-tissue share of the patch at every top-left corner (y, x) of slide `name`'s mask."""
    mask = slides.masks[name]
    tissue = (mask > 0) & (mask != IGNORE)
    height, width = tissue.shape
    if tile_size > min(height, width):
        raise DataError(f"{name}: --tile_size {tile_size} does not fit a {width} x {height} slide")
    table = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = tile_size
    return (table[s:, s:] - table[:-s, s:] - table[s:, :-s] + table[:-s, :-s]) / float(s * s)


def grid_positions(
    slides: RegionSlides, names: Sequence[str], tile_size: int, per_slide: int, seed: int, min_tissue: float = MIN_TISSUE
) -> list[tuple[str, int, int]]:
    """Top-left corners on a tile_size grid whose patch is at least `min_tissue` labelled tissue, at most
    `per_slide` per slide (a seeded choice, kept in grid order)."""
    positions = []
    for index, name in enumerate(names):
        share = tissue_share(slides, name, tile_size)[::tile_size, ::tile_size]
        ys, xs = np.nonzero(share >= min_tissue)
        if len(ys) > per_slide:
            keep = np.sort(np.random.default_rng([seed, index, 9]).choice(len(ys), size=per_slide, replace=False))
            ys, xs = ys[keep], xs[keep]
        positions += [(name, int(x) * tile_size, int(y) * tile_size) for y, x in zip(ys, xs)]
    return positions


def tissue_positions(
    slides: RegionSlides, names: Sequence[str], tile_size: int, per_slide: int, seed: int, min_tissue: float = MIN_TISSUE
) -> list[tuple[str, int, int]]:
    """`per_slide` seeded top-left corners (slide, x, y at the slide's level) per slide whose patch is at least
    `min_tissue` labelled tissue."""
    positions = []
    for index, name in enumerate(names):
        share = tissue_share(slides, name, tile_size)
        ys, xs = np.nonzero(share >= min_tissue)
        if len(ys) == 0:
            raise DataError(f"{name}: no {tile_size} px patch with a tissue share >= {min_tissue}")
        rng = np.random.default_rng([seed, index, 7])
        picks = rng.choice(len(ys), size=per_slide, replace=len(ys) < per_slide)
        positions += [(name, int(xs[i]), int(ys[i])) for i in picks]
    return positions


class RegionPatches(SeededDataset):
    """Patches at fixed positions (slide, x, y top-left at the slide's level) with their layout and style crops."""

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
        super().__init__(augment, seed)
        self.radius = radius

    def __len__(self) -> int:
        return len(self.positions)

    def reader(self, name: str) -> Any:
        return self.handle(name, lambda: openslide.OpenSlide(str(self.slides.paths[name])))

    @property
    def num_classes(self) -> int:
        return self.slides.num_classes

    def tissue(self, name: str) -> TissueMap:
        mask = self.slides.masks[name]
        return TissueMap((mask > 0) & (mask != IGNORE), self.slides.downsample(name))

    def centre(self, name: str, x: int, y: int) -> tuple[float, float]:
        """Level-0 centre of the patch with top-left (x, y) at the slide's level."""
        half, d = self.tile_size / 2, self.slides.downsample(name)
        return (x + half) * d, (y + half) * d

    def read(self, name: str, x: int, y: int) -> np.ndarray:
        """uint8 tile x tile x 3 patch with top-left (x, y) at the slide's level (transparent pixels as white)."""
        return read_crop(self.reader(name), *self.centre(name, x, y), self.tile_size, self.slides.level(name))

    def unit_of(self, index: int) -> str:
        return self.positions[self.wrap(index)][0]

    def style_units(self, split: str = "all") -> list[str]:
        """The slides of a split ("train", "heldout" or "all") as style sources."""
        return self.slides.names(split)

    def style_crops(self, name: str, rng: np.random.Generator, count: int | None = None, mode: str | None = None,
                    position: tuple[float, float] | None = None, content: np.ndarray | None = None) -> np.ndarray:
        """float32 n x 3 x tile x tile style crops of slide `name` in [-1, 1] (default: this set's mode and n)."""
        crops = sample_style(mode or self.style_mode, rng, size=self.tile_size, count=self.num_style if count is None else count,
                             reader=self.reader(name), position=position, content=content,
                             radius=self.radius * self.slides.downsample(name), tissue=self.tissue(name),
                             level=self.slides.level(name), name=name)
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
        cx, cy = self.centre(name, x, y)
        style = self.style_crops(name, self.sample_rng(index, 1), position=(cx, cy), content=patch)
        return self.styled_sample(index, patch, labels, style, {"slide": name, "x": int(cx), "y": int(cy)})

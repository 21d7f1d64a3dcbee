"""Embedded demo data: synthetic H&E slides with mitotic figures, look-alikes and a SlideRunner database.

Everything is deterministic by seed and generated on the CPU in seconds. Images are painted as
haematoxylin and eosin concentration maps and turned into RGB with the Beer-Lambert law (`data.painting`),
so colours follow a realistic H&E palette. Slides are written as pyramidal tiled TIFFs that OpenSlide opens as
`generic-tiff` with microns-per-pixel taken from the resolution tags.
"""
from __future__ import annotations

import csv
import sqlite3
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import openslide
import tifffile
from scipy import ndimage
from tqdm import tqdm

from data.annotations import DataError
from data.cached_folder import generate_once
from data.generator_cli import generator_main
from data.painting import (
    Canvas,
    blob_distance,
    draw_nucleus,
    local_grid,
    place_nuclei,
    rotate,
    segment_distance,
    smooth_noise,
    soft_inside,
    stain_to_rgb,
    stroma,
)

MITOTIC_CLASS = "Mitotic figure"
LOOKALIKE_CLASS = "Mitotic figure lookalike"
ANNOTATORS = ("expert 1", "expert 2")
CLASS_COLOURS = {MITOTIC_CLASS: "#fc7ca7", LOOKALIKE_CLASS: "#c5b6b2"}
FORMAT_VERSION = 2
TILE = 256
MIN_LEVEL_SIZE = 512
EDGE_MARGIN = 64
OBJECT_SPACING = 32
MIN_SIZE = 4 * EDGE_MARGIN
LAST_MODIFIED = 1_700_000_000.0
SPOT, POLYGON = 1, 3
DATABASE_STREAM = 1_000_003
AMBIGUITY_STREAM = 1_000_033



def check_extent(count_name: str, count: int, size: int, min_size: int) -> None:
    """Raise DataError unless there is at least one item (option `count_name`) and `size` is at least `min_size` px."""
    if count < 1:
        raise DataError(f"{count_name}: expected at least 1, got {count}")
    if size < min_size:
        raise DataError(f"size: expected at least {min_size} px, got {size}")


def check_mpp(mpp: float) -> None:
    """Raise DataError unless `mpp` is a positive number of microns per pixel."""
    if mpp <= 0:
        raise DataError(f"mpp: expected a positive number of microns per pixel, got {mpp}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic dataset.

    `nuclei_density` is ordinary nuclei per 100 x 100 px where the tissue is most cellular; `disagreement`
    is the share of annotated objects on which one of the two annotators votes for the other class. As on real
    slides, the annotators disagree on the ambiguous objects: every object has an ambiguity in [0, 1]
    (Beta(`ambiguity_alpha`, `ambiguity_beta`)) that moves its look toward the other class, and the objects voted on by
    both classes are drawn with probability proportional to the squared ambiguity.
    """

    num_slides: int = 3
    size: int = 1536
    seed: int = 0
    mpp: float = 0.25
    mitotic_per_slide: int = 48
    lookalike_per_slide: int = 80
    nuclei_density: float = 14.0
    disagreement: float = 0.12
    ambiguity_alpha: float = 0.6
    ambiguity_beta: float = 2.0

    def validate(self) -> None:
        """Raise DataError naming the first parameter that is out of range."""
        check_extent("num_slides", self.num_slides, self.size, MIN_SIZE)
        check_mpp(self.mpp)
        if self.mitotic_per_slide < 0 or self.lookalike_per_slide < 0:
            raise DataError(
                "mitotic_per_slide / lookalike_per_slide: expected counts >= 0, got "
                f"{self.mitotic_per_slide} / {self.lookalike_per_slide}"
            )
        if self.nuclei_density < 0:
            raise DataError(f"nuclei_density: expected >= 0, got {self.nuclei_density}")
        if not 0.0 <= self.disagreement < 1.0:
            raise DataError(f"disagreement: expected a share in [0, 1), got {self.disagreement}")
        if min(self.ambiguity_alpha, self.ambiguity_beta) <= 0:
            raise DataError(
                f"ambiguity_alpha / ambiguity_beta: expected Beta parameters > 0, got {self.ambiguity_alpha} / "
                f"{self.ambiguity_beta}"
            )


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: level-0 centre, its true class, the shape it was drawn with and how far its look
    leans toward the other class (0: typical, 1: halfway)."""

    x: int
    y: int
    class_name: str
    shape: str
    ambiguity: float = 0.0


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------

FIGURE_RADIUS = 18


def draw_halo(rng: np.random.Generator) -> np.ndarray:
    """Coverage of the pale, cleared cytoplasm around a dividing cell."""
    yy, xx = local_grid(FIGURE_RADIUS)
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    r = np.sqrt((along / rng.uniform(10.0, 13.0)) ** 2 + (across / rng.uniform(9.0, 11.0)) ** 2)
    return 0.8 * soft_inside((r - 1.0) * 10.0, 1.5)


def mitosis_plate(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Metaphase plate: a bar 12-20 px long with chromosome arms sticking out of its edges."""
    length, width = rng.uniform(12.0, 20.0), rng.uniform(3.5, 5.5)
    angle = rng.uniform(0, np.pi)
    along, across = rotate(yy, xx, angle)
    distance = segment_distance(along, across, length, width)
    arms = rng.integers(5, 10)
    t = rng.uniform(-length / 2 + 1, length / 2 - 1, arms)
    side = rng.choice([-1.0, 1.0], arms) * (width / 2 + rng.uniform(0.5, 2.0, arms))
    centres = np.stack([t * np.sin(angle) + side * np.cos(angle), t * np.cos(angle) - side * np.sin(angle)], 1)
    return np.minimum(distance, blob_distance(yy, xx, centres, rng.uniform(1.0, 1.7, arms)))


def mitosis_anaphase(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anaphase: two ragged parallel plates moving apart."""
    gap, width = rng.uniform(7.0, 11.0), rng.uniform(3.0, 4.0)
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    first = segment_distance(along, across - gap / 2, rng.uniform(10.0, 16.0), width)
    second = segment_distance(along, across + gap / 2, rng.uniform(10.0, 16.0), width)
    return np.minimum(first, second)


def mitosis_clumps(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Prometaphase: a cluster of 7-13 small condensed chromatin clumps within ~8 px."""
    count = rng.integers(7, 14)
    centres = np.clip(rng.normal(0.0, 3.2, (count, 2)), -7.0, 7.0)
    return blob_distance(yy, xx, centres, rng.uniform(1.4, 2.8, count))


def mitosis_ring(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Ring or star form: a ragged band of chromatin with radial spikes."""
    rho, phi = np.sqrt(yy**2 + xx**2), np.arctan2(yy, xx)
    radius, thickness = rng.uniform(5.0, 7.5), rng.uniform(2.2, 3.4)
    spikes = 1.8 * np.maximum(np.cos(rng.integers(5, 9) * phi + rng.uniform(0, 2 * np.pi)), 0) ** 3
    return np.abs(rho - radius) - thickness / 2 - spikes


MITOSIS_SHAPES: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]] = {
    "plate": mitosis_plate,
    "anaphase": mitosis_anaphase,
    "clumps": mitosis_clumps,
    "ring": mitosis_ring,
}


def draw_mitosis(rng: np.random.Generator, shape: str, ambiguity: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """A mitotic figure: dark blue-black, condensed, irregular chromatin with ragged edges; an ambiguous one is
    paler, smoother and softer-edged, like a look-alike."""
    yy, xx = local_grid(FIGURE_RADIUS)
    distance = MITOSIS_SHAPES[shape](rng, yy, xx) + 1.1 * (1.0 - 0.7 * ambiguity) * smooth_noise(rng, yy.shape, 0.8)
    alpha = soft_inside(distance, 0.45 + 0.3 * ambiguity)
    clumping = np.clip(smooth_noise(rng, yy.shape, 1.2), -2.0, 2.0)
    h = rng.uniform(2.1, 2.7) * (0.9 + 0.12 * (1.0 - ambiguity) * clumping) * (1.0 - 0.15 * ambiguity)
    return alpha, h.astype(np.float32), 0.05


def lookalike_pyknotic(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, float]:
    """Pyknotic nucleus: a smooth, round, uniformly dark disc; returns (distance, cytoplasm radius)."""
    radius = rng.uniform(5.0, 8.0)
    squash = rng.uniform(0.85, 1.0)
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    return np.sqrt(along**2 + (across / squash) ** 2) - radius, radius + rng.uniform(3.0, 5.0)


def lookalike_lobed(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, float]:
    """Granulocyte-like: 2-4 smooth round lobes in a chain; returns (distance, cytoplasm radius)."""
    count = rng.integers(2, 5)
    radii = rng.uniform(2.6, 3.8, count)
    steps = rng.uniform(-0.9, 0.9, count).cumsum() + rng.uniform(0, 2 * np.pi)
    offsets = np.stack([np.sin(steps), np.cos(steps)], 1) * (radii[:, None] * 1.5)
    centres = np.cumsum(offsets, 0)
    centres -= centres.mean(0)
    return blob_distance(yy, xx, centres, radii), float(np.abs(centres).max() + radii.max() + 3.0)


LOOKALIKE_SHAPES: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, float]]] = {
    "pyknotic": lookalike_pyknotic,
    "lobed": lookalike_lobed,
}


def draw_lookalike(
    rng: np.random.Generator, shape: str, ambiguity: float = 0.0, texture_rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A look-alike: dark but smooth, in eosinophilic cytoplasm; an ambiguous one is darker, with ragged edges
    (noise from `texture_rng`) and less cytoplasm, like a mitotic figure. Returns (cytoplasm, alpha, h, e)."""
    yy, xx = local_grid(FIGURE_RADIUS)
    distance, cell_radius = LOOKALIKE_SHAPES[shape](rng, yy, xx)
    if ambiguity > 0 and texture_rng is not None:
        distance = distance + 0.8 * ambiguity * smooth_noise(texture_rng, yy.shape, 0.8)
    cytoplasm = 0.85 * (1.0 - 0.6 * ambiguity) * soft_inside(np.sqrt(yy**2 + xx**2) - cell_radius, 1.2)
    alpha = soft_inside(distance, 0.5 - 0.1 * ambiguity)
    shading = 1.0 - 0.08 * np.clip(-distance / 6.0, 0.0, 1.0)
    h = rng.uniform(1.8, 2.4) * shading * (1.0 + 0.12 * ambiguity)
    return cytoplasm, alpha, h.astype(np.float32), 0.1


# ---------------------------------------------------------------------------------------------
# Tissue
# ---------------------------------------------------------------------------------------------


def place_annotated(
    rng: np.random.Generator, tissue: np.ndarray, count: int, margin: int, spacing: float
) -> np.ndarray:
    """Centres (y, x) of `count` objects on tissue, `margin` px from the edges, `spacing` px apart."""
    height, width = tissue.shape
    if count == 0:
        return np.zeros((0, 2), dtype=np.int64)
    candidates = np.stack(
        [rng.integers(margin, height - margin, 40 * count), rng.integers(margin, width - margin, 40 * count)], 1
    )
    candidates = candidates[tissue[candidates[:, 0], candidates[:, 1]]]
    accepted = np.zeros((count, 2), dtype=np.int64)
    taken = 0
    for point in candidates:
        if taken and (((accepted[:taken] - point) ** 2).sum(1) < spacing**2).any():
            continue
        accepted[taken] = point
        taken += 1
        if taken == count:
            return accepted
    raise DataError(
        f"synthetic slide of {height} x {width} px has room for only {taken} of {count} annotated objects; "
        "use a larger size or fewer mitotic/look-alike objects"
    )


def render_tissue(
    rng: np.random.Generator,
    height: int,
    width: int,
    mitotic: int = 48,
    lookalikes: int = 80,
    nuclei_density: float = 14.0,
    ambiguity_rng: np.random.Generator | None = None,
    ambiguity_shape: tuple[float, float] = (0.6, 2.0),
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Paint one H&E-like image (uint8 H x W x 3) and return it with its annotated objects.

    Each object's ambiguity is drawn from Beta(*ambiguity_shape) with `ambiguity_rng` (every object is typical
    without one); it has its own stream so the rest of the picture does not depend on it."""
    hematoxylin, eosin, gaps = stroma(rng, height, width)
    canvas = Canvas(hematoxylin, eosin)
    tissue = ndimage.binary_erosion(gaps < 0.05, iterations=12, border_value=1)
    centres = place_annotated(rng, tissue, mitotic + lookalikes, EDGE_MARGIN, OBJECT_SPACING)
    cellularity = (1.0 - gaps) * (0.3 + 0.7 * soft_inside(-smooth_noise(rng, (height, width), 60.0), 0.6))
    for cy, cx in place_nuclei(rng, cellularity, nuclei_density, centres):
        alpha, h, e = draw_nucleus(rng)
        canvas.paint(int(cy), int(cx), alpha, h, e)
    kinds = np.array([MITOTIC_CLASS] * mitotic + [LOOKALIKE_CLASS] * lookalikes)[rng.permutation(len(centres))]
    ambiguities = (ambiguity_rng.beta(*ambiguity_shape, len(centres)) if ambiguity_rng is not None
                   else np.zeros(len(centres)))
    objects = []
    for (cy, cx), kind, ambiguity in zip(centres, kinds, ambiguities):
        objects.append(draw_object(rng, canvas, int(cy), int(cx), str(kind), float(ambiguity), ambiguity_rng))
    return stain_to_rgb(rng, canvas), objects


def draw_object(rng: np.random.Generator, canvas: Canvas, cy: int, cx: int, kind: str, ambiguity: float = 0.0,
                texture_rng: np.random.Generator | None = None) -> SyntheticObject:
    """Paint one annotated object of class `kind` centred on (cy, cx), leaning toward the other class by
    `ambiguity` (an ambiguous mitosis loses part of its cleared halo and gains some cytoplasm)."""
    yy, xx = local_grid(FIGURE_RADIUS)
    if kind == MITOTIC_CLASS:
        shape = str(rng.choice(list(MITOSIS_SHAPES), p=[0.4, 0.15, 0.3, 0.15]))
        canvas.paint(cy, cx, draw_halo(rng) * (1.0 - 0.6 * ambiguity), 0.02, 0.1)
        if ambiguity > 0:
            canvas.paint(cy, cx, 0.5 * ambiguity * soft_inside(np.sqrt(yy**2 + xx**2) - 10.0, 1.2), 0.06, 0.85)
        alpha, h, e = draw_mitosis(rng, shape, ambiguity)
        canvas.paint(cy, cx, alpha, h, e)
    else:
        shape = str(rng.choice(list(LOOKALIKE_SHAPES), p=[0.55, 0.45]))
        cytoplasm, alpha, h, e = draw_lookalike(rng, shape, ambiguity, texture_rng)
        canvas.paint(cy, cx, cytoplasm, 0.06, 0.85)
        canvas.paint(cy, cx, alpha, h, e)
    return SyntheticObject(x=cx, y=cy, class_name=kind, shape=shape, ambiguity=ambiguity)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def halve(image: np.ndarray) -> np.ndarray:
    """2x downsampling by averaging 2 x 2 blocks (the last row/column is repeated for odd sizes)."""
    pad = ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0))
    padded = np.pad(image, pad, mode="edge").astype(np.float32)
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.uint8)


def write_pyramid(path: Path, image: np.ndarray, mpp: float) -> int:
    """Write a tiled, deflate-compressed pyramidal TIFF (2x levels until one is < 512 px); returns levels."""
    pixels_per_cm = 1e4 / mpp
    big = image.nbytes > 2**31
    levels = 0
    with tifffile.TiffWriter(path, bigtiff=big) as writer:
        level = image
        while True:
            writer.write(
                level,
                tile=(TILE, TILE),
                compression="zlib",
                compressionargs={"level": 1},
                photometric="rgb",
                resolution=(pixels_per_cm / 2**levels, pixels_per_cm / 2**levels),
                resolutionunit="CENTIMETER",
                subfiletype=0 if levels == 0 else 1,
                metadata=None,
                software=False,
            )
            levels += 1
            if min(level.shape[:2]) < MIN_LEVEL_SIZE:
                return levels
            level = halve(level)


def check_slide(path: Path, size: int, levels: int, mpp: float) -> None:
    """Open a written slide with OpenSlide and check its geometry and microns per pixel."""
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as error:
        raise DataError(f"{path}: OpenSlide cannot open the written slide ({error})") from error
    with slide:
        keys = (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
        found_mpp = tuple(slide.properties.get(key) for key in keys)
        if slide.dimensions != (size, size) or slide.level_count != levels:
            raise DataError(
                f"{path}: OpenSlide reads {slide.dimensions} with {slide.level_count} levels, "
                f"expected {(size, size)} with {levels}"
            )
        if any(value is None or abs(float(value) - mpp) > 1e-6 for value in found_mpp):
            raise DataError(f"{path}: OpenSlide reports mpp {found_mpp}, expected {mpp}")


def store_slide(path: Path, image: np.ndarray, size: int, mpp: float) -> tuple[str, int, int]:
    """Write `image` as the size x size pyramidal slide `path`, check it, and give its (file name, width, height)."""
    levels = write_pyramid(path, image, mpp)
    check_slide(path, size, levels, mpp)
    return path.name, size, size


SCHEMA = (
    "CREATE TABLE `Slides` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `filename` TEXT, `width` INTEGER, "
    "`height` INTEGER, `directory` TEXT, `uuid` TEXT, `exactImageID` TEXT, `EXACTUSER` INTEGER DEFAULT 0)",
    "CREATE TABLE `Classes` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `name` TEXT, `color` TEXT)",
    "CREATE TABLE `Persons` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `name` TEXT, "
    "`isExactUser` INTEGER DEFAULT 0)",
    "CREATE TABLE `Annotations` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `slide` INTEGER, `guid` TEXT, "
    f"`lastModified` REAL DEFAULT {LAST_MODIFIED}, `deleted` INTEGER DEFAULT 0, `type` INTEGER, "
    "`agreedClass` INTEGER, `description` TEXT, `clickable` INTEGER DEFAULT 1)",
    "CREATE TABLE `Annotations_coordinates` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, "
    "`coordinateX` INTEGER, `coordinateY` INTEGER, `coordinateZ` INTEGER DEFAULT 0, `slide` INTEGER, "
    "`annoId` INTEGER, `orderIdx` INTEGER)",
    "CREATE TABLE `Annotations_label` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, `person` INTEGER, "
    "`class` INTEGER, `exact_id` INTEGER, `annoId` INTEGER)",
    "CREATE TABLE `Log` (`uid` INTEGER PRIMARY KEY AUTOINCREMENT, `dateTime` FLOAT, `labelId` INTEGER)",
)


def annotator_votes(rng: np.random.Generator, truth: list[int], share: float,
                    ambiguity: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Class ids voted by the two annotators: all agree except round(share * n) objects, one dissent each,
    drawn with probability proportional to the squared ambiguity (uniformly without ambiguities)."""
    votes = [(c, c) for c in truth]
    weights = None
    if ambiguity is not None:
        squared = np.asarray(ambiguity, dtype=np.float64) ** 2 + 1e-9
        weights = squared / squared.sum()
    dissent = rng.choice(len(truth), size=int(round(share * len(truth))), replace=False, p=weights)
    for index in dissent:
        other = 2 if truth[index] == 1 else 1
        first, second = votes[index]
        votes[index] = (other, second) if rng.random() < 0.5 else (first, other)
    return votes


def random_guid(rng: np.random.Generator) -> str:
    """A version-4 UUID string drawn from `rng` (so databases are reproducible)."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


@contextmanager
def slide_database(path: Path, slides: Sequence[tuple[str, int, int]], class_ids: Mapping[str, int],
                   colours: Mapping[str, str], rng: np.random.Generator) -> Iterator[sqlite3.Connection]:
    """A new SlideRunner database at `path` holding `slides` and the classes, committed when the block succeeds."""
    con = sqlite3.connect(path)
    try:
        for statement in SCHEMA:
            con.execute(statement)
        con.executemany(
            "INSERT INTO Slides (uid, filename, width, height, uuid) VALUES (?, ?, ?, ?, ?)",
            [(i, name, w, h, random_guid(rng)) for i, (name, w, h) in enumerate(slides, 1)],
        )
        con.executemany(
            "INSERT INTO Classes (uid, name, color) VALUES (?, ?, ?)",
            [(i, name, colours[name]) for name, i in class_ids.items()],
        )
        yield con
        con.commit()
    finally:
        con.close()


def add_annotation(con: sqlite3.Connection, anno_id: int, slide_id: int, kind: int, class_id: int,
                   vertices: Sequence[tuple[int, int]], rng: np.random.Generator) -> None:
    """Insert annotation `anno_id` of type `kind` (SPOT or POLYGON) with its vertices in order."""
    con.execute(
        "INSERT INTO Annotations (uid, slide, guid, lastModified, deleted, type, agreedClass, clickable) "
        "VALUES (?, ?, ?, ?, 0, ?, ?, 1)",
        (anno_id, slide_id, random_guid(rng), LAST_MODIFIED, kind, class_id),
    )
    con.executemany(
        "INSERT INTO Annotations_coordinates "
        "(coordinateX, coordinateY, coordinateZ, slide, annoId, orderIdx) VALUES (?, ?, 0, ?, ?, ?)",
        [(x, y, slide_id, anno_id, order) for order, (x, y) in enumerate(vertices, 1)],
    )


def write_database(
    path: Path,
    slides: list[tuple[str, int, int]],
    objects: list[list[SyntheticObject]],
    rng: np.random.Generator,
    share: float,
) -> None:
    """Write a SlideRunner database of spot annotations with both annotators' votes."""
    class_ids = {MITOTIC_CLASS: 1, LOOKALIKE_CLASS: 2}
    flat = [(slide_id, obj) for slide_id, slide_objects in enumerate(objects, 1) for obj in slide_objects]
    votes = annotator_votes(rng, [class_ids[obj.class_name] for _, obj in flat], share, [obj.ambiguity for _, obj in flat])
    with slide_database(path, slides, class_ids, CLASS_COLOURS, rng) as con:
        con.executemany("INSERT INTO Persons (uid, name) VALUES (?, ?)", list(enumerate(ANNOTATORS, 1)))
        for anno_id, ((slide_id, obj), (vote_1, vote_2)) in enumerate(zip(flat, votes), 1):
            add_annotation(con, anno_id, slide_id, SPOT, class_ids[obj.class_name], [(obj.x, obj.y)], rng)
            con.executemany(
                "INSERT INTO Annotations_label (person, class, annoId) VALUES (?, ?, ?)",
                [(1, vote_1, anno_id), (2, vote_2, anno_id)],
            )


def synthetic_paths(root: str | Path) -> dict[str, Path]:
    """Where a synthetic dataset in `root` keeps its slides, database and split file."""
    return slide_set_paths(root, "synthetic.sqlite", "splits", "splits.csv")


def slide_set_paths(root: str | Path, database: str, table_key: str, table: str) -> dict[str, Path]:
    """A generated slide set's layout in `root`: slides in WSI/, Annotations/`database`, and the file `table`."""
    root = Path(root)
    return {"slides_dir": root / "WSI", "database": root / "Annotations" / database, table_key: root / table}


def slide_name(index: int) -> str:
    """File name of the slide with this index."""
    return f"synthetic_{index:03d}.tif"


def describe(config: SyntheticConfig) -> str:
    """The one-paragraph README of a generated dataset."""
    return (
        f"Synthetic H&E demo data for PathoDiff: {config.num_slides} pyramidal tiled TIFF slides of "
        f"{config.size} x {config.size} px at {config.mpp} microns per pixel (WSI/), painted from seed "
        f"{config.seed} with ordinary nuclei (up to {config.nuclei_density} per 100 x 100 px of tissue), "
        f"{config.mitotic_per_slide} mitotic figures and {config.lookalike_per_slide} mitotic figure "
        "look-alikes per slide. Annotations/synthetic.sqlite is a SlideRunner database of the object centres "
        f"(classes '{MITOTIC_CLASS}' and '{LOOKALIKE_CLASS}') with the votes of two annotators, who disagree "
        f"on {config.disagreement:.0%} of the objects, chosen by how ambiguous they look (each object leans toward "
        f"the other class by a Beta({config.ambiguity_alpha}, {config.ambiguity_beta}) amount); agreedClass is the true class. splits.csv assigns "
        "slides to train and val. The images are artificial and carry no patient data; regenerate them with "
        f"`python -m data.synthetic --root DIR --num_slides {config.num_slides} --size {config.size} "
        f"--seed {config.seed} --mpp {config.mpp} --mitotic_per_slide {config.mitotic_per_slide} "
        f"--lookalike_per_slide {config.lookalike_per_slide} --nuclei_density {config.nuclei_density} "
        f"--disagreement {config.disagreement} --ambiguity_alpha {config.ambiguity_alpha} --ambiguity_beta {config.ambiguity_beta}`.\n"
    )


def build_dataset(folder: Path, config: SyntheticConfig, progress: bool) -> None:
    """Write every slide, the database, the split file and the README into the empty `folder`."""
    paths = synthetic_paths(folder)
    paths["slides_dir"].mkdir()
    paths["database"].parent.mkdir()
    slides, objects = [], []
    for index in tqdm(range(config.num_slides), desc="synthetic slides", disable=not progress):
        rng = np.random.default_rng([config.seed, index])
        image, slide_objects = render_tissue(
            rng, config.size, config.size, config.mitotic_per_slide, config.lookalike_per_slide, config.nuclei_density,
            np.random.default_rng([config.seed, index, AMBIGUITY_STREAM]), (config.ambiguity_alpha, config.ambiguity_beta),
        )
        slides.append(store_slide(paths["slides_dir"] / slide_name(index), image, config.size, config.mpp))
        objects.append(slide_objects)
    votes_rng = np.random.default_rng([config.seed, DATABASE_STREAM])
    write_database(paths["database"], slides, objects, votes_rng, config.disagreement)
    with open(paths["splits"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide", "split"])
        for index, (name, _, _) in enumerate(slides):
            val = config.num_slides >= 2 and index == config.num_slides - 1
            writer.writerow([name, "val" if val else "train"])
    (folder / "README.txt").write_text(describe(config))


def generate_synthetic_dataset(
    root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True
) -> Path:
    """Generate the dataset into `root` atomically; do nothing if it is already there with `config`."""
    relative = synthetic_paths(Path())
    slides = [relative["slides_dir"] / slide_name(i) for i in range(config.num_slides)]
    return generate_once(root, config, build_dataset, progress, version=FORMAT_VERSION, record_name="synthetic.json",
                         what="synthetic dataset", option="--data_root",
                         required=[relative["database"], relative["splits"], *slides])


def main(argv: list[str] | None = None) -> int:
    """Command line: generate a dataset into --root; exit status 2 with one message on bad input."""
    return generator_main(
        argv,
        "Generate the synthetic H&E demo dataset.",
        SyntheticConfig,
        generate_synthetic_dataset,
        {"size": "slide width and height in px"},
    )


if __name__ == "__main__":
    sys.exit(main())

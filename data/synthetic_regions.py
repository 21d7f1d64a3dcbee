"""Embedded demo data for style-extracting diffusion: tissue layouts as region polygons, stain styles per slide.

Each slide is a tissue section (an irregular outline on white glass) of stroma holding a few tumour nests. The
regions are polygons: the tissue outline is class "stroma", each nest is class "tumor" painted over it (class map
`stroma:1,tumor:2`; background 0). Tumour nests are crowded with large dark nuclei in pale cytoplasm; stroma is
eosinophilic with fibres and sparse nuclei. The painted layout is exactly the polygons rasterised by
`data.regions.rasterise`, so masks read back from the database cover the painted regions.

Every slide has its own stain style: haematoxylin and eosin optical-density vectors and a stain intensity, all
derived from one style coordinate `t` and a per-slide jitter. Training slides spread over
[-TRAIN_STYLE, TRAIN_STYLE]; held-out slides lie between two training slides, so their stains were never seen
in training but are within the range a style encoder learns from (`slide_styles`). `slides.csv` lists the split
and the stain parameters of every slide.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from data.annotations import DataError
from data.cached_folder import generate_once
from data.generator_cli import generator_main
from data.painting import (
    EOSIN_OD,
    HEMATOXYLIN_OD,
    Canvas,
    NucleusLook,
    draw_nucleus,
    local_grid,
    place_nuclei,
    shade_ellipse,
    stroma,
)
from data.regions import rasterise
from data.synthetic import (
    POLYGON, add_annotation, check_extent, check_mpp, slide_database, slide_set_paths, store_slide,
)

FORMAT_VERSION = 2
MIN_SIZE = 128
STROMA_CLASS = "stroma"
TUMOR_CLASS = "tumor"
CLASS_IDS = {STROMA_CLASS: 1, TUMOR_CLASS: 2}
CLASS_COLOURS = {STROMA_CLASS: "#f4a6c8", TUMOR_CLASS: "#6a3d9a"}
CLASS_MAP = "stroma:1,tumor:2"
OUTLINE_VERTICES = 96
NEST_VERTICES = 48
DATABASE_STREAM = 1_000_003
TRAIN_STYLE = 1.0
# Style endpoints: t = -1 is a blue-grey, pale staining; t = +1 a red-brown, heavy one (as unit-free OD vectors).
HEMATOXYLIN_COOL = np.array([0.70, 0.64, 0.32], dtype=np.float32)
HEMATOXYLIN_WARM = np.array([0.45, 0.76, 0.47], dtype=np.float32)
EOSIN_COOL = np.array([0.30, 0.76, 0.58], dtype=np.float32)
EOSIN_WARM = np.array([0.12, 0.84, 0.53], dtype=np.float32)
TUMOUR_NUCLEUS = NucleusLook((1.0, 1.4), 0.85, 0.15, 1.1, 0.3, 0.12, 0.6, 0.9, 2.0)


@dataclass(frozen=True)
class SyntheticRegionsConfig:
    """Parameters of a synthetic region-and-style set: `heldout` of the `num_slides` get out-of-range styles."""

    num_slides: int = 6
    size: int = 512
    seed: int = 0
    mpp: float = 0.5
    heldout: int = 2
    nests_per_slide: int = 4

    def validate(self) -> None:
        """Raise DataError naming the first parameter that is out of range."""
        check_extent("num_slides", self.num_slides, self.size, MIN_SIZE)
        check_mpp(self.mpp)
        if not 0 <= self.heldout < self.num_slides:
            raise DataError(
                f"heldout: expected 0 <= heldout < num_slides ({self.num_slides}) so that some slides train, "
                f"got {self.heldout}"
            )
        if not 1 <= self.nests_per_slide <= 12:
            raise DataError(f"nests_per_slide: expected 1 to 12, got {self.nests_per_slide}")


@dataclass(frozen=True)
class StainStyle:
    """One slide's stain: the style coordinate, unit OD vectors (RGB) of both stains and the stain intensity."""

    t: float
    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    intensity: float


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def stain_style(t: float, rng: np.random.Generator) -> StainStyle:
    """The stain of style coordinate `t` (about -1..1 in training), with a small per-slide jitter."""
    share = (t + 1.0) / 2.0
    h = _unit(HEMATOXYLIN_COOL + share * (HEMATOXYLIN_WARM - HEMATOXYLIN_COOL)) * rng.uniform(0.98, 1.02, 3)
    e = _unit(EOSIN_COOL + share * (EOSIN_WARM - EOSIN_COOL)) * rng.uniform(0.98, 1.02, 3)
    intensity = float(np.exp(0.35 * t) * rng.uniform(0.98, 1.02))
    rounded = lambda v: tuple(round(float(x), 6) for x in _unit(v))  # noqa: E731
    return StainStyle(t=round(float(t), 6), hematoxylin=rounded(h), eosin=rounded(e), intensity=round(intensity, 6))


def slide_styles(config: SyntheticRegionsConfig) -> list[tuple[str, StainStyle]]:
    """(split, style) per slide. The training slides split [-TRAIN_STYLE, TRAIN_STYLE] into equal strata, one
    each (jittered within the middle half of its stratum); the last `heldout` slides take the midpoints between
    neighbouring strata, from the outermost inwards, alternately above and below (jittered by a tenth of a
    stratum), so every held-out style lies inside the training range yet between training slides."""
    train = config.num_slides - config.heldout
    width = 2 * TRAIN_STYLE / train
    midpoints = sorted((-TRAIN_STYLE + width * (k + 1) for k in range(train - 1)), key=lambda m: (-abs(m), -m))
    out = []
    for index in range(config.num_slides):
        rng = np.random.default_rng([config.seed, index, 1])
        if index < train:
            t = -TRAIN_STYLE + width * (index + 0.5) + rng.uniform(-0.1, 0.1) * width
        else:
            middle = midpoints[(index - train) % len(midpoints)] if midpoints else 0.0
            t = middle + rng.uniform(-0.05, 0.05) * width
        out.append(("heldout" if index >= train else "train", stain_style(t, rng)))
    return out


def stain_rgb(rng: np.random.Generator, canvas: Canvas, style: StainStyle) -> np.ndarray:
    """Beer-Lambert with the slide's own stain vectors and intensity: RGB uint8."""
    h_vec = np.asarray(style.hematoxylin, np.float32) * np.linalg.norm(HEMATOXYLIN_OD)
    e_vec = np.asarray(style.eosin, np.float32) * np.linalg.norm(EOSIN_OD)
    density = style.intensity * (canvas.h[..., None] * h_vec + canvas.e[..., None] * e_vec)
    rgb = 250.0 * np.exp(-density) + 1.5 * rng.standard_normal(density.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def blob_outline(
    rng: np.random.Generator, cx: float, cy: float, radius: float, vertices: int, wobble: float
) -> np.ndarray:
    """A star-shaped closed outline (vertices x 2, x and y) with a smooth random radius."""
    angles = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones(vertices)
    for harmonic in range(2, 6):
        r += wobble / harmonic * rng.uniform(-1.0, 1.0) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    r *= radius
    return np.round(np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1))


def draw_layout(rng: np.random.Generator, size: int, nests: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The tissue outline (clipped to the slide) and `nests` tumour-nest polygons lying inside the tissue."""
    centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    outline = np.clip(blob_outline(rng, centre[0], centre[1], 0.4 * size, OUTLINE_VERTICES, 0.35), 0, size - 1)
    tissue = rasterise([(outline, 1)], (size, size)) > 0
    inner = ndimage.binary_erosion(tissue, iterations=max(2, size // 64))
    polygons: list[np.ndarray] = []
    for _ in range(200 * nests):
        if len(polygons) == nests:
            break
        radius = rng.uniform(0.06, 0.12) * size
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.28 * size)
        nest = blob_outline(
            rng, centre[0] + distance * np.cos(angle), centre[1] + distance * np.sin(angle), radius, NEST_VERTICES, 0.5
        )
        mask = rasterise([(nest, 1)], (size, size)) > 0
        if mask.sum() > 0 and not (mask & ~inner).any():
            polygons.append(nest)
    if len(polygons) < nests:
        raise DataError(f"synthetic slide of {size} px has room for only {len(polygons)} of {nests} tumour nests")
    return outline, polygons


def render_region_slide(
    rng: np.random.Generator, size: int, nests: int, style: StainStyle
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Paint one slide (uint8 size x size x 3); returns it with the tissue outline and the tumour nests."""
    outline, nest_polygons = draw_layout(rng, size, nests)
    labels = rasterise([(outline, CLASS_IDS[STROMA_CLASS])] + [(n, CLASS_IDS[TUMOR_CLASS]) for n in nest_polygons],
                       (size, size))
    tissue = (labels > 0).astype(np.float32)
    tumour = (labels == CLASS_IDS[TUMOR_CLASS]).astype(np.float32)
    hematoxylin, eosin, gaps = stroma(rng, size, size)
    # tumour nests: pale pink cytoplasm with a light haematoxylin tint
    eosin = eosin * (1.0 - tumour) + (0.26 + 0.03 * rng.standard_normal((size, size), dtype=np.float32)) * tumour
    hematoxylin = hematoxylin * (1.0 - tumour) + 0.16 * tumour
    # glass outside the tissue outline
    hematoxylin = hematoxylin * tissue + 0.005 * (1.0 - tissue)
    eosin = eosin * tissue + 0.012 * (1.0 - tissue)
    canvas = Canvas(hematoxylin.astype(np.float32), eosin.astype(np.float32))
    stroma_share = 0.6 * (tissue - tumour) * (1.0 - gaps)
    for cy, cx in place_nuclei(rng, stroma_share, 6.0, np.zeros((0, 2), np.int64)):
        alpha, h, e = draw_nucleus(rng)
        canvas.paint(int(cy), int(cx), alpha, h, e)
    for cy, cx in place_nuclei(rng, tumour, 60.0, np.zeros((0, 2), np.int64)):
        a = rng.uniform(4.5, 7.0)
        yy, xx = local_grid(8, tuple(rng.uniform(-0.5, 0.5, 2)))
        alpha, h = shade_ellipse(rng, yy, xx, a, a * rng.uniform(0.7, 1.0), TUMOUR_NUCLEUS)
        canvas.paint(int(cy), int(cx), alpha * float(tumour[int(cy), int(cx)]), h, 0.1)
    return stain_rgb(rng, canvas, style), outline, nest_polygons


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_region_database(
    path: Path, slides: list[tuple[str, int, int]], layouts: list[tuple[np.ndarray, list[np.ndarray]]],
    rng: np.random.Generator,
) -> None:
    """A SlideRunner database (the schema of `data.synthetic`) with one polygon per region, outline first."""
    with slide_database(path, slides, CLASS_IDS, CLASS_COLOURS, rng) as con:
        anno_id = 0
        for slide_id, (outline, nests) in enumerate(layouts, 1):
            for class_name, vertices in [(STROMA_CLASS, outline)] + [(TUMOR_CLASS, n) for n in nests]:
                anno_id += 1
                corners = [(int(x), int(y)) for x, y in vertices]
                add_annotation(con, anno_id, slide_id, POLYGON, CLASS_IDS[class_name], corners, rng)


def regions_paths(root: str | Path) -> dict[str, Path]:
    """Where a synthetic region set in `root` keeps its slides, database and slide table."""
    return slide_set_paths(root, "regions.sqlite", "slides_csv", "slides.csv")


def slide_name(index: int) -> str:
    """File name of the slide with this index."""
    return f"regions_{index:03d}.tif"


SLIDES_COLUMNS = ("slide", "split", "style_t", "h_r", "h_g", "h_b", "e_r", "e_g", "e_b", "intensity")


def read_slides_csv(path: str | Path) -> list[dict]:
    """Rows of a slides.csv: slide and split as strings, stain parameters as floats."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or list(rows[0]) != list(SLIDES_COLUMNS):
        raise DataError(f"{path}: expected the columns {list(SLIDES_COLUMNS)}")
    return [{k: (v if k in ("slide", "split") else float(v)) for k, v in row.items()} for row in rows]


def build_set(folder: Path, config: SyntheticRegionsConfig, progress: bool) -> None:
    """Write every slide, the database, slides.csv and the README into the empty `folder`."""
    paths = regions_paths(folder)
    paths["slides_dir"].mkdir()
    paths["database"].parent.mkdir()
    styles = slide_styles(config)
    slides, layouts = [], []
    for index in tqdm(range(config.num_slides), desc="synthetic region slides", disable=not progress):
        rng = np.random.default_rng([config.seed, index])
        image, outline, nests = render_region_slide(rng, config.size, config.nests_per_slide, styles[index][1])
        slides.append(store_slide(paths["slides_dir"] / slide_name(index), image, config.size, config.mpp))
        layouts.append((outline, nests))
    write_region_database(paths["database"], slides, layouts, np.random.default_rng([config.seed, DATABASE_STREAM]))
    with open(paths["slides_csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SLIDES_COLUMNS)
        for (name, _, _), (split, style) in zip(slides, styles):
            writer.writerow([name, split, style.t, *style.hematoxylin, *style.eosin, style.intensity])
    (folder / "README.txt").write_text(
        f"Synthetic H&E region slides for PathoDiff: {config.num_slides} pyramidal TIFFs of {config.size} x "
        f"{config.size} px at {config.mpp} microns per pixel (WSI/), painted from seed {config.seed}: stroma with "
        f"{config.nests_per_slide} tumour nests per slide on white glass. Annotations/regions.sqlite is a SlideRunner "
        f"database of the region polygons (classes '{STROMA_CLASS}' for the tissue outline and '{TUMOR_CLASS}' for "
        f"the nests; rasterise with the class map '{CLASS_MAP}'). Each slide has its own stain style; slides.csv "
        f"gives its split ({config.heldout} held out with styles outside the training range) and stain vectors. "
        "The images are artificial and carry no patient data.\n"
    )


def generate_synthetic_regions(
    root: str | Path, config: SyntheticRegionsConfig = SyntheticRegionsConfig(), progress: bool = True
) -> Path:
    """Generate the set into `root` atomically; do nothing if it is already there with `config`."""
    relative = regions_paths(Path())
    slides = [relative["slides_dir"] / slide_name(i) for i in range(config.num_slides)]
    return generate_once(root, config, build_set, progress, version=FORMAT_VERSION,
                         record_name="synthetic_regions.json", what="synthetic region set", option="--root",
                         required=[relative["database"], relative["slides_csv"], *slides])


def main(argv: list[str] | None = None) -> int:
    """Command line: generate a set into --root; exit status 2 with one message on bad input."""
    return generator_main(
        argv,
        "Generate synthetic H&E slides with tumour/stroma region polygons and per-slide stain styles.",
        SyntheticRegionsConfig,
        generate_synthetic_regions,
        {
            "size": "slide width and height in px",
            "heldout": "slides with stain styles outside the training range",
            "nests_per_slide": "tumour nests (polygons of class 'tumor') per slide",
        },
    )


if __name__ == "__main__":
    sys.exit(main())

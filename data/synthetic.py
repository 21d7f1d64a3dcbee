"""Embedded demo data: synthetic H&E slides with mitotic figures, look-alikes and a SlideRunner database.

Everything is deterministic by seed and generated on the CPU in seconds. Images are painted as
haematoxylin and eosin concentration maps and turned into RGB with the Beer-Lambert law, so colours
follow a realistic H&E palette. Slides are written as pyramidal tiled TIFFs that OpenSlide opens as
`generic-tiff` with microns-per-pixel taken from the resolution tags.
"""
from __future__ import annotations

import csv
import sqlite3
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import openslide
import tifffile
from scipy import ndimage
from tqdm import tqdm

from data.annotations import DataError
from data.cached_folder import CachedFolder
from data.generator_cli import generator_main

MITOTIC_CLASS = "Mitotic figure"
LOOKALIKE_CLASS = "Mitotic figure lookalike"
ANNOTATORS = ("expert 1", "expert 2")
CLASS_COLOURS = {MITOTIC_CLASS: "#fc7ca7", LOOKALIKE_CLASS: "#c5b6b2"}
FORMAT_VERSION = 1
TILE = 256
MIN_LEVEL_SIZE = 512
EDGE_MARGIN = 64
OBJECT_SPACING = 32
NUCLEUS_CLEARANCE = 18
MIN_SIZE = 4 * EDGE_MARGIN
LAST_MODIFIED = 1_700_000_000.0
DATABASE_STREAM = 1_000_003

# Optical density of one unit of stain (RGB), after Macenko's reference H&E vectors.
HEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic dataset.

    `nuclei_density` is ordinary nuclei per 100 x 100 px where the tissue is most cellular; `disagreement`
    is the share of annotated objects on which one of the two annotators votes for the other class.
    """

    num_slides: int = 3
    size: int = 1536
    seed: int = 0
    mpp: float = 0.25
    mitotic_per_slide: int = 48
    lookalike_per_slide: int = 80
    nuclei_density: float = 14.0
    disagreement: float = 0.12

    def validate(self) -> None:
        """Raise DataError naming the first parameter that is out of range."""
        if self.num_slides < 1:
            raise DataError(f"num_slides: expected at least 1, got {self.num_slides}")
        if self.size < MIN_SIZE:
            raise DataError(f"size: expected at least {MIN_SIZE} px, got {self.size}")
        if self.mpp <= 0:
            raise DataError(f"mpp: expected a positive number of microns per pixel, got {self.mpp}")
        if self.mitotic_per_slide < 0 or self.lookalike_per_slide < 0:
            raise DataError(
                "mitotic_per_slide / lookalike_per_slide: expected counts >= 0, got "
                f"{self.mitotic_per_slide} / {self.lookalike_per_slide}"
            )
        if self.nuclei_density < 0:
            raise DataError(f"nuclei_density: expected >= 0, got {self.nuclei_density}")
        if not 0.0 <= self.disagreement < 1.0:
            raise DataError(f"disagreement: expected a share in [0, 1), got {self.disagreement}")


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: level-0 centre, its true class and the shape it was drawn with."""

    x: int
    y: int
    class_name: str
    shape: str


# ---------------------------------------------------------------------------------------------
# Painting primitives
# ---------------------------------------------------------------------------------------------


class Canvas:
    """Haematoxylin and eosin concentration maps that objects are painted onto."""

    def __init__(self, hematoxylin: np.ndarray, eosin: np.ndarray) -> None:
        self.h = hematoxylin
        self.e = eosin

    def paint(
        self, cy: int, cx: int, alpha: np.ndarray, h_value: np.ndarray | float, e_value: np.ndarray | float
    ) -> None:
        """Blend a square stamp centred on (cy, cx) over both maps, clipped at the borders."""
        radius = alpha.shape[0] // 2
        top, left = cy - radius, cx - radius
        y0, x0 = max(top, 0), max(left, 0)
        y1 = min(top + alpha.shape[0], self.h.shape[0])
        x1 = min(left + alpha.shape[1], self.h.shape[1])
        if y0 >= y1 or x0 >= x1:
            return
        crop = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        a = alpha[crop]
        hv = h_value[crop] if isinstance(h_value, np.ndarray) else h_value
        ev = e_value[crop] if isinstance(e_value, np.ndarray) else e_value
        region = (slice(y0, y1), slice(x0, x1))
        self.h[region] += a * (hv - self.h[region])
        self.e[region] += a * (ev - self.e[region])


def local_grid(radius: int, shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (dy, dx) from an object's centre over a (2r+1)^2 stamp."""
    axis = np.arange(-radius, radius + 1, dtype=np.float32)
    yy, xx = np.meshgrid(axis - shift[0], axis - shift[1], indexing="ij")
    return yy, xx


def rotate(yy: np.ndarray, xx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (along, across) of a frame rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def soft_inside(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Coverage from a signed distance (negative inside) with an edge `softness` px wide."""
    return (1.0 / (1.0 + np.exp(np.clip(signed_distance / softness, -30, 30)))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise with correlation length about `sigma` px."""
    step = max(1, int(sigma // 3))
    coarse = (shape[0] // step + 2, shape[1] // step + 2)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step)
    if step > 1:
        field = linear_weights(shape[0], coarse[0], step) @ field @ linear_weights(shape[1], coarse[1], step).T
    else:
        field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def linear_weights(size: int, coarse: int, step: int) -> np.ndarray:
    """Matrix (size x coarse) that linearly interpolates a coarse grid with spacing `step` px."""
    position = np.arange(size) / step
    left = np.floor(position).astype(np.int64)
    right_share = (position - left).astype(np.float32)
    weights = np.zeros((size, coarse), dtype=np.float32)
    rows = np.arange(size)
    weights[rows, left] = 1.0 - right_share
    weights[rows, left + 1] += right_share
    return weights


def blob_distance(yy: np.ndarray, xx: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance to the union of discs (centres as rows of (y, x))."""
    dy = yy[None] - centres[:, 0, None, None]
    dx = xx[None] - centres[:, 1, None, None]
    return (np.sqrt(dy * dy + dx * dx) - radii[:, None, None]).min(axis=0)


def segment_distance(along: np.ndarray, across: np.ndarray, length: float, width: float) -> np.ndarray:
    """Signed distance to a bar of `length` x `width` with round ends, centred on the origin."""
    half = max(length - width, 0.0) / 2
    nearest = np.clip(along, -half, half)
    return np.sqrt((along - nearest) ** 2 + across**2) - width / 2


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------

NUCLEUS_RADIUS = 10
FIGURE_RADIUS = 18


def draw_nucleus(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """An ordinary nucleus: a pale purple ellipse (8-14 px) with vesicular chromatin and a rim."""
    yy, xx = local_grid(NUCLEUS_RADIUS, tuple(rng.uniform(-0.5, 0.5, 2)))
    if rng.random() < 0.2:
        a, b = rng.uniform(6.0, 8.0), rng.uniform(2.0, 2.8)
    else:
        a = rng.uniform(4.0, 7.0)
        b = a * rng.uniform(0.65, 1.0)
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    r = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    alpha = soft_inside((r - 1.0) * b, 0.6)
    speckle = np.clip(smooth_noise(rng, yy.shape, 0.9), -2.0, 2.0)
    rim = 0.35 * np.exp(-(((r - 0.9) / 0.14) ** 2))
    h = rng.uniform(0.65, 0.95) * (0.75 + 0.18 * speckle + rim)
    if rng.random() < 0.4:
        oy, ox = rng.uniform(-0.4, 0.4, 2) * b
        h = h + 0.7 * np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / 1.5)
    return alpha, h.astype(np.float32), 0.12


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


def draw_mitosis(rng: np.random.Generator, shape: str) -> tuple[np.ndarray, np.ndarray, float]:
    """A mitotic figure: dark blue-black, condensed, irregular chromatin with ragged edges."""
    yy, xx = local_grid(FIGURE_RADIUS)
    distance = MITOSIS_SHAPES[shape](rng, yy, xx) + 1.1 * smooth_noise(rng, yy.shape, 0.8)
    alpha = soft_inside(distance, 0.45)
    clumping = np.clip(smooth_noise(rng, yy.shape, 1.2), -2.0, 2.0)
    h = rng.uniform(2.1, 2.7) * (0.9 + 0.12 * clumping)
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


def draw_lookalike(rng: np.random.Generator, shape: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A look-alike: dark but smooth, in eosinophilic cytoplasm; returns (cytoplasm, alpha, h, e)."""
    yy, xx = local_grid(FIGURE_RADIUS)
    distance, cell_radius = LOOKALIKE_SHAPES[shape](rng, yy, xx)
    cytoplasm = 0.85 * soft_inside(np.sqrt(yy**2 + xx**2) - cell_radius, 1.2)
    alpha = soft_inside(distance, 0.5)
    shading = 1.0 - 0.08 * np.clip(-distance / 6.0, 0.0, 1.0)
    h = rng.uniform(1.8, 2.4) * shading
    return cytoplasm, alpha, h.astype(np.float32), 0.1


# ---------------------------------------------------------------------------------------------
# Tissue
# ---------------------------------------------------------------------------------------------


def stroma(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background stain maps (h, e) with low-frequency texture and wavy fibres, and the gap coverage."""
    shape = (height, width)
    density = smooth_noise(rng, shape, 48.0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fibres = np.zeros(shape, np.float32)
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8.0, 16.0)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        phase += 6.0 * smooth_noise(rng, shape, 32.0)
        weight = 0.5 + 0.5 * np.tanh(smooth_noise(rng, shape, 64.0))
        broken = soft_inside(-smooth_noise(rng, shape, 6.0), 0.5)
        fibres += weight * broken * (0.5 + 0.5 * np.sin(phase)) ** 3
    grain = smooth_noise(rng, shape, 1.0)
    eosin = (0.42 + 0.08 * density + 0.22 * fibres) * (1.0 + 0.12 * grain)
    hematoxylin = 0.05 + 0.015 * smooth_noise(rng, shape, 6.0)
    gaps = soft_inside((1.3 - smooth_noise(rng, shape, 40.0)) * 40.0, 1.0)
    gaps = np.maximum(gaps, vacuoles(rng, height, width))
    eosin = eosin * (1.0 - gaps) + 0.015 * gaps
    hematoxylin = hematoxylin * (1.0 - gaps) + 0.005 * gaps
    return hematoxylin.astype(np.float32), eosin.astype(np.float32), gaps


def vacuoles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Coverage of a few round white fat vacuoles."""
    count = rng.poisson(height * width / 400_000)
    canvas = Canvas(np.zeros((height, width), np.float32), np.zeros((height, width), np.float32))
    centres = zip(rng.integers(0, height, count), rng.integers(0, width, count), rng.uniform(10, 30, count))
    for cy, cx, radius in centres:
        yy, xx = local_grid(int(radius) + 3)
        canvas.paint(int(cy), int(cx), soft_inside(np.sqrt(yy**2 + xx**2) - radius, 1.0), 1.0, 0.0)
    return canvas.h


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


def place_nuclei(
    rng: np.random.Generator, tissue_share: np.ndarray, density: float, avoid: np.ndarray
) -> np.ndarray:
    """Centres (y, x) of ordinary nuclei on a jittered grid, thinned by tissue and away from `avoid`."""
    if density <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    height, width = tissue_share.shape
    cell = 100.0 / np.sqrt(density)
    gy, gx = np.meshgrid(np.arange(0, height, cell), np.arange(0, width, cell), indexing="ij")
    points = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(0.1, 0.9, (gy.size, 2)) * cell
    points = np.floor(points).astype(np.int64)
    points = points[(points[:, 0] < height) & (points[:, 1] < width)]
    keep = rng.random(len(points)) < tissue_share[points[:, 0], points[:, 1]]
    points = points[keep]
    if len(avoid):
        near = ((points[:, None, :] - avoid[None]) ** 2).sum(-1).min(1) < NUCLEUS_CLEARANCE**2
        points = points[~near]
    return points


def stain_to_rgb(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """Beer-Lambert: RGB uint8 from the stain maps, with a slight per-slide stain variation."""
    h_vec = HEMATOXYLIN_OD * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    e_vec = EOSIN_OD * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    density = canvas.h[..., None] * h_vec + canvas.e[..., None] * e_vec
    rgb = 250.0 * np.exp(-density) + 1.5 * rng.standard_normal(density.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_tissue(
    rng: np.random.Generator,
    height: int,
    width: int,
    mitotic: int = 48,
    lookalikes: int = 80,
    nuclei_density: float = 14.0,
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Paint one H&E-like image (uint8 H x W x 3) and return it with its annotated objects."""
    hematoxylin, eosin, gaps = stroma(rng, height, width)
    canvas = Canvas(hematoxylin, eosin)
    tissue = ndimage.binary_erosion(gaps < 0.05, iterations=12, border_value=1)
    centres = place_annotated(rng, tissue, mitotic + lookalikes, EDGE_MARGIN, OBJECT_SPACING)
    cellularity = (1.0 - gaps) * (0.3 + 0.7 * soft_inside(-smooth_noise(rng, (height, width), 60.0), 0.6))
    for cy, cx in place_nuclei(rng, cellularity, nuclei_density, centres):
        alpha, h, e = draw_nucleus(rng)
        canvas.paint(int(cy), int(cx), alpha, h, e)
    kinds = np.array([MITOTIC_CLASS] * mitotic + [LOOKALIKE_CLASS] * lookalikes)[rng.permutation(len(centres))]
    objects = []
    for (cy, cx), kind in zip(centres, kinds):
        objects.append(draw_object(rng, canvas, int(cy), int(cx), str(kind)))
    return stain_to_rgb(rng, canvas), objects


def draw_object(rng: np.random.Generator, canvas: Canvas, cy: int, cx: int, kind: str) -> SyntheticObject:
    """Paint one annotated object of class `kind` centred on (cy, cx)."""
    if kind == MITOTIC_CLASS:
        shape = str(rng.choice(list(MITOSIS_SHAPES), p=[0.4, 0.15, 0.3, 0.15]))
        canvas.paint(cy, cx, draw_halo(rng), 0.02, 0.1)
        alpha, h, e = draw_mitosis(rng, shape)
        canvas.paint(cy, cx, alpha, h, e)
    else:
        shape = str(rng.choice(list(LOOKALIKE_SHAPES), p=[0.55, 0.45]))
        cytoplasm, alpha, h, e = draw_lookalike(rng, shape)
        canvas.paint(cy, cx, cytoplasm, 0.06, 0.85)
        canvas.paint(cy, cx, alpha, h, e)
    return SyntheticObject(x=cx, y=cy, class_name=kind, shape=shape)


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


def annotator_votes(rng: np.random.Generator, truth: list[int], share: float) -> list[tuple[int, int]]:
    """Class ids voted by the two annotators: all agree except round(share * n) objects, one dissent each."""
    votes = [(c, c) for c in truth]
    dissent = rng.choice(len(truth), size=int(round(share * len(truth))), replace=False)
    for index in dissent:
        other = 2 if truth[index] == 1 else 1
        first, second = votes[index]
        votes[index] = (other, second) if rng.random() < 0.5 else (first, other)
    return votes


def random_guid(rng: np.random.Generator) -> str:
    """A version-4 UUID string drawn from `rng` (so databases are reproducible)."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


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
    votes = annotator_votes(rng, [class_ids[obj.class_name] for _, obj in flat], share)
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
            [(i, name, CLASS_COLOURS[name]) for name, i in class_ids.items()],
        )
        con.executemany("INSERT INTO Persons (uid, name) VALUES (?, ?)", list(enumerate(ANNOTATORS, 1)))
        for anno_id, ((slide_id, obj), (vote_1, vote_2)) in enumerate(zip(flat, votes), 1):
            con.execute(
                "INSERT INTO Annotations (uid, slide, guid, lastModified, deleted, type, agreedClass, clickable) "
                "VALUES (?, ?, ?, ?, 0, 1, ?, 1)",
                (anno_id, slide_id, random_guid(rng), LAST_MODIFIED, class_ids[obj.class_name]),
            )
            con.execute(
                "INSERT INTO Annotations_coordinates (coordinateX, coordinateY, coordinateZ, slide, annoId, orderIdx) "
                "VALUES (?, ?, 0, ?, ?, 1)",
                (obj.x, obj.y, slide_id, anno_id),
            )
            con.executemany(
                "INSERT INTO Annotations_label (person, class, annoId) VALUES (?, ?, ?)",
                [(1, vote_1, anno_id), (2, vote_2, anno_id)],
            )
        con.commit()
    finally:
        con.close()


def synthetic_paths(root: str | Path) -> dict[str, Path]:
    """Where a synthetic dataset in `root` keeps its slides, database and split file."""
    root = Path(root)
    return {
        "slides_dir": root / "WSI",
        "database": root / "Annotations" / "synthetic.sqlite",
        "splits": root / "splits.csv",
    }


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
        f"on {config.disagreement:.0%} of the objects; agreedClass is the true class. splits.csv assigns "
        "slides to train and val. The images are artificial and carry no patient data; regenerate them with "
        f"`python -m data.synthetic --root DIR --num_slides {config.num_slides} --size {config.size} "
        f"--seed {config.seed} --mpp {config.mpp} --mitotic_per_slide {config.mitotic_per_slide} "
        f"--lookalike_per_slide {config.lookalike_per_slide} --nuclei_density {config.nuclei_density} "
        f"--disagreement {config.disagreement}`.\n"
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
            rng, config.size, config.size, config.mitotic_per_slide, config.lookalike_per_slide, config.nuclei_density
        )
        path = paths["slides_dir"] / slide_name(index)
        levels = write_pyramid(path, image, config.mpp)
        check_slide(path, config.size, levels, config.mpp)
        slides.append((path.name, config.size, config.size))
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


def dataset_folder(root: Path, config: SyntheticConfig) -> CachedFolder:
    """The generated folder `root` of a dataset made with `config`, recorded in synthetic.json."""
    relative = synthetic_paths(Path())
    slides = [relative["slides_dir"] / slide_name(i) for i in range(config.num_slides)]
    return CachedFolder(
        root=root,
        params={"format": FORMAT_VERSION, **asdict(config)},
        record_name="synthetic.json",
        what="synthetic dataset",
        option="--data_root",
        required=[str(p) for p in (relative["database"], relative["splits"], *slides)],
    )


def generate_synthetic_dataset(
    root: str | Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = True
) -> Path:
    """Generate the dataset into `root` atomically; do nothing if it is already there with `config`."""
    config.validate()
    return dataset_folder(Path(root), config).reuse_or_build(lambda folder: build_dataset(folder, config, progress))


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

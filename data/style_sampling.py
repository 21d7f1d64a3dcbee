"""Style reference crops for a content patch (style-extracting diffusion).

Four modes, chosen per run:
- `none`: no reference crops;
- `nearby`: crops centred within `radius` level-0 px of the content position, on the same slide;
- `multi_patch`: crops at random tissue positions of the same slide (tissue: saturated and not bright, so no
  glass);
- `augmented`: strong random affine transforms (rotation, scale, shear, flip, shift) of the content image
  itself, so the reference shares the content's stain but not its layout.

All functions are pure: they read through an openslide-like `reader` (`read_region`, `dimensions`,
`level_count`, `level_dimensions`, `level_downsamples`) and draw from the numpy generator they are given, so
the same generator state gives the same crops. Crops are uint8 S x H x W x 3; `to_style_array` turns them into
the sample contract's `style` (float32 S x C x H x W in [-1, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openslide
from scipy import ndimage

from data.annotations import DataError

STYLE_MODES = ("none", "nearby", "multi_patch", "augmented")
SATURATION_MIN = 0.08
BRIGHTNESS_MAX = 0.92
MAX_TRIES = 50


@dataclass(frozen=True)
class StyleCrops:
    """Reference crops (uint8 S x H x W x 3) and their level-0 centres (S x 2, x and y; NaN for augmented)."""

    images: np.ndarray
    centres: np.ndarray


@dataclass(frozen=True)
class TissueMap:
    """Tissue mask of a low-resolution level and its downsample factor relative to level 0."""

    mask: np.ndarray
    downsample: float


def tissue_mask(
    rgb: np.ndarray, saturation_min: float = SATURATION_MIN, brightness_max: float = BRIGHTNESS_MAX
) -> np.ndarray:
    """Tissue pixels of an RGB uint8 image: HSV saturation >= `saturation_min` and value <= `brightness_max`."""
    x = np.asarray(rgb, dtype=np.float32)[..., :3] / 255.0
    top, bottom = x.max(axis=-1), x.min(axis=-1)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0.0)
    return (saturation >= saturation_min) & (top <= brightness_max)


def tissue_fraction(rgb: np.ndarray, **thresholds) -> float:
    """Share of tissue pixels of an RGB image (see `tissue_mask`)."""
    return float(tissue_mask(rgb, **thresholds).mean())


def slide_file(reader) -> str:
    """The file an openslide reader was opened from (OpenSlide keeps it as `_filename`), else the reader's repr."""
    return str(getattr(reader, "_filename", None) or repr(reader))


def read_rgba(reader, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """`reader.read_region` as an RGBA array; DataError naming the slide file and the position (level, x, y) when a
    tile there cannot be read (openslide.OpenSlideError or OSError)."""
    try:
        return np.asarray(reader.read_region(location, level, size))
    except (openslide.OpenSlideError, OSError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(
            f"{slide_file(reader)}: cannot read the tile at level {level}, x {location[0]}, y {location[1]}"
            f" ({size[0]} x {size[1]} px): {reason}; the slide file is damaged or truncated (replace it with an"
            " intact copy)"
        ) from None


def read_crop(reader, cx: float, cy: float, size: int, level: int = 0) -> np.ndarray:
    """A size x size RGB crop of `level` centred on level-0 (cx, cy); pixels outside the slide are white."""
    downsample = float(reader.level_downsamples[level])
    x0 = int(round(cx - size / 2 * downsample))
    y0 = int(round(cy - size / 2 * downsample))
    rgba = read_rgba(reader, (x0, y0), level, (size, size)).astype(np.float32)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _check_size(reader, size: int, count: int, level: int = 0) -> tuple[float, float]:
    """Level-0 (width, height) of the slide; DataError when the crop does not fit or counts are bad."""
    if count < 0:
        raise DataError(f"style crops: expected a count >= 0, got {count}")
    if not 0 <= level < reader.level_count:
        raise DataError(f"style crops: level {level} out of range (the slide has {reader.level_count} levels)")
    width, height = reader.dimensions
    extent = size * float(reader.level_downsamples[level])
    if size < 1 or extent > min(width, height):
        raise DataError(f"style crops: crop of {size} px at level {level} does not fit a {width} x {height} slide")
    return float(width), float(height)


def _empty(size: int) -> StyleCrops:
    return StyleCrops(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 2), np.float64))


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def nearby_centres(
    reader, cx: float, cy: float, size: int, count: int, radius: float, rng: np.random.Generator, level: int = 0
) -> np.ndarray:
    """`count` centres (x, y) uniform in the disc of `radius` around (cx, cy) whose crops lie inside the slide.

    When the disc barely overlaps the slide and no draw lands in it, the slide point nearest to (cx, cy) is used
    (still within the radius). DataError when the disc misses the slide altogether.
    """
    width, height = _check_size(reader, size, count, level)
    if radius < 0 or not np.isfinite(radius):
        raise DataError(f"style crops: expected a radius >= 0, got {radius}")
    half = size / 2 * float(reader.level_downsamples[level])
    lo = np.array([half, half])
    hi = np.array([width - half, height - half])
    nearest = np.clip([cx, cy], lo, hi)
    if np.hypot(*(nearest - [cx, cy])) > radius:
        raise DataError(
            f"style crops: no crop of {size} px fits the slide within {radius} px of ({cx:.0f}, {cy:.0f})"
        )
    centres = np.zeros((count, 2))
    for i in range(count):
        centres[i] = nearest
        for _ in range(MAX_TRIES):
            angle, distance = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform())
            point = np.array([cx + distance * np.cos(angle), cy + distance * np.sin(angle)])
            if (point >= lo).all() and (point <= hi).all():
                centres[i] = point
                break
    return centres


def nearby_crops(
    reader, cx: float, cy: float, size: int, count: int, radius: float, rng: np.random.Generator, level: int = 0
) -> StyleCrops:
    """Crops of the same slide centred within `radius` level-0 px of the content position (cx, cy)."""
    centres = nearby_centres(reader, cx, cy, size, count, radius, rng, level)
    if count == 0:
        return _empty(size)
    images = np.stack([read_crop(reader, x, y, size, level) for x, y in centres])
    return StyleCrops(images, centres)


def tissue_map(reader, level: int | None = None, **thresholds) -> TissueMap:
    """Tissue mask of the slide's lowest-resolution level (or `level`), for choosing crop positions."""
    level = reader.level_count - 1 if level is None else level
    width, height = reader.level_dimensions[level]
    rgba = read_rgba(reader, (0, 0), level, (width, height))
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4] / 255.0) + 255.0 * (1.0 - rgba[..., 3:4] / 255.0)
    return TissueMap(tissue_mask(rgb, **thresholds), float(reader.level_downsamples[level]))


def multi_patch_crops(
    reader,
    size: int,
    count: int,
    rng: np.random.Generator,
    tissue: TissueMap | None = None,
    min_tissue: float = 0.5,
    level: int = 0,
    name: str = "slide",
) -> StyleCrops:
    """`count` crops at random tissue positions of the slide, each with a tissue share >= `min_tissue`.

    Candidate centres are drawn from the tissue pixels of `tissue` (computed from the lowest level when not
    given) and checked on the crop itself; DataError naming `name` when too few qualify in MAX_TRIES x count
    draws.
    """
    width, height = _check_size(reader, size, count, level)
    if not 0.0 <= min_tissue <= 1.0:
        raise DataError(f"style crops: expected min_tissue in [0, 1], got {min_tissue}")
    if count == 0:
        return _empty(size)
    tissue = tissue_map(reader) if tissue is None else tissue
    half = size / 2 * float(reader.level_downsamples[level])
    ys, xs = np.nonzero(tissue.mask)
    centres = np.stack([(xs + 0.5) * tissue.downsample, (ys + 0.5) * tissue.downsample], 1)
    fits = (centres[:, 0] >= half) & (centres[:, 0] <= width - half)
    fits &= (centres[:, 1] >= half) & (centres[:, 1] <= height - half)
    centres = centres[fits]
    if len(centres) == 0:
        raise DataError(f"{name}: no tissue where a style crop of {size} px fits")
    images, kept = [], []
    for _ in range(MAX_TRIES * count):
        x, y = centres[rng.integers(len(centres))] + rng.uniform(-0.5, 0.5, 2) * tissue.downsample
        x, y = float(np.clip(x, half, width - half)), float(np.clip(y, half, height - half))
        crop = read_crop(reader, x, y, size, level)
        if tissue_fraction(crop) >= min_tissue:
            images.append(crop)
            kept.append((x, y))
            if len(images) == count:
                return StyleCrops(np.stack(images), np.asarray(kept, np.float64))
    raise DataError(
        f"{name}: found only {len(images)} of {count} style crops of {size} px with a tissue share >= {min_tissue}"
    )


def augmented_crops(
    content: np.ndarray,
    count: int,
    rng: np.random.Generator,
    rotation: float = np.pi,
    scale: tuple[float, float] = (0.75, 1.33),
    shear: float = 0.25,
    shift: float = 0.25,
) -> StyleCrops:
    """`count` strong affine transforms of the content image (uint8 H x W x 3), reflected at the borders.

    Each draws a rotation in [-rotation, rotation], a log-uniform scale in `scale`, a shear in [-shear, shear],
    a flip (probability 1/2) and a shift of up to `shift` x the image size.
    """
    image = np.asarray(content)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"style crops: expected a content image H x W x 3, got shape {image.shape}")
    height, width = image.shape[:2]
    out = np.zeros((count, height, width, 3), np.uint8)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    source = image.astype(np.float32)
    for i in range(count):
        angle = rng.uniform(-rotation, rotation)
        zoom = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
        sh = rng.uniform(-shear, shear)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        offset = rng.uniform(-shift, shift, 2) * [height, width]
        c, s = np.cos(angle), np.sin(angle)
        # output (row, col) -> input (row, col): inverse of flip . shear . rotation . scale
        forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([zoom, zoom * flip])
        inverse = np.linalg.inv(forward)
        start = centre - inverse @ (centre + offset)
        for channel in range(3):
            warped = ndimage.affine_transform(source[..., channel], inverse, offset=start, order=1, mode="reflect")
            out[i, ..., channel] = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    return StyleCrops(out, np.full((count, 2), np.nan))


def sample_style(
    mode: str,
    rng: np.random.Generator,
    *,
    size: int,
    count: int,
    reader=None,
    position: tuple[float, float] | None = None,
    content: np.ndarray | None = None,
    radius: float = 512.0,
    min_tissue: float = 0.5,
    tissue: TissueMap | None = None,
    level: int = 0,
    name: str = "slide",
) -> StyleCrops:
    """Style crops of `mode` (one of STYLE_MODES) for a content patch at level-0 `position` / image `content`."""
    if mode == "none":
        return _empty(size)
    if mode == "nearby":
        if reader is None or position is None:
            raise DataError("style mode 'nearby' needs the slide and the content position")
        return nearby_crops(reader, position[0], position[1], size, count, radius, rng, level)
    if mode == "multi_patch":
        if reader is None:
            raise DataError("style mode 'multi_patch' needs the slide")
        return multi_patch_crops(reader, size, count, rng, tissue, min_tissue, level, name)
    if mode == "augmented":
        if content is None:
            raise DataError("style mode 'augmented' needs the content image")
        return augmented_crops(content, count, rng)
    raise DataError(f"--style_mode: expected one of {list(STYLE_MODES)}, got {mode!r}")


def to_style_array(crops: StyleCrops | np.ndarray) -> np.ndarray:
    """uint8 S x H x W x 3 crops -> float32 S x 3 x H x W in [-1, 1] (the sample contract's `style`)."""
    images = crops.images if isinstance(crops, StyleCrops) else np.asarray(crops)
    return np.ascontiguousarray((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))

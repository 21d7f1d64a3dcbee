"""Painting primitives for H&E-like images: stain concentration maps, stamps, noise, tissue and nuclei.

Images are painted as haematoxylin and eosin concentration maps on a `Canvas` and turned into RGB with the
Beer-Lambert law (`stain_to_rgb`), so colours follow a realistic H&E palette. Every function draws from the
random generator it is given, so a painting is deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Optical density of one unit of stain (RGB), after Macenko's reference H&E vectors.
HEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
NUCLEUS_RADIUS = 10
NUCLEUS_CLEARANCE = 18


# ---------------------------------------------------------------------------------------------
# Stamps and fields
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
# Tissue and nuclei
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


@dataclass(frozen=True)
class NucleusLook:
    """How an elliptical nucleus is shaded: haematoxylin `strength` (range) times `base` + `speckle_gain` x
    chromatin speckle (noise of `speckle_sigma` px) + a rim (`rim_gain`, `rim_width` in radii); with
    probability `nucleolus_share` a dark nucleolus (`nucleolus_gain`, `nucleolus_spread` px^2)."""

    strength: tuple[float, float]
    base: float
    speckle_gain: float
    speckle_sigma: float
    rim_gain: float
    rim_width: float
    nucleolus_share: float
    nucleolus_gain: float
    nucleolus_spread: float


ORDINARY_NUCLEUS = NucleusLook((0.65, 0.95), 0.75, 0.18, 0.9, 0.35, 0.14, 0.4, 0.7, 1.5)


def shade_ellipse(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, a: float, b: float, look: NucleusLook
) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, float32 haematoxylin) of a randomly turned ellipse with half-axes a, b on a stamp grid."""
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    r = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    alpha = soft_inside((r - 1.0) * b, 0.6)
    speckle = np.clip(smooth_noise(rng, yy.shape, look.speckle_sigma), -2.0, 2.0)
    rim = look.rim_gain * np.exp(-(((r - 0.9) / look.rim_width) ** 2))
    h = rng.uniform(*look.strength) * (look.base + look.speckle_gain * speckle + rim)
    if rng.random() < look.nucleolus_share:
        oy, ox = rng.uniform(-0.4, 0.4, 2) * b
        h = h + look.nucleolus_gain * np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / look.nucleolus_spread)
    return alpha, h.astype(np.float32)


def draw_nucleus(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """An ordinary nucleus: a pale purple ellipse (8-14 px) with vesicular chromatin and a rim."""
    yy, xx = local_grid(NUCLEUS_RADIUS, tuple(rng.uniform(-0.5, 0.5, 2)))
    if rng.random() < 0.2:
        a, b = rng.uniform(6.0, 8.0), rng.uniform(2.0, 2.8)
    else:
        a = rng.uniform(4.0, 7.0)
        b = a * rng.uniform(0.65, 1.0)
    alpha, h = shade_ellipse(rng, yy, xx, a, b, ORDINARY_NUCLEUS)
    return alpha, h, 0.12


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

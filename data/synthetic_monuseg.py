"""Embedded demo data in the MoNuSeg layout: H&E tiles with nuclei and their ImageScope XML polygons.

Images are painted like the synthetic slides (stain concentration maps turned into RGB with the
Beer-Lambert law) with 30-80 nuclei per 256 x 256 px, some of them touching. Every nucleus is annotated
with a polygon traced around its own mask, so reading the XML back reproduces the drawn nuclei.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.measure import find_contours
from tqdm import tqdm

from data.annotations import DataError
from data.cached_folder import generate_once
from data.generator_cli import generator_main
from data.monuseg import ANNOTATIONS_DIR, IMAGES_DIR, MIN_AREA
from data.painting import Canvas, NucleusLook, local_grid, shade_ellipse, stain_to_rgb, stroma
from data.synthetic import check_extent, check_mpp

FORMAT_VERSION = 1
REFERENCE_AREA = 256 * 256
MIN_SIZE = 64
MIN_VISIBLE_AREA = MIN_AREA
TOUCHING_SHARE = 0.3
PLACEMENT_TRIES = 40
CLEARANCE = 2
MIN_VERTICES = 16
MAX_VERTICES = 40
LARGE_NUCLEUS = NucleusLook((0.9, 1.6), 0.8, 0.15, 1.2, 0.3, 0.12, 0.5, 0.8, 2.0)


@dataclass(frozen=True)
class SyntheticMonusegConfig:
    """Parameters of a synthetic MoNuSeg-format set; nuclei counts are per 256 x 256 px of image."""

    num_images: int = 6
    size: int = 256
    seed: int = 0
    min_nuclei: int = 30
    max_nuclei: int = 80
    mpp: float = 0.25

    def validate(self) -> None:
        """Raise DataError naming the first parameter that is out of range."""
        check_extent("num_images", self.num_images, self.size, MIN_SIZE)
        if not 1 <= self.min_nuclei <= self.max_nuclei:
            raise DataError(
                f"min_nuclei / max_nuclei: expected 1 <= min <= max, got {self.min_nuclei} / {self.max_nuclei}"
            )
        if self.max_nuclei > 150:
            raise DataError(f"max_nuclei: expected at most 150 per 256 x 256 px, got {self.max_nuclei}")
        check_mpp(self.mpp)


@dataclass(frozen=True)
class Nucleus:
    """A painted nucleus: its stamp (coverage, haematoxylin, eosin) and its hard mask, on a local grid."""

    alpha: np.ndarray
    h: np.ndarray
    e: float
    mask: np.ndarray


def draw_large_nucleus(rng: np.random.Generator) -> Nucleus:
    """A MoNuSeg-sized nucleus (10-22 px across): an ellipse with speckled chromatin, a rim, a nucleolus."""
    a = rng.uniform(5.0, 11.0)
    b = a * rng.uniform(0.55, 1.0)
    radius = int(np.ceil(a)) + 3
    yy, xx = local_grid(radius, tuple(rng.uniform(-0.5, 0.5, 2)))
    alpha, h = shade_ellipse(rng, yy, xx, a, b, LARGE_NUCLEUS)
    return Nucleus(alpha=alpha, h=h, e=0.12, mask=alpha > 0.5)


def stamp_window(
    cy: int, cx: int, radius: int, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(image region, stamp region) slices of a (2r+1)^2 stamp centred on (cy, cx), clipped to `shape`
    (both empty when the stamp lies outside)."""
    top, left = cy - radius, cx - radius
    y0, x0 = max(top, 0), max(left, 0)
    y1 = max(min(top + 2 * radius + 1, shape[0]), y0)
    x1 = max(min(left + 2 * radius + 1, shape[1]), x0)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def place(
    rng: np.random.Generator,
    labels: np.ndarray,
    tissue: np.ndarray,
    nucleus: Nucleus,
    centres: list[tuple[int, int]],
    touching: bool,
) -> tuple[int, int] | None:
    """A centre where the nucleus' mask overlaps no other: sharing a boundary with an earlier nucleus when
    `touching`, on tissue and at least CLEARANCE px from all others otherwise; None when none is found."""
    radius = nucleus.mask.shape[0] // 2
    taken = labels > 0
    near = None if touching else ndimage.binary_dilation(taken, iterations=CLEARANCE)
    for _ in range(PLACEMENT_TRIES):
        if touching:
            spot = slide_to_contact(rng, taken, nucleus.mask, centres[int(rng.integers(len(centres)))])
            if spot is None:
                continue
        else:
            spot = (int(rng.integers(0, labels.shape[0])), int(rng.integers(0, labels.shape[1])))
            if not tissue[spot]:
                continue
        region, crop = stamp_window(spot[0], spot[1], radius, labels.shape)
        mask = nucleus.mask[crop]
        if mask.sum() < MIN_VISIBLE_AREA or (near is not None and (mask & near[region]).any()):
            continue
        return spot
    return None


def slide_to_contact(
    rng: np.random.Generator, taken: np.ndarray, mask: np.ndarray, anchor: tuple[int, int]
) -> tuple[int, int] | None:
    """Move a mask from afar towards `anchor` in a random direction until it first touches a taken pixel
    (4-neighbours); None when it would overlap one before touching."""
    radius = mask.shape[0] // 2
    angle = rng.uniform(0, 2 * np.pi)
    for distance in np.arange(2 * radius + 2, 0, -0.5):
        cy = int(round(anchor[0] + distance * np.sin(angle)))
        cx = int(round(anchor[1] + distance * np.cos(angle)))
        region, crop = stamp_window(cy, cx, radius, taken.shape)
        part = mask[crop]
        if (part & taken[region]).any():
            return None
        grown = ndimage.binary_dilation(np.pad(part, 1))[1:-1, 1:-1]
        if (grown & taken[region]).any():
            return cy, cx
    return None


def render_monuseg_image(
    rng: np.random.Generator, size: int, min_nuclei: int = 30, max_nuclei: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one H&E tile (uint8 size x size x 3) and return it with the drawn nuclei (int64 label map).

    The tile gets between min_nuclei and max_nuclei nuclei per 256 x 256 px (fewer only when no room is
    left); about TOUCHING_SHARE of them are placed against an earlier one.
    """
    scale = size * size / REFERENCE_AREA
    wanted = int(round(rng.integers(min_nuclei, max_nuclei + 1) * scale))
    hematoxylin, eosin, gaps = stroma(rng, size, size)
    canvas = Canvas(hematoxylin, eosin)
    tissue = gaps < 0.3
    labels = np.zeros((size, size), dtype=np.int64)
    centres: list[tuple[int, int]] = []
    for _ in range(3 * wanted):
        if len(centres) == wanted:
            break
        nucleus = draw_large_nucleus(rng)
        touching = bool(centres) and rng.random() < TOUCHING_SHARE
        spot = place(rng, labels, tissue, nucleus, centres, touching)
        if spot is None:
            continue
        radius = nucleus.mask.shape[0] // 2
        region, crop = stamp_window(spot[0], spot[1], radius, labels.shape)
        labels[region][nucleus.mask[crop]] = len(centres) + 1
        centres.append(spot)
        canvas.paint(spot[0], spot[1], nucleus.alpha, nucleus.h, nucleus.e)
    return stain_to_rgb(rng, canvas), labels


def nucleus_polygon(mask: np.ndarray) -> np.ndarray:
    """Polygon (N x 2, x and y) around a nucleus' mask: its outer contour at MIN..MAX_VERTICES points."""
    contours = find_contours(np.pad(mask.astype(np.float32), 1), 0.5)
    contour = max(contours, key=len)[:-1] - 1.0
    count = min(len(contour), int(np.clip(len(contour) // 2, MIN_VERTICES, MAX_VERTICES)))
    picked = contour[np.linspace(0, len(contour), count, endpoint=False).astype(np.int64)]
    return picked[:, ::-1].copy()


def nuclei_polygons(labels: np.ndarray) -> list[np.ndarray]:
    """One polygon per nucleus of a label map, in id order."""
    objects = ndimage.find_objects(labels)
    polygons = []
    for index, window in enumerate(objects, 1):
        if window is None:
            continue
        y0, x0 = window[0].start, window[1].start
        polygons.append(nucleus_polygon(labels[window] == index) + np.array([x0, y0], dtype=np.float64))
    return polygons


def imagescope_xml(polygons: list[np.ndarray], mpp: float) -> ElementTree.ElementTree:
    """An Aperio ImageScope annotation document with one Region per polygon."""
    root = ElementTree.Element("Annotations", MicronsPerPixel=f"{mpp:.6f}")
    annotation = ElementTree.SubElement(
        root, "Annotation", Id="1", Name="", ReadOnly="0", NameReadOnly="0", LineColorReadOnly="0",
        Incremental="0", Type="4", LineColor="65280", Visible="1", Selected="1", MarkupImagePath="",
        MacroName="",
    )
    attributes = ElementTree.SubElement(annotation, "Attributes")
    ElementTree.SubElement(attributes, "Attribute", Name="Description", Id="0", Value="")
    regions = ElementTree.SubElement(annotation, "Regions")
    headers = ElementTree.SubElement(regions, "RegionAttributeHeaders")
    ElementTree.SubElement(headers, "AttributeHeader", Id="9999", Name="Region", ColumnWidth="-1")
    for index, points in enumerate(polygons, 1):
        x, y = points[:, 0], points[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
        length = float(np.sqrt((np.diff(points, axis=0, append=points[:1]) ** 2).sum(1)).sum())
        region = ElementTree.SubElement(
            regions, "Region", Id=str(index), Type="0", Zoom="1", Selected="0", ImageLocation="",
            ImageFocus="-1", Length=f"{length:.1f}", Area=f"{area:.1f}", LengthMicrons=f"{length * mpp:.1f}",
            AreaMicrons=f"{area * mpp * mpp:.1f}", Text="", NegativeROA="0", InputRegionId="0", Analyze="1",
            DisplayId=str(index),
        )
        ElementTree.SubElement(region, "Attributes")
        vertices = ElementTree.SubElement(region, "Vertices")
        for vx, vy in points:
            ElementTree.SubElement(vertices, "Vertex", X=f"{vx:.2f}", Y=f"{vy:.2f}", Z="0")
    ElementTree.SubElement(annotation, "Plots")
    ElementTree.indent(root)
    return ElementTree.ElementTree(root)


def image_stem(index: int) -> str:
    """File stem of the image with this index."""
    return f"synthetic_{index:03d}"


def build_set(folder: Path, config: SyntheticMonusegConfig, progress: bool) -> None:
    """Write every image, its annotation and the README into the empty `folder`."""
    (folder / IMAGES_DIR).mkdir()
    (folder / ANNOTATIONS_DIR).mkdir()
    for index in tqdm(range(config.num_images), desc="synthetic MoNuSeg", disable=not progress):
        rng = np.random.default_rng([config.seed, index])
        image, labels = render_monuseg_image(rng, config.size, config.min_nuclei, config.max_nuclei)
        stem = image_stem(index)
        tifffile.imwrite(folder / IMAGES_DIR / f"{stem}.tif", image, photometric="rgb", metadata=None)
        imagescope_xml(nuclei_polygons(labels), config.mpp).write(
            folder / ANNOTATIONS_DIR / f"{stem}.xml", encoding="utf-8", xml_declaration=True
        )
    (folder / "README.txt").write_text(
        f"Synthetic H&E tiles in the MoNuSeg layout for PathoDiff: {config.num_images} RGB TIFFs of "
        f"{config.size} x {config.size} px in '{IMAGES_DIR}/' with {config.min_nuclei}-{config.max_nuclei} nuclei "
        f"per 256 x 256 px, annotated as ImageScope XML polygons in '{ANNOTATIONS_DIR}/', painted from seed "
        f"{config.seed}. The images are artificial and carry no patient data.\n"
    )


def generate_synthetic_monuseg(
    root: str | Path, config: SyntheticMonusegConfig = SyntheticMonusegConfig(), progress: bool = True
) -> Path:
    """Generate the set into `root` atomically; do nothing if it is already there with `config`."""
    stems = [image_stem(i) for i in range(config.num_images)]
    return generate_once(root, config, build_set, progress, version=FORMAT_VERSION,
                         record_name="synthetic_monuseg.json", what="synthetic MoNuSeg set", option="--root",
                         required=[f"{IMAGES_DIR}/{s}.tif" for s in stems] + [f"{ANNOTATIONS_DIR}/{s}.xml" for s in stems])


def main(argv: list[str] | None = None) -> int:
    """Command line: generate a set into --root; exit status 2 with one message on bad input."""
    return generator_main(
        argv,
        "Generate synthetic H&E tiles in the MoNuSeg layout.",
        SyntheticMonusegConfig,
        generate_synthetic_monuseg,
        {
            "size": "image width and height in px",
            "min_nuclei": "per 256 x 256 px",
            "max_nuclei": "per 256 x 256 px",
            "mpp": "microns per pixel written to the XML",
        },
    )


if __name__ == "__main__":
    sys.exit(main())

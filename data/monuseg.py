"""MoNuSeg nuclei layouts: ImageScope XML polygons, instance masks, tiling, and the layout-conditioned dataset.

The MoNuSeg layout is `ROOT/Tissue Images/<stem>.tif` (RGB H&E tiles) with `ROOT/Annotations/<stem>.xml`
(Aperio ImageScope XML, one Region per nucleus polygon). `tile_monuseg` cuts it into a tiled folder
(`images/`, `bin_masks/`, `inst_masks/`, `tiling.json`); a tiled folder of that layout made elsewhere is read
directly by `LayoutPatches`, and `mask_tile_files` lists tiled folders whose binary masks are in `labels/` or
`bin_masks/`. Tiles are named `{source}_{y}_{x}` after their source image (`source_of`).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
import copy
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
import torch
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.measure import regionprops
from skimage.segmentation import relabel_sequential
from tqdm import tqdm

from data.annotations import DataError
from data.base import SeededDataset, dihedral
from data.cached_folder import CachedFolder
from data.condition_maps import MapOptions, build_maps
from data.splits import split_by_group
from data.wsi import to_model_range

IMAGES_DIR = "Tissue Images"
ANNOTATIONS_DIR = "Annotations"
IMAGE_SUFFIXES = (".tif", ".tiff")
TILE_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MASK_SUFFIXES = (".tif", ".tiff", ".png")
BINARY_MASK_DIRS = ("labels", "bin_masks")
BINARY_MASK_SUFFIXES = (".png", ".tif", ".tiff")
MIN_AREA = 30
# How far (px) a vertex may lie outside the image before the annotation is taken for another image's.
COORDINATE_SLACK = 4.0
TILING_FORMAT = 1
TILE_NAME = re.compile(r"^(?P<source>.+)_(?P<y>\d+)_(?P<x>\d+)$")
# --match_struct: the appearance of a layout comes from its MATCH_POOL most similar tiles, the tile itself
# included (so MATCH_POOL - 1 others), as in the original SDM's structure matching.
MATCH_POOL = 20
# Shape distances are clipped at this quantile of a tile's distances before scaling to [0, 1] (the original's).
MATCH_CLIP_QUANTILE = 0.85


# ---------------------------------------------------------------------------------------------
# Annotations -> instance masks
# ---------------------------------------------------------------------------------------------


def read_monuseg_xml(path: str | Path, shape: Sequence[int]) -> list[np.ndarray]:
    """Nucleus polygons (N_i x 2 float, columns x, y) of an ImageScope XML for an image of `shape` (H, W, ...)."""
    path = Path(path)
    height, width = int(shape[0]), int(shape[1])
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise DataError(f"{path}: not readable as ImageScope XML ({error})") from None
    if root.tag != "Annotations":
        raise DataError(f"{path}: expected an <Annotations> root element, found <{root.tag}>")
    polygons = []
    for index, region in enumerate(root.findall("./Annotation/Regions/Region")):
        vertices = region.findall("./Vertices/Vertex")
        if len(vertices) < 3:
            raise DataError(f"{path}: region {index} has {len(vertices)} vertices, expected at least 3")
        try:
            points = np.array([[float(v.attrib["X"]), float(v.attrib["Y"])] for v in vertices], dtype=np.float64)
        except (KeyError, ValueError) as error:
            raise DataError(f"{path}: region {index} has a vertex without numeric X and Y ({error})") from None
        if not np.isfinite(points).all():
            raise DataError(f"{path}: region {index} has non-finite vertex coordinates")
        low, high = points.min(0), points.max(0)
        if (low < -COORDINATE_SLACK).any() or high[0] > width - 1 + COORDINATE_SLACK or (
            high[1] > height - 1 + COORDINATE_SLACK
        ):
            raise DataError(
                f"{path}: region {index} reaches x {low[0]:.1f}..{high[0]:.1f}, y {low[1]:.1f}..{high[1]:.1f}, "
                f"outside the {width} x {height} px image (image and annotation do not match)"
            )
        polygons.append(points)
    return polygons


def drop_small_instances(inst: np.ndarray, min_area: int) -> np.ndarray:
    """uint16 copy with instances of fewer than `min_area` pixels removed and ids relabelled 1..N in order."""
    inst = np.asarray(inst)
    if inst.size == 0:
        return inst.astype(np.uint16)
    counts = np.bincount(inst.ravel().astype(np.int64))
    small = counts < min_area
    small[0] = False
    cleaned = np.where(small[inst], 0, inst).astype(np.int64)
    relabelled, _, _ = relabel_sequential(cleaned)
    if relabelled.max() > np.iinfo(np.uint16).max:
        raise DataError(f"instance mask: {int(relabelled.max())} instances do not fit into uint16 ids")
    return relabelled.astype(np.uint16)


def polygons_to_instance_mask(
    polygons: Sequence[np.ndarray], shape: Sequence[int], min_area: int = MIN_AREA
) -> np.ndarray:
    """uint16 H x W instance mask: larger polygons first so smaller ones on top keep their pixels.

    Instances left with fewer than `min_area` pixels after overlaps are dropped; ids are 1..N in the order
    of `polygons`.
    """
    size = (int(shape[0]), int(shape[1]))
    fills = []
    for index, points in enumerate(polygons):
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise DataError(f"polygon {index}: expected an N x 2 array of x, y with N >= 3, got {points.shape}")
        fills.append(fill_polygon(points[:, 1], points[:, 0], size))
    order = sorted(range(len(fills)), key=lambda i: -len(fills[i][0]))
    inst = np.zeros(size, dtype=np.int64)
    for index in order:
        rows, cols = fills[index]
        inst[rows, cols] = index + 1
    return drop_small_instances(inst, min_area)


def binary_mask(inst: np.ndarray) -> np.ndarray:
    """uint8 {0, 1}: nucleus pixels of an instance mask."""
    return (np.asarray(inst) > 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Reading images and masks
# ---------------------------------------------------------------------------------------------


def read_pixels(path: Path, what: str) -> np.ndarray:
    """The pixel array of a TIFF (tifffile) or PNG (PIL); DataError naming the file and `what` it should hold."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path)
        with Image.open(path) as handle:
            return np.asarray(handle)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DataError(f"{path}: cannot read the {what} ({error})") from None


def read_rgb(path: Path) -> np.ndarray:
    """uint8 H x W x 3 of a TIFF or PNG (an alpha channel is dropped); DataError when it is not RGB(A)."""
    image = read_pixels(path, "image")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit RGB image, got {image.dtype} with shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def read_instance_mask(path: Path) -> np.ndarray:
    """int64 H x W instance ids of a TIFF or PNG label image."""
    mask = read_pixels(path, "instance mask")
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{path}: expected a 2-D integer instance mask, got {mask.dtype} with shape {mask.shape}")
    if mask.min(initial=0) < 0:
        raise DataError(f"{path}: instance ids must be >= 0")
    return mask.astype(np.int64)


def read_binary_mask(path: Path) -> np.ndarray:
    """bool H x W nucleus mask (non-zero pixels) of a TIFF or PNG; colour masks count their brightest channel."""
    mask = np.squeeze(read_pixels(path, "mask"))
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    if mask.ndim != 2:
        raise DataError(f"{path}: expected a 2-D mask, got an array of shape {mask.shape}")
    return mask > 0


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of a TIFF or PNG from its header."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as handle:
                return tuple(handle.pages[0].shape[:2])
        with Image.open(path) as handle:
            return handle.size[1], handle.size[0]
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DataError(f"{path}: cannot read the image header ({error})") from None


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------


def is_tiled_folder(path: str | Path) -> bool:
    """True if `path` holds a tiled layout (images/ and inst_masks/)."""
    path = Path(path)
    return (path / "images").is_dir() and (path / "inst_masks").is_dir()


def monuseg_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, XML) pairs of a MoNuSeg folder, sorted by stem; DataError when the layout is not there."""
    images_dir, annotations_dir = root / IMAGES_DIR, root / ANNOTATIONS_DIR
    if not images_dir.is_dir() or not annotations_dir.is_dir():
        raise DataError(
            f"{root}: expected the MoNuSeg layout '{IMAGES_DIR}/*.tif' + '{ANNOTATIONS_DIR}/*.xml' "
            "(or a tiled folder with images/ and inst_masks/)"
        )
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{images_dir}: no .tif images found")
    pairs = []
    for image in images:
        xml = annotations_dir / f"{image.stem}.xml"
        if not xml.is_file():
            raise DataError(f"{image}: its annotation {xml} is missing")
        pairs.append((image, xml))
    return pairs


def tile_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of tiles of `size` every `stride` px that fit inside `length` px."""
    return list(range(0, length - size + 1, stride))


def tiling_record(root: Path, size: int, stride: int, min_area: int) -> dict:
    """The parameters a tiled folder was made with."""
    return {
        "format": TILING_FORMAT,
        "source": str(root.resolve()),
        "size": size,
        "stride": stride,
        "min_area": min_area,
    }


def write_tiles(
    pairs: list[tuple[Path, Path]], folder: Path, size: int, stride: int, min_area: int, progress: bool
) -> int:
    """Cut every image and its rasterised annotation into tiles under `folder`; returns the tile count."""
    for sub in ("images", "bin_masks", "inst_masks"):
        (folder / sub).mkdir(parents=True)
    count = 0
    for image_path, xml_path in tqdm(pairs, desc="tiling MoNuSeg", disable=not progress):
        image = read_rgb(image_path)
        height, width = image.shape[:2]
        if height < size or width < size:
            raise DataError(f"{image_path}: {width} x {height} px is smaller than the tile size {size}")
        inst = polygons_to_instance_mask(read_monuseg_xml(xml_path, image.shape), image.shape, min_area)
        for y in tile_origins(height, size, stride):
            for x in tile_origins(width, size, stride):
                name = f"{image_path.stem}_{y}_{x}"
                tile_inst = drop_small_instances(inst[y : y + size, x : x + size], min_area)
                Image.fromarray(image[y : y + size, x : x + size]).save(folder / "images" / f"{name}.png")
                Image.fromarray(binary_mask(tile_inst) * 255).save(folder / "bin_masks" / f"{name}.png")
                tifffile.imwrite(folder / "inst_masks" / f"{name}.tif", tile_inst, compression="zlib")
                count += 1
    return count


def tile_monuseg(
    root: str | Path,
    out_dir: str | Path,
    size: int = 256,
    stride: int = 256,
    min_area: int = MIN_AREA,
    progress: bool = True,
) -> Path:
    """Tile a MoNuSeg folder into `out_dir` (images/, bin_masks/, inst_masks/, tiling.json), atomically.

    Tiles are `{stem}_{y}_{x}` at every `stride` px where a whole `size` tile fits; instance ids are
    relabelled per tile and instances of fewer than `min_area` pixels dropped. A folder made with the same
    parameters is reused as it is.
    """
    root, out_dir = Path(root), Path(out_dir)
    if size < 1 or stride < 1:
        raise DataError(f"tile size and stride: expected positive numbers of pixels, got {size} and {stride}")
    if min_area < 0:
        raise DataError(f"min_area: expected >= 0 pixels, got {min_area}")
    tiles = CachedFolder(
        root=out_dir,
        params=tiling_record(root, size, stride, min_area),
        record_name="tiling.json",
        what="MoNuSeg tiling",
        option="output folder",
        results=("tiles",),
    )
    if tiles.matches():
        return out_dir
    pairs = monuseg_pairs(root)
    return tiles.build(lambda folder: {"tiles": write_tiles(pairs, folder, size, stride, min_area, progress)})


# ---------------------------------------------------------------------------------------------
# Tiled folders -> samples
# ---------------------------------------------------------------------------------------------


def files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Files of `folder` with one of `suffixes`, keyed by stem; DataError when a stem appears twice."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.stem in found:
            raise DataError(f"{folder}: two files for '{path.stem}' ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
    return found


def tile_files(tiled_dir: str | Path) -> dict[str, tuple[Path, Path]]:
    """(image, instance mask) of every tile of a tiled folder, keyed by stem in sorted order."""
    tiled_dir = Path(tiled_dir)
    if not is_tiled_folder(tiled_dir):
        raise DataError(f"{tiled_dir}: expected a tiled folder with images/ and inst_masks/")
    images = files_by_stem(tiled_dir / "images", TILE_IMAGE_SUFFIXES)
    masks = files_by_stem(tiled_dir / "inst_masks", MASK_SUFFIXES)
    for stem in sorted(set(images) ^ set(masks)):
        which = images.get(stem) or masks[stem]
        other = "instance mask in inst_masks/" if stem in images else "image in images/"
        raise DataError(f"{which}: has no matching {other}")
    if not images:
        raise DataError(f"{tiled_dir}: no tiles in images/")
    return {stem: (images[stem], masks[stem]) for stem in sorted(images)}


def list_tiles(tiled_dir: str | Path) -> list[str]:
    """Stems of the tiles of a tiled folder, sorted."""
    return list(tile_files(tiled_dir))


def binary_mask_folder(tiled_dir: Path) -> Path | None:
    """The folder of binary nucleus masks of a tiled folder: labels/, else bin_masks/, else None."""
    return next((tiled_dir / name for name in BINARY_MASK_DIRS if (tiled_dir / name).is_dir()), None)


def masks_of(images: Sequence[str], folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """The file in `folder` named like each image stem; DataError naming the first one missing."""
    found = files_by_stem(folder, suffixes)
    for stem in images:
        if stem not in found:
            raise DataError(f"{folder / (stem + suffixes[0])}: missing (every image needs a mask of the same name)")
    return {stem: found[stem] for stem in images}


def mask_tile_files(tiled_dir: str | Path) -> dict[str, tuple[Path, Path | None, Path | None]]:
    """(image, binary mask, instance mask) of every tile of a tiled folder, keyed by stem in sorted order.

    The folder holds images/ with binary masks in labels/ or bin_masks/ (labels/ wins), instance masks in
    inst_masks/, or both; a mask is None where its folder is absent. Masks without an image are ignored.
    """
    root = Path(tiled_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected images/ and bin_masks/ or labels/)")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"{root}: no images/ folder (expected images/*.png with bin_masks/ or labels/)")
    binary_dir = binary_mask_folder(root)
    instance_dir = root / "inst_masks" if (root / "inst_masks").is_dir() else None
    if binary_dir is None and instance_dir is None:
        raise DataError(f"{root}: no masks (expected a labels/, bin_masks/ or inst_masks/ folder next to images/)")
    images = files_by_stem(image_dir, TILE_IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(TILE_IMAGE_SUFFIXES)})")
    binary = masks_of(list(images), binary_dir, BINARY_MASK_SUFFIXES) if binary_dir else {}
    instances = masks_of(list(images), instance_dir, MASK_SUFFIXES) if instance_dir else {}
    return {stem: (images[stem], binary.get(stem), instances.get(stem)) for stem in sorted(images)}


def source_of(name: str) -> str:
    """The source image of a tile named `{stem}_{y}_{x}` (the name itself for other names)."""
    match = TILE_NAME.match(name)
    return match.group("source") if match else name


def split_names(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split of tile stems; tiles of one source image stay together.

    round(val_fraction * sources) source images go to validation (at least one when `val_fraction` > 0
    and there are two sources or more, never all of them); both lists keep the order of `names`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val_fraction: expected a share in [0, 1), got {val_fraction}")
    return split_by_group(list(names), val_fraction, seed, source_of)


class LayoutPatches(SeededDataset):
    """Tiles of a tiled folder with their condition maps: `image`, `semantic`, `inst_mask`, `meta`.

    Nucleus types, where a data set has them, come from an optional `types/` folder: one class map per tile
    (same stem, PNG or TIFF, 0 = background, 1..K-1 the types), one-hot encoded with --num_classes K.

    Sample i is a pure function of (seed, i): with `augment`, one of the 8 rotations/flips is applied to
    image and instance mask before the maps are built, and the colour map is shuffled when the map options
    ask for it. Indices past the end wrap around the tiles (for endless samplers), with fresh augmentations.
    `with_appearance` gives a copy whose colour maps come from other tiles (the original SDM's inference).
    """

    appearance: list[int] | None = None

    def __init__(
        self,
        tiled_dir: str | Path,
        maps: MapOptions,
        names: Sequence[str] | None = None,
        augment: bool = True,
        seed: int = 0,
    ):
        self.tiled_dir = Path(tiled_dir)
        files = tile_files(self.tiled_dir)
        if names is None:
            self.names = list(files)
        else:
            self.names = list(names)
            unknown = [n for n in self.names if n not in files]
            if unknown:
                raise DataError(f"{self.tiled_dir}: no tiles named {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
            if len(set(self.names)) != len(self.names):
                raise DataError(f"{self.tiled_dir}: tile names given more than once")
            if not self.names:
                raise DataError(f"{self.tiled_dir}: the selection of tiles is empty")
        self.files = {n: files[n] for n in self.names}
        for name, (image_path, mask_path) in self.files.items():
            if image_size(image_path) != image_size(mask_path):
                raise DataError(
                    f"{image_path}: size {image_size(image_path)} differs from its instance mask "
                    f"{mask_path} of size {image_size(mask_path)}"
                )
        self.maps = maps
        super().__init__(augment, seed)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 H x W x 3 image and int64 H x W instance mask of tile `name`, unaugmented."""
        image_path, mask_path = self.files[name]
        image, inst = read_rgb(image_path), read_instance_mask(mask_path)
        if image.shape[:2] != inst.shape:
            raise DataError(f"{image_path}: size {image.shape[:2]} differs from its instance mask {mask_path}")
        return image, inst

    def load_types(self, name: str) -> np.ndarray | None:
        """The tile's nucleus-type map from types/ (int64 H x W), or None when the folder has no types."""
        folder = self.tiled_dir / "types"
        if not folder.is_dir():
            return None
        candidates = [folder / f"{name}{suffix}" for suffix in (".png", ".tif", ".tiff")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise DataError(f"{folder}: no type map for tile {name} (expected {name}.png or .tif)")
        return read_instance_mask(path)

    def read_mask(self, name: str) -> np.ndarray:
        """int64 H x W instance mask of tile `name`."""
        return read_instance_mask(self.files[name][1])

    def with_appearance(self, partners: Sequence[int], seed: int) -> "LayoutPatches":
        """A copy whose tile i takes its colour map from the image of tile partners[i], with sample seed `seed`."""
        partners = [int(p) for p in partners]
        if len(partners) != len(self) or any(not 0 <= p < len(self) for p in partners):
            raise DataError(f"appearance partners: expected {len(self)} tile indices in 0..{len(self) - 1}")
        clone = copy.copy(self)
        clone.appearance, clone.seed = partners, seed
        return clone

    def __getitem__(self, index: int) -> dict:
        position = self.wrap(index)
        name = self.names[position]
        image, inst = self.load(name)
        types = self.load_types(name)
        rng = self.sample_rng(index)
        options = self.maps
        if self.augment:
            k = self.draw_dihedral(rng)
            image, inst = dihedral(image, k), dihedral(inst, k)
            types = None if types is None else dihedral(types, k)
        else:
            options = replace(self.maps, shuffle_colour=False)
        meta = {"name": name}
        if self.appearance is None:
            semantic = build_maps(inst, image, options, rng, class_map=types)
        else:
            partner = self.names[self.appearance[position]]
            partner_image, partner_inst = self.load(partner)
            semantic = build_maps(inst, partner_image, options, rng, class_map=types, appearance_inst=partner_inst)
            meta["appearance"] = partner
        return {
            "image": torch.from_numpy(to_model_range(np.ascontiguousarray(image))),
            "semantic": torch.from_numpy(semantic),
            "inst_mask": torch.from_numpy(np.ascontiguousarray(inst, dtype=np.int64)),
            "meta": meta,
        }


# ---------------------------------------------------------------------------------------------
# Appearance for layouts at inference (the original SDM's --match_struct and --shuffle_masks)
# ---------------------------------------------------------------------------------------------


def shape_statistics(inst: np.ndarray) -> np.ndarray:
    """float64 (total nucleus area, median nucleus area) in pixels of a layout: the original SDM's shape descriptor."""
    areas = [region.area for region in regionprops(np.asarray(inst, dtype=np.int64))]
    if not areas:
        return np.zeros(2)
    return np.array([float(np.sum(areas)), float(np.median(areas))])


def shape_distances(statistics: np.ndarray, index: int) -> np.ndarray:
    """Distance in [0, 1] of every layout's shape statistics (rows) to those of layout `index`.

    Per statistic, the absolute differences are clipped at their MATCH_CLIP_QUANTILE quantile and scaled to
    [0, 1] (min-max); the distance is their mean (total and median area weighted equally, as in the original).
    """
    differences = np.abs(statistics - statistics[index])
    differences = np.minimum(differences, np.quantile(differences, MATCH_CLIP_QUANTILE, axis=0))
    low, span = differences.min(0), np.ptp(differences, axis=0)
    scaled = np.divide(differences - low, span, out=np.zeros_like(differences), where=span > 0)
    return scaled.mean(1)


def match_struct_partners(statistics: np.ndarray, rng: np.random.Generator) -> list[int]:
    """For each layout, a random one of the MATCH_POOL - 1 other layouts nearest in shape statistics."""
    count = len(statistics)
    if count < 2:
        raise DataError("--match_struct: needs at least 2 layouts to take appearances from")
    partners = []
    for index in range(count):
        order = np.argsort(shape_distances(statistics, index), kind="stable")
        nearest = order[order != index][: MATCH_POOL - 1]
        partners.append(int(rng.choice(nearest)))
    return partners


def shuffle_partners(count: int, rng: np.random.Generator) -> list[int]:
    """For each layout, a random other layout, each used once: a seeded random cycle through all of them."""
    if count < 2:
        raise DataError("--shuffle_masks: needs at least 2 layouts to take appearances from")
    order = rng.permutation(count)
    partners = np.empty(count, dtype=np.int64)
    partners[order] = np.roll(order, -1)
    return partners.tolist()

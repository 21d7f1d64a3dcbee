"""Dense condition maps built from a nuclei instance layout: classes, instance edges, HoVer maps, colours."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.colors import hsv_to_rgb
from scipy import ndimage

from data.annotations import DataError

# Colours of classes 1, 2, ... in maps_to_picture (class 0, the background, is black).
CLASS_PALETTE = np.array(
    [[230, 60, 160], [60, 140, 230], [250, 190, 40], [70, 200, 110], [160, 90, 220], [240, 110, 60]],
    dtype=np.uint8,
)


HV_CONVENTIONS = ("hovernet", "centroid")
COLOUR_MAPS = ("nucleus_mean", "pixel_shuffle")


@dataclass(frozen=True)
class MapOptions:
    """Which condition maps a layout is turned into, and how.

    Channels, in this order: one-hot classes (`classes`, `num_classes` channels), instance edges, hv maps (2,
    `hv_convention` as in hv_maps), colour map (3). `colour_map` "nucleus_mean" fills each nucleus with its mean
    colour (`shuffle_colour` permutes those colours across nuclei when build_maps gets an rng, an augmentation);
    "pixel_shuffle" is a random permutation of the appearance image's pixels, within nuclei and within the
    background separately with `preserve_nuclei_col`.
    """

    num_classes: int = 2
    instance: bool = True
    hv: bool = False
    colour: bool = False
    shuffle_colour: bool = True
    classes: bool = True
    hv_convention: str = "hovernet"
    colour_map: str = "nucleus_mean"
    preserve_nuclei_col: bool = False

    def __post_init__(self) -> None:
        if int(self.num_classes) < 2:
            raise DataError(
                f"--num_classes: expected at least 2 (background and nucleus), got {self.num_classes}"
            )
        if self.hv_convention not in HV_CONVENTIONS:
            raise DataError(f"--hv_convention: expected one of {', '.join(HV_CONVENTIONS)}, got {self.hv_convention!r}")
        if self.colour_map not in COLOUR_MAPS:
            raise DataError(f"--colour_map: expected one of {', '.join(COLOUR_MAPS)}, got {self.colour_map!r}")
        if self.preserve_nuclei_col and self.colour_map != "pixel_shuffle":
            raise DataError("--preserve_nuclei_col shuffles the pixels of a pixel_shuffle colour map; "
                            f"this colour map is {self.colour_map}")
        if map_channels(self) == 0:
            raise DataError("condition maps: every map is switched off (expected at least one channel)")


def map_channels(options: MapOptions) -> int:
    """Number of channels build_maps returns for these options."""
    classes = options.num_classes if options.classes else 0
    return classes + int(options.instance) + 2 * int(options.hv) + 3 * int(options.colour)


def check_layout(inst: np.ndarray) -> np.ndarray:
    """An instance mask as a 2-D integer array (0 = background); DataError otherwise."""
    inst = np.asarray(inst)
    if inst.ndim != 2 or not (np.issubdtype(inst.dtype, np.integer) or inst.dtype == bool):
        raise DataError(f"instance mask: expected a 2-D integer array, got {inst.ndim}-D {inst.dtype}")
    if inst.size and inst.min() < 0:
        raise DataError("instance mask: expected ids >= 0 (0 = background), found negative ids")
    return inst.astype(np.int64, copy=False)


def one_hot(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 K x H x W one-hot encoding of an integer class map (class 0 = background)."""
    if int(num_classes) < 2:
        raise DataError(f"--num_classes: expected at least 2 (background and nucleus), got {num_classes}")
    classes = check_layout(class_map)
    if classes.size and classes.max() >= num_classes:
        raise DataError(
            f"--num_classes: the class map holds class {int(classes.max())}, expected classes 0..{num_classes - 1}"
        )
    return (classes[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """float32 {0, 1}: pixels with a 4-neighbour of another instance id (both sides of every boundary)."""
    inst = check_layout(inst)
    edges = np.zeros(inst.shape, dtype=bool)
    vertical = inst[1:, :] != inst[:-1, :]
    horizontal = inst[:, 1:] != inst[:, :-1]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges.astype(np.float32)


def hv_centres(coord: np.ndarray, labels: np.ndarray, ids: np.ndarray, convention: str) -> np.ndarray:
    """Per instance id, the coordinate the hv maps count offsets from (indexed by id; see hv_maps)."""
    centre = np.zeros(int(ids.max()) + 1)
    centre[ids] = ndimage.mean(coord, labels, ids)
    if convention == "hovernet":
        centre[ids] = np.floor(centre[ids] + 0.5) - 1.0
    return centre


def hv_maps(inst: np.ndarray, convention: str = "hovernet") -> np.ndarray:
    """float32 2 x H x W horizontal and vertical maps: each pixel's x and y offset from its instance's centre.

    Per instance, negative offsets are divided by the magnitude of the most negative one and positive
    offsets by the largest, so each side spans [-1, 0] or [0, 1]; the background is 0. The centre is, with
    convention "centroid", the exact centroid; with "hovernet" (the maps HoVer-Net is trained on and
    predicts), the centre of mass rounded half up, less one pixel, because HoVer-Net counts pixel coordinates
    from 1 but its centre of mass from 0. So a 5 px wide nucleus has x offsets -1, 0, 1, 2, 3 there (scaled:
    -1, 0, 1/3, 2/3, 1) and -2 .. 2 with "centroid".
    """
    if convention not in HV_CONVENTIONS:
        raise DataError(f"--hv_convention: expected one of {', '.join(HV_CONVENTIONS)}, got {convention!r}")
    inst = check_layout(inst)
    out = np.zeros((2,) + inst.shape, dtype=np.float32)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if not len(ids):
        return out
    rows, cols = np.indices(inst.shape, dtype=np.float64)
    inside = inst > 0
    labels = inst[inside]
    for channel, coord in enumerate((cols[inside], rows[inside])):
        offset = coord - hv_centres(coord, labels, ids, convention)[labels]
        out[channel][inside] = scaled_per_instance(offset, labels, ids)
    return out


def scaled_per_instance(offset: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Offsets of each instance's pixels, negative ones divided by -min and positive ones by max of their instance."""
    low = np.zeros(int(ids.max()) + 1)
    high = np.zeros_like(low)
    low[ids] = ndimage.minimum(offset, labels, ids)
    high[ids] = ndimage.maximum(offset, labels, ids)
    scaled = np.zeros_like(offset)
    negative, positive = offset < 0, offset > 0
    scaled[negative] = offset[negative] / -low[labels[negative]]
    scaled[positive] = offset[positive] / high[labels[positive]]
    return scaled


def check_image(image_uint8: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 H x W x 3 image of the layout's size; DataError otherwise."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"image: expected uint8 H x W x 3, got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(shape):
        raise DataError(f"image: size {image.shape[:2]} differs from the instance mask's {tuple(shape)}")
    return image


def random_draw(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices into `count` items in random order: a permutation, repeated as often as `size` needs."""
    passes = -(-size // count) if size else 0
    return np.concatenate([rng.permutation(count) for _ in range(passes)] or [np.zeros(0, np.int64)])[:size]


def nucleus_ids(inst: np.ndarray) -> np.ndarray:
    """The instance ids of a layout, without the background."""
    ids = np.unique(inst)
    return ids[ids > 0]


def colour_map(
    inst: np.ndarray,
    image_uint8: np.ndarray,
    rng: np.random.Generator | None = None,
    shuffle: bool = False,
    appearance_inst: np.ndarray | None = None,
) -> np.ndarray:
    """float32 3 x H x W in [-1, 1]: each nucleus filled with a nucleus's mean colour in the image, background 0.

    Each nucleus gets its own mean colour; with `shuffle`, the mean colours are permuted across nuclei with
    `rng`. With `appearance_inst`, the image is another tile's (of that instance mask): the layout's nuclei get
    that tile's nucleus colours in a random order drawn with `rng` (its mean colour where it has no nuclei).
    """
    inst = check_layout(inst)
    source = inst if appearance_inst is None else check_layout(appearance_inst)
    image = check_image(image_uint8, source.shape)
    out = np.zeros((3,) + inst.shape, dtype=np.float32)
    ids = nucleus_ids(inst)
    if not len(ids):
        return out
    if (shuffle or appearance_inst is not None) and rng is None:
        raise DataError("colour_map: shuffling colours or taking them from another tile needs an rng (numpy Generator)")
    means = nucleus_means(image, source)
    if appearance_inst is not None:
        means = means[random_draw(len(means), len(ids), rng)]
    elif shuffle:
        means = means[rng.permutation(len(ids))]
    lookup = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
    lookup[ids] = means / 127.5 - 1.0
    inside = inst > 0
    out[:, inside] = lookup[inst[inside]].T
    return out


def nucleus_means(image: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """N x 3 mean colour of each nucleus (in id order); the whole image's mean colour when there is none."""
    ids = nucleus_ids(inst)
    if not len(ids):
        return image.reshape(-1, 3).astype(np.float64).mean(0, keepdims=True)
    return np.stack([ndimage.mean(image[..., c].astype(np.float64), inst, ids) for c in range(3)], 1)


def pixel_shuffle_map(
    inst: np.ndarray,
    image_uint8: np.ndarray,
    rng: np.random.Generator,
    preserve_nuclei_col: bool = False,
    appearance_inst: np.ndarray | None = None,
) -> np.ndarray:
    """float32 3 x H x W in [-1, 1]: the image's pixels at random positions (the original SDM colour map).

    The whole image is permuted; with `preserve_nuclei_col`, nucleus pixels go to the layout's nuclei and
    background pixels to its background, each at random positions, so the map keeps the layout's nucleus and
    background colours apart. With `appearance_inst`, the image is another tile's (of that instance mask);
    where the pixel counts differ, pixels are drawn in random order and repeated as needed (the whole image's
    pixels stand in for a group the appearance lacks).
    """
    inst = check_layout(inst)
    source = inst if appearance_inst is None else check_layout(appearance_inst)
    pixels = check_image(image_uint8, source.shape).reshape(-1, 3)
    if rng is None:
        raise DataError("pixel_shuffle_map: the pixel shuffle needs an rng (numpy Generator)")
    target = (inst > 0).ravel()
    out = np.empty((target.size, 3), dtype=np.uint8)
    if not preserve_nuclei_col:
        out[:] = pixels[random_draw(len(pixels), target.size, rng)]
    else:
        nuclei = (source > 0).ravel()
        for into, take in ((target, nuclei), (~target, ~nuclei)):
            found = np.flatnonzero(take) if take.any() else np.arange(len(pixels))
            out[into] = pixels[found[random_draw(len(found), int(into.sum()), rng)]]
    rgb = out.reshape(inst.shape + (3,)).transpose(2, 0, 1)
    return rgb.astype(np.float32) / 127.5 - 1.0


def appearance_colours(
    inst: np.ndarray,
    image_uint8: np.ndarray,
    options: MapOptions,
    rng: np.random.Generator | None,
    appearance_inst: np.ndarray | None,
) -> np.ndarray:
    """The colour map `options` asks for (see colour_map and pixel_shuffle_map)."""
    if options.colour_map == "pixel_shuffle":
        if rng is None:
            raise DataError("build_maps: the pixel_shuffle colour map needs an rng (numpy Generator)")
        return pixel_shuffle_map(inst, image_uint8, rng, options.preserve_nuclei_col, appearance_inst)
    shuffle = options.shuffle_colour and rng is not None
    return colour_map(inst, image_uint8, rng, shuffle, appearance_inst)


def build_maps(
    inst: np.ndarray,
    image_uint8: np.ndarray | None,
    options: MapOptions,
    rng: np.random.Generator | None = None,
    class_map: np.ndarray | None = None,
    appearance_inst: np.ndarray | None = None,
) -> np.ndarray:
    """float32 K x H x W: one-hot classes, instance edges, hv (2), colour (3), as `options` selects.

    The class map is `class_map` (nucleus types, 0 = background) when given, else nucleus / background
    (inst > 0). `image_uint8` is needed only for the colour map: the layout's own image, or another tile's
    whose instance mask is `appearance_inst`. A nucleus_mean colour map is shuffled when
    `options.shuffle_colour` is set and an `rng` is given; a pixel_shuffle one always needs the `rng`.
    """
    inst = check_layout(inst)
    maps = []
    if options.classes:
        classes = (inst > 0).astype(np.int64) if class_map is None else np.asarray(class_map, dtype=np.int64)
        if classes.shape != inst.shape:
            raise DataError(f"the class map has shape {classes.shape}; expected the instance mask's {inst.shape}")
        maps.append(one_hot(classes, options.num_classes))
    if options.instance:
        maps.append(instance_edges(inst)[None])
    if options.hv:
        maps.append(hv_maps(inst, options.hv_convention))
    if options.colour:
        if image_uint8 is None:
            raise DataError("build_maps: the colour map needs the RGB image of the layout")
        maps.append(appearance_colours(inst, image_uint8, options, rng, appearance_inst))
    return np.concatenate(maps, axis=0)


def picture_foreground(maps: np.ndarray, options: MapOptions) -> np.ndarray:
    """bool H x W: the nuclei the maps show (by class; without class maps, where hv, colour or edges are set)."""
    if options.classes:
        return maps[: options.num_classes].argmax(0) > 0
    start = int(options.instance)
    found = maps[0] > 0.5 if options.instance else np.zeros(maps.shape[1:], dtype=bool)
    if options.hv:
        found |= (maps[start : start + 2] != 0).any(0)
    if options.colour and options.colour_map == "nucleus_mean":
        colour_start = start + 2 * int(options.hv)
        found |= (maps[colour_start : colour_start + 3] != 0).any(0)
    return found


def maps_to_picture(maps: np.ndarray, options: MapOptions) -> np.ndarray:
    """uint8 H x W x 3 picture of condition maps: what fills each nucleus, with instance edges in white.

    Nuclei show their colour-map colour when there is one, else the direction of the hv maps on a colour
    wheel (hue = direction from the centre, brightness = distance), else the colour of their class. A
    pixel_shuffle colour map is shown everywhere (it covers the background too).
    """
    maps = np.asarray(maps, dtype=np.float32)
    expected = map_channels(options)
    if maps.ndim != 3 or maps.shape[0] != expected:
        raise DataError(f"maps: expected {expected} x H x W for these map options, got shape {maps.shape}")
    k = options.num_classes if options.classes else 0
    picture = np.zeros(maps.shape[1:] + (3,), dtype=np.uint8)
    foreground = picture_foreground(maps, options)
    if options.classes:
        classes = maps[:k].argmax(0)
        palette = CLASS_PALETTE[(classes - 1) % len(CLASS_PALETTE)]
        picture[foreground] = palette[foreground]
    start = k + int(options.instance)
    if options.colour:
        colour_start = start + 2 * int(options.hv)
        rgb = np.clip(np.rint((maps[colour_start : colour_start + 3].transpose(1, 2, 0) + 1.0) * 127.5), 0, 255)
        shown = foreground if options.colour_map == "nucleus_mean" else np.ones_like(foreground)
        picture[shown] = rgb[shown].astype(np.uint8)
    elif options.hv:
        h, v = maps[start], maps[start + 1]
        hue = (np.arctan2(v, h) / (2 * np.pi)) % 1.0
        value = np.clip(np.sqrt(h * h + v * v) / np.sqrt(2.0), 0.0, 1.0) * 0.8 + 0.2
        hsv = np.stack([hue, np.ones_like(hue), value], -1)
        wheel = np.clip(np.rint(hsv_to_rgb(hsv) * 255.0), 0, 255).astype(np.uint8)
        picture[foreground] = wheel[foreground]
    if options.instance:
        picture[maps[k] > 0.5] = 255
    return picture


# The map settings of checkpoints written before these keys existed (their maps were built this way).
LEGACY_MAP_SETTINGS = {"classes": True, "colour_map": "nucleus_mean", "preserve_nuclei_col": False}


def map_settings(config: dict) -> dict:
    """The condition maps of a run's layout options (stored in sdm checkpoints so sampling builds the same maps)."""
    return {
        "num_classes": config["num_classes"],
        "classes": bool(config["class_maps"]),
        "instance": not config["no_instance"],
        "hv": bool(config["use_hv_map"]),
        "hv_convention": config["hv_convention"],
        "colour": bool(config["use_col_map"]),
        "colour_map": config["colour_map"],
        "preserve_nuclei_col": bool(config["preserve_nuclei_col"]),
    }


def upgrade_map_settings(settings: dict) -> dict:
    """Stored map settings in today's form: older checkpoints built hv maps around the exact centroid."""
    legacy_hv = "centroid" if settings.get("hv") else "hovernet"
    return {**LEGACY_MAP_SETTINGS, "hv_convention": legacy_hv, **settings}

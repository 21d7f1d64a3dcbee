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


@dataclass(frozen=True)
class MapOptions:
    """Which condition maps a layout is turned into, and how many semantic classes there are.

    `shuffle_colour` permutes the nuclei's mean colours across nuclei when an rng is given to build_maps
    (an augmentation that keeps the layout but breaks the tie between a nucleus and its own colour).
    """

    num_classes: int = 2
    instance: bool = True
    hv: bool = False
    colour: bool = False
    shuffle_colour: bool = True

    def __post_init__(self) -> None:
        if int(self.num_classes) < 2:
            raise DataError(
                f"--num_classes: expected at least 2 (background and nucleus), got {self.num_classes}"
            )


def map_channels(options: MapOptions) -> int:
    """Number of channels build_maps returns for these options."""
    return options.num_classes + int(options.instance) + 2 * int(options.hv) + 3 * int(options.colour)


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


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """float32 2 x H x W HoVer-Net maps: x and y offsets from each instance's centroid, scaled to [-1, 1].

    Per instance, negative offsets are divided by the magnitude of the most negative one and positive
    offsets by the largest, so each instance spans [-1, 1] on both axes; the background is 0.
    """
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
        centre = np.zeros(int(ids.max()) + 1)
        centre[ids] = ndimage.mean(coord, labels, ids)
        offset = coord - centre[labels]
        low = np.zeros_like(centre)
        high = np.zeros_like(centre)
        low[ids] = ndimage.minimum(offset, labels, ids)
        high[ids] = ndimage.maximum(offset, labels, ids)
        scaled = np.zeros_like(offset)
        negative, positive = offset < 0, offset > 0
        scaled[negative] = offset[negative] / -low[labels[negative]]
        scaled[positive] = offset[positive] / high[labels[positive]]
        out[channel][inside] = scaled
    return out


def check_image(image_uint8: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 H x W x 3 image of the layout's size; DataError otherwise."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"image: expected uint8 H x W x 3, got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(shape):
        raise DataError(f"image: size {image.shape[:2]} differs from the instance mask's {tuple(shape)}")
    return image


def colour_map(
    inst: np.ndarray,
    image_uint8: np.ndarray,
    rng: np.random.Generator | None = None,
    shuffle: bool = False,
) -> np.ndarray:
    """float32 3 x H x W in [-1, 1]: each nucleus filled with its mean colour in the image, background 0.

    With `shuffle`, the mean colours are permuted across nuclei with `rng`.
    """
    inst = check_layout(inst)
    image = check_image(image_uint8, inst.shape)
    out = np.zeros((3,) + inst.shape, dtype=np.float32)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if not len(ids):
        return out
    means = np.stack([ndimage.mean(image[..., c].astype(np.float64), inst, ids) for c in range(3)], 1)
    if shuffle:
        if rng is None:
            raise DataError("colour_map: shuffle=True needs an rng (numpy Generator)")
        means = means[rng.permutation(len(ids))]
    lookup = np.zeros((int(ids.max()) + 1, 3), dtype=np.float32)
    lookup[ids] = means / 127.5 - 1.0
    inside = inst > 0
    out[:, inside] = lookup[inst[inside]].T
    return out


def build_maps(
    inst: np.ndarray,
    image_uint8: np.ndarray | None,
    options: MapOptions,
    rng: np.random.Generator | None = None,
    class_map: np.ndarray | None = None,
) -> np.ndarray:
    """float32 K x H x W: one-hot classes, instance edges, hv (2), colour (3), as `options` selects.

    The class map is `class_map` (nucleus types, 0 = background) when given, else nucleus / background
    (inst > 0). The colour map is shuffled when
    `options.shuffle_colour` is set and an `rng` is given; `image_uint8` is needed only for the colour map.
    """
    inst = check_layout(inst)
    classes = (inst > 0).astype(np.int64) if class_map is None else np.asarray(class_map, dtype=np.int64)
    if classes.shape != inst.shape:
        raise DataError(f"the class map has shape {classes.shape}; expected the instance mask's {inst.shape}")
    maps = [one_hot(classes, options.num_classes)]
    if options.instance:
        maps.append(instance_edges(inst)[None])
    if options.hv:
        maps.append(hv_maps(inst))
    if options.colour:
        if image_uint8 is None:
            raise DataError("build_maps: the colour map needs the RGB image of the layout")
        shuffle = options.shuffle_colour and rng is not None
        maps.append(colour_map(inst, image_uint8, rng, shuffle))
    return np.concatenate(maps, axis=0)


def maps_to_picture(maps: np.ndarray, options: MapOptions) -> np.ndarray:
    """uint8 H x W x 3 picture of condition maps: what fills each nucleus, with instance edges in white.

    Nuclei show their colour-map colour when there is one, else the direction of the hv maps on a colour
    wheel (hue = direction from the centroid, brightness = distance), else the colour of their class.
    """
    maps = np.asarray(maps, dtype=np.float32)
    expected = map_channels(options)
    if maps.ndim != 3 or maps.shape[0] != expected:
        raise DataError(f"maps: expected {expected} x H x W for these map options, got shape {maps.shape}")
    k = options.num_classes
    classes = maps[:k].argmax(0)
    picture = np.zeros(maps.shape[1:] + (3,), dtype=np.uint8)
    foreground = classes > 0
    palette = CLASS_PALETTE[(classes - 1) % len(CLASS_PALETTE)]
    picture[foreground] = palette[foreground]
    start = k + int(options.instance)
    if options.colour:
        colour_start = start + 2 * int(options.hv)
        rgb = (maps[colour_start : colour_start + 3].transpose(1, 2, 0) + 1.0) * 127.5
        picture[foreground] = np.clip(np.rint(rgb[foreground]), 0, 255).astype(np.uint8)
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


def map_settings(config: dict) -> dict:
    """The condition maps of a run's layout options (stored in sdm checkpoints so sampling builds the same maps)."""
    return {
        "num_classes": config["num_classes"],
        "instance": not config["no_instance"],
        "hv": bool(config["use_hv_map"]),
        "colour": bool(config["use_col_map"]),
    }

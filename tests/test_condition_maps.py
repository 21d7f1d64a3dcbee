"""Condition maps of a nuclei layout: one-hot classes, instance edges, HoVer maps, colour maps, pictures."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.annotations import DataError
from data.condition_maps import (
    MapOptions,
    build_maps,
    colour_map,
    hv_maps,
    instance_edges,
    map_channels,
    maps_to_picture,
    one_hot,
)


def two_touching() -> np.ndarray:
    """Two rectangles sharing a vertical boundary between columns 3 and 4."""
    inst = np.zeros((8, 9), dtype=np.int64)
    inst[2:6, 1:4] = 1
    inst[2:6, 4:7] = 2
    return inst


def two_apart() -> np.ndarray:
    """A 5 x 7 rectangle and a disc of radius 4, not touching."""
    inst = np.zeros((24, 24), dtype=np.int64)
    inst[2:7, 3:10] = 1
    yy, xx = np.mgrid[:24, :24]
    inst[(yy - 16) ** 2 + (xx - 15) ** 2 <= 16] = 2
    return inst


def painted(inst: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random RGB image for the layout."""
    return np.random.default_rng(seed).integers(0, 256, inst.shape + (3,), dtype=np.uint8)


def reference_edges(inst: np.ndarray) -> np.ndarray:
    """Loop version: a pixel is an edge if one of its 4-neighbours inside the image has another id."""
    out = np.zeros(inst.shape, dtype=np.float32)
    for y, x in np.ndindex(inst.shape):
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = y + dy, x + dx
            if 0 <= ny < inst.shape[0] and 0 <= nx < inst.shape[1] and inst[ny, nx] != inst[y, x]:
                out[y, x] = 1.0
    return out


def test_map_channels_match_build_maps_for_every_option_combination():
    inst = two_apart()
    image = painted(inst)
    rng = np.random.default_rng(0)
    flags = itertools.product((2, 3), *([(False, True)] * 5), ("nucleus_mean", "pixel_shuffle"))
    for classes, one_hot_on, instance, hv, colour, shuffle, kind in flags:
        if not (one_hot_on or instance or hv or colour):
            with pytest.raises(DataError, match="at least one channel"):
                MapOptions(classes=False, instance=False, hv=False, colour=False)
            continue
        options = MapOptions(num_classes=classes, classes=one_hot_on, instance=instance, hv=hv, colour=colour,
                             shuffle_colour=shuffle, colour_map=kind)
        maps = build_maps(inst, image, options, rng)
        assert maps.dtype == np.float32
        assert maps.shape == (map_channels(options),) + inst.shape
        assert map_channels(options) == classes * one_hot_on + instance + 2 * hv + 3 * colour
        assert maps.min() >= -1.0 and maps.max() <= 1.0


def test_build_maps_concatenates_in_order():
    inst = two_apart()
    image = painted(inst)
    options = MapOptions(num_classes=2, instance=True, hv=True, colour=True, shuffle_colour=False)
    maps = build_maps(inst, image, options)
    np.testing.assert_array_equal(maps[:2], one_hot((inst > 0).astype(np.int64), 2))
    np.testing.assert_array_equal(maps[2], instance_edges(inst))
    np.testing.assert_array_equal(maps[3:5], hv_maps(inst))
    np.testing.assert_array_equal(maps[5:8], colour_map(inst, image))


def test_num_classes_below_two_is_an_error_naming_the_flag():
    with pytest.raises(DataError, match="--num_classes"):
        MapOptions(num_classes=1)
    with pytest.raises(DataError, match="--num_classes"):
        one_hot(np.zeros((4, 4), dtype=np.int64), 1)


def test_one_hot_marks_each_class_once():
    classes = np.array([[0, 1, 2], [2, 1, 0]])
    encoded = one_hot(classes, 3)
    assert encoded.shape == (3, 2, 3)
    np.testing.assert_array_equal(encoded.sum(0), np.ones((2, 3)))
    np.testing.assert_array_equal(encoded.argmax(0), classes)
    with pytest.raises(DataError, match="class 2"):
        one_hot(classes, 2)


def test_instance_edges_between_touching_instances_and_to_background():
    inst = two_touching()
    edges = instance_edges(inst)
    assert edges.dtype == np.float32
    np.testing.assert_array_equal(edges, reference_edges(inst))
    assert edges[2:6, 3].all() and edges[2:6, 4].all()
    assert edges[3, 2] == 0 and edges[4, 5] == 0
    assert edges[1, 2] == 1 and edges[0, 0] == 0
    np.testing.assert_array_equal(instance_edges(np.full((5, 5), 3)), np.zeros((5, 5)))


def test_hv_maps_range_background_and_signs_around_each_centroid():
    inst = two_apart()
    hv = hv_maps(inst, "centroid")
    assert hv.shape == (2,) + inst.shape and hv.dtype == np.float32
    assert hv.min() >= -1.0 and hv.max() <= 1.0
    assert (hv[:, inst == 0] == 0).all()
    rows, cols = np.indices(inst.shape)
    for label in (1, 2):
        inside = inst == label
        cy, cx = rows[inside].mean(), cols[inside].mean()
        h, v = hv[0][inside], hv[1][inside]
        x, y = cols[inside], rows[inside]
        assert (h[x < cx] < 0).all() and (h[x > cx] > 0).all()
        assert (v[y < cy] < 0).all() and (v[y > cy] > 0).all()
        for channel in (h, v):
            assert channel.min() == pytest.approx(-1.0) and channel.max() == pytest.approx(1.0)
    # the rectangle spans x offsets -3..3 around its centre column: the scaled offsets are x / 3
    np.testing.assert_allclose(hv[0][4, 3:10], np.arange(-3, 4) / 3.0, atol=1e-6)


def test_colour_map_fills_each_nucleus_with_its_mean_colour():
    inst = two_apart()
    image = painted(inst)
    colours = colour_map(inst, image)
    assert colours.shape == (3,) + inst.shape and colours.dtype == np.float32
    assert (colours[:, inst == 0] == 0).all()
    for label in (1, 2):
        mean = image[inst == label].astype(np.float64).mean(0) / 127.5 - 1.0
        np.testing.assert_allclose(colours[:, inst == label], np.repeat(mean[:, None], (inst == label).sum(), 1),
                                   atol=1e-5)


def test_colour_shuffle_permutes_colours_across_nuclei():
    inst = np.zeros((16, 16), dtype=np.int64)
    for label, (y, x) in enumerate([(1, 1), (1, 9), (9, 1), (9, 9)], 1):
        inst[y : y + 5, x : x + 5] = label
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    for label, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200), (120, 60, 180)], 1):
        image[inst == label] = colour
    plain = colour_map(inst, image)

    def colour_of(maps: np.ndarray) -> dict[int, tuple]:
        return {label: tuple(np.round(maps[:, inst == label][:, 0], 5)) for label in range(1, 5)}

    changed = 0
    for seed in range(8):
        shuffled = colour_map(inst, image, np.random.default_rng(seed), shuffle=True)
        assert sorted(colour_of(shuffled).values()) == sorted(colour_of(plain).values())
        for label in range(1, 5):
            assert np.unique(shuffled[:, inst == label], axis=1).shape[1] == 1
        changed += colour_of(shuffled) != colour_of(plain)
    assert changed > 0
    with pytest.raises(DataError, match="rng"):
        colour_map(inst, image, None, shuffle=True)


def test_colour_map_needs_an_rgb_image_of_the_same_size():
    inst = two_apart()
    with pytest.raises(DataError, match="size"):
        colour_map(inst, painted(inst)[:10])
    with pytest.raises(DataError, match="uint8"):
        colour_map(inst, painted(inst).astype(np.float32))


def test_build_maps_shuffles_colour_only_with_an_rng_and_the_option():
    inst = np.zeros((16, 16), dtype=np.int64)
    for label, (y, x) in enumerate([(1, 1), (1, 9), (9, 1), (9, 9)], 1):
        inst[y : y + 5, x : x + 5] = label
    image = painted(inst, 3)
    options = MapOptions(instance=False, colour=True, shuffle_colour=True)
    plain = colour_map(inst, image)
    np.testing.assert_array_equal(build_maps(inst, image, options)[2:], plain)
    shuffled = [build_maps(inst, image, options, np.random.default_rng(s))[2:] for s in range(8)]
    assert any(not np.array_equal(s, plain) for s in shuffled)
    fixed = MapOptions(instance=False, colour=True, shuffle_colour=False)
    np.testing.assert_array_equal(build_maps(inst, image, fixed, np.random.default_rng(0))[2:], plain)


def test_maps_to_picture_shows_classes_edges_and_colours():
    inst = two_apart()
    image = painted(inst)
    options = MapOptions()
    picture = maps_to_picture(build_maps(inst, image, options), options)
    assert picture.shape == inst.shape + (3,) and picture.dtype == np.uint8
    edges = instance_edges(inst) > 0
    assert (picture[edges] == 255).all()
    assert (picture[(inst == 0) & ~edges] == 0).all()
    interior = (inst > 0) & ~edges
    assert (picture[interior] != 0).any(axis=1).all() and (picture[interior] != 255).any(axis=1).all()

    coloured = MapOptions(hv=True, colour=True, shuffle_colour=False)
    picture = maps_to_picture(build_maps(inst, image, coloured), coloured)
    mean = image[inst == 1].astype(np.float64).mean(0)
    np.testing.assert_allclose(picture[4, 5], mean, atol=1.0)

    wheel = MapOptions(instance=False, hv=True)
    picture = maps_to_picture(build_maps(inst, image, wheel), wheel)
    left, right = picture[4, 3].astype(int), picture[4, 9].astype(int)
    assert np.abs(left - right).sum() > 100
    with pytest.raises(DataError, match="expected 3"):
        maps_to_picture(np.zeros((4, 8, 8), np.float32), MapOptions())

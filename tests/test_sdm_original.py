"""The original SDM's condition and inference semantics: HoVer-Net hv maps, pixel-shuffled colour maps,
the 6-channel condition, and colour maps taken from other tiles (--match_struct, --shuffle_masks)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

import dataloader
import inference
import model
import train
from common.errors import ConfigError
from data.annotations import DataError
from data.condition_maps import (
    MapOptions,
    build_maps,
    colour_map,
    hv_maps,
    instance_edges,
    map_settings,
    maps_to_picture,
    one_hot,
    pixel_shuffle_map,
    upgrade_map_settings,
)
from data.monuseg import (
    MATCH_POOL,
    LayoutPatches,
    match_struct_partners,
    shape_distances,
    shape_statistics,
    shuffle_partners,
)
from data.synthetic_monuseg import SyntheticMonusegConfig, generate_synthetic_monuseg
from data.wsi import dihedral
from recipes.semantic import synthesis_layouts

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def rectangle_5x3() -> np.ndarray:
    """One nucleus 5 px wide (columns 3..7) and 3 px tall (rows 2..4)."""
    inst = np.zeros((8, 12), dtype=np.int64)
    inst[2:5, 3:8] = 1
    return inst


def blobs() -> np.ndarray:
    """An ellipse, a rectangle and an L shape, apart."""
    inst = np.zeros((32, 32), dtype=np.int64)
    yy, xx = np.mgrid[:32, :32]
    inst[((yy - 8) / 5.0) ** 2 + ((xx - 9) / 3.5) ** 2 <= 1] = 1
    inst[18:27, 3:10] = 2
    inst[15:29, 18:22] = 3
    inst[25:29, 22:30] = 3
    return inst


def pixels_of(maps: np.ndarray) -> np.ndarray:
    """uint8 N x 3 pixels of a 3 x H x W colour map in [-1, 1]."""
    return np.rint((maps.reshape(3, -1).T + 1.0) * 127.5).astype(np.uint8)


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def hovernet_reference(inst: np.ndarray) -> np.ndarray:
    """HoVer-Net's target construction, step by step: crop each instance's box grown by 2 px, take the crop's
    centre of mass rounded half up, number the crop's pixels from 1, subtract, scale each side per instance."""
    out = np.zeros((2,) + inst.shape, dtype=np.float32)
    for label in np.unique(inst[inst > 0]):
        rows, cols = np.nonzero(inst == label)
        top, left = rows.min() - 2, cols.min() - 2
        crop = (inst == label)[top : rows.max() + 3, left : cols.max() + 3]
        com = [int(c + 0.5) for c in ndimage.center_of_mass(crop)]
        grid_y, grid_x = np.mgrid[1 : crop.shape[0] + 1, 1 : crop.shape[1] + 1]
        for channel, offsets in enumerate((grid_x - com[1], grid_y - com[0])):
            values = np.where(crop, offsets, 0).astype(np.float32)
            if values.min() < 0:
                values[values < 0] /= -values.min()
            if values.max() > 0:
                values[values > 0] /= values.max()
            out[channel, top : top + crop.shape[0], left : left + crop.shape[1]][crop] = values[crop]
    return out


# ----------------------------------------------------------------------------------------------------
# hv maps
# ----------------------------------------------------------------------------------------------------


def test_hv_maps_of_a_5x3_rectangle_by_hand():
    centroid = hv_maps(rectangle_5x3(), "centroid")
    np.testing.assert_allclose(centroid[0, 3, 3:8], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(centroid[1, 2:5, 5], [-1, 0, 1])
    # HoVer-Net: centre of mass (3, 5), rounded, on a pixel grid counted from 1: x offsets -1..3, y offsets 0..2
    hovernet = hv_maps(rectangle_5x3(), "hovernet")
    np.testing.assert_allclose(hovernet[0, 3, 3:8], [-1, 0, 1 / 3, 2 / 3, 1], atol=1e-6)
    np.testing.assert_allclose(hovernet[1, 2:5, 5], [0, 0.5, 1])
    for hv in (centroid, hovernet):
        assert (hv[:, rectangle_5x3() == 0] == 0).all()
        np.testing.assert_array_equal(hv[0, 2], hv[0, 4])  # every row of the x map is the same
    assert hv_maps(rectangle_5x3()).tobytes() == hovernet.tobytes()  # HoVer-Net's is the default


def test_hovernet_hv_maps_equal_hovernets_construction_step_by_step():
    inst = blobs()
    np.testing.assert_allclose(hv_maps(inst, "hovernet"), hovernet_reference(inst), atol=1e-6)
    with pytest.raises(DataError, match="--hv_convention"):
        hv_maps(inst, "sobel")


# ----------------------------------------------------------------------------------------------------
# colour maps
# ----------------------------------------------------------------------------------------------------


def test_pixel_shuffle_is_a_seeded_permutation_of_the_image():
    inst = blobs()
    image = np.random.default_rng(1).integers(0, 256, inst.shape + (3,), dtype=np.uint8)
    shuffled = pixel_shuffle_map(inst, image, np.random.default_rng(0))
    assert shuffled.shape == (3,) + inst.shape and shuffled.dtype == np.float32
    found = pixels_of(shuffled)
    np.testing.assert_array_equal(sorted_rows(found), sorted_rows(image.reshape(-1, 3)))
    assert (found != image.reshape(-1, 3)).any(1).mean() > 0.9
    np.testing.assert_array_equal(shuffled, pixel_shuffle_map(inst, image, np.random.default_rng(0)))
    assert not np.array_equal(shuffled, pixel_shuffle_map(inst, image, np.random.default_rng(1)))


def test_preserve_nuclei_col_shuffles_nuclei_and_background_separately():
    inst = blobs()
    image = np.random.default_rng(2).integers(0, 256, inst.shape + (3,), dtype=np.uint8)
    shuffled = pixel_shuffle_map(inst, image, np.random.default_rng(0), preserve_nuclei_col=True)
    found = pixels_of(shuffled).reshape(inst.shape + (3,))
    for part in (inst > 0, inst == 0):
        np.testing.assert_array_equal(sorted_rows(found[part]), sorted_rows(image[part]))
        assert (found[part] != image[part]).any(1).mean() > 0.9


def test_colour_maps_from_another_tile_take_its_nucleus_and_background_colours():
    layout, other = blobs(), np.zeros((32, 32), dtype=np.int64)
    other[4:12, 4:12], other[20:26, 15:30] = 1, 2
    rng = np.random.default_rng(3)
    image = np.where((other > 0)[..., None], rng.integers(0, 100, (32, 32, 3)), rng.integers(150, 256, (32, 32, 3)))
    image = image.astype(np.uint8)
    kept = pixels_of(pixel_shuffle_map(layout, image, np.random.default_rng(0), True, appearance_inst=other))
    kept = kept.reshape(layout.shape + (3,))
    assert (kept[layout > 0] < 100).all() and (kept[layout == 0] >= 150).all()
    mixed = pixels_of(pixel_shuffle_map(layout, image, np.random.default_rng(0), False, appearance_inst=other))
    assert (mixed.reshape(layout.shape + (3,))[layout > 0] >= 150).any()

    means = colour_map(layout, image, np.random.default_rng(0), appearance_inst=other)
    expected = [image[other == i].mean(0) / 127.5 - 1 for i in (1, 2)]
    for label in (1, 2, 3):
        colours = means[:, layout == label]
        assert np.ptp(colours, axis=1).max() == 0
        assert any(np.allclose(colours[:, 0], e, atol=1e-6) for e in expected)
    assert (means[:, layout == 0] == 0).all()


# ----------------------------------------------------------------------------------------------------
# the 6 condition channels
# ----------------------------------------------------------------------------------------------------


def test_original_condition_is_edges_hv_and_a_pixel_shuffled_colour_map():
    inst = blobs()
    image = np.random.default_rng(4).integers(0, 256, inst.shape + (3,), dtype=np.uint8)
    original = MapOptions(classes=False, hv=True, colour=True, colour_map="pixel_shuffle")
    maps = build_maps(inst, image, original, np.random.default_rng(0))
    assert maps.shape == (6,) + inst.shape
    np.testing.assert_array_equal(maps[0], instance_edges(inst))
    np.testing.assert_array_equal(maps[1:3], hovernet_reference(inst))
    np.testing.assert_array_equal(sorted_rows(pixels_of(maps[3:6])), sorted_rows(image.reshape(-1, 3)))

    with_classes = MapOptions(hv=True, colour=True, colour_map="pixel_shuffle")
    maps = build_maps(inst, image, with_classes, np.random.default_rng(0))
    assert maps.shape == (8,) + inst.shape
    np.testing.assert_array_equal(maps[:2], one_hot((inst > 0).astype(np.int64), 2))
    with pytest.raises(DataError, match="rng"):
        build_maps(inst, image, original)
    with pytest.raises(DataError, match="--preserve_nuclei_col"):
        MapOptions(colour=True, preserve_nuclei_col=True)


def test_picture_of_the_original_condition_shows_the_shuffled_colours_and_edges():
    inst = blobs()
    image = np.random.default_rng(4).integers(0, 256, inst.shape + (3,), dtype=np.uint8)
    original = MapOptions(classes=False, hv=True, colour=True, colour_map="pixel_shuffle")
    maps = build_maps(inst, image, original, np.random.default_rng(0))
    picture = maps_to_picture(maps, original)
    edges = instance_edges(inst) > 0
    assert (picture[edges] == 255).all()
    np.testing.assert_array_equal(picture[~edges], pixels_of(maps[3:6]).reshape(inst.shape + (3,))[~edges])


def test_checkpoints_without_the_new_map_settings_keep_their_maps():
    old = {"num_classes": 2, "instance": True, "hv": True, "colour": True}
    assert upgrade_map_settings(old) == {**old, "classes": True, "hv_convention": "centroid",
                                         "colour_map": "nucleus_mean", "preserve_nuclei_col": False}
    assert upgrade_map_settings({**old, "hv": False})["hv_convention"] == "hovernet"
    new = upgrade_map_settings(old)
    assert upgrade_map_settings(new) == new


# ----------------------------------------------------------------------------------------------------
# --match_struct and --shuffle_masks
# ----------------------------------------------------------------------------------------------------


def one_square(side: int, size: int = 40) -> np.ndarray:
    inst = np.zeros((size, size), dtype=np.int64)
    inst[2 : 2 + side, 3 : 3 + side] = 1
    return inst


def test_shape_statistics_and_distances_by_hand():
    inst = np.zeros((20, 20), dtype=np.int64)
    inst[0:3, 0:3], inst[5:10, 5:10], inst[12:16, 12:16] = 1, 2, 3
    np.testing.assert_array_equal(shape_statistics(inst), [9 + 25 + 16, 16])
    np.testing.assert_array_equal(shape_statistics(np.zeros((4, 4), np.int64)), [0, 0])
    statistics = np.array([[0, 0], [10, 10], [20, 20], [30, 30], [40, 40]], dtype=float)
    # differences 0..40 are clipped at their 85 % quantile (34) and scaled to [0, 1]
    np.testing.assert_allclose(shape_distances(statistics, 0), [0, 10 / 34, 20 / 34, 30 / 34, 1])


def test_match_struct_picks_at_random_among_the_most_similar_tiles():
    sides = np.arange(6, 36)
    statistics = np.stack([shape_statistics(one_square(side)) for side in sides])
    areas = sides.astype(float) ** 2
    picks = [match_struct_partners(statistics, np.random.default_rng(seed)) for seed in range(6)]
    assert picks[0] == match_struct_partners(statistics, np.random.default_rng(0))
    for index, area in enumerate(areas):
        gaps = np.abs(np.delete(areas, index) - area)
        limit = np.sort(gaps)[MATCH_POOL - 2]
        chosen = {p[index] for p in picks}
        assert index not in chosen
        assert all(abs(areas[c] - area) <= limit for c in chosen)
    assert sum(len({p[i] for p in picks}) > 1 for i in range(len(sides))) > len(sides) // 2
    assert match_struct_partners(statistics[:2], np.random.default_rng(0)) == [1, 0]
    with pytest.raises(DataError, match="--match_struct"):
        match_struct_partners(statistics[:1], np.random.default_rng(0))


def test_shuffle_masks_gives_every_layout_another_tile_each_used_once():
    for seed in range(5):
        partners = shuffle_partners(9, np.random.default_rng(seed))
        assert sorted(partners) == list(range(9)) and all(p != i for i, p in enumerate(partners))
    assert shuffle_partners(9, np.random.default_rng(0)) == shuffle_partners(9, np.random.default_rng(0))
    assert shuffle_partners(9, np.random.default_rng(0)) != shuffle_partners(9, np.random.default_rng(1))
    with pytest.raises(DataError, match="--shuffle_masks"):
        shuffle_partners(1, np.random.default_rng(0))


def write_tiles(folder: Path, count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (folder / "images").mkdir(parents=True)
    (folder / "inst_masks").mkdir()
    tiles = {}
    for n in range(count):
        image = np.random.default_rng(n).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        inst = np.zeros((24, 24), np.uint16)
        inst[2 : 6 + n, 3:10], inst[12:20, 8 + n : 16] = 1, 2
        Image.fromarray(image).save(folder / "images" / f"t{n}.png")
        tifffile.imwrite(folder / "inst_masks" / f"t{n}.tif", inst)
        tiles[f"t{n}"] = (image, inst.astype(np.int64))
    return tiles


def test_layouts_take_their_colour_map_from_the_partner_tile(tmp_path: Path):
    tiles = write_tiles(tmp_path, 3)
    options = MapOptions(classes=False, hv=True, colour=True, colour_map="pixel_shuffle", preserve_nuclei_col=True)
    layouts = LayoutPatches(tmp_path, options, augment=False)
    paired = layouts.with_appearance([2, 0, 1], seed=7)
    assert layouts.appearance is None and paired.seed == 7
    for index, partner in enumerate(["t2", "t0", "t1"]):
        sample = paired[index]
        image, inst = tiles[f"t{index}"]
        partner_image, partner_inst = tiles[partner]
        assert sample["meta"] == {"name": f"t{index}", "appearance": partner}
        assert torch.equal(sample["inst_mask"], torch.from_numpy(inst))
        np.testing.assert_allclose(sample["image"].numpy(), image.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6)
        expected = pixel_shuffle_map(inst, partner_image, np.random.default_rng([7, index]), True, partner_inst)
        np.testing.assert_array_equal(sample["semantic"].numpy()[3:6], expected)
        np.testing.assert_array_equal(sample["semantic"].numpy()[1:3], hv_maps(inst))
    with pytest.raises(DataError, match="partners"):
        layouts.with_appearance([0, 1], seed=0)


def test_training_colour_maps_shuffle_the_augmented_tiles_own_pixels(tmp_path: Path):
    tiles = write_tiles(tmp_path, 2)
    options = MapOptions(classes=False, colour=True, colour_map="pixel_shuffle")
    data = LayoutPatches(tmp_path, options, augment=True, seed=3)
    for index in range(4):
        rng = np.random.default_rng([3, index])
        k = int(rng.integers(8))
        image, inst = tiles[f"t{index % 2}"]
        expected = pixel_shuffle_map(dihedral(inst, k), dihedral(image, k), rng)
        np.testing.assert_array_equal(data[index]["semantic"].numpy()[1:], expected)


def synthesis_args(**flags) -> argparse.Namespace:
    return argparse.Namespace(**{"shuffle_masks": False, "match_struct": False, "preserve_nuclei_col": None,
                                 "seed": 0, **flags})


def test_inference_flags_choose_the_appearance_and_check_the_checkpoint(tmp_path: Path):
    tiles = write_tiles(tmp_path, 4)
    options = MapOptions(colour=True, colour_map="pixel_shuffle")
    layouts = synthesis_layouts(LayoutPatches(tmp_path, options, augment=False), synthesis_args(match_struct=True))
    assert layouts.appearance is not None and all(p != i for i, p in enumerate(layouts.appearance))
    shuffled = synthesis_layouts(LayoutPatches(tmp_path, options, augment=False), synthesis_args(shuffle_masks=True))
    assert sorted(shuffled.appearance) == [0, 1, 2, 3]
    kept = synthesis_layouts(LayoutPatches(tmp_path, options, augment=False), synthesis_args(preserve_nuclei_col=True))
    assert kept.appearance is None and kept.maps.preserve_nuclei_col
    colours = pixels_of(kept[0]["semantic"].numpy()[3:]).reshape(24, 24, 3)
    image, inst = tiles["t0"]
    np.testing.assert_array_equal(sorted_rows(colours[inst > 0]), sorted_rows(image[inst > 0]))
    with pytest.raises(ConfigError, match="give one"):
        synthesis_layouts(LayoutPatches(tmp_path, options), synthesis_args(match_struct=True, shuffle_masks=True))
    plain = LayoutPatches(tmp_path, MapOptions(colour=True), augment=False)
    with pytest.raises(ConfigError, match="--preserve_nuclei_col"):
        synthesis_layouts(plain, synthesis_args(preserve_nuclei_col=True))


# ----------------------------------------------------------------------------------------------------
# options and the preset
# ----------------------------------------------------------------------------------------------------


def test_original_preset_builds_the_six_channel_condition():
    config = model.resolve_config(["--config", str(CONFIGS / "monuseg_sdm_original.yaml")])
    maps = map_settings(config)
    assert maps == {"num_classes": 2, "classes": False, "instance": True, "hv": True, "hv_convention": "hovernet",
                    "colour": True, "colour_map": "pixel_shuffle", "preserve_nuclei_col": False}
    ours = model.resolve_config(["--config", str(CONFIGS / "monuseg_sdm.yaml")])
    assert map_settings(ours)["hv_convention"] == "centroid"
    assert map_settings(ours)["colour_map"] == "nucleus_mean"


@pytest.mark.parametrize("flags, message", [
    (["--colour_map", "pixel_shuffle"], "add --use_col_map"),
    (["--use_col_map", "--preserve_nuclei_col"], "--colour_map pixel_shuffle"),
    (["--hv_convention", "centroid"], "add --use_hv_map"),
    (["--no-class_maps", "--num_classes", "3"], "--num_classes 3"),
    (["--no-class_maps", "--no_instance"], "no condition map"),
])
def test_map_options_that_would_do_nothing_are_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        model.resolve_config(["--dataset", "synthetic_monuseg", "--model_type", "sdm", *flags])


# ----------------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monuseg") / "data"
    generate_synthetic_monuseg(root, SyntheticMonusegConfig(num_images=3, size=64, seed=1), progress=False)
    tiny = {"dataset": "synthetic_monuseg", "model_type": "sdm", "tile_size": 16, "batch_size": 2, "max_steps": 1,
            "val_every": 1, "val_batches": 1, "num_workers": 0, "dim": 8, "dim_mults": "1,2", "num_res_blocks": 1,
            "attention_resolutions": 8, "num_head_channels": 8, "spade_hidden": 8, "timesteps": 20,
            "data_root": str(root), "out_dir": str(tmp_path_factory.mktemp("runs")), "colour_map": "pixel_shuffle"}
    argv = [item for key, value in tiny.items() for item in (f"--{key}", str(value))]
    return train.run(argv + ["--no-class_maps", "--use_hv_map", "--use_col_map", "--no-augment"])


def test_original_semantics_end_to_end(original_run: Path, tmp_path: Path):
    state = torch.load(original_run / "last.pt", weights_only=True)
    assert state["model_config"]["unet"]["semantic_channels"] == 6
    loaded = model.load_checkpoint(original_run / "last.pt")
    out = tmp_path / "matched"
    argv = ["--ckpt", str(original_run / "last.pt"), "--num_samples", "2", "--timestep_respacing", "ddim2",
            "--batch_size", "2", "--layout_order", "in_order", "--match_struct", "--preserve_nuclei_col",
            "--seed", "3", "--out_dir", str(out)]
    assert inference.main(argv) == 0
    layouts = dataloader.layout_dataset(loaded.config, loaded.model_config)
    paired = synthesis_layouts(layouts, synthesis_args(match_struct=True, preserve_nuclei_col=True, seed=3))
    sample = paired[0]
    assert sample["meta"]["appearance"] != sample["meta"]["name"]
    picture = np.asarray(Image.open(out / "cond" / f"m0_s1.5_00000_{sample['meta']['name']}.png"))
    np.testing.assert_array_equal(picture, maps_to_picture(sample["semantic"].numpy(), paired.maps))
    shuffled = ["--ckpt", str(original_run / "last.pt"), "--num_samples", "2", "--timestep_respacing", "ddim2",
                "--shuffle_masks", "--out_dir", str(tmp_path / "shuffled")]
    assert inference.main(shuffled) == 0
    assert len(list((tmp_path / "shuffled" / "images").glob("*.png"))) == 2

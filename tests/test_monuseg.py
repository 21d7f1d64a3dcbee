"""MoNuSeg layouts: XML polygons to instance masks, tiling, the layout dataset, and the synthetic set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from data.annotations import DataError
from data.condition_maps import MapOptions, build_maps, colour_map, hv_maps
from data.monuseg import (
    LayoutPatches,
    binary_mask,
    is_tiled_folder,
    list_tiles,
    polygons_to_instance_mask,
    read_monuseg_xml,
    split_names,
    tile_monuseg,
)
from data.synthetic_monuseg import (
    SyntheticMonusegConfig,
    generate_synthetic_monuseg,
    main,
    render_monuseg_image,
)
from data.wsi import dihedral

SMALL = SyntheticMonusegConfig(num_images=2, size=96, seed=1)


def imagescope(regions: list[list[tuple]]) -> str:
    """ImageScope XML text with one Region per list of (X, Y) vertices."""
    body = "".join(
        f'<Region Id="{i}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        + "</Vertices></Region>"
        for i, vertices in enumerate(regions, 1)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><Annotations MicronsPerPixel="0.25"><Annotation Id="1">'
        f"<Regions><RegionAttributeHeaders/>{body}</Regions></Annotation></Annotations>"
    )


def square(x0: float, y0: float, side: float) -> list[tuple]:
    """Vertices of an axis-aligned square whose corner pixels are (x0, y0) and (x0 + side - 1, ...)."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_monuseg(tmp_path_factory.mktemp("monuseg") / "raw", SMALL, progress=False)


@pytest.fixture(scope="module")
def tiled(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tile_monuseg(synthetic, tmp_path_factory.mktemp("tiles") / "t48", size=48, stride=16, progress=False)


def test_xml_to_instance_mask_areas_overlap_order_and_fragments(tmp_path: Path):
    path = tmp_path / "a.xml"
    # the small square comes first in the file: drawn in file order, the big one would cover it
    path.write_text(imagescope([square(9, 9, 4), square(2, 2, 10), square(20, 20, 2)]))
    polygons = read_monuseg_xml(path, (32, 32, 3))
    assert len(polygons) == 3 and all(p.shape == (4, 2) for p in polygons)
    np.testing.assert_allclose(polygons[1][2], [11.0, 11.0])

    inst = polygons_to_instance_mask(polygons, (32, 32), min_area=5)
    assert inst.dtype == np.uint16 and inst.shape == (32, 32)
    assert sorted(np.unique(inst)) == [0, 1, 2]
    assert (inst == 1).sum() == 16 and (inst == 2).sum() == 100 - 9
    assert (inst[9:13, 9:13] == 1).all()
    assert inst[20:22, 20:22].max() == 0

    everything = polygons_to_instance_mask(polygons, (32, 32), min_area=0)
    assert [int((everything == i).sum()) for i in (1, 2, 3)] == [16, 91, 4]
    np.testing.assert_array_equal(binary_mask(everything), (everything > 0).astype(np.uint8))
    assert binary_mask(everything).dtype == np.uint8

    # a larger min_area also drops what the overlap left of an instance
    assert sorted(np.unique(polygons_to_instance_mask(polygons, (32, 32), min_area=20))) == [0, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<Annotations><Annotation><Regions><Region>", "not readable"),
        ("<Other/>", "Annotations"),
        (imagescope([square(2, 2, 4), [(1, 1), (3, 3)]]), "region 1 has 2 vertices"),
        (imagescope([square(2, 2, 4)]).replace('X="2"', 'X="two"', 1), "region 0 .*numeric"),
        (imagescope([square(2, 2, 4), square(40, 2, 5)]), "region 1 .*outside"),
    ],
)
def test_bad_xml_is_an_error_naming_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_monuseg_xml(path, (32, 32))
    assert "bad.xml" in str(error.value)


def test_tiling_writes_every_tile_with_relabelled_masks(synthetic: Path, tiled: Path):
    names = list_tiles(tiled)
    per_axis = (96 - 48) // 16 + 1
    assert len(names) == SMALL.num_images * per_axis**2
    assert is_tiled_folder(tiled) and not is_tiled_folder(synthetic)
    assert json.loads((tiled / "tiling.json").read_text())["size"] == 48
    source = tifffile.imread(synthetic / "Tissue Images" / "synthetic_001.tif")
    image = np.asarray(Image.open(tiled / "images" / "synthetic_001_32_16.png"))
    np.testing.assert_array_equal(image, source[32:80, 16:64])
    for name in names:
        inst = tifffile.imread(tiled / "inst_masks" / f"{name}.tif")
        assert inst.dtype == np.uint16 and inst.shape == (48, 48)
        ids = np.unique(inst)
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
        assert np.bincount(inst.ravel())[1:].min(initial=30) >= 30
        binary = np.asarray(Image.open(tiled / "bin_masks" / f"{name}.png"))
        np.testing.assert_array_equal(binary, (inst > 0).astype(np.uint8) * 255)


def test_tiling_is_reused_and_refuses_other_parameters(synthetic: Path, tiled: Path):
    record = tiled / "tiling.json"
    before = record.stat().st_mtime_ns
    assert tile_monuseg(synthetic, tiled, size=48, stride=16, progress=False) == tiled
    assert record.stat().st_mtime_ns == before
    with pytest.raises(DataError, match="stride"):
        tile_monuseg(synthetic, tiled, size=48, stride=48, progress=False)
    assert not [p for p in tiled.parent.iterdir() if p.name.endswith(".tmp")]


def test_tiling_errors_name_the_file(synthetic: Path, tmp_path: Path):
    broken = tmp_path / "raw"
    shutil.copytree(synthetic, broken)
    (broken / "Annotations" / "synthetic_001.xml").unlink()
    with pytest.raises(DataError, match="synthetic_001.xml"):
        tile_monuseg(broken, tmp_path / "out", size=48, progress=False)
    assert not (tmp_path / "out").exists()

    (broken / "Annotations" / "synthetic_001.xml").write_text(imagescope([square(2, 2, 6), square(150, 10, 6)]))
    with pytest.raises(DataError, match="synthetic_001.xml.*outside"):
        tile_monuseg(broken, tmp_path / "out", size=48, progress=False)
    with pytest.raises(DataError, match="smaller than the tile size"):
        tile_monuseg(synthetic, tmp_path / "big", size=128, progress=False)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def write_tiled(folder: Path, tiles: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A tiled folder made elsewhere: TIFF images and uint16 TIFF instance masks."""
    (folder / "images").mkdir(parents=True)
    (folder / "inst_masks").mkdir()
    for name, (image, inst) in tiles.items():
        tifffile.imwrite(folder / "images" / f"{name}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / "inst_masks" / f"{name}.tif", inst.astype(np.uint16))
    return folder


def asymmetric_layout() -> tuple[np.ndarray, np.ndarray]:
    """A 24 x 24 layout without symmetries (so each rotation/flip gives another mask) and its image."""
    inst = np.zeros((24, 24), dtype=np.int64)
    inst[2:7, 3:12] = 1
    inst[10:20, 14:18] = 2
    inst[15:19, 2:5] = 7
    image = np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return image, inst


def test_pretiled_folder_is_read_directly_and_size_mismatch_is_an_error(tmp_path: Path):
    image, inst = asymmetric_layout()
    folder = write_tiled(tmp_path / "ok", {"patch-a": (image, inst), "b": (image[::-1].copy(), inst)})
    assert is_tiled_folder(folder) and list_tiles(folder) == ["b", "patch-a"]
    data = LayoutPatches(folder, MapOptions(), augment=False)
    assert data.names == ["b", "patch-a"]
    np.testing.assert_array_equal(data[1]["inst_mask"].numpy(), inst)

    bad = write_tiled(tmp_path / "bad", {"a": (image, inst), "c": (image[:20], inst)})
    with pytest.raises(DataError, match="c.tif"):
        LayoutPatches(bad, MapOptions())
    (bad / "inst_masks" / "c.tif").unlink()
    with pytest.raises(DataError, match="no matching instance mask"):
        list_tiles(bad)


def test_layout_patches_keys_shapes_and_ranges(tiled: Path):
    options = MapOptions(hv=True, colour=True)
    data = LayoutPatches(tiled, options, seed=3)
    assert len(data) == len(list_tiles(tiled)) and data.names == list_tiles(tiled)
    sample = data[5]
    assert set(sample) == {"image", "semantic", "inst_mask", "meta"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 48, 48)
    assert sample["image"].min() >= -1 and sample["image"].max() <= 1
    assert sample["semantic"].dtype == torch.float32 and sample["semantic"].shape == (2 + 1 + 2 + 3, 48, 48)
    assert sample["inst_mask"].dtype == torch.int64 and sample["inst_mask"].shape == (48, 48)
    assert sample["meta"] == {"name": data.names[5]}
    again = LayoutPatches(tiled, options, seed=3)[5]
    assert torch.equal(again["semantic"], sample["semantic"]) and torch.equal(again["image"], sample["image"])

    subset = LayoutPatches(tiled, options, names=data.names[3:1:-1])
    assert subset.names == data.names[3:1:-1] and subset[0]["meta"]["name"] == data.names[3]
    with pytest.raises(DataError, match="no tiles named"):
        LayoutPatches(tiled, options, names=["missing"])


def test_augmentation_moves_image_mask_and_maps_together(tmp_path: Path):
    image, inst = asymmetric_layout()
    folder = write_tiled(tmp_path / "t", {"only": (image, inst)})
    options = MapOptions(hv=True, colour=True, shuffle_colour=False)
    data = LayoutPatches(folder, options, augment=True, seed=0)
    plain = build_maps(inst, image, options)
    seen = set()
    for index in range(24):
        sample = data[index]
        mask = sample["inst_mask"].numpy()
        matches = [k for k in range(8) if np.array_equal(mask, dihedral(inst, k))]
        assert len(matches) == 1
        k = matches[0]
        seen.add(k)
        rotated_image = dihedral(image, k)
        expected_image = rotated_image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        np.testing.assert_allclose(sample["image"].numpy(), expected_image, atol=1e-6)
        semantic = sample["semantic"].numpy()
        np.testing.assert_allclose(semantic[3:5], hv_maps(dihedral(inst, k)), atol=1e-6)
        np.testing.assert_allclose(semantic[5:8], colour_map(dihedral(inst, k), rotated_image), atol=1e-6)
        for channel in (0, 1, 2, 5, 6, 7):
            np.testing.assert_array_equal(semantic[channel], dihedral(plain[channel], k))
        if k in (1, 3):
            assert not np.allclose(semantic[3:5], np.stack([dihedral(c, k) for c in plain[3:5]]))
    assert len(seen) >= 4

    fixed = LayoutPatches(folder, options, augment=False)
    assert all(torch.equal(fixed[i]["inst_mask"], torch.from_numpy(inst)) for i in range(3))


def test_colour_shuffle_is_an_augmentation(tmp_path: Path):
    image, inst = asymmetric_layout()
    folder = write_tiled(tmp_path / "t", {"only": (image, inst)})
    options = MapOptions(instance=False, colour=True, shuffle_colour=True)
    plain = colour_map(inst, image)
    off = LayoutPatches(folder, options, augment=False)
    np.testing.assert_allclose(off[0]["semantic"].numpy()[2:], plain, atol=1e-6)
    on = LayoutPatches(folder, options, augment=True)
    means = {tuple(np.round(plain[:, inst == i][:, 0], 4)) for i in (1, 2, 7)}
    shuffled_any = False
    for index in range(8):
        sample = on[index]
        mask, colours = sample["inst_mask"].numpy(), sample["semantic"].numpy()[2:]
        found = {tuple(np.round(colours[:, mask == i][:, 0], 4)) for i in (1, 2, 7)}
        assert found == means
        k = next(k for k in range(8) if np.array_equal(mask, dihedral(inst, k)))
        shuffled_any |= not np.allclose(colours, colour_map(mask, dihedral(image, k)), atol=1e-6)
    assert shuffled_any


def test_split_names_is_deterministic_and_keeps_sources_together():
    names = [f"img{i}_{y}_{x}" for i in range(10) for y in (0, 16) for x in (0, 16)]
    train, val = split_names(names, 0.2, seed=4)
    assert (train, val) == split_names(names, 0.2, seed=4)
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    assert len(val) == 2 * 4
    assert {n.split("_")[0] for n in train}.isdisjoint({n.split("_")[0] for n in val})
    assert split_names(names, 0.2, seed=5) != (train, val)
    assert split_names(names, 0.0, seed=4) == (names, [])
    assert len(split_names(["a", "b"], 0.1, seed=0)[1]) == 1
    with pytest.raises(DataError, match="--val_fraction"):
        split_names(names, 1.0, seed=0)


def test_synthetic_monuseg_is_deterministic_by_seed(synthetic: Path, tmp_path: Path):
    again = generate_synthetic_monuseg(tmp_path / "again", SMALL, progress=False)
    other = generate_synthetic_monuseg(tmp_path / "other", SyntheticMonusegConfig(2, 96, seed=2), progress=False)
    for relative in ("Tissue Images/synthetic_000.tif", "Annotations/synthetic_001.xml"):
        assert (again / relative).read_bytes() == (synthetic / relative).read_bytes()
        assert (other / relative).read_bytes() != (synthetic / relative).read_bytes()
    record = synthetic / "synthetic_monuseg.json"
    before = record.stat().st_mtime_ns
    assert generate_synthetic_monuseg(synthetic, SMALL, progress=False) == synthetic
    assert record.stat().st_mtime_ns == before
    with pytest.raises(DataError, match="seed"):
        generate_synthetic_monuseg(synthetic, SyntheticMonusegConfig(2, 96, seed=9), progress=False)


def test_synthetic_monuseg_round_trips_through_the_reader(tmp_path: Path):
    config = SyntheticMonusegConfig(num_images=2, size=256, seed=0)
    assert main(["--root", str(tmp_path / "set"), "--num_images", "2", "--size", "256", "--quiet"]) == 0
    for index in range(config.num_images):
        image, drawn = render_monuseg_image(np.random.default_rng([config.seed, index]), config.size)
        stem = f"synthetic_{index:03d}"
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "set" / "Tissue Images" / f"{stem}.tif"), image)
        polygons = read_monuseg_xml(tmp_path / "set" / "Annotations" / f"{stem}.xml", image.shape)
        assert 30 <= len(polygons) <= 80
        assert all(16 <= len(p) <= 40 for p in polygons)
        inst = polygons_to_instance_mask(polygons, image.shape)
        assert inst.max() == drawn.max() == len(polygons)
        for label in range(1, int(drawn.max()) + 1):
            truth, found = drawn == label, inst == label
            assert (truth & found).sum() / (truth | found).sum() > 0.8
        sideways = (drawn[:, 1:] != drawn[:, :-1]) & (drawn[:, 1:] > 0) & (drawn[:, :-1] > 0)
        upright = (drawn[1:] != drawn[:-1]) & (drawn[1:] > 0) & (drawn[:-1] > 0)
        assert sideways.sum() + upright.sum() >= 10
        colours = image[drawn > 0].astype(float).mean(0) - image[drawn == 0].astype(float).mean(0)
        assert colours[0] < -40 and colours[1] < -40


def test_nucleus_types_from_a_types_folder(tmp_path):
    folder = tmp_path / "tiles"
    for sub in ("images", "inst_masks", "types"):
        (folder / sub).mkdir(parents=True)
    image = np.full((8, 8, 3), 200, np.uint8)
    inst = np.zeros((8, 8), np.uint16)
    inst[1:3, 1:3], inst[5:7, 5:7] = 1, 2
    types = np.zeros((8, 8), np.uint16)
    types[1:3, 1:3], types[5:7, 5:7] = 1, 3
    Image.fromarray(image).save(folder / "images" / "a.png")
    tifffile.imwrite(folder / "inst_masks" / "a.tif", inst)
    tifffile.imwrite(folder / "types" / "a.tif", types)
    sample = LayoutPatches(folder, MapOptions(num_classes=4, instance=False), augment=False)[0]
    semantic = sample["semantic"].numpy()
    assert semantic.shape == (4, 8, 8)
    assert semantic[1, 1, 1] == 1 and semantic[3, 6, 6] == 1 and semantic[2].sum() == 0 and semantic[0, 0, 0] == 1
    with pytest.raises(DataError, match="--num_classes"):
        LayoutPatches(folder, MapOptions(num_classes=3, instance=False), augment=False)[0]

"""Patch reading and sampling over whole-slide images."""
from __future__ import annotations

import numpy as np
import openslide
import pytest

from data.annotations import Annotation, DataError
from data.wsi import (
    PatchOptions,
    StreamSampler,
    WSIEvalPatches,
    WSITrainPatches,
    check_tile_fits,
    dihedral,
    read_patch,
    resolve_slides,
    split_annotations,
    to_model_range,
)


def ann(slide: str, x: float, y: float, label: int, uid: str = "0") -> Annotation:
    return Annotation(slide=slide, x=x, y=y, class_name="m" if label else "n", label=label, soft=float(label), uid=uid)


def test_patch_from_real_svs_equals_openslide(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    with openslide.OpenSlide(str(path)) as slide:
        patch = read_patch(slide, 1000, 1200, 64)
        direct = np.asarray(slide.read_region((1000 - 32, 1200 - 32), 0, (64, 64)))[..., :3]
    assert patch.shape == (64, 64, 3)
    np.testing.assert_array_equal(patch, direct)


def test_pixels_outside_the_slide_are_white(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    with openslide.OpenSlide(str(path)) as slide:
        patch = read_patch(slide, 0, 0, 32)
        inside = np.asarray(slide.read_region((0, 0), 0, (16, 16)))[..., :3]
    assert (patch[:16, :16] == 255).all() and (patch[:16, 16:] == 255).all()
    np.testing.assert_array_equal(patch[16:, 16:], inside)


def test_dihedral_gives_eight_distinct_views():
    patch = np.arange(2 * 2 * 1).reshape(2, 2, 1)
    views = {dihedral(patch, k).tobytes() for k in range(8)}
    assert len(views) == 8


def test_scaling_to_model_range():
    patch = np.full((4, 4, 3), 255, np.uint8)
    patch[0, 0] = 0
    x = to_model_range(patch, "minmax")
    assert x.shape == (3, 4, 4) and x.max() == 1.0 and x.min() == -1.0
    dim = (patch // 2).astype(np.uint8)
    y = to_model_range(dim, "percentile")
    assert y.max() == pytest.approx(1.0)
    bright = np.full((10, 10, 3), 100, np.uint8)
    bright[0, 0] = 250  # one outlier pixel, above the 99th percentile
    assert to_model_range(bright, "percentile").max() == pytest.approx(1.0)
    unclipped = to_model_range(bright, "percentile_unclipped")
    top = np.percentile(bright.astype(np.float32), 99)
    assert unclipped.max() == pytest.approx(2 * 250 / top - 1) and unclipped.max() > 1.0


def test_mite_ratio_is_honoured_per_batch():
    anns = [ann("s", i, i, i % 3 == 0, str(i)) for i in range(30)]
    for ratio in (0.1, 0.5, 0.75):
        ds = WSITrainPatches(anns, {"s": "unused"}, PatchOptions(), batch_size=10, mite_ratio=ratio, seed=1)
        counts = [sum(ds.is_mitotic_slot(b * 10 + p) for p in range(10)) for b in range(400)]
        assert set(counts) <= {int(np.floor(ratio * 10)), int(np.ceil(ratio * 10))}
        assert np.mean(counts) / 10 == pytest.approx(ratio, abs=0.01)


def test_mite_ratio_with_fractional_count_averages_out():
    anns = [ann("s", i, i, i % 2, str(i)) for i in range(10)]
    ds = WSITrainPatches(anns, {"s": "unused"}, PatchOptions(), batch_size=8, mite_ratio=0.3, seed=2)
    counts = [sum(ds.is_mitotic_slot(b * 8 + p) for p in range(8)) for b in range(2000)]
    assert set(counts) == {2, 3}
    assert np.mean(counts) / 8 == pytest.approx(0.3, abs=0.01)


def test_training_samples_follow_mite_ratio_on_slides(synthetic_root):
    from data.sliderunner import read_sliderunner
    from data.annotations import ClassMap

    anns = read_sliderunner(synthetic_root / "Annotations" / "synthetic.sqlite", ClassMap(("Mitotic figure",), ("Mitotic figure lookalike",)))
    paths = resolve_slides(anns, synthetic_root / "WSI")
    ds = WSITrainPatches(anns, paths, PatchOptions(tile_size=16, score="hard"), batch_size=8, mite_ratio=0.25, seed=0)
    labels = [ds[i]["label"] for i in range(8 * 25)]
    assert np.mean(labels) == pytest.approx(0.25, abs=1e-9)
    again = ds[17]
    np.testing.assert_array_equal(again["image"].numpy(), ds[17]["image"].numpy())
    assert again["image"].shape == (3, 16, 16) and -1 <= float(again["image"].min()) <= float(again["image"].max()) <= 1


def test_stream_sampler_resumes_and_splits_ranks():
    full = StreamSampler(4, start_batch=0)
    it = iter(full)
    first = [next(it) for _ in range(12)]
    resumed = iter(StreamSampler(4, start_batch=2))
    assert [next(resumed) for _ in range(4)] == first[8:12]
    r0, r1 = iter(StreamSampler(2, 0, 0, 2)), iter(StreamSampler(2, 0, 1, 2))
    a, b = [next(r0) for _ in range(4)], [next(r1) for _ in range(4)]
    assert a == [0, 1, 4, 5] and b == [2, 3, 6, 7]


def test_y_percentile_split_keeps_every_slide_in_both_sets():
    anns = [ann(s, 0, y, y % 2, f"{s}{y}") for s in ("a", "b") for y in range(10)]
    train, val = split_annotations(anns, "y_percentile", val_fraction=0.2)
    assert len(train) == 16 and len(val) == 4
    assert {a.slide for a in val} == {"a", "b"}
    assert min(a.y for a in val) > max(a.y for a in train)


def test_slide_list_split(tmp_path):
    csv = tmp_path / "split.csv"
    csv.write_text("slide,split\na,train\nb,val\n")
    anns = [ann("a", 0, 0, 1), ann("b", 0, 0, 0), ann("c", 0, 0, 0)]
    train, val = split_annotations(anns, "slides", csv)
    assert [a.slide for a in train] == ["a"] and [a.slide for a in val] == ["b"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,set\na,train\n")
    with pytest.raises(DataError, match="slide,split"):
        split_annotations(anns, "slides", bad)


def test_missing_slide_file_is_named(tmp_path):
    with pytest.raises(DataError, match="ghost.svs"):
        resolve_slides([ann("ghost.svs", 1, 1, 1)], tmp_path)


def test_tile_larger_than_slide():
    with pytest.raises(DataError, match="larger than slide small"):
        check_tile_fits({"small": (100, 50)}, 64)


def test_eval_patches_are_centred_and_unaugmented(synthetic_root):
    from data.sliderunner import read_sliderunner

    anns = read_sliderunner(synthetic_root / "Annotations" / "synthetic.sqlite")[:3]
    paths = resolve_slides(anns, synthetic_root / "WSI")
    ds = WSIEvalPatches(anns, paths, PatchOptions(tile_size=32, augment=False))
    sample = ds[1]
    with openslide.OpenSlide(str(paths[anns[1].slide])) as slide:
        expected = to_model_range(read_patch(slide, anns[1].x, anns[1].y, 32))
    np.testing.assert_array_equal(sample["image"].numpy(), expected)
    assert sample["meta"]["uid"] == anns[1].uid

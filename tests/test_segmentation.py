"""Downstream segmentation: metrics against hand counts, training, batch composition, the downstream run, errors."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage.draw import disk

from tools import segmentation
from data.annotations import DataError
from tools.segmentation import (
    MixedBatchSampler,
    SegNet,
    comes_from,
    dice_score,
    evaluate_segmentation,
    object_f1,
    read_tiled_folder,
    run_downstream,
    source_of,
    split_by_name,
    train_segmentation,
)

BACKGROUND = np.array([235, 205, 225])
NUCLEUS = np.array([70, 40, 120])


def disc_tile(size: int, count: int, radius: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright tile with `count` dark non-overlapping discs, and its uint16 instance ids."""
    instances = np.zeros((size, size), np.uint16)
    placed = 0
    for _ in range(200 * count):
        if placed == count:
            break
        r, c = rng.integers(radius, size - radius, 2)
        rr, cc = disk((r, c), radius + 1, shape=instances.shape)
        if instances[rr, cc].any():
            continue
        placed += 1
        rr, cc = disk((r, c), radius, shape=instances.shape)
        instances[rr, cc] = placed
    colour = np.where(instances[..., None] > 0, NUCLEUS, BACKGROUND)
    image = np.clip(colour + rng.normal(0, 12, colour.shape), 0, 255).astype(np.uint8)
    return image, instances


def write_tiled_folder(
    root: Path,
    n: int,
    size: int = 32,
    count: int = 3,
    radius: int = 4,
    seed: int = 0,
    mask_folder: str = "bin_masks",
    prefix: str = "tile",
    names: list[str] | None = None,
) -> Path:
    """A tiled folder: images/*.png, <mask_folder>/*.png (0/255) and inst_masks/*.tif; tiles named prefix_NN or `names`."""
    rng = np.random.default_rng(seed)
    for sub in ("images", mask_folder, "inst_masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names or [f"{prefix}_{i:02d}" for i in range(n)]):
        image, instances = disc_tile(size, count, radius, rng)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(((instances > 0) * 255).astype(np.uint8)).save(root / mask_folder / f"{name}.png")
        tifffile.imwrite(root / "inst_masks" / f"{name}.tif", instances)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread, and do not compete with other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square(mask: np.ndarray, top: int, left: int, side: int = 10, value: int = 1) -> np.ndarray:
    mask[top : top + side, left : left + side] = value
    return mask


# --------------------------------------------------------------------------------------------- metrics


def test_perfect_prediction_scores_one():
    truth = square(square(np.zeros((40, 40), np.int32), 2, 2, value=1), 20, 20, value=2)
    assert dice_score(truth > 0, truth > 0) == 1.0
    assert object_f1(truth > 0, truth) == (1.0, 1.0, 1.0)


def test_half_overlap():
    truth = square(np.zeros((20, 30), np.int32), 5, 0)
    pred = square(np.zeros((20, 30), bool), 5, 5, value=True)
    assert dice_score(pred, truth) == pytest.approx(2 * 50 / 200)
    assert object_f1(pred, truth) == (0.0, 0.0, 0.0)  # IoU 50 / 150 < 0.5
    assert object_f1(pred, truth, iou=0.3) == (1.0, 1.0, 1.0)


def test_one_missed_nucleus():
    truth = square(square(np.zeros((40, 40), np.int32), 2, 2, value=1), 20, 20, value=2)
    pred = square(np.zeros((40, 40), bool), 2, 2, value=True)
    assert dice_score(pred, truth) == pytest.approx(2 * 100 / 300)
    f1, precision, recall = object_f1(pred, truth)
    assert (precision, recall) == (1.0, 0.5)
    assert f1 == pytest.approx(2 / 3)


def test_one_false_positive():
    truth = square(np.zeros((40, 40), np.int32), 2, 2, value=7)
    pred = square(square(np.zeros((40, 40), bool), 2, 2, value=True), 25, 25, value=True)
    assert dice_score(pred, truth) == pytest.approx(2 * 100 / 300)
    f1, precision, recall = object_f1(pred, truth)
    assert (precision, recall) == (0.5, 1.0)
    assert f1 == pytest.approx(2 / 3)


def test_merged_nuclei_count_as_one_false_positive_and_two_misses():
    truth = square(square(np.zeros((20, 40), np.int32), 5, 2, value=1), 5, 14, value=2)
    pred = truth > 0
    pred[9:11, 12:14] = True  # a 4 px bridge joins the two squares into one component
    assert dice_score(pred, truth) == pytest.approx(2 * 200 / 404)
    assert object_f1(pred, truth) == (0.0, 0.0, 0.0)  # IoU 100 / 204 with each nucleus
    # a prediction spilling a little beyond one nucleus still matches it
    pred = square(np.zeros((20, 40), bool), 5, 2, value=True)
    pred[5:15, 12] = True
    f1, precision, recall = object_f1(pred, truth)
    assert (precision, recall) == (1.0, 0.5)


def test_matching_is_one_to_one():
    truth = square(np.zeros((20, 20), np.int32), 0, 0, side=10, value=3)
    pred = np.zeros((20, 20), bool)
    pred[0:10, 0:5] = True
    pred[0:10, 6:10] = True  # two pieces of one nucleus, IoU 0.5 and 0.4: only one of them may match it
    f1, precision, recall = object_f1(pred, truth, iou=0.4)
    assert (precision, recall) == (0.5, 1.0)
    assert dice_score(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert object_f1(np.zeros((3, 3)), np.zeros((3, 3), np.int32)) == (1.0, 1.0, 1.0)
    assert object_f1(np.zeros((3, 3)), np.ones((3, 3), np.int32)) == (0.0, 0.0, 0.0)


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        object_f1(np.zeros((3, 3)), np.zeros((4, 3), np.int32))


# --------------------------------------------------------------------------------------------- network, reader


def test_segnet_keeps_any_input_size():
    model = SegNet(base=4, depth=3).eval()
    for h, w in ((32, 32), (27, 45)):
        assert model(torch.zeros(2, 3, h, w)).shape == (2, 1, h, w)


def test_reader_prefers_labels_and_checks_sizes(tmp_path):
    folder = write_tiled_folder(tmp_path / "gen", 2, mask_folder="labels")
    (folder / "bin_masks").mkdir()
    for path in (folder / "labels").iterdir():
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "bin_masks" / path.name)
    tiles = read_tiled_folder(folder)
    assert [t.name for t in tiles] == ["tile_00", "tile_01"]
    assert all(t.mask.any() and np.array_equal(t.mask, t.instances > 0) for t in tiles)
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(folder / "labels" / "tile_01.png")
    with pytest.raises(DataError, match=r"labels/tile_01\.png: mask is 30x32 px but image .*tile_01\.png is 32x32"):
        read_tiled_folder(folder)
    (folder / "labels" / "tile_01.png").unlink()
    with pytest.raises(DataError, match=r"labels/tile_01\.png: missing"):
        read_tiled_folder(folder)


# --------------------------------------------------------------------------------------------- training


def test_training_learns_dark_discs(tmp_path):
    folder = write_tiled_folder(tmp_path / "real", 12, size=32, count=3, radius=4)
    tiles = read_tiled_folder(folder)
    model = train_segmentation(tiles[:8], steps=100, batch_size=8, lr=1e-2, crop_size=32, base=8, depth=2, progress=False)
    losses = model.loss_history
    assert len(losses) == 100
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    scores = evaluate_segmentation(model, tiles[8:])
    chance = np.mean([dice_score(np.ones_like(t.mask), t.mask) for t in tiles[8:]])
    assert chance < 0.5
    assert scores["dice"] > 0.8
    assert scores["f1"] > 0.5


@pytest.mark.parametrize("ratio, expected", [(0.0, {"real"}), (1.0, {"synthetic"})])
def test_ratio_decides_the_source_of_every_sample(tmp_path, monkeypatch, ratio, expected):
    real = read_tiled_folder(write_tiled_folder(tmp_path / "real", 3))
    synthetic = read_tiled_folder(write_tiled_folder(tmp_path / "gen", 3, seed=1, mask_folder="labels"))
    drawn: list[str] = []
    original = MixedBatchSampler.draw

    def recording_draw(self):
        batch = original(self)
        drawn.extend(source for source, _ in batch)
        return batch

    monkeypatch.setattr(MixedBatchSampler, "draw", recording_draw)
    train_segmentation(real, synthetic, ratio=ratio, steps=3, batch_size=4, crop_size=16, base=4, depth=1, progress=False)
    assert len(drawn) == 12 and set(drawn) == expected


def test_mixed_batches_hold_the_expected_share():
    rng = np.random.default_rng(0)
    exact = MixedBatchSampler(5, 5, 0.25, 8, rng)
    assert all(sum(s == "synthetic" for s, _ in exact.draw()) == 2 for _ in range(50))
    mixed = MixedBatchSampler(5, 7, 0.35, 10, rng)
    counts = [sum(s == "synthetic" for s, _ in mixed.draw()) for _ in range(2000)]
    assert set(counts) == {3, 4}
    assert np.mean(counts) == pytest.approx(3.5, abs=0.1)
    batch = mixed.draw()
    assert all(0 <= i < (7 if s == "synthetic" else 5) for s, i in batch)
    with pytest.raises(ValueError, match="needs synthetic tiles"):
        MixedBatchSampler(5, 0, 0.5, 8, rng)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        MixedBatchSampler(5, 5, 1.5, 8, rng)


# --------------------------------------------------------------------------------------------- downstream run


def test_split_by_name_is_deterministic_and_keeps_source_images_together():
    names = [f"t{i}" for i in range(10)]
    train, held = split_by_name(names, 0.3, seed=4)
    assert len(held) == 3 and sorted(train + held) == sorted(names)
    assert split_by_name(reversed(names), 0.3, seed=4) == (train, held)
    assert split_by_name(names, 0.01, seed=0)[1] and split_by_name(names, 0.99, seed=0)[0]
    tiles = [f"img{s}_{y}_{x}" for s in "ABCDE" for y in (0, 256) for x in (0, 256)]
    train, held = split_by_name(tiles, 0.4, seed=1)
    assert len(held) == 8 and not {source_of(n) for n in train} & {source_of(n) for n in held}
    single = [f"slide_{y}_0" for y in range(0, 1000, 100)]
    assert len(split_by_name(single, 0.3, seed=0)[1]) == 3  # one source image: its tiles are split


def test_comes_from_finds_generated_tiles_of_held_out_layouts():
    held, sources = {"imgB_0_256", "tile_03"}, {"imgB"}
    assert comes_from("sdm_s1.5_00007_imgB_0_256", held, sources)
    assert comes_from("sdm_s1.5_00008_imgB_256_0", held, sources)  # another tile of a held-out image
    assert comes_from("tile_03", held, sources) and comes_from("gen_tile_03", held, sources)
    assert not comes_from("sdm_s1.5_00007_imgA_0_256", held, sources)
    assert not comes_from("sdm_s1.5_00007_imgBB_0_256", held, sources)
    assert not comes_from("tile_030", held, sources)


def test_run_downstream_writes_results_and_never_trains_on_held_out(tmp_path, monkeypatch):
    names = ["imgA_0_0", "imgA_0_32", "imgB_0_0", "imgB_0_32", "imgC_0_0", "imgD_0_0", "imgE_0_0"]
    real = write_tiled_folder(tmp_path / "real", 0, names=names)
    generated = [f"sdm_s2_{i:05d}_{name}" for i, name in enumerate(names)] + ["other_00", "other_01"]
    gen = write_tiled_folder(tmp_path / "gen", 0, seed=2, mask_folder="labels", names=generated)
    trained_on: list[tuple[set[str], set[str]]] = []
    evaluated_on: list[set[str]] = []
    train, evaluate = segmentation.train_segmentation, segmentation.evaluate_segmentation

    def recording_train(real_tiles, synthetic_tiles, ratio, *args, **kwargs):
        used = ({t.name for t in real_tiles} if ratio < 1 else set(), {t.name for t in synthetic_tiles} if ratio > 0 else set())
        trained_on.append(used)
        return train(real_tiles, synthetic_tiles, ratio, *args, **kwargs)

    def recording_evaluate(model, held_out, *args, **kwargs):
        evaluated_on.append({t.name for t in held_out})
        return evaluate(model, held_out, *args, **kwargs)

    monkeypatch.setattr(segmentation, "train_segmentation", recording_train)
    monkeypatch.setattr(segmentation, "evaluate_segmentation", recording_evaluate)
    out = tmp_path / "results" / "downstream.csv"
    rows = run_downstream(real, [gen], [0, 0.5, 1], held_out_fraction=0.3, steps=2, batch_size=4, out_csv=out,
                          device="cpu", crop_size=16, progress=False)
    assert [r["ratio"] for r in rows] == [0, 0.5, 1]
    held = evaluated_on[0]
    assert len(evaluated_on) == 3 and all(e == held for e in evaluated_on)
    held_sources = {source_of(n) for n in held}
    assert len(held_sources) == 2  # round(0.3 * 5 source images)
    train_real = trained_on[0][0]
    assert train_real | held == set(names) and not {source_of(n) for n in train_real} & held_sources
    for real_names, synthetic_names in trained_on:
        assert not real_names & held
        assert not any(source_of(n.split("_", 3)[-1]) in held_sources for n in synthetic_names)
    assert trained_on[1][1] == {f"sdm_s2_{names.index(n):05d}_{n}" for n in train_real} | {"other_00", "other_01"}
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["ratio", "n_real", "n_synthetic", "dice", "f1", "precision", "recall"]
    n_train, n_syn = str(len(train_real)), str(len(train_real) + 2)
    assert [(r["n_real"], r["n_synthetic"]) for r in table] == [(n_train, "0"), (n_train, n_syn), ("0", n_syn)]
    assert all(0 <= float(r["dice"]) <= 1 for r in table)
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        run_downstream(real, [gen], [0], out_csv=out, device="cpu", progress=False)


def test_cli_runs_and_reports_bad_folders(tmp_path, capsys):
    real = write_tiled_folder(tmp_path / "real", 4)
    gen = write_tiled_folder(tmp_path / "gen", 2, seed=5, mask_folder="labels")
    out = tmp_path / "downstream.csv"
    args = ["--real", str(real), "--synthetic", str(gen), "--ratios", "0,1", "--steps", "2", "--batch_size", "2",
            "--crop_size", "16", "--device", "cpu", "--out", str(out)]
    assert segmentation.main(args) == 0
    assert len(out.read_text().splitlines()) == 3
    assert segmentation.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert segmentation.main(args + ["--overwrite"]) == 0

    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(gen / "images" / "tile_01.png")
    assert segmentation.main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "tile_01.png: mask is 32x32 px but image" in err and "Traceback" not in err
    assert segmentation.main(args[:2] + ["--synthetic", str(tmp_path / "nowhere")] + args[4:] + ["--overwrite"]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    (real / "bin_masks").rename(real / "other")
    (real / "inst_masks").rename(real / "other2")
    assert segmentation.main(args + ["--overwrite"]) == 2
    assert "no masks" in capsys.readouterr().err
    assert segmentation.main(args + ["--overwrite", "--ratios", "0,2"]) == 2
    assert "--ratios" in capsys.readouterr().err

"""Downstream segmentation: metrics against hand counts, folder formats, the downstream run through train.py, errors."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage.draw import disk

from data.annotations import DataError
from data.tile_pairs import TilePairs, list_pairs
from tools import segmentation
from tools.segmentation import (
    TrainSettings,
    comes_from,
    dice_score,
    object_f1,
    read_tiled_folder,
    run_downstream,
    source_of,
    split_by_name,
)

# A small encoder keeps the tiny runs quick on the CPU (its UNet needs batches of at least 2 at 32 px).
QUICK = TrainSettings(steps=2, batch_size=2, lr=1e-3, seed=0, encoder="mobilenet_v2", device="cpu", num_workers=0)

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


# --------------------------------------------------------------------------------------------- folders


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

@pytest.mark.parametrize("mask_folder", ["labels", "bin_masks", "masks"])
def test_tile_pairs_read_every_mask_folder_format(tmp_path, mask_folder):
    folder = write_tiled_folder(tmp_path / mask_folder, 2, mask_folder=mask_folder)
    if mask_folder == "masks":  # class indices, not 0/255
        for path in (folder / "masks").iterdir():
            Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8)).save(path)
    pairs = list_pairs(folder)
    assert [p.name for p in pairs] == ["tile_00", "tile_01"] and all(p.mask.parent.name == mask_folder for p in pairs)
    truth = [t.mask for t in read_tiled_folder(folder)] if mask_folder != "masks" else None
    for i, pair in enumerate(pairs):
        classes = TilePairs(pairs, 2)[i]["semantic"].argmax(0).numpy()
        expected = np.asarray(tifffile.imread(folder / "inst_masks" / f"{pair.name}.tif")) > 0
        assert classes.dtype == np.int64 and set(np.unique(classes)) == {0, 1}
        assert np.array_equal(classes == 1, expected)
        assert truth is None or np.array_equal(truth[i], expected)


def test_tile_pairs_prefer_masks_and_name_what_is_missing(tmp_path):
    folder = write_tiled_folder(tmp_path / "both", 1, mask_folder="bin_masks")
    (folder / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "masks" / "tile_00.png")
    assert list_pairs(folder)[0].mask == folder / "masks" / "tile_00.png"
    bare = write_tiled_folder(tmp_path / "bare", 1, mask_folder="inst_only")
    with pytest.raises(DataError, match=r"bare: expected a tile folder with images/\*\.png and masks/\*\.png .*labels/\*\.png or bin_masks"):
        list_pairs(bare)
    (folder / "masks" / "tile_00.png").unlink()
    (folder / "masks").rmdir()
    (folder / "bin_masks" / "tile_00.png").unlink()
    with pytest.raises(DataError, match=r"tile_00\.png: no mask .*bin_masks/tile_00\.png"):
        list_pairs(folder)


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
    trained_on: list[dict[str, set[str]]] = []
    scored_on: list[set[str]] = []
    train, score = segmentation.train_model, segmentation.score_checkpoint

    def recording_train(folders, shares, out_dir, settings):
        assert len(folders) == len(shares) and sum(shares) == pytest.approx(1)
        trained_on.append({Path(f).name: {p.name for p in list_pairs(f)} for f in folders})
        return train(folders, shares, out_dir, settings)

    def recording_score(checkpoint, held_out, *args, **kwargs):
        scored_on.append({t.name for t in held_out})
        assert checkpoint.name == "last.pt"
        return score(checkpoint, held_out, *args, **kwargs)

    monkeypatch.setattr(segmentation, "train_model", recording_train)
    monkeypatch.setattr(segmentation, "score_checkpoint", recording_score)
    out = tmp_path / "results" / "downstream.csv"
    rows = run_downstream(real, [gen], [0, 0.5, 1], held_out_fraction=0.3, settings=QUICK, out_csv=out, progress=False)
    assert [r["ratio"] for r in rows] == [0, 0.5, 1]
    held = scored_on[0]
    assert len(scored_on) == 3 and all(s == held for s in scored_on)
    held_sources = {source_of(n) for n in held}
    assert len(held_sources) == 2  # round(0.3 * 5 source images)
    setting = f"real_{len(trained_on[0][next(iter(trained_on[0]))])}_seed_0"
    assert [set(t) for t in trained_on] == [{setting}, {setting, "synthetic"}, {"synthetic"}]
    train_real = trained_on[0][setting]
    assert train_real | held == set(names) and not {source_of(n) for n in train_real} & held_sources
    synthetic = trained_on[1]["synthetic"]
    assert synthetic == {f"sdm_s2_{names.index(n):05d}_{n}" for n in train_real} | {"other_00", "other_01"}
    assert trained_on[1][setting] == train_real and trained_on[2]["synthetic"] == synthetic
    runs = tmp_path / "results" / "downstream_runs"
    for ratio in ("0", "0.5", "1"):
        assert (runs / setting / f"ratio_{ratio}" / "segmentation_seg_tiles" / "last.pt").is_file()
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["real_tiles", "ratio", "seed", "n_real", "n_synthetic", "dice", "f1", "precision", "recall"]
    n_train, n_syn = str(len(train_real)), str(len(synthetic))
    assert [(r["n_real"], r["n_synthetic"]) for r in table] == [(n_train, "0"), (n_train, n_syn), ("0", n_syn)]
    assert all(0 <= float(r[c]) <= 1 for r in table for c in ("dice", "f1", "precision", "recall"))
    assert out.with_suffix(".png").stat().st_size > 0
    with (tmp_path / "results" / "downstream_summary.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    assert [float(r["dice_mean"]) for r in summary] == pytest.approx([float(r["dice"]) for r in table])
    assert all(float(r["dice_std"]) == 0 and r["runs"] == "1" for r in summary)
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        run_downstream(real, [gen], [0], settings=QUICK, out_csv=out, progress=False)


def test_small_data_settings_draw_real_tiles_per_seed_and_summarise(tmp_path, monkeypatch):
    names = [f"img{c}_0_{i}" for c in "ABCDEFGH" for i in (0, 32)]
    real = write_tiled_folder(tmp_path / "real", 0, names=names)
    gen = write_tiled_folder(tmp_path / "gen", 3, seed=2, mask_folder="labels")
    trained: list[tuple[frozenset[str], int]] = []

    def fake_train(folders, shares, out_dir, settings):
        real_tiles = {p.name for f in folders if Path(f).name != "synthetic" for p in list_pairs(f)}
        trained.append((frozenset(real_tiles), settings.seed))
        return Path(out_dir) / "last.pt"

    scores = iter(np.linspace(0.1, 0.9, 12))

    def fake_score(*args, **kwargs):
        value = float(next(scores))
        return {"dice": value, "f1": value, "precision": value, "recall": value}

    monkeypatch.setattr(segmentation, "train_model", fake_train)
    monkeypatch.setattr(segmentation, "score_checkpoint", fake_score)
    out = tmp_path / "small.csv"
    rows = run_downstream(real, [gen], [0, 0.5], settings=QUICK, out_csv=out, progress=False,
                          real_counts=[2, 4, None], seeds=[0, 1])
    everything = len(trained[-1][0])
    assert [(r["real_tiles"], r["seed"], r["ratio"]) for r in rows] == [
        (n, seed, ratio) for n in (2, 4, everything) for seed in (0, 1) for ratio in (0, 0.5)]
    assert [seed for _, seed in trained] == [0, 0, 1, 1] * 3
    assert [len(tiles) for tiles, _ in trained] == [2, 2, 2, 2, 4, 4, 4, 4] + [everything] * 4
    assert trained[0][0] == trained[1][0] and trained[0][0] != trained[2][0]  # one draw per seed, another per seed
    assert trained[8][0] == trained[10][0]  # every tile, whatever the seed
    summary = list(csv.DictReader((tmp_path / "small_summary.csv").open()))
    assert [(r["real_tiles"], r["ratio"], r["runs"]) for r in summary][:2] == [("2", "0", "2"), ("2", "0.5", "2")]
    first = [r["dice"] for r in rows if r["real_tiles"] == 2 and r["ratio"] == 0]
    assert float(summary[0]["dice_mean"]) == pytest.approx(np.mean(first))
    assert float(summary[0]["dice_std"]) == pytest.approx(np.std(first))
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(ValueError, match="--real_counts: 99 real tiles asked for"):
        run_downstream(real, [gen], [0], settings=QUICK, out_csv=tmp_path / "x.csv", real_counts=[99], progress=False)


def test_scoring_pads_tiles_that_are_no_multiple_of_32():
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([0.0, 1.0]))

        def forward(self, x):
            assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
            return self.bias.view(1, 2, 1, 1).expand(x.shape[0], 2, *x.shape[-2:])

    mask = segmentation.predict_mask(Constant(), np.zeros((27, 45, 3), np.uint8))
    assert mask.shape == (27, 45) and mask.all()


def test_cli_runs_and_reports_bad_input(tmp_path, capsys):
    real = write_tiled_folder(tmp_path / "real", 4)
    gen = write_tiled_folder(tmp_path / "gen", 2, seed=5, mask_folder="labels")
    out = tmp_path / "downstream.csv"
    args = ["--real", str(real), "--synthetic", str(gen), "--ratios", "1", "--steps", "1", "--batch_size", "2",
            "--seg_encoder", "mobilenet_v2", "--num_workers", "0", "--device", "cpu", "--out", str(out)]
    assert segmentation.main(args) == 0
    assert len(out.read_text().splitlines()) == 2
    assert segmentation.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert segmentation.main(args + ["--overwrite", "--seg_encoder", "no_such_encoder"]) == 2
    assert "--seg_encoder no_such_encoder: not a segmentation_models_pytorch encoder" in capsys.readouterr().err

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
    assert segmentation.main(args + ["--overwrite", "--steps", "0"]) == 2
    assert "argument --steps: expected an integer >= 1" in capsys.readouterr().err


def test_layout_dice_scores_generated_tiles_against_their_layouts(tmp_path, monkeypatch, capsys):
    import json

    from tools import evaluate

    real = write_tiled_folder(tmp_path / "real", 4)
    checkpoint = segmentation.train_model([real], [1.0], tmp_path / "runs", QUICK)
    generated = write_tiled_folder(tmp_path / "generated", 3, seed=4, mask_folder="labels")
    layouts = [np.asarray(Image.open(p)) > 0 for p in sorted((generated / "labels").glob("*.png"))]
    # A segmenter that calls the dark pixels nuclei: the dark discs are exactly the layouts, except on one tile.
    monkeypatch.setattr(segmentation, "predict_mask", lambda model, image: image.mean(axis=2) < 150)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(generated / "labels" / "tile_02.png")
    dark = [np.asarray(Image.open(p)).mean(axis=2) < 150 for p in sorted((generated / "images").glob("*.png"))]
    expected = np.mean([dice_score(d, m) for d, m in zip(dark, layouts[:2] + [np.zeros((32, 32), bool)])])
    out = tmp_path / "layout.json"
    argv = ["--metrics", "layout_dice", "--fake", str(generated), "--segmenter", str(checkpoint), "--out", str(out)]
    assert evaluate.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["layout_dice"] == pytest.approx(expected) and expected < 0.9 and result["layout_tiles"] == 3
    assert evaluate.main(argv[:4] + ["--out", str(tmp_path / "no.json")]) == 2
    assert "--segmenter CKPT" in capsys.readouterr().err
    missing = argv[:5] + [str(tmp_path / "nowhere.pt"), "--out", str(tmp_path / "no.json")]
    assert evaluate.main(missing) == 2
    assert "nowhere.pt: no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()

"""The mitotic-figure transition work's choices as options: the y-percentile split of the mitotic figures, uniform
draws of the score bins, x4 upsampling and colour jitter of the classifier, and the *_original presets."""
from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

import dataloader
import model
import train
from common.errors import ConfigError
from conftest import ROOT, tiny_config
from data.annotations import Annotation, DataError
from data.wsi import ColorJitter, PatchOptions, WSIEvalPatches, WSITrainPatches, color_jitter, resolve_slides, split_annotations
from recipes.classifier import ORIGINAL_COLOR_JITTER, ResNetClassifier

SHARED = ROOT.parent / "shared" / "data" / "annotations"


def ann(slide: str, y: float, label: int, soft: float | None = None, uid: str = "", x: float = 100.0) -> Annotation:
    return Annotation(slide=slide, x=x, y=y, class_name="m" if label else "n", label=label,
                      soft=float(label) if soft is None else soft, uid=uid or f"{slide}:{y}")


# ---------------------------------------------------------------- y_percentile_positive

def hand_made_table() -> list[Annotation]:
    """Slide A: mitotic figures at y 10..50 (75th percentile 40, median 30); negatives around the cut.
    Slide B: negatives only."""
    mitotic = [ann("A", y, 1) for y in (10, 20, 30, 40, 50)]
    negative = [ann("A", y, 0) for y in (5, 39.9, 40, 45, 100)]
    return mitotic + negative + [ann("B", y, 0) for y in (1, 500, 900)]


def ys(annotations: list[Annotation], slide: str) -> list[float]:
    return sorted(a.y for a in annotations if a.slide == slide)


def test_y_percentile_positive_cuts_at_the_quantile_of_the_mitotic_figures():
    train_set, val_set = split_annotations(hand_made_table(), "y_percentile_positive", val_fraction=0.25)
    assert ys(train_set, "A") == [5, 10, 20, 30, 39.9]          # y < 40
    assert ys(val_set, "A") == [40, 40, 45, 50, 100]            # y >= 40, the cut itself validates
    assert ys(train_set, "B") == [1, 500, 900] and ys(val_set, "B") == []  # no mitotic figure: no cut
    train_half, val_half = split_annotations(hand_made_table(), "y_percentile_positive", val_fraction=0.5)
    assert ys(train_half, "A") == [5, 10, 20] and ys(val_half, "A") == [30, 39.9, 40, 40, 45, 50, 100]


def test_y_percentile_of_all_annotations_differs():
    # our rule: the 80th percentile of all ten y of slide A (np.quantile: 45 + 0.2 * 5 = 46), strictly above it validates
    train_set, val_set = split_annotations(hand_made_table(), "y_percentile", val_fraction=0.2)
    assert float(np.quantile([10, 20, 30, 40, 50, 5, 39.9, 40, 45, 100], 0.8)) == pytest.approx(46.0)
    assert ys(val_set, "A") == [50, 100] and ys(val_set, "B") == [900]


def test_a_split_file_keeps_the_y_split_to_its_training_slides(tmp_path):
    split_file = tmp_path / "split.csv"
    split_file.write_text("slide,split\nA,train\nB,test\n")
    train_set, val_set = split_annotations(hand_made_table(), "y_percentile_positive", split_file, 0.25)
    assert {a.slide for a in train_set + val_set} == {"A"}
    only_test = tmp_path / "test.csv"
    only_test.write_text("slide,split\nA,test\nB,test\n")
    with pytest.raises(DataError, match="no annotated slide is assigned to 'train'"):
        split_annotations(hand_made_table(), "y_percentile", only_test, 0.25)


# ---------------------------------------------------------------- uniform score bins

@pytest.fixture(scope="module")
def slide_paths(synthetic_root):
    return resolve_slides([ann("synthetic_000.tif", 0, 0)], synthetic_root / "WSI")


def binned_annotations() -> list[Annotation]:
    """60 at score 0, 10 at 0.5 (hard label 0) and 30 at 1 on one synthetic slide."""
    scores = [0.0] * 60 + [0.5] * 10 + [1.0] * 30
    return [ann("synthetic_000.tif", 100 + i, int(s == 1.0), s, uid=str(i), x=100 + i) for i, s in enumerate(scores)]


def drawn_scores(dataset: WSITrainPatches, count: int) -> Counter:
    return Counter(float(dataset[i]["score"]) for i in range(count))


def test_uniform_bins_draw_each_score_bin_equally_often(slide_paths):
    options = PatchOptions(tile_size=8, score="soft", augment=False)
    uniform = WSITrainPatches(binned_annotations(), slide_paths, options, batch_size=10, sampling="uniform_bins")
    counts = drawn_scores(uniform, 3000)
    assert set(counts) == {0.0, 0.5, 1.0}
    for bin_count in counts.values():  # 1000 expected each; 4 binomial standard deviations is about 103
        assert abs(bin_count - 1000) < 103
    by_label = WSITrainPatches(binned_annotations(), slide_paths, options, batch_size=10, mite_ratio=0.5)
    pooled = drawn_scores(by_label, 3000)  # negatives pooled: 0.5 is 10 of the 70 negatives, half of all draws
    assert pooled[1.0] == 1500 and abs(pooled[0.5] - 1500 * 10 / 70) < 60


def test_uniform_bins_over_hard_labels_are_halves(slide_paths):
    options = PatchOptions(tile_size=8, score="hard", augment=False)
    uniform = WSITrainPatches(binned_annotations(), slide_paths, options, batch_size=10, sampling="uniform_bins")
    counts = drawn_scores(uniform, 2000)
    assert set(counts) == {0.0, 1.0} and abs(counts[1.0] - 1000) < 90


def test_uniform_bins_need_binned_scores(slide_paths):
    continuous = [ann("synthetic_000.tif", 100, 0, 0.25)] + binned_annotations()
    with pytest.raises(DataError, match="uniform_bins needs scores 0, 0.5 or 1"):
        WSITrainPatches(continuous, slide_paths, PatchOptions(tile_size=8), batch_size=4, sampling="uniform_bins")
    base = ["--dataset", "synthetic", "--model_type", "diffusion", "--soft_sampling", "uniform_bins"]
    with pytest.raises(ConfigError, match="not continuous"):
        model.resolve_config(base + ["--soft_vs_hard", "soft", "--soft_mode", "continuous"])
    with pytest.raises(ConfigError, match="--mite_ratio and --soft_sampling uniform_bins"):
        model.resolve_config(base + ["--mite_ratio", "0.3"])


# ---------------------------------------------------------------- classifier input: x4 upsampling, colour jitter

def conv1_input(classifier: ResNetClassifier, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = classifier.backbone.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        classifier.eval()(x)
    handle.remove()
    return seen[0]


def test_a_64_px_patch_reaches_the_resnet_as_256_px():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    classifier = ResNetClassifier("resnet18", upsample=4)
    seen = conv1_input(classifier, x)
    assert seen.shape == (2, 3, 256, 256)
    expected = (F.interpolate((x + 1) / 2, size=(256, 256), mode="bilinear", align_corners=False) - classifier.mean) / classifier.std
    torch.testing.assert_close(seen, expected)
    assert conv1_input(ResNetClassifier("resnet18"), x).shape == (2, 3, 64, 64)


def test_upsampling_is_stored_with_the_model_and_used_at_scoring(synthetic_root, tmp_path):
    argv = tiny_config(synthetic_root, tmp_path, model_type="resnet18", tile_size=16, max_steps=1, val_every=1,
                       classifier_upsample=4, color_jitter_p=0.5)
    run_dir = train.run(argv)
    loaded = model.load_checkpoint(run_dir / "last.pt")
    assert loaded.model_config == {"arch": "resnet18", "upsample": 4}
    assert conv1_input(loaded.model, torch.zeros(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    ensemble, _ = model.load_ensemble([run_dir / "last.pt"])
    assert ensemble.members[0].upsample == 4
    assert model.recipe_for("resnet18").upgrade({"arch": "resnet18"}) == {"arch": "resnet18", "upsample": 1}


def test_color_jitter_matches_torchvision():
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    image = torch.from_numpy(patch).permute(2, 0, 1).float() / 255
    identity = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(0.0, 0.0))
    for name, value in (("brightness", (0.6, 0.6)), ("contrast", (2.5, 2.5)), ("saturation", (0.7, 0.7)), ("hue", (0.1, 0.1))):
        ours = color_jitter(patch, ColorJitter(1.0, **{**identity, name: value}), np.random.default_rng(1))
        reference = transforms.ColorJitter(**{name: value})(image).permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_color_jitter_applies_with_p_and_only_to_training_patches(synthetic_root, slide_paths):
    jitter = ColorJitter(0.5, brightness=(0.5, 0.5))
    annotations = binned_annotations()
    plain = WSITrainPatches(annotations, slide_paths, PatchOptions(tile_size=16, augment=False), batch_size=8)
    jittered = WSITrainPatches(annotations, slide_paths, PatchOptions(tile_size=16, augment=False, jitter=jitter), batch_size=8)
    changed = [not torch.equal(plain[i]["image"], jittered[i]["image"]) for i in range(400)]
    assert abs(np.mean(changed) - 0.5) < 0.1  # 200 expected; 4 standard deviations is 40
    first = next(i for i, c in enumerate(changed) if c)
    halved = (plain[first]["image"] + 1) / 2 * 0.5 * 2 - 1  # minmax scaling: brightness 0.5 halves the pixel values
    torch.testing.assert_close(jittered[first]["image"], halved, atol=1 / 255, rtol=0)
    evaluation = WSIEvalPatches(annotations[:20], slide_paths, PatchOptions(tile_size=16, augment=False, jitter=ColorJitter(1.0, brightness=(0.5, 0.5))))
    reference = WSIEvalPatches(annotations[:20], slide_paths, PatchOptions(tile_size=16, augment=False))
    assert all(torch.equal(evaluation[i]["image"], reference[i]["image"]) for i in range(20))
    config = model.resolve_config(tiny_config(synthetic_root, Path("unused"), model_type="resnet18", tile_size=16, color_jitter_p=0.5))
    data = dataloader.build_datasets(config)
    assert data.train.options.jitter == ColorJitter(0.5, (0.4, 1.2), (0.5, 4.0), (0.6, 3.0), (-0.15, 0.15))
    assert data.val.options.jitter.p == 0


@pytest.mark.parametrize("extra, message", [
    (["--color_jitter_p", "1.5"], "--color_jitter_p must be in"),
    (["--color_jitter", "0.4,1.2,0.5,4,0.6,3,-0.15,0.15"], "--color_jitter_p is 0"),
    (["--color_jitter_p", "0.5", "--color_jitter", "1.2,0.4,0.5,4,0.6,3,-0.15,0.15"], "--color_jitter: expected"),
    (["--color_jitter_p", "0.5", "--color_jitter", "0.4,1.2,0.5,4,0.6,3,-0.15,0.6"], "--color_jitter: expected"),
    (["--color_jitter_p", "0.5", "--color_jitter", "0.4,1.2"], "got 2 numbers"),
    (["--classifier_upsample", "0"], "--classifier_upsample must be"),
])
def test_classifier_input_flags_are_checked(extra, message):
    with pytest.raises(ConfigError, match=message):
        model.resolve_config(["--dataset", "synthetic", "--model_type", "resnet18", *extra])
    with pytest.raises(ConfigError, match="does not take"):
        model.resolve_config(["--dataset", "synthetic", "--model_type", "diffusion", "--color_jitter_p", "0.5"])


# ---------------------------------------------------------------- the *_original presets

ORIGINAL_DATA = {"split": "y_percentile_positive", "val_fraction": 0.25, "scaling": "percentile_unclipped",
                 "soft_sampling": "uniform_bins", "max_offset": 0, "tile_size": 64, "optimizer": "adam",
                 "weight_decay": 0.0, "precision": "fp32", "early_stopping": 100, "batch_size": 128}
CANINE_VOTES = {"negative_classes": ["all"], "mitotic_classes": ["Mitotic figure"], "soft_mode": "thresholds",
                "soft_thresholds": [0.3, 0.66], "annotators": ["1", "2"]}
DIFFUSION = {"objective": "eps", "loss_function": "l1", "cond_drop_prob": 0.5, "ema_decay": 0.0, "timesteps": 1000,
             "schedule": "cosine", "dim": 64, "dim_mults": [1, 2, 4, 8], "learning_rate": 1e-4, "soft_vs_hard": "soft"}
RESNET = {"model_type": "resnet34", "classifier_upsample": 4, "color_jitter_p": 0.5, "soft_vs_hard": "hard",
          "color_jitter": list(ORIGINAL_COLOR_JITTER), "learning_rate": 1e-5, "loss_function": "bce"}
PRESETS = {
    "canine_diffusion_original": {**ORIGINAL_DATA, **CANINE_VOTES, **DIFFUSION, "max_steps": 11000},
    "canine_resnet_original": {**ORIGINAL_DATA, **CANINE_VOTES, **RESNET, "max_steps": 21000},
    "meningioma_diffusion_original": {**ORIGINAL_DATA, **DIFFUSION, "indeterminate": "negative", "annotators": None},
    "meningioma_resnet_original": {**ORIGINAL_DATA, **RESNET, "indeterminate": "negative", "annotators": None},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_original_presets_resolve_to_the_original_choices(preset):
    path = ROOT / "configs" / f"{preset}.yaml"
    config = model.resolve_config(["--config", str(path)])
    assert {key: config[key] for key in PRESETS[preset]} == PRESETS[preset]
    if "diffusion" in preset:
        assert "inference.py --ckpt ... --sampler ddpm --steps 1000 --cfg_scale 8" in path.read_text()


def split_rows(name: str) -> dict[str, str]:
    with (ROOT / "configs" / "splits" / name).open(newline="") as fh:
        return {row["slide"]: row["split"] for row in csv.DictReader(fh)}


def test_canine_split_files_swap_the_first_fold():
    diffusion, resnet = split_rows("canine_original_diffusion.csv"), split_rows("canine_original_resnet.csv")
    assert set(diffusion) == set(resnet) and len(diffusion) == 32
    assert Counter(diffusion.values()) == {"train": 11, "test": 21}
    assert all((diffusion[s], resnet[s]) in {("train", "test"), ("test", "train")} for s in diffusion)
    for preset, rows in (("canine_diffusion_original", diffusion), ("canine_resnet_original", resnet)):
        config = model.resolve_config(["--config", str(ROOT / "configs" / f"{preset}.yaml")])
        assert split_rows(Path(config["split_file"]).name) == rows


def test_canine_split_files_name_the_slides_of_the_data_set():
    path = SHARED / "CCMCT_Tumorzone.sqlite"
    if not path.is_file():
        pytest.skip(f"real reference data {path} is absent (expected in ../shared/data next to the project)")
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    slides = {name for (name,) in con.execute("SELECT filename FROM Slides")}
    con.close()
    assert set(split_rows("canine_original_diffusion.csv")) == slides

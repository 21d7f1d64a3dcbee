"""Style-extracting diffusion (stedm): the region patches' contract, the style encoder trained (or frozen) through
train.run, and the styled rendering."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataloader
import inference
import model
import train
from common.errors import ConfigError
from data.annotations import DataError
from data.style_sources import pair_styles
from data.tile_pairs import write_demo_tile_pairs
from data.npy_stack import tiles_from_slides, write_stack
from data.flowers import write_fake_flowers
from data.region_patches import choose_level
from diffusion.unet import to_grid
from diffusion.gaussian_diffusion import GaussianDiffusion
from recipes.diffusion_base import diffusion_settings
from trainer import effective_lr
from data.synthetic_regions import SyntheticRegionsConfig, generate_synthetic_regions, read_slides_csv

ROOT = Path(__file__).resolve().parents[1]
ENCODER = "cond_embed.embeddings.style.encoder."


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regions") / "data"
    return generate_synthetic_regions(root, SyntheticRegionsConfig(num_slides=3, size=128, heldout=1, nests_per_slide=1),
                                      progress=False)


def argv(regions: Path, out: Path, *extra: str) -> list[str]:
    flags = {"config": ROOT / "configs/demo_stedm.yaml", "data_root": regions, "out_dir": out, "max_steps": 2,
             "val_every": 2, "val_batches": 1, "log_every": 1, "num_workers": 0, "batch_size": 2, "batch_validation": 2,
             "warmup_steps": 0, "learning_rate": 0.01, "tile_size": 16, "dim": 8, "dim_mults": "1,2", "num_res_blocks": 1,
             "attention_resolutions": "none", "num_head_channels": 8, "timesteps": 20, "style_dim": 16,
             "patches_per_slide": 8, "style_drop_prob": 0.0}
    return [arg for key, value in flags.items() for arg in (f"--{key}", str(value))] + list(extra)


@pytest.fixture(scope="module")
def runs(regions, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {"trained": train.run(argv(regions, out / "trained")),
            "frozen": train.run(argv(regions, out / "frozen", "--freeze_style_encoder"))}


def fresh_weights(state: dict) -> dict[str, torch.Tensor]:
    """The initial weights of a run (train.run seeds torch with --seed before building the network)."""
    torch.manual_seed(state["config"]["seed"])
    return model.build_network(state["model_type"], state["model_config"]).state_dict()


def test_region_patches_carry_the_contract(regions):
    config = model.resolve_config(argv(regions, Path("unused")))
    data = dataloader.build_datasets(config)
    train_slides = {row["slide"] for row in read_slides_csv(regions / "slides.csv") if row["split"] == "train"}
    assert len(data.train) + len(data.val) == 2 * 8 and len(data.val) >= 1
    for dataset in (data.train, data.val):
        sample = dataset[0]
        assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == np.float32
        assert -1.0 <= sample["image"].min() and sample["image"].max() <= 1.0
        assert sample["semantic"].shape == (3, 16, 16) and set(np.unique(sample["semantic"])) <= {0.0, 1.0}
        assert (sample["semantic"].sum(0) == 1).all()
        assert sample["semantic"][1:].sum() >= 0.5 * 16 * 16  # the patch is mostly tissue
        assert sample["style"].shape == (2, 3, 16, 16) and np.abs(sample["style"]).max() <= 1.0
        assert sample["meta"]["slide"] in train_slides and {"x", "y"} <= set(sample["meta"])
    again = dataloader.build_datasets(config)
    np.testing.assert_array_equal(again.train[3]["style"], data.train[3]["style"])


def test_stedm_needs_style_crops(regions):
    with pytest.raises(ConfigError, match="style crops"):
        model.resolve_config(argv(regions, Path("unused"), "--style_sampling", "none"))


def test_training_changes_the_style_encoder_unless_frozen(runs):
    for name, frozen in (("trained", False), ("frozen", True)):
        state = torch.load(runs[name] / "last.pt", weights_only=True)
        assert state["step"] == 2
        initial = fresh_weights(state)
        weights = state["model"]
        encoder = [k for k in weights if k.startswith(ENCODER) and weights[k].is_floating_point()]
        changed = [k for k in encoder if not torch.equal(weights[k], initial[k])]
        others = [k for k in weights if not k.startswith(ENCODER) and not torch.equal(weights[k], initial[k])]
        assert others, f"{name}: the UNet did not train"
        if frozen:
            assert not changed, f"frozen style encoder changed: {changed[:3]}"
        else:
            assert ENCODER + "backbone.conv1.weight" in changed and ENCODER + "projection.weight" in changed


def test_render_writes_styled_tiles(runs, regions, tmp_path):
    out = tmp_path / "rendered"
    code = inference.main(["--ckpt", str(runs["trained"] / "last.pt"), "--out_dir", str(out), "--num_samples", "3",
                           "--batch_size", "2", "--steps", "2", "--cfg_scale", "2", "--cfg_rescale", "0.5"])
    assert code == 0
    heldout = {row["slide"] for row in read_slides_csv(regions / "slides.csv") if row["split"] == "heldout"}
    for i in range(3):
        assert Image.open(out / f"img_{i:05d}.png").size == (16, 16)
        mask = np.asarray(Image.open(out / f"seg_{i:05d}.png"))
        assert mask.shape == (16, 16) and mask.max() <= 2
    assert (out / "grid.png").is_file()
    with (out / "samples.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["style_units"].split(";")[0] for r in rows} <= heldout
    assert {(r["cfg_scale"], r["cfg_rescale"]) for r in rows} == {("2.0", "0.5")}
    assert {r["layout_unit"] for r in rows} <= {row["slide"] for row in read_slides_csv(regions / "slides.csv")}
    for row in rows:
        assert (out / row["layout_file"]).is_file()
        assert [Image.open(out / f).size for f in row["style_files"].split(";")] == [(16, 16)] * 2


def test_pairing_rules():
    rng = np.random.default_rng(0)
    assert pair_styles(["a", "b"], ["a", "b"], "same_slide", rng) == ["a", "b"]
    assert all(u != "a" for u in pair_styles(["a"] * 20, ["a", "b", "c"], "cross", rng))
    assert set(pair_styles(["a"] * 50, ["a", "b"], "random", rng)) == {"a", "b"}
    with pytest.raises(DataError, match="same_slide: layout unit c"):
        pair_styles(["c"], ["a", "b"], "same_slide", rng)
    with pytest.raises(DataError, match="cross: no style unit"):
        pair_styles(["a"], ["a"], "cross", rng)


def test_render_with_tile_layouts_and_image_styles(runs, tmp_path):
    layouts = write_demo_tile_pairs(tmp_path / "tiles", slides=2, tiles_per_slide=2, size=16)
    styles = tmp_path / "styles"
    styles.mkdir()
    for name, colour in (("blue_0.png", (40, 40, 200)), ("blue_1.png", (50, 50, 210)), ("green_0.png", (30, 190, 40))):
        Image.fromarray(np.full((24, 20, 3), colour, np.uint8)).save(styles / name)
    out = tmp_path / "rendered"
    assert inference.main(["--ckpt", str(runs["trained"] / "last.pt"), "--out_dir", str(out), "--num_samples", "4",
                           "--steps", "2", "--layouts", str(layouts), "--styles", str(styles), "--pairing", "cross"]) == 0
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert {r["layout_unit"] for r in rows} <= {"slide0", "slide1"} and {r["style_units"].split(";")[0] for r in rows} <= {"blue", "green"}
    for row in rows:
        crop = np.asarray(Image.open(out / row["style_files"].split(";")[0]))
        assert crop.shape == (16, 16, 3)
        assert (crop[..., 2] > 150).all() == (row["style_units"].startswith("blue"))


def test_bad_style_and_layout_sources(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "never"
    base = ["--ckpt", str(runs["trained"] / "last.pt"), "--out_dir", str(out), "--num_samples", "1", "--steps", "1"]
    assert inference.main(base + ["--styles", str(empty)]) == 2
    assert inference.main(base + ["--layouts", str(empty)]) == 2
    assert inference.main(base + ["--pairing", "same_slide"]) == 2  # validation layouts are of training slides
    assert not out.exists()
    assert inference.main(base + ["--styles", "train", "--pairing", "same_slide"]) == 0


def test_unknown_class_name_exits_2_and_writes_nothing(regions, tmp_path, capsys):
    assert train.main(argv(regions, tmp_path / "runs", "--class_map", "stroma:1,tumour:2")) == 2
    err = capsys.readouterr().err
    assert "unknown class name(s) ['tumour']" in err and "tumor" in err
    assert not (tmp_path / "runs").exists()


AE = {"tile_size": 16, "batch_size": 4, "batch_validation": 8, "max_steps": 2, "val_every": 2, "val_batches": 1,
      "log_every": 1, "num_workers": 0, "test_size": 8, "ae_channels": 8, "ae_channel_mult": "1,2",
      "latent_channels": 2, "disc_start": 100, "codebook_size": 16}


@pytest.fixture(scope="module")
def autoencoder(regions, tmp_path_factory) -> Path:
    """A vqvae (f = 2, 2 latent channels) on 16 px tiles of the region slides."""
    folder = tmp_path_factory.mktemp("ae")
    stack = write_stack(folder / "tiles.npy", tiles_from_slides(sorted((regions / "WSI").glob("*.tif")), 16, 32, seed=0))
    flags = {**AE, "dataset": "npy", "model_type": "vqvae", "data_root": stack, "out_dir": folder}
    return train.run([a for k, v in flags.items() for a in (f"--{k}", str(v))]) / "last.pt"


def test_latent_stedm_trains_its_style_encoder_and_renders_pixels(regions, autoencoder, tmp_path):
    run = train.run(argv(regions, tmp_path / "latent", "--autoencoder_ckpt", str(autoencoder)))
    state = torch.load(run / "last.pt", weights_only=True)
    unet = state["model_config"]["unet"]
    assert (unet["in_channels"], unet["image_size"], state["model_config"]["image_size"]) == (2, 8, 16)
    assert state["model_config"]["autoencoder"]["model_type"] == "vqvae"
    ae = torch.load(autoencoder, weights_only=True)
    first_ae = next(k for k in ae["model"] if k.startswith("encoder."))
    assert torch.equal(state["model"]["autoencoder." + first_ae], ae["model"][first_ae])
    before = fresh_weights(state)
    key = "unet." + ENCODER + "projection.weight"
    assert not torch.equal(before[key], state["model"][key])
    out = tmp_path / "rendered"
    assert inference.main(["--ckpt", str(run / "last.pt"), "--out_dir", str(out), "--num_samples", "2", "--steps", "2"]) == 0
    assert Image.open(out / "img_00001.png").size == (16, 16)


def test_latent_stedm_refuses_an_autoencoder_of_another_tile_size(regions, autoencoder, tmp_path, capsys):
    code = train.main(argv(regions, tmp_path / "bad", "--autoencoder_ckpt", str(autoencoder), "--tile_size", "32"))
    assert code == 2 and "trained on 16 px tiles" in capsys.readouterr().err


def test_layout_is_averaged_onto_the_latent_grid():
    layout = torch.zeros(1, 2, 4, 4)
    layout[0, 1, :2, :3] = 1
    layout[0, 0] = 1 - layout[0, 1]
    grid = to_grid(layout, 2, 2)
    assert torch.allclose(grid[0, 1], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    assert torch.allclose(grid.sum(1), torch.ones(1, 2, 2))


def test_slides_with_sliderunner_regions(regions, tmp_path):
    """--dataset regions: slides of a folder, their polygons from a SlideRunner file, a split file with classes."""
    split = tmp_path / "split.csv"
    rows = read_slides_csv(regions / "slides.csv")
    split.write_text("slide,split,class\n" + "".join(f"{r['slide']},{r['split']},one\n" for r in rows))
    flags = ["--dataset", "regions", "--slides_dir", str(regions / "WSI"), "--annotation_file",
             str(regions / "Annotations" / "regions.sqlite"), "--class_map", "stroma:1,tumor:2", "--split_file", str(split)]
    config = model.resolve_config(argv(regions, tmp_path / "r", *flags))
    data = dataloader.build_datasets(config)
    train_slides = [r["slide"] for r in rows if r["split"] == "train"]
    assert {data.train.unit_of(i) for i in range(len(data.train))} == set(train_slides)
    assert data.train.style_units("heldout") == [r["slide"] for r in rows if r["split"] == "heldout"]
    one = dataloader.build_datasets(model.resolve_config(argv(regions, tmp_path / "r", *flags, "--labelled_per_class", "1")))
    labelled = {one.train.unit_of(i) for i in range(len(one.train))}
    assert len(labelled) == 1 and one.train.style_units("train") == train_slides
    with pytest.raises(DataError, match="unknown class name"):
        dataloader.build_datasets(model.resolve_config(argv(regions, tmp_path / "r", *flags[:-4], "--class_map", "tumour:1")))
    with pytest.raises(ConfigError, match="--annotation_file"):
        model.resolve_config(argv(regions, tmp_path / "r", "--dataset", "regions", "--slides_dir", str(regions / "WSI"),
                                  "--class_map", "tumor:1"))


class FakeSlide:
    level_count = 3
    level_downsamples = (1.0, 4.0, 16.0)
    properties = {"openslide.mpp-x": "0.25"}


def test_level_is_chosen_by_microns_per_pixel():
    assert choose_level(FakeSlide(), "s", None, 1.0) == 1
    assert choose_level(FakeSlide(), "s", None, 3.0) == 2
    assert choose_level(FakeSlide(), "s", 2, None) == 2
    with pytest.raises(DataError, match="level 5 out of range"):
        choose_level(FakeSlide(), "s", 5, None)
    bare = FakeSlide()
    bare.properties = {}
    with pytest.raises(DataError, match="give --level instead of --mpp"):
        choose_level(bare, "s", None, 1.0)


@pytest.mark.parametrize("dataset", ["flowers102", "tile_pairs"])
def test_stedm_on_flowers_and_tile_pairs(dataset, tmp_path):
    """The Oxford-102 layout (a tiny fake) and a tile-pair folder train a stedm run and render held-out styles."""
    if dataset == "flowers102":
        root = write_fake_flowers(tmp_path / "flowers", classes=2, per_class=4, size=24)
    else:
        root = write_demo_tile_pairs(tmp_path / "tiles", slides=4, tiles_per_slide=3, size=16)
    run = train.run(argv(tmp_path, tmp_path / "runs", "--dataset", dataset, "--data_root", str(root), "--val_fraction", "0.25"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["model_config"]["num_classes"] == 2 and state["model_config"]["unet"]["image_size"] == 16
    out = tmp_path / "rendered"
    assert inference.main(["--ckpt", str(run / "last.pt"), "--out_dir", str(out), "--num_samples", "2", "--steps", "1",
                           "--styles", "heldout"]) == 0
    data = dataloader.build_datasets(state["config"])
    heldout = set(data.val.style_units("heldout"))
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert heldout and {r["style_units"].split(";")[0] for r in rows} <= heldout


@pytest.mark.parametrize("preset", ["stedm_catch_original", "stedm_flowers_original"])
def test_original_presets_carry_the_published_hyper_parameters(preset):
    config = model.resolve_config(["--config", str(ROOT / "configs" / f"{preset}.yaml")])
    assert (config["objective"], config["loss_function"], config["schedule"], config["timesteps"]) == ("eps", "l1", "scaled_linear", 1000)
    assert config["beta_range"] == [0.0015, 0.0205] and config["grad_accum"] == 4 and config["ema_decay"] > 0
    assert (config["style_encoder"], config["style_dim"], config["style_agg"], config["style_drop_prob"]) == ("swin_v2_t", 512, "linear", 0.25)
    assert effective_lr(config) == pytest.approx(1e-7 * 8)
    settings = diffusion_settings(config)
    betas = GaussianDiffusion.from_config(**settings).betas
    assert float(betas[0]) == pytest.approx(0.0015) and float(betas[-1]) == pytest.approx(0.0205)


def test_beta_range_belongs_to_the_scaled_linear_schedule(regions):
    with pytest.raises(ConfigError, match="--beta_range is for --schedule scaled_linear"):
        model.resolve_config(argv(regions, Path("unused"), "--beta_range", "0.001,0.02"))
    with pytest.raises(ConfigError, match="--beta_range: expected two betas"):
        model.resolve_config(argv(regions, Path("unused"), "--schedule", "scaled_linear", "--beta_range", "0.02,0.001"))

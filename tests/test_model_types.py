"""The registry's contract, for every entry of MODEL_TYPES: its demo preset resolves, it builds and trains two steps
on small demo data, writes a checkpoint, is rebuilt from that checkpoint alone, and renders its inference output."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import inference
import model
import train
from data.npy_stack import tiles_from_slides, write_stack
from data.synthetic import synthetic_paths
from data.synthetic_monuseg import SyntheticMonusegConfig, generate_synthetic_monuseg
from data.synthetic_regions import SyntheticRegionsConfig, generate_synthetic_regions
from data.tile_pairs import write_demo_tile_pairs

ROOT = Path(__file__).resolve().parents[1]
# Small values for whichever of these options a model type takes.
TINY = {
    "max_steps": 2, "val_every": 2, "val_batches": 1, "log_every": 1, "num_workers": 0, "batch_size": 2,
    "batch_validation": 4, "warmup_steps": 0, "tile_size": 16, "stride": 16, "test_size": 16, "dim": 8,
    "dim_mults": "1,2", "num_res_blocks": 1, "attention_resolutions": "none", "num_head_channels": 8, "timesteps": 20,
    "spade_hidden": 8, "ae_channels": 8, "ae_channel_mult": "1,2", "latent_channels": 2, "codebook_size": 16,
    "disc_channels": 8, "disc_layers": 1, "scale_batches": 2,
}


@pytest.fixture(scope="module")
def demo_data(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """A small stand-in for each demo data set, by --dataset name."""
    base = tmp_path_factory.mktemp("demo_data")
    generate_synthetic_monuseg(base / "monuseg", SyntheticMonusegConfig(num_images=3, size=64, seed=1), progress=False)
    tiles = tiles_from_slides(sorted(synthetic_paths(synthetic_root)["slides_dir"].glob("*.tif")), 16, 64, seed=0)
    stack = write_stack(base / "tiles.npy", tiles)
    clusters = base / "clusters.csv"
    with clusters.open("w", newline="") as fh:
        csv.writer(fh).writerows([("tile", "cluster")] + [(i, i % 2) for i in range(len(tiles))])
    seg_tiles = write_demo_tile_pairs(base / "seg_tiles", slides=3, tiles_per_slide=2, size=16, seed=0)
    regions = generate_synthetic_regions(base / "regions", SyntheticRegionsConfig(num_slides=3, size=128, heldout=1, nests_per_slide=1),
                                         progress=False)
    return {"synthetic": synthetic_root, "synthetic_monuseg": base / "monuseg", "synthetic_tiles": stack, "clusters": clusters,
            "seg_tiles": seg_tiles, "synthetic_regions": regions}


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory):
    """train(model_type) -> its run folder, trained once per module (the ldm and transition cases reuse others)."""
    out = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def trained(model_type: str) -> Path:
        if model_type not in done:
            done[model_type] = train.run(demo_argv(model_type, demo_data, out, lambda name: trained(name)))
        return done[model_type]

    return trained


def demo_argv(model_type: str, data: dict[str, Path], out: Path, trained) -> list[str]:
    recipe = model.recipe_for(model_type)
    preset = ROOT / recipe.demo_preset
    assert preset.is_file(), f"{model_type}: demo preset {preset} is missing"
    dataset = model.OPTIONS.load_yaml(preset)["dataset"]
    flags = {"model_type": model_type, "data_root": data[dataset], "out_dir": out / model_type}
    flags.update({k: v for k, v in TINY.items() if recipe.takes(model.OPTIONS.by_name[k].group)})
    if model_type == "ldm":
        flags.update(autoencoder_ckpt=trained("vqvae") / "last.pt", cluster_file=data["clusters"])
    argv = ["--config", str(preset)]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def render_argv(model_type: str, trained, data: dict[str, Path]) -> list[str]:
    """Small inference runs; a new model type adds its own here."""
    return {
        "diffusion": ["--classifier_ckpts", str(trained("resnet18").parent), "--condition_values", "0,1",
                      "--num_sequences", "1", "--steps", "2"],
        "sdm": ["--num_samples", "2", "--steps", "2"],
        "ldm": ["--num_per_cluster", "1", "--steps", "2"],
        "vqvae": [], "autoencoder_kl": [], "resnet18": [], "resnet34": [], "resnet50": [],
        "segmentation": ["--test_dir", str(data["seg_tiles"])],
        "stedm": ["--num_samples", "2", "--steps", "2"],
    }[model_type]


@pytest.mark.parametrize("model_type", list(model.MODEL_TYPES))
def test_model_type_contract(model_type, runs, demo_data, tmp_path, capsys):
    recipe = model.recipe_for(model_type)
    run_dir = runs(model_type)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["model_type"] == model_type and state["step"] == 2

    loaded = model.load_checkpoint(run_dir / "last.pt")
    expected = state["ema"] if state.get("ema") is not None else state["model"]
    rebuilt = loaded.model.state_dict()
    assert set(rebuilt) == set(expected)
    assert all(torch.equal(rebuilt[k].cpu(), expected[k]) for k in expected)
    assert type(loaded.model) is type(recipe.build_network(loaded.model_config))

    out = tmp_path / "rendered"
    code = inference.main(["--ckpt", str(run_dir / "last.pt"), "--out_dir", str(out), *render_argv(model_type, runs, demo_data)])
    if recipe.renders:
        assert code == 0, capsys.readouterr().err
        assert any(p.suffix == ".png" for p in out.rglob("*")) and any(p.suffix == ".csv" for p in out.rglob("*"))
    else:
        assert code == 2 and "sampling needs" in capsys.readouterr().err and not out.exists()

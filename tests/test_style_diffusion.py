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
    assert len(rows) == 3 and {r["style_slide"] for r in rows} <= heldout
    assert {(r["cfg_scale"], r["cfg_rescale"]) for r in rows} == {("2.0", "0.5")}
    assert {"layout_slide", "layout_x", "layout_y"} <= set(rows[0])

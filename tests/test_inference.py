"""Transition sequences: shared noise within a sequence, outputs, and errors."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference
import train
from conftest import tiny_config
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.unet import UNet
from test_train import TINY_UNET
from diffusion.sampling import SamplingSpec
from recipes.transitions import parse_conditions, render_sequences, rising_share, sequence_spearman


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    diffusion = train.run(tiny_config(synthetic_root, out, **{**TINY_UNET, "max_steps": 2}))
    for member in (0, 1):
        train.run(tiny_config(synthetic_root, out, model_type="resnet18", tile_size=16, max_steps=1, ensemble=member))
    other = train.run(tiny_config(synthetic_root, tmp_path_factory.mktemp("other"), model_type="resnet18", tile_size=16,
                                  max_steps=1, scaling="percentile"))
    return {"diffusion": diffusion / "last.pt", "resnet": out / "resnet", "percentile_resnet": other / "last.pt"}


def test_rising_share_and_per_sequence_spearman():
    conditions = np.array([0.0, 0.5, 1.0])
    scores = np.array([[0.1, 0.5, 0.9],     # rises
                       [0.1, 0.9, 0.89],    # falls by 0.01: within the tolerance
                       [0.2, 0.9, 0.5]])    # falls by 0.4
    assert rising_share(scores) == pytest.approx(2 / 3)
    assert rising_share(scores, tolerance=0.0) == pytest.approx(1 / 3)
    assert sequence_spearman(conditions, scores) == pytest.approx((1.0 + 0.5 + 0.5) / 3)


def test_parse_conditions():
    assert parse_conditions("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_conditions("0, 0.3,1") == [0.0, 0.3, 1.0]
    with pytest.raises(ValueError, match="start:stop:count"):
        parse_conditions("0:1")


class ScoreBlind(torch.nn.Module):
    """A network whose output ignores the condition, so only the noise decides the image."""

    def __init__(self):
        super().__init__()
        self.unet = UNet(image_size=8, dim=8, dim_mults=(1,), attention_resolutions=(), num_head_channels=8, conditions=())
        torch.nn.init.normal_(self.unet.final_conv.weight, std=0.02)
        self.config = {"conditions": ["score"]}

    def forward(self, x, t, cond=None, drop_cond=None):
        return self.unet(x, t)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_sequence_shares_start_and_per_step_noise(sampler):
    torch.manual_seed(0)
    model = ScoreBlind().eval()
    diffusion = GaussianDiffusion.from_config("cosine", 20)
    spec = SamplingSpec(sampler=sampler, steps=20, eta=1.0, cfg_scale=2.0)
    images = render_sequences(model, diffusion, [0.0, 0.5, 1.0], 3, 8, 7, spec, torch.device("cpu"), 2, progress=False)
    assert images.shape == (3, 3, 3, 8, 8)
    for s in range(3):
        torch.testing.assert_close(images[s, 0], images[s, 2])
    assert not torch.allclose(images[0, 0], images[1, 0])
    again = render_sequences(model, diffusion, [0.0, 0.5, 1.0], 3, 8, 7, spec, torch.device("cpu"), 2, progress=False)
    torch.testing.assert_close(images, again)


def test_inference_writes_pictures_and_scores(trained, tmp_path, capsys):
    out = tmp_path / "transitions"
    argv = ["--diffusion_ckpt", str(trained["diffusion"]), "--classifier_ckpts", str(trained["resnet"]),
            "--condition_values", "0:1:3", "--num_sequences", "2", "--steps", "3", "--out_dir", str(out)]
    assert inference.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "grid.png" in printed
    for name in ("grid.png", "score_vs_condition.png", "sequences/sequence_000.png", "sequences/sequence_001.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 6 and {"member_0", "member_1", "mean", "std"} <= set(rows[0])
    for row in rows:
        members = [float(row["member_0"]), float(row["member_1"])]
        assert float(row["mean"]) == pytest.approx(np.mean(members), abs=1e-5)
    (summary,) = list(csv.DictReader((out / "summary.csv").open()))
    means = np.array([float(row["mean"]) for row in rows]).reshape(2, 3)
    assert float(summary["rising_share"]) == rising_share(means)
    assert int(summary["sequences"]) == 2 and "rises with the condition" in printed
    assert inference.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_sdedit_from_an_image(trained, tmp_path):
    image = tmp_path / "nucleus.png"
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(image)
    out = tmp_path / "sdedit"
    argv = ["--diffusion_ckpt", str(trained["diffusion"]), "--classifier_ckpts", str(trained["resnet"]),
            "--conditions", "0,1", "--num_sequences", "1", "--steps", "4", "--from_image", str(image),
            "--strength", "0.3", "--out_dir", str(out)]
    assert inference.main(argv) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["start"] for r in rows] == ["nucleus.png", "nucleus.png"]


def test_sdedit_from_a_validation_patch(trained, tmp_path):
    out = tmp_path / "patch"
    argv = ["--diffusion_ckpt", str(trained["diffusion"]), "--classifier_ckpts", str(trained["resnet"]),
            "--conditions", "0,1", "--num_sequences", "1", "--steps", "2", "--from_patch", "0", "--out_dir", str(out)]
    assert inference.main(argv) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows[0]["start"].startswith("synthetic_")


@pytest.mark.parametrize("kind", ["missing_ckpt", "classifier_as_diffusion", "bad_conditions", "other_scaling"])
def test_inference_errors(trained, tmp_path, capsys, kind):
    diffusion, resnet = str(trained["diffusion"]), str(trained["resnet"])
    argv = {
        "missing_ckpt": ["--diffusion_ckpt", str(tmp_path / "none.pt"), "--classifier_ckpts", resnet],
        "classifier_as_diffusion": ["--diffusion_ckpt", str(trained["resnet"] / "Ensemble_0" / "last.pt"), "--classifier_ckpts", resnet],
        "bad_conditions": ["--diffusion_ckpt", diffusion, "--classifier_ckpts", resnet, "--conditions", "a:b"],
        "other_scaling": ["--diffusion_ckpt", diffusion, "--classifier_ckpts", resnet, str(trained["percentile_resnet"])],
    }[kind]
    assert inference.main(argv + ["--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and {"missing_ckpt": "does not exist", "classifier_as_diffusion": "holds a resnet18 classifier; sampling needs a diffusion, sdm",
                                          "bad_conditions": "--condition_values",
                                          "other_scaling": "was trained with scaling percentile (the diffusion checkpoint: minmax)"}[kind] in err
    assert not (tmp_path / "o").exists()

"""evaluate.py over image folders, PatchCamelyon training, trajectory GIFs and the ablation runner."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools import ablate
from tools import evaluate
import inference
import train

TINY_PCAM = {"dataset": "synthetic_pcam", "model_type": "diffusion", "pcam_crop": 16, "batch_size": 4,
             "batch_validation": 8, "max_steps": 2, "val_every": 2, "val_batches": 1, "log_every": 1, "num_workers": 0,
             "dim": 8, "dim_mults": "1,2", "num_res_blocks": 1, "attention_resolutions": 8, "num_head_channels": 8,
             "timesteps": 20}


def argv(values: dict, *flags: str) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))] + list(flags)


def write_images(folder: Path, images: np.ndarray, prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, size=(12, 48, 48, 3)).astype(np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("images")
    return {"real": write_images(root / "real", base), "same": write_images(root / "same", base),
            "noisy": write_images(root / "noisy", noisy), "other": write_images(root / "other", noisy[::-1], "x")}


def test_identical_sets_score_perfectly_and_noise_lowers_the_scores(image_sets, tmp_path):
    same = evaluate.run(["--real", str(image_sets["real"]), "--fake", str(image_sets["same"]), "--metrics", "ssim,ms_ssim,fid,pr",
                         "--out", str(tmp_path / "same.json")])
    assert same["paired"] is True and same["ssim"] == pytest.approx(1.0) and same["ms_ssim"] == pytest.approx(1.0)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3) and same["precision"] == 1.0 and same["recall"] == 1.0
    assert same["comparable_with_published_fid"] is False and "efficientnet" in same["feature_network"]
    noisy = evaluate.run(["--real", str(image_sets["real"]), "--fake", str(image_sets["noisy"]), "--metrics", "ssim,ms_ssim,fid",
                          "--out", str(tmp_path / "noisy.json")])
    assert noisy["ssim"] < 0.9 and noisy["ms_ssim"] < same["ms_ssim"] and noisy["fid"] > same["fid"]
    saved = json.loads((tmp_path / "noisy.json").read_text())
    assert saved["ssim"] == pytest.approx(noisy["ssim"])
    assert list(csv.DictReader((tmp_path / "noisy.csv").open()))[0]["ssim"]


def test_unpaired_when_names_differ(image_sets, tmp_path):
    result = evaluate.run(["--real", str(image_sets["real"]), "--fake", str(image_sets["other"]), "--metrics", "ssim",
                           "--pairs", "20", "--out", str(tmp_path / "u.json")])
    assert result["paired"] is False and 0 < result["ssim"] < 1


def test_evaluate_errors(image_sets, tmp_path, capsys):
    out = str(tmp_path / "e.json")
    assert evaluate.main(["--real", str(image_sets["real"]), "--fake", str(image_sets["same"]), "--metrics", "lpips", "--out", out]) == 2
    assert "--lpips_weights" in capsys.readouterr().err
    assert evaluate.main(["--real", str(tmp_path / "none"), "--fake", str(image_sets["same"]), "--out", out]) == 2
    assert evaluate.main(["--real", str(image_sets["real"]), "--fake", str(image_sets["same"]), "--metrics", "bogus", "--out", out]) == 2
    assert not Path(out).exists()


@pytest.fixture(scope="module")
def pcam_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pcam")
    return train.run(argv({**TINY_PCAM, "data_root": root / "data", "out_dir": root / "runs", "conditions": "label"}))


def test_class_conditional_pcam_model_samples_per_class_with_a_trajectory(pcam_run, tmp_path):
    state = torch.load(pcam_run / "last.pt", weights_only=True)
    assert state["model_config"]["unet"]["num_labels"] == 2 and state["model_config"]["unet"]["image_size"] == 16
    out = tmp_path / "samples"
    assert inference.main(["--ckpt", str(pcam_run / "last.pt"), "--class_ids", "0", "1", "--num_per_class", "2",
                           "--cfg_scale", "2", "--steps", "4", "--save_trajectory", "--trajectory_every", "2", "--out_dir", str(out)]) == 0
    assert len(list((out / "class_01").glob("*.png"))) == 2
    gif = Image.open(out / "trajectory.gif")
    assert gif.n_frames == 3 and (out / "trajectory.png").is_file()


def test_nll_of_a_checkpoint_on_real_images(pcam_run, tmp_path):
    from data.pcam import PCamH5

    root = Path(torch.load(pcam_run / "last.pt", weights_only=True)["config"]["data_root"])
    val = PCamH5(root, "valid", crop=16)
    images = np.stack([((val[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for i in range(4)])
    real = write_images(tmp_path / "real", images)
    result = evaluate.run(["--real", str(real), "--metrics", "nll", "--nll_ckpt", str(pcam_run / "last.pt"),
                           "--nll_images", "2", "--out", str(tmp_path / "nll.json")])
    assert result["nll_images"] == 2 and 0 < result["nll_bpd"] < 20


def test_ablation_grid_runs_and_resumes(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    budget = {k: v for k, v in TINY_PCAM.items() if k not in ("attention_resolutions",)} | {"timesteps": 50}
    lines = ["budget:"] + [f"  {k}: {v}" for k, v in {**budget, "data_root": tmp_path / "data", "conditions": "none"}.items()]
    lines += ["evaluate: {samples: 4, nll_images: 2, sampling: ddim3}", "axes:", "  schedule: [linear, cosine]",
              "  attention:", "    none: {attention_resolutions: none, mid_attention: false}"]
    grid.write_text("\n".join(lines) + "\n")
    rows = ablate.run(["--grid", str(grid), "--out", str(tmp_path / "abl")])
    assert [r["variant"] for r in rows] == ["schedule-linear_attention-none", "schedule-cosine_attention-none"]
    assert (tmp_path / "abl" / "results.png").is_file()
    results = list(csv.DictReader((tmp_path / "abl" / "results.csv").open()))
    assert len(results) == 2 and all(float(r["nll_bpd"]) > 0 for r in results)
    (tmp_path / "abl" / "results.csv").write_text((tmp_path / "abl" / "results.csv").read_text().splitlines()[0] + "\n"
                                                  + (tmp_path / "abl" / "results.csv").read_text().splitlines()[1] + "\n")
    capsys.readouterr()
    again = ablate.run(["--grid", str(grid), "--out", str(tmp_path / "abl")])
    printed = capsys.readouterr().out
    assert "schedule-linear_attention-none: done before" in printed and len(again) == 2

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


@pytest.fixture(scope="module")
def pcam_real(pcam_run, tmp_path_factory) -> tuple[Path, Path]:
    """4 validation images of the class-conditional run in a folder, and their classes in a file,condition CSV."""
    from data.pcam import PCamH5

    val = PCamH5(Path(torch.load(pcam_run / "last.pt", weights_only=True)["config"]["data_root"]), "valid", crop=16)
    root = tmp_path_factory.mktemp("pcam_real")
    images = np.stack([((val[i]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for i in range(4)])
    real = write_images(root / "real", images, "tile")
    labels = root / "labels.csv"
    labels.write_text("file,condition\n" + "".join(f"tile_{i:03d}.png,{int(val[i]['label'])}\n" for i in range(4)))
    return real, labels


def nll_bound(ckpt: Path, real: Path, out: Path, *flags: str) -> dict:
    return evaluate.run(["--real", str(real), "--metrics", "nll", "--nll_ckpt", str(ckpt), "--nll_images", "2",
                         "--out", str(out), *flags])


def test_null_and_true_conditions_give_different_bounds(pcam_run, pcam_real, tmp_path) -> None:
    real, labels = pcam_real
    ckpt = pcam_run / "last.pt"
    null = nll_bound(ckpt, real, tmp_path / "null.json")
    true = nll_bound(ckpt, real, tmp_path / "true.json", "--nll_condition", "true", "--nll_condition_csv", str(labels))
    assert null["nll_condition"] == "null" and true["nll_condition"] == "true"
    assert null["nll_bpd"] != pytest.approx(true["nll_bpd"], rel=1e-6, abs=0)
    assert json.loads((tmp_path / "true.json").read_text())["nll_condition"] == "true"
    # The classes are read: every image given the other class changes the bound again.
    flipped = tmp_path / "flipped.csv"
    lines = labels.read_text().splitlines()
    flipped.write_text("\n".join([lines[0]] + [f"{f},{1 - int(c)}" for f, c in (line.split(",") for line in lines[1:])]) + "\n")
    other = nll_bound(ckpt, real, tmp_path / "other.json", "--nll_condition", "true", "--nll_condition_csv", str(flipped))
    assert other["nll_bpd"] != pytest.approx(true["nll_bpd"], rel=1e-6, abs=0)


def test_true_condition_needs_a_condition_source(pcam_run, pcam_real, tmp_path, capsys) -> None:
    real, labels = pcam_real
    ckpt = pcam_run / "last.pt"
    out = tmp_path / "e.json"
    base = ["--real", str(real), "--metrics", "nll", "--nll_ckpt", str(ckpt), "--out", str(out)]
    assert evaluate.main(base + ["--nll_condition", "true"]) == 2
    assert "--nll_condition_csv" in capsys.readouterr().err
    assert evaluate.main(base + ["--nll_condition_csv", str(labels)]) == 2
    assert "only with --nll_condition true" in capsys.readouterr().err
    assert evaluate.main(base[:2] + ["--metrics", "fid", "--fake", str(real), "--nll_condition", "true",
                                     "--nll_condition_csv", str(labels), "--out", str(out)]) == 2
    assert "which is not asked for" in capsys.readouterr().err
    partial = tmp_path / "partial.csv"
    partial.write_text("file,condition\ntile_000.png,1\n")
    assert evaluate.main(base + ["--nll_condition", "true", "--nll_condition_csv", str(partial)]) == 2
    assert "no condition for 3 image(s)" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,condition\n" + "".join(f"tile_{i:03d},7\n" for i in range(4)))
    assert evaluate.main(base + ["--nll_condition", "true", "--nll_condition_csv", str(bad)]) == 2
    assert "not a class id in 0..1" in capsys.readouterr().err
    assert not out.exists()


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


def skimage_mean_ssim(real: Path, fake: Path, **settings) -> float:
    from skimage.metrics import structural_similarity

    # scikit-image's own defaults are a uniform window with sample covariance; every setting is passed explicitly.
    settings = {"gaussian_weights": False, "use_sample_covariance": True, **settings}
    pairs = [(np.asarray(Image.open(r)), np.asarray(Image.open(fake / r.name))) for r in sorted(real.glob("*.png"))]
    return float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255, **settings) for a, b in pairs]))


@pytest.mark.parametrize(
    "flags, settings, record",
    [
        ([], {"win_size": 11, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
         {"ssim_preset": "default", "ssim_window": 11, "ssim_weights": "gaussian_11_sigma_1.5", "ssim_covariance": "population"}),
        (["--metric_preset", "kpc"], {"win_size": 3, "use_sample_covariance": True},
         {"ssim_preset": "kpc", "ssim_window": 3, "ssim_weights": "uniform", "ssim_covariance": "sample"}),
        (["--metric_preset", "kpc", "--ssim_window", "5", "--no-ssim_sample_covariance"], {"win_size": 5, "use_sample_covariance": False},
         {"ssim_preset": "kpc", "ssim_window": 5, "ssim_weights": "uniform", "ssim_covariance": "population"}),
        (["--ssim_window", "9", "--no-ssim_gaussian", "--ssim_sample_covariance"], {"win_size": 9, "use_sample_covariance": True},
         {"ssim_preset": "default", "ssim_window": 9, "ssim_weights": "uniform", "ssim_covariance": "sample"}),
    ],
)
def test_ssim_convention_flags_and_presets_match_scikit_image(image_sets, tmp_path, flags, settings, record):
    out = tmp_path / "conv.json"
    result = evaluate.run(["--real", str(image_sets["real"]), "--fake", str(image_sets["noisy"]), "--metrics", "ssim",
                           "--out", str(out), *flags])
    assert result["ssim"] == pytest.approx(skimage_mean_ssim(image_sets["real"], image_sets["noisy"], **settings), abs=1e-6)
    saved_csv = list(csv.DictReader(out.with_suffix(".csv").open()))[0]
    for key, value in {**record, "ssim_data_range": 1.0}.items():
        assert result[key] == value and saved_csv[key] == str(value)
    assert json.loads(out.read_text())["ssim_window"] == record["ssim_window"]


def test_ssim_window_must_be_odd(image_sets, tmp_path, capsys):
    assert evaluate.main(["--real", str(image_sets["real"]), "--fake", str(image_sets["noisy"]), "--metrics", "ssim",
                          "--ssim_window", "4", "--out", str(tmp_path / "w.json")]) == 2
    assert "--ssim_window: expected an odd number >= 3, got 4" in capsys.readouterr().err
    assert evaluate.main(["--real", str(image_sets["real"]), "--fake", str(image_sets["noisy"]), "--metrics", "ms_ssim",
                          "--no-ssim_gaussian", "--out", str(tmp_path / "w.json")]) == 2
    assert "--ssim_gaussian set(s) the SSIM of --metrics ssim" in capsys.readouterr().err


def test_kpc_preset_resizes_the_generated_images_and_scores_ms_ssim_as_torchmetrics(tmp_path, capsys):
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:176, 0:176] / 176
    smooth = np.stack([np.sin(7 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    real = np.clip(140 + 70 * smooth[None] + rng.normal(0, 15, (2, 176, 176, 3)), 0, 255).astype(np.uint8)
    small = np.stack([np.asarray(Image.fromarray(im).resize((88, 88), Image.BILINEAR)) for im in real])
    fake = np.clip(small.astype(int) + rng.integers(-20, 20, small.shape), 0, 255).astype(np.uint8)
    real_dir, fake_dir = write_images(tmp_path / "real", real), write_images(tmp_path / "fake", fake)
    base = ["--real", str(real_dir), "--fake", str(fake_dir), "--metrics", "ms_ssim"]
    result = evaluate.run(base + ["--metric_preset", "kpc", "--out", str(tmp_path / "kpc.json")])
    to_unit = lambda images: torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    resized = torch.nn.functional.interpolate(to_unit(fake) * 2 - 1, size=(176, 176), mode="bilinear", align_corners=False)
    expected = multiscale_structural_similarity_index_measure((resized.clamp(-1, 1) + 1) / 2, to_unit(real), data_range=1.0)
    assert result["ms_ssim"] == pytest.approx(float(expected), abs=1e-5)
    assert result["ms_ssim_convention"] == "torchmetrics" and result["fake_resized"].startswith("bilinear")
    assert "88x88 to 176x176" in result["fake_resized"]
    assert evaluate.main(base + ["--out", str(tmp_path / "default.json")]) == 2
    assert "--metric_preset kpc" in capsys.readouterr().err
    too_small = write_images(tmp_path / "small_real", small)
    assert evaluate.main(["--real", str(too_small), "--fake", str(fake_dir), "--metrics", "ms_ssim", "--metric_preset", "kpc",
                          "--out", str(tmp_path / "small.json")]) == 2
    assert "at least 176x176 px" in capsys.readouterr().err

"""End-to-end training on the synthetic fixture: checkpoints, exact resume, classifiers, errors, torchrun."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from unittest import mock
import torch

import train
from conftest import ROOT, tiny_config

TINY_UNET = {
    "model_type": "diffusion",
    "dim": 8,
    "dim_mults": "1,2",
    "num_res_blocks": 1,
    "attention_resolutions": 8,
    "num_head_channels": 8,
    "timesteps": 50,
    "soft_vs_hard": "soft",
}


def diffusion_args(root: Path, out: Path, **extra) -> list[str]:
    return tiny_config(root, out, **{**TINY_UNET, **extra})


def test_diffusion_run_writes_checkpoints_and_logs(synthetic_root, tmp_path):
    run_dir = train.run(diffusion_args(synthetic_root, tmp_path, save_every=2))
    assert run_dir == tmp_path / "diffusion_synthetic"
    for name in ("last.pt", "best.pt", "step_0000002.pt", "step_0000004.pt", "config.yaml", "train_log.csv", "val_log.csv"):
        assert (run_dir / name).is_file(), name
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["model_type"] == "diffusion"
    assert state["model_config"]["unet"]["image_size"] == 16
    assert set(state) >= {"format_version", "model", "ema", "optimizer", "scheduler", "scaler", "rng", "sampler_position", "config"}
    lines = (run_dir / "train_log.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss") and len(lines) == 5


def test_resume_reproduces_an_uninterrupted_run(synthetic_root, tmp_path):
    full = train.run(diffusion_args(synthetic_root, tmp_path / "full", max_steps=6, val_every=3, dropout=0.1))
    half = train.run(diffusion_args(synthetic_root, tmp_path / "half", max_steps=3, val_every=3, dropout=0.1))
    train.run(["--resume", str(half), "--max_steps", "6"])
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(half / "last.pt", weights_only=True)
    assert b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0, msg=key)
    assert (half / "train_log.csv").read_text() .count("\n") == 7


def test_resume_rejects_a_changed_option(synthetic_root, tmp_path):
    run_dir = train.run(diffusion_args(synthetic_root, tmp_path, max_steps=1))
    assert train.main(["--resume", str(run_dir), "--learning_rate", "0.1"]) == 2


def test_existing_run_folder_needs_overwrite(synthetic_root, tmp_path, capsys):
    args = diffusion_args(synthetic_root, tmp_path, max_steps=1)
    train.run(args)
    assert train.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert train.main(args + ["--overwrite"]) == 0


def test_classifier_ensemble_member(synthetic_root, tmp_path):
    args = tiny_config(synthetic_root, tmp_path, model_type="resnet18", tile_size=32, ensemble=1)
    run_dir = train.run(args)
    assert run_dir == tmp_path / "resnet" / "Ensemble_1"
    header, *rows = (run_dir / "val_log.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["step", "loss", "accuracy"] and "auc" in header
    assert len(rows) == 2


@pytest.mark.parametrize("kind", ["missing_slide", "empty_db", "unknown_class", "tile_too_large", "missing_checkpoint"])
def test_bad_input_gives_one_clear_message(synthetic_root, tmp_path, capsys, kind):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    extra: dict = {}
    expected = {
        "missing_slide": "synthetic_000.tif",
        "empty_db": "synthetic.sqlite",
        "unknown_class": "unknown class name",
        "tile_too_large": "--tile_size 4096 is larger than slide",
        "missing_checkpoint": "nowhere: no such run folder",
    }[kind]
    if kind == "missing_slide":
        (root / "WSI" / "synthetic_000.tif").unlink()
    elif kind == "empty_db":
        with sqlite3.connect(root / "Annotations" / "synthetic.sqlite") as db:
            db.execute("DELETE FROM Annotations")
    elif kind == "unknown_class":
        extra["mitotic_classes"] = "Mitotic figgure"
    elif kind == "tile_too_large":
        extra["tile_size"] = 4096
    argv = diffusion_args(root, tmp_path / "runs", **extra)
    if kind == "missing_checkpoint":
        argv = ["--resume", str(tmp_path / "nowhere")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "diffusion_synthetic" / "last.pt").exists()


def test_two_processes_under_torchrun(synthetic_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "train.py"]
    cmd += diffusion_args(synthetic_root, tmp_path, max_steps=3, val_every=0)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "diffusion_synthetic" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2


def test_early_stopping_when_validation_does_not_improve(synthetic_root, tmp_path, capsys):
    run_dir = train.run(diffusion_args(synthetic_root, tmp_path, max_steps=10, val_every=1, early_stopping=1, learning_rate=1e-30))
    assert "early stopping at step 2" in capsys.readouterr().out
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 2


def test_non_finite_loss_stops_and_names_the_checkpoint_it_keeps(synthetic_root, tmp_path, capsys):
    argv = diffusion_args(synthetic_root, tmp_path, max_steps=6, val_every=0, save_every=1, learning_rate=1e30, grad_clip=0)
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "diffusion_synthetic"
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert "non-finite loss" in err and f"progress up to step {last['step']} is in" in err and "last.pt" in err
    assert 0 < last["step"] < 6
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_non_finite_loss_at_the_first_step_says_no_checkpoint_and_leaves_no_folder(synthetic_root, tmp_path, capsys):
    argv = diffusion_args(synthetic_root, tmp_path, max_steps=6, val_every=0)
    nan = torch.tensor(float("nan"), requires_grad=True)
    with mock.patch("recipes.tasks.DiffusionTask.training_loss", return_value=nan):
        assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "no checkpoint was written" in err
    assert not (tmp_path / "diffusion_synthetic").exists()


def test_bf16_autocast_and_gradient_accumulation_on_cpu(synthetic_root, tmp_path):
    run_dir = train.run(tiny_config(synthetic_root, tmp_path, model_type="resnet18", tile_size=32, precision="bf16", grad_accum=2, max_steps=2))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["sampler_position"] == 4


def test_pretrained_weights_are_loaded(synthetic_root, tmp_path):
    from torchvision.models import resnet18

    from recipes.classifier import ResNetClassifier

    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = ResNetClassifier("resnet18")
    model.load_pretrained(path)
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.backbone.fc.out_features == 1
    argv = tiny_config(synthetic_root, tmp_path, model_type="resnet34", tile_size=32, pretrained_weights=path)
    assert train.main(argv) == 2

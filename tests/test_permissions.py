"""What a run writes gets the permissions of the user's umask, so colleagues on a shared server can read it."""
from __future__ import annotations

import os
import stat

import inference
import train
from conftest import tiny_config
from test_train import TINY_UNET


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_run_folders_checkpoints_and_samples_follow_the_umask(synthetic_root, tmp_path):
    old = os.umask(0o022)
    try:
        run_dir = train.run(tiny_config(synthetic_root, tmp_path / "runs", **{**TINY_UNET, "max_steps": 1,
                                                                              "conditions": "none"}))
        assert inference.main(["--ckpt", str(run_dir / "last.pt"), "--num_per_cluster", "2",
                               "--out_dir", str(tmp_path / "samples")]) == 0
    finally:
        os.umask(old)
    assert mode(run_dir) == 0o755 and mode(tmp_path / "samples") == 0o755
    for name in ("last.pt", "config.yaml", "train_log.csv"):
        assert mode(run_dir / name) == 0o644, name
    pngs = list((tmp_path / "samples").rglob("*.png"))
    assert pngs and all(mode(p) == 0o644 for p in pngs)

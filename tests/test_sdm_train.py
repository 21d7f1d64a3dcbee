"""SDM end to end on the synthetic MoNuSeg-format set: training, resume, fine-tuning on a cluster, synthesis."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tools import cluster
import inference
import train
from data.synthetic_monuseg import SyntheticMonusegConfig, generate_synthetic_monuseg

TINY_SDM = {
    "dataset": "synthetic_monuseg",
    "model_type": "sdm",
    "tile_size": 16,
    "batch_size": 2,
    "batch_validation": 4,
    "max_steps": 2,
    "val_every": 2,
    "val_batches": 1,
    "log_every": 1,
    "num_workers": 0,
    "dim": 8,
    "dim_mults": "1,2",
    "num_res_blocks": 1,
    "attention_resolutions": 8,
    "num_head_channels": 8,
    "spade_hidden": 8,
    "timesteps": 20,
}


@pytest.fixture(scope="module")
def monuseg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monuseg") / "data"
    generate_synthetic_monuseg(root, SyntheticMonusegConfig(num_images=3, size=64, seed=1), progress=False)
    return root


def sdm_args(root: Path, out: Path, *flags: str, **overrides) -> list[str]:
    args = {**TINY_SDM, "data_root": str(root), "out_dir": str(out), **overrides}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))] + list(flags)


def test_sdm_trains_with_every_map_and_learned_sigma(monuseg_root, tmp_path):
    run_dir = train.run(sdm_args(monuseg_root, tmp_path, "--use_hv_map", "--use_col_map"))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["model_type"] == "sdm" and state["model_config"]["diffusion"]["learn_sigma"] is True
    assert state["model_config"]["unet"]["semantic_channels"] == 2 + 1 + 2 + 3
    assert state["model_config"]["unet"]["out_channels"] == 6
    assert (monuseg_root / "tiles_16_16" / "images").is_dir()


def test_sdm_resume_reproduces_an_uninterrupted_run(monuseg_root, tmp_path):
    full = train.run(sdm_args(monuseg_root, tmp_path / "full", max_steps=4))
    half = train.run(sdm_args(monuseg_root, tmp_path / "half", max_steps=2))
    train.run(["--resume", str(half), "--max_steps", "4"])
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, half))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)


def test_cluster_then_fine_tune_then_synthesise(monuseg_root, tmp_path, capsys):
    pretrained = train.run(sdm_args(monuseg_root, tmp_path / "pre"))
    clusters = tmp_path / "clusters.csv"
    assert cluster.main(["--tiles", str(monuseg_root / "tiles_16_16"), "--k", "2", "--out", str(clusters)]) == 0
    rows = list(csv.DictReader(clusters.open()))
    assert {"name", "cluster"} <= set(rows[0])
    fine = train.run(sdm_args(monuseg_root, tmp_path / "fine", "--init_from", str(pretrained / "last.pt"),
                              "--cluster_file", str(clusters), "--cluster_id", "0", learning_rate=1e-5))
    assert fine.name == "sdm_synthetic_monuseg_cluster0"
    start = torch.load(pretrained / "last.pt", weights_only=True)["ema"]
    tuned = torch.load(fine / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(start[k], tuned[k]) for k in start)

    out = tmp_path / "synthetic_set"
    argv = ["--ckpt", str(pretrained / "last.pt"), str(fine / "last.pt"), "--num_samples", "3", "--s", "1", "2",
            "--timestep_respacing", "ddim4", "--batch_size", "2", "--layout_order", "in_order", "--out_dir", str(out)]
    assert inference.main(argv) == 0
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 2 * 2 * 3
    for image in images[:3]:
        stem = image.stem
        inst = tifffile.imread(out / "inst_masks" / f"{stem}.tif")
        label = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        assert inst.dtype == np.uint16 and inst.shape == (16, 16)
        np.testing.assert_array_equal(label > 0, inst > 0)
        assert (out / "cond" / f"{stem}.png").is_file()
    assert (out / "grid.png").is_file()
    layouts = [r["layout"] for r in csv.DictReader((out / "samples.csv").open())]
    assert layouts[:3] == sorted(layouts[:3])


def test_fine_tuning_needs_the_same_architecture(monuseg_root, tmp_path, capsys):
    pretrained = train.run(sdm_args(monuseg_root, tmp_path / "pre"))
    argv = sdm_args(monuseg_root, tmp_path / "fine", "--init_from", str(pretrained / "last.pt"), dim=16)
    assert train.main(argv) == 2
    assert "architecture differs in dim;" in capsys.readouterr().err


def test_sdm_flags_are_checked_against_the_checkpoint(monuseg_root, tmp_path, capsys):
    run_dir = train.run(sdm_args(monuseg_root, tmp_path))
    argv = ["--ckpt", str(run_dir / "last.pt"), "--conditions", "0:1:3", "--out_dir", str(tmp_path / "o")]
    assert inference.main(argv) == 2
    assert "not for sdm checkpoints" in capsys.readouterr().err
    argv = ["--ckpt", str(run_dir / "last.pt"), "--shuffle_masks", "--match_struct", "--out_dir", str(tmp_path / "o")]
    assert inference.main(argv) == 2
    assert "give one" in capsys.readouterr().err
    for flag, message in (("--match_struct", "no colour map"), ("--shuffle_masks", "no colour map"),
                          ("--preserve_nuclei_col", "pixel_shuffle colour map")):
        assert inference.main(["--ckpt", str(run_dir / "last.pt"), flag, "--out_dir", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["malformed_xml", "size_mismatch"])
def test_bad_layout_data_gives_one_clear_message(monuseg_root, tmp_path, capsys, kind):
    root = tmp_path / "data"
    if kind == "malformed_xml":
        shutil.copytree(monuseg_root, root, ignore=shutil.ignore_patterns("tiles_*"))
        xml = sorted((root / "Annotations").glob("*.xml"))[0]
        xml.write_text(xml.read_text()[:200])
        expected = xml.name
    else:
        shutil.copytree(monuseg_root / "tiles_16_16", root)
        mask = sorted((root / "inst_masks").glob("*.tif"))[0]
        tifffile.imwrite(mask, np.zeros((8, 8), np.uint16))
        expected = mask.stem
    assert train.main(sdm_args(root, tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last and "Traceback" not in err


def test_sdm_only_trains_on_layout_data(tmp_path):
    assert train.main(["--dataset", "synthetic", "--model_type", "sdm", "--out_dir", str(tmp_path)]) == 2
    assert train.main(["--dataset", "monuseg", "--model_type", "diffusion", "--out_dir", str(tmp_path)]) == 2

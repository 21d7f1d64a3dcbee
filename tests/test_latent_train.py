"""Autoencoders and latent diffusion end to end: training (with the GAN), resume, features, clusters, sampling."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tools import cluster_validation
import inference
import train
from data.npy_stack import tiles_from_slides, write_stack
from data.synthetic import synthetic_paths

AE = {"tile_size": 16, "batch_size": 4, "batch_validation": 8, "max_steps": 3, "val_every": 3, "val_batches": 1,
      "log_every": 1, "num_workers": 0, "test_size": 16, "ae_channels": 8, "ae_channel_mult": "1,2",
      "latent_channels": 2, "disc_channels": 8, "disc_layers": 1, "disc_start": 1}
LDM = {"batch_size": 4, "batch_validation": 8, "max_steps": 2, "val_every": 2, "val_batches": 1, "log_every": 1,
       "num_workers": 0, "test_size": 16, "dim": 8, "dim_mults": "1,2", "num_res_blocks": 1,
       "attention_resolutions": "none", "num_head_channels": 8, "timesteps": 20}


@pytest.fixture(scope="module")
def stack(synthetic_root, tmp_path_factory) -> Path:
    tiles = tiles_from_slides(sorted(synthetic_paths(synthetic_root)["slides_dir"].glob("*.tif")), 16, 64, seed=0)
    return write_stack(tmp_path_factory.mktemp("stack") / "tiles.npy", tiles)


def argv(values: dict, *flags: str) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))] + list(flags)


@pytest.fixture(scope="module")
def vqvae_run(stack, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae")
    return train.run(argv({**AE, "dataset": "npy", "model_type": "vqvae", "data_root": stack, "out_dir": out, "codebook_size": 16}))


def test_vqvae_trains_with_the_adversarial_loss_and_logs_codebook_use(vqvae_run):
    state = torch.load(vqvae_run / "last.pt", weights_only=True)
    assert state["discriminator"] is not None and state["d_optimizer"]["state"]
    rows = list(csv.DictReader((vqvae_run / "train_log.csv").open()))
    assert rows[0]["d_loss"] == "" and rows[-1]["d_loss"] != "" and float(rows[-1]["perplexity"]) >= 1
    val = list(csv.DictReader((vqvae_run / "val_log.csv").open()))[-1]
    assert {"psnr", "ssim", "perplexity", "codebook_usage"} <= set(val)
    assert (vqvae_run / "pictures" / "step_0000003.png").is_file()


def test_autoencoder_resume_is_exact_including_the_discriminator(stack, tmp_path):
    base = {**AE, "dataset": "npy", "model_type": "autoencoder_kl", "data_root": stack}
    full = train.run(argv({**base, "out_dir": tmp_path / "full", "max_steps": 4}))
    half = train.run(argv({**base, "out_dir": tmp_path / "half", "max_steps": 2}))
    train.run(["--resume", str(half), "--max_steps", "4"])
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, half))
    for part in ("model", "discriminator"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_the_run_says_it_trains_without_a_perceptual_loss(stack, tmp_path, capsys):
    train.run(argv({**AE, "dataset": "npy", "model_type": "vqvae", "data_root": stack, "out_dir": tmp_path, "max_steps": 1}))
    assert "training without the LPIPS perceptual loss" in capsys.readouterr().err


def test_features_clusters_ldm_and_sampling(stack, vqvae_run, tmp_path, capsys):
    exported = tmp_path / "ae_out"
    assert inference.main(["--ckpt", str(vqvae_run / "last.pt"), "--out_dir", str(exported)]) == 0
    metrics = list(csv.DictReader((exported / "metrics.csv").open()))
    assert len(metrics) == 16 and (exported / "grid.png").is_file()
    features = list(csv.DictReader((exported / "features.csv").open()))
    assert len(features) == 64 - 16 and len(features[0]) == 1 + 2 * 16

    clusters_dir = tmp_path / "clusters"
    assert cluster_validation.main(["--features", str(exported / "features.csv"), "--k", "2:3", "--out", str(clusters_dir)]) == 0
    assert {"indices.csv", "indices.png", "clusters.csv"} <= {p.name for p in clusters_dir.iterdir()}

    ldm_args = {**LDM, "dataset": "npy", "model_type": "ldm", "data_root": stack, "out_dir": tmp_path / "runs",
                "autoencoder_ckpt": vqvae_run / "last.pt", "conditions": "label", "cluster_file": clusters_dir / "clusters.csv"}
    run_dir = train.run(argv(ldm_args, "--cache_latents"))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    cfg = state["model_config"]
    assert cfg["unet"]["image_size"] == 8 and cfg["unet"]["in_channels"] == 2 and cfg["unet"]["num_labels"] >= 2
    assert cfg["scale_factor"] > 0 and (run_dir / "latents.pt").is_file()
    assert "latent scale factor" in capsys.readouterr().err

    out = tmp_path / "per_cluster"
    assert inference.main(["--ckpt", str(run_dir / "last.pt"), "--cluster_ids", "0", "1", "--num_per_cluster", "2",
                           "--cfg_scale", "2", "--steps", "3", "--out_dir", str(out)]) == 0
    assert len(list((out / "cluster_00").glob("*.png"))) == 2 and (out / "grid.png").is_file()

    paired = tmp_path / "paired"
    assert inference.main(["--ckpt", str(run_dir / "last.pt"), "--paired", "--steps", "2", "--batch_size", "16",
                           "--out_dir", str(paired)]) == 0
    generated = sorted(p.name for p in (paired / "generated").glob("*.png"))
    assert generated == sorted(p.name for p in (paired / "real").glob("*.png"))
    assert len(generated) == 64 - 16


def test_ldm_needs_an_autoencoder_and_labels(stack, vqvae_run, tmp_path):
    base = {**LDM, "dataset": "npy", "model_type": "ldm", "data_root": stack, "out_dir": tmp_path}
    assert train.main(argv(base)) == 2
    assert train.main(argv({**base, "autoencoder_ckpt": vqvae_run / "last.pt", "conditions": "label"})) == 2
    assert train.main(argv({**base, "autoencoder_ckpt": stack})) == 2


def test_scale_factor_makes_latents_unit_variance(stack, vqvae_run):
    from data.npy_stack import TileStack
    from diffusion.latent import measure_scale_factor
    from model import load_checkpoint

    ae = load_checkpoint(vqvae_run / "last.pt")
    tiles = TileStack(stack, "train", test_size=16)
    images = [torch.stack([tiles[i]["image"] for i in range(j, j + 8)]) for j in range(0, 48, 8)]
    scale = measure_scale_factor(ae.model, images, torch.device("cpu"))
    z = torch.cat([ae.model.encode(x) for x in images]) * scale
    assert float(z.detach().std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_ldm_resume_reproduces_an_uninterrupted_run(stack, vqvae_run, tmp_path):
    base = {**LDM, "dataset": "npy", "model_type": "ldm", "data_root": stack, "autoencoder_ckpt": vqvae_run / "last.pt",
            "val_every": 0}
    full = train.run(argv({**base, "out_dir": tmp_path / "full", "max_steps": 4}))
    half = train.run(argv({**base, "out_dir": tmp_path / "half", "max_steps": 2}))
    train.run(["--resume", str(half), "--max_steps", "4"])
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, half))
    assert a["model_config"]["scale_factor"] == b["model_config"]["scale_factor"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)

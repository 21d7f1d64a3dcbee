"""What train.py builds for each --model_type: the network, its stored model config, and the training task."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from checkpoint import CheckpointError
from config import AUTOENCODERS, ConfigError
from dataloader import DataBundle, cache_latents
from diffusion.discriminator import PatchDiscriminator
from diffusion.latent import LatentDiffusion, measure_scale_factor
from diffusion.lpips import LPIPS
from model import (
    LoadedModel,
    build_diffusion,
    build_from_model_config,
    build_model,
    init_from_checkpoint,
    ldm_model_config,
    load_checkpoint,
    model_config_from,
)
from tasks import AutoencoderTask, ClassifierTask, DiffusionTask


@dataclass
class Recipe:
    model: nn.Module
    model_config: dict[str, Any]
    task: Any
    data: DataBundle


def perceptual_loss(config: dict[str, Any]) -> LPIPS | None:
    """LPIPS over a local VGG16 state dict, or None (said plainly) when no weights are given."""
    if not config["perceptual_weights"]:
        print("no --perceptual_weights given: training without the LPIPS perceptual loss", file=sys.stderr)
        return None
    try:
        return LPIPS("vgg16", config["perceptual_weights"], config["lpips_weights"])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


def autoencoder_recipe(config: dict[str, Any], data: DataBundle, state: dict | None) -> Recipe:
    model_config = model_config_from(config)
    model = build_from_model_config(config["model_type"], model_config)
    if config.get("init_from") and state is None:
        init_from_checkpoint(model, config["model_type"], model_config, config["init_from"])
    discriminator = PatchDiscriminator(3, config["disc_channels"], config["disc_layers"])
    task = AutoencoderTask(
        config["loss_function"], perceptual_loss(config), config["perceptual_weight"], discriminator,
        config["disc_start"], config["disc_weight"],
    )
    return Recipe(model, model_config, task, data)


def load_autoencoder(path: str, device: torch.device) -> LoadedModel:
    loaded = load_checkpoint(path, device)
    if loaded.model_type not in AUTOENCODERS:
        raise CheckpointError(f"--autoencoder_ckpt {path} holds a {loaded.model_type} model, not a vqvae or autoencoder_kl")
    return loaded


def number_of_labels(data: DataBundle) -> int:
    labels = getattr(getattr(data.train_set, "dataset", data.train_set), "labels", None)
    if not labels:
        raise ConfigError("--conditions label: the training tiles have no cluster labels (give --cluster_file)")
    return max(labels.values()) + 1


def ldm_recipe(config: dict[str, Any], data: DataBundle, state: dict | None, device: torch.device, run_dir: Path) -> Recipe:
    """Latent diffusion: the frozen autoencoder, the latent scale factor (measured once), optional latent cache."""
    autoencoder = load_autoencoder(config["autoencoder_ckpt"], device)
    if state is not None:
        model_config = state["model_config"]
    elif config.get("init_from"):
        model_config = load_checkpoint(config["init_from"], "cpu").model_config
        if model_config["autoencoder"]["model_config"] != autoencoder.model_config:
            raise ConfigError(f"--init_from {config['init_from']} was trained on another autoencoder than --autoencoder_ckpt")
    else:
        base = getattr(data.train_set, "dataset", data.train_set)
        loader = DataLoader(base, batch_size=config["batch_size"], shuffle=False)
        images = (batch["image"] for _, batch in zip(range(config["scale_batches"]), loader))
        scale = measure_scale_factor(autoencoder.model, images, device)
        print(f"latent scale factor 1/std = {scale:.4f} (from {config['scale_batches']} batches)", file=sys.stderr)
        labels = number_of_labels(data) if "label" in config["conditions"] else 0
        model_config = ldm_model_config(config, autoencoder, scale, labels)
    model = build_from_model_config("ldm", model_config)
    model.autoencoder.load_state_dict(autoencoder.model.state_dict())
    if config.get("init_from") and state is None:
        init_from_checkpoint(model, "ldm", model_config, config["init_from"])
    if config["freeze_backbone"]:
        freeze_all_but_conditions(model)
    encode = True
    if config["cache_latents"]:
        data = cache_latents(data, model, device, run_dir / "latents.pt", config)
        encode = False
    task = DiffusionTask(build_diffusion(model_config), config["conditions"], encode=encode)
    return Recipe(model, model_config, task, data)


def freeze_all_but_conditions(model: LatentDiffusion) -> None:
    """Fine-tune only the condition (cluster) embedding of the UNet."""
    embedder = getattr(model.unet, "cond_embed", None)
    if embedder is None:
        raise ConfigError("--freeze_backbone: the model has no condition embedding to train (use --conditions label)")
    model.unet.requires_grad_(False)
    embedder.requires_grad_(True)


def build_recipe(config: dict[str, Any], data: DataBundle, state: dict | None, device: torch.device, run_dir: Path) -> Recipe:
    """The network, model config and task of config['model_type'] (weights from --init_from when given)."""
    model_type = config["model_type"]
    if model_type in AUTOENCODERS:
        return autoencoder_recipe(config, data, state)
    if model_type == "ldm":
        return ldm_recipe(config, data, state, device, run_dir)
    model = build_model(config)
    model_config = model_config_from(config)
    if config.get("init_from") and state is None:
        init_from_checkpoint(model, model_type, model_config, config["init_from"])
    if model_type == "diffusion":
        task = DiffusionTask(build_diffusion(model_config), config["conditions"])
    elif model_type == "sdm":
        task = DiffusionTask(build_diffusion(model_config), ("semantic",))
    else:
        task = ClassifierTask()
    return Recipe(model, model_config, task, data)

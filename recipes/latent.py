"""Latent diffusion (ldm): a UNet on the latents of a frozen, trained autoencoder, optionally conditioned on clusters."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.checkpoint import checked_network, load_failure, read_checkpoint
from common.errors import CheckpointError, ConfigError, DataError
from common.files import atomic_path
from common.options import Option, flag_bool, number
from data.families import TILE_DATASETS
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.latent import LatentDiffusion, measure_scale_factor
from diffusion.unet import UNet, upgrade_unet_config
from recipes.autoencoder import VARIANTS, Autoencoder
from recipes.base import Built, InferenceFlag, LoadedModel, RenderContext
from recipes.diffusion_base import CONDITION_OPTIONS, DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.latents import PAIRED_FLAG, TILE_FLAGS, render_tiles
from recipes.tasks import DiffusionTask

O = Option
AUTOENCODER_OPTIONS: tuple[Option, ...] = (
    O("autoencoder_ckpt", str, None, "checkpoint of a trained vqvae or autoencoder_kl: required for ldm; stedm diffuses its latents when given", None, "latent space"),
    O("scale_batches", number(int, 1), 20, "batches used to measure the latent scale factor (1 / std)", None, "latent space"),
)
LDM_OPTIONS: tuple[Option, ...] = AUTOENCODER_OPTIONS + (
    O("cache_latents", flag_bool, False, "encode the training tiles once and train on the cached latents (no augmentation)", None, "ldm"),
    O("freeze_backbone", flag_bool, False, "fine-tuning: train only the condition (cluster) embedding", None, "ldm"),
)


class CachedLatents(Dataset):
    """Latents encoded once (with their labels): the sample contract's `image` holds the latent."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor | None):
        self.latents = latents
        self.labels = labels

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.latents)
        sample = {"image": self.latents[i]}
        if self.labels is not None:
            sample["label"] = int(self.labels[i])
        return sample


@torch.no_grad()
def encode_all(dataset: Dataset, model: LatentDiffusion, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    latents, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latents.append(model.encode(batch["image"].to(device)).cpu())
        if "label" in batch:
            labels.append(batch["label"])
    return torch.cat(latents), (torch.cat(labels) if labels else None)


def cache_latents(data: Any, model: LatentDiffusion, device: torch.device, path: Path, batch_size: int) -> Any:
    """Encode the training and validation tiles once (unaugmented) into `path` and serve the latents from it."""
    if path.is_file():
        try:
            cache = torch.load(path, weights_only=True)
        except Exception as err:  # torch raises several types for corrupt files
            raise DataError(f"latent cache {path} cannot be read ({load_failure(err)}); delete it to encode the tiles again") from None
    else:
        train, train_labels = encode_all(data.train_items.without_augmentation(), model, device, batch_size)
        cache = {"train": train, "train_labels": train_labels}
        if data.val_set is not None:
            cache["val"], cache["val_labels"] = encode_all(data.val_set, model, device, batch_size)
        with atomic_path(path) as tmp:
            torch.save(cache, tmp)
        print(f"cached {len(train)} training latents in {path}", file=sys.stderr)
    val = CachedLatents(cache["val"], cache["val_labels"]) if "val" in cache else None
    return data.with_datasets(CachedLatents(cache["train"], cache["train_labels"]), val, in_memory=True)


def load_autoencoder(path: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The trained autoencoder of --autoencoder_ckpt (EMA weights when present) and its checkpoint."""
    state = read_checkpoint(path)
    if state["model_type"] not in VARIANTS:
        raise CheckpointError(f"--autoencoder_ckpt {path} holds a {state['model_type']} model, not a vqvae or autoencoder_kl")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    network = checked_network(lambda: Autoencoder(state["model_type"]).build_network(state["model_config"]), weights,
                              path, state["model_type"])
    return network.to(device).eval(), state


def latent_space(config: dict[str, Any], data: Any, autoencoder: nn.Module, ae_state: dict, device: torch.device) -> dict[str, Any]:
    """The model-config entries of a latent model: the frozen autoencoder's config, the latent scale factor
    (1 / std over --scale_batches training batches, measured here, once) and the pixel tile size."""
    tile_size = ae_state["config"]["tile_size"]
    if data.tile_size != tile_size:
        raise ConfigError(f"--autoencoder_ckpt {config['autoencoder_ckpt']} was trained on {tile_size} px tiles; this run's tiles are {data.tile_size} px (give --tile_size {tile_size})")
    loader = DataLoader(data.train_items, batch_size=config["batch_size"], shuffle=False)
    images = (batch["image"] for _, batch in zip(range(config["scale_batches"]), loader))
    scale = measure_scale_factor(autoencoder, images, device)
    print(f"latent scale factor 1/std = {scale:.4f} (from {config['scale_batches']} batches)", file=sys.stderr)
    return {"autoencoder": {"model_type": ae_state["model_type"], "model_config": ae_state["model_config"]},
            "scale_factor": scale, "image_size": tile_size}


def latent_network(unet: nn.Module, model_config: dict[str, Any]) -> LatentDiffusion:
    """`unet` inside a LatentDiffusion with a (still untrained) autoencoder of the model config's architecture."""
    ae = model_config["autoencoder"]
    autoencoder = Autoencoder(ae["model_type"]).build_network(ae["model_config"])
    return LatentDiffusion(unet, autoencoder, model_config["scale_factor"])


class LatentDiffusionRecipe(DiffusionRecipe):
    summary = "UNet on the latents of a frozen vqvae / autoencoder_kl, conditioned on clusters or nothing"
    demo_preset = "configs/demo_ldm.yaml"
    option_groups = ("tile data", "clusters", "diffusion", "conditioned diffusion", "latent space", "ldm")
    options = DIFFUSION_OPTIONS + CONDITION_OPTIONS + LDM_OPTIONS
    datasets = TILE_DATASETS

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        self.check_conditions(config, ("label",), [])
        if not config["autoencoder_ckpt"]:
            raise ConfigError("--model_type ldm needs --autoencoder_ckpt (a trained vqvae or autoencoder_kl)")
        if "label" in config["conditions"] and not config["cluster_file"]:
            raise ConfigError("--conditions label needs --cluster_file (the tiles' cluster ids)")

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        return latent_network(UNet(**upgrade_unet_config(model_config["unet"])), model_config)

    def latent_model_config(self, config: dict[str, Any], data: Any, autoencoder: nn.Module, ae_state: dict, device: torch.device) -> dict[str, Any]:
        """The UNet on the latent grid, the frozen autoencoder and the latent scale factor (measured here, once)."""
        if "label" in config["conditions"] and not data.num_labels:
            raise ConfigError("--conditions label: the training tiles have no cluster labels (give --cluster_file)")
        labels = data.num_labels if "label" in config["conditions"] else 0
        latent = latent_space(config, data, autoencoder, ae_state, device)
        unet = unet_config(config, latent["image_size"] // autoencoder.downsample_factor, autoencoder.latent_channels,
                           config["conditions"], num_labels=labels)
        return {"unet": unet, "diffusion": diffusion_settings(config), **latent}

    def build(self, config: dict[str, Any], data: Any, state: dict | None, device: torch.device, run_dir: Path) -> Built:
        autoencoder, ae_state = load_autoencoder(config["autoencoder_ckpt"], device)
        if state is not None:
            model_config = self.upgrade(state["model_config"])
        elif config.get("init_from"):
            model_config = self.upgrade(read_checkpoint(config["init_from"])["model_config"])
            if model_config["autoencoder"]["model_config"] != ae_state["model_config"]:
                raise ConfigError(f"--init_from {config['init_from']} was trained on another autoencoder than --autoencoder_ckpt")
        else:
            model_config = self.latent_model_config(config, data, autoencoder, ae_state, device)
        model = self.build_network(model_config)
        model.autoencoder.load_state_dict(autoencoder.state_dict())
        if config.get("init_from") and state is None:
            self.init_from(model, model_config, config["init_from"])
        if config["freeze_backbone"]:
            freeze_all_but_conditions(model)
        encode = not config["cache_latents"]
        if config["cache_latents"]:
            data = cache_latents(data, model, device, run_dir / "latents.pt", config["batch_validation"])
        task = DiffusionTask(GaussianDiffusion.from_config(**model_config["diffusion"]), config["conditions"], encode=encode)
        return Built(model, model_config, task, data)

    def inference_flags(self, loaded: LoadedModel) -> tuple[InferenceFlag, ...]:
        return TILE_FLAGS + (PAIRED_FLAG,)

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        return TILE_FLAGS + (PAIRED_FLAG,)

    def render(self, ctx: RenderContext) -> None:
        render_tiles(ctx, label_name="cluster", pixel_space=False)


def freeze_all_but_conditions(model: LatentDiffusion) -> None:
    """Fine-tune only the condition (cluster) embedding of the UNet."""
    embedder = getattr(model.unet, "cond_embed", None)
    if embedder is None:
        raise ConfigError("--freeze_backbone: the model has no condition embedding to train (use --conditions label)")
    model.unet.requires_grad_(False)
    embedder.requires_grad_(True)

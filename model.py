"""build_model(config) for every --model_type, and load_checkpoint(path) -> a ready model with its config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from checkpoint import CheckpointError, read_checkpoint
from classifier import ARCHITECTURES, Ensemble, ResNetClassifier
from config import ConfigError, map_settings
from data.condition_maps import MapOptions, map_channels
from diffusion.autoencoder import VQVAE, AutoencoderKL
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.latent import LatentDiffusion
from diffusion.sdm_unet import SDMUNet
from diffusion.unet import UNet

PCAM_CLASSES = 2


def diffusion_settings(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "schedule": config["schedule"],
        "timesteps": config["timesteps"],
        "objective": config["objective"],
        "loss_type": config["loss_function"],
        "learn_sigma": bool(config["learn_sigma"]),
        "vlb_weight": config["vlb_weight"],
    }


def score_unet_config(config: dict[str, Any], image_size: int, channels: int, num_labels: int) -> dict[str, Any]:
    """Keyword arguments of the score / label UNet (pixels, or the latent grid of latent diffusion)."""
    return {
        "image_size": image_size,
        "in_channels": channels,
        "out_channels": 2 * channels if config["learn_sigma"] else channels,
        "dim": config["dim"],
        "dim_mults": list(config["dim_mults"]),
        "num_res_blocks": config["num_res_blocks"],
        "attn_resolutions": list(config["attention_resolutions"]),
        "num_head_channels": config["num_head_channels"],
        "dropout": config["dropout"],
        "conditions": list(config["conditions"]),
        "cond_drop_prob": config["cond_drop_prob"],
        "mid_attention": config["mid_attention"],
        "num_labels": num_labels,
    }


def model_config_from(config: dict[str, Any]) -> dict[str, Any]:
    """The plain dict stored in checkpoints that rebuilds the network (and diffusion process) with no flags."""
    model_type = config["model_type"]
    if model_type == "diffusion":
        labels = PCAM_CLASSES if "label" in config["conditions"] else 0
        unet = score_unet_config(config, config["tile_size"], 3, labels)
        return {"unet": unet, "diffusion": diffusion_settings(config)}
    if model_type == "sdm":
        maps = map_settings(config)
        unet = {
            "image_size": config["tile_size"],
            "in_channels": 3,
            "out_channels": 6 if config["learn_sigma"] else 3,
            "model_channels": config["dim"],
            "channel_mult": list(config["dim_mults"]),
            "num_res_blocks": config["num_res_blocks"],
            "attention_resolutions": list(config["attention_resolutions"]),
            "num_head_channels": config["num_head_channels"],
            "dropout": config["dropout"],
            "semantic_channels": map_channels(MapOptions(**maps)),
            "spade_hidden": config["spade_hidden"],
            "resblock_updown": config["resblock_updown"],
            "use_scale_shift_norm": config["use_scale_shift_norm"],
            "use_checkpoint": config["use_checkpoint"],
            "cond_drop_prob": config["cond_drop_prob"],
        }
        return {"unet": unet, "diffusion": diffusion_settings(config), "maps": maps}
    if model_type in ("vqvae", "autoencoder_kl"):
        ae = {
            "in_channels": 3,
            "channels": config["ae_channels"],
            "channel_mult": list(config["ae_channel_mult"]),
            "num_res_blocks": config["ae_res_blocks"],
            "latent_channels": config["latent_channels"],
        }
        if model_type == "vqvae":
            ae.update(codebook_size=config["codebook_size"], commitment_weight=config["commitment_weight"],
                      ema_decay=config["codebook_decay"], use_ema=config["codebook_ema"],
                      dead_code_threshold=config["dead_code_threshold"])
        else:
            ae.update(kl_weight=config["kl_weight"])
        return {"autoencoder": ae}
    return {"arch": model_type}


def ldm_model_config(config: dict[str, Any], autoencoder: LoadedModel, scale_factor: float, num_labels: int) -> dict[str, Any]:
    """Model config of a latent diffusion run: the UNet on the latent grid, the frozen autoencoder, the scale."""
    ae = autoencoder.model
    latent = ae.latent_channels
    size = autoencoder.config["tile_size"] // ae.downsample_factor
    unet = score_unet_config(config, size, latent, num_labels)
    return {
        "unet": unet,
        "diffusion": diffusion_settings(config),
        "autoencoder": {"model_type": autoencoder.model_type, "model_config": autoencoder.model_config},
        "scale_factor": scale_factor,
        "image_size": autoencoder.config["tile_size"],
    }


def build_from_model_config(model_type: str, model_config: dict[str, Any]) -> nn.Module:
    if model_type == "diffusion":
        return UNet(**model_config["unet"])
    if model_type == "sdm":
        return SDMUNet(**model_config["unet"])
    if model_type == "vqvae":
        return VQVAE(**model_config["autoencoder"])
    if model_type == "autoencoder_kl":
        return AutoencoderKL(**model_config["autoencoder"])
    if model_type == "ldm":
        ae = model_config["autoencoder"]
        autoencoder = build_from_model_config(ae["model_type"], ae["model_config"])
        return LatentDiffusion(UNet(**model_config["unet"]), autoencoder, model_config["scale_factor"])
    if model_type in ARCHITECTURES:
        return ResNetClassifier(model_config["arch"])
    raise ValueError(f"unknown model type {model_type!r}")


def build_model(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised network for config['model_type'] (with --pretrained_weights for classifiers)."""
    model = build_from_model_config(config["model_type"], model_config_from(config))
    if config.get("pretrained_weights") and isinstance(model, ResNetClassifier):
        try:
            model.load_pretrained(config["pretrained_weights"])
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
    return model


TRAINING_ONLY = {"cond_drop_prob", "dropout", "use_checkpoint"}


def init_from_checkpoint(model: nn.Module, model_type: str, model_config: dict[str, Any], path: str | Path) -> None:
    """Start from the (EMA, when present) weights of another run of the same architecture (fine-tuning)."""
    state = read_checkpoint(path)
    if state["model_type"] != model_type:
        raise ConfigError(f"--init_from {path} holds a {state['model_type']} model; this run trains {model_type}")
    mine, theirs = model_config.get("unet", model_config), state["model_config"].get("unet", state["model_config"])
    differ = sorted(k for k in set(mine) | set(theirs) if k not in TRAINING_ONLY and mine.get(k) != theirs.get(k))
    if differ or model_config.get("maps") != state["model_config"].get("maps"):
        shown = differ or ["condition maps"]
        raise ConfigError(f"--init_from {path}: architecture differs in {', '.join(shown)}; use the options of that run")
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])


def build_diffusion(model_config: dict[str, Any]) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(**model_config["diffusion"])


@dataclass
class LoadedModel:
    model: nn.Module
    model_type: str
    model_config: dict[str, Any]
    config: dict[str, Any]
    step: int
    path: Path

    @property
    def diffusion(self) -> GaussianDiffusion:
        return build_diffusion(self.model_config)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedModel:
    """Rebuild the network stored in a checkpoint, in eval mode on `device` (EMA weights when present)."""
    state = read_checkpoint(path)
    model = build_from_model_config(state["model_type"], state["model_config"])
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the stored model_config ({err})") from None
    model.to(device).eval()
    return LoadedModel(model, state["model_type"], state["model_config"], state.get("config", {}), state["step"], Path(path))


def classifier_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (e.g. model_weights/resnet/) into one checkpoint per ensemble member.

    In a folder, each run folder (one holding best.pt or last.pt) gives its best.pt, or last.pt without one.
    """
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_file():
            found.append(item)
            continue
        if not item.is_dir():
            raise CheckpointError(f"--classifier_ckpts: {item} is neither a checkpoint file nor a folder")
        runs = sorted({p.parent for p in item.rglob("*.pt") if p.name in ("best.pt", "last.pt")})
        if not runs:
            raise CheckpointError(f"--classifier_ckpts: no best.pt or last.pt below {item}")
        found.extend(run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt" for run in runs)
    return found


def load_ensemble(paths: list[str | Path], device: str | torch.device = "cpu") -> tuple[Ensemble, list[Path]]:
    files = classifier_checkpoints(paths)
    members = []
    for file in files:
        loaded = load_checkpoint(file, device)
        if loaded.model_type not in ARCHITECTURES:
            raise CheckpointError(f"--classifier_ckpts: {file} holds a {loaded.model_type} model, not a classifier")
        members.append(loaded.model)
    return Ensemble(members).to(device).eval(), files

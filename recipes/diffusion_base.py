"""What every diffusion recipe shares: the diffusion and UNet flags, their checks, the stored settings, the task."""
from __future__ import annotations

from typing import Any

from torch import nn

from common.errors import ConfigError
from common.options import Option, flag_bool, number, number_list, str_list
from data.families import CONDITION_DATASETS
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.schedules import LDM_BETA_RANGE, SCHEDULES
from diffusion.network_inputs import level_resolutions
from diffusion.unet import UNet, upgrade_unet_config
from recipes.base import Recipe
from recipes.tasks import DiffusionTask, Task

O = Option
DIFFUSION_LOSSES = ("l2", "l1", "huber")
DIFFUSION_OPTIONS: tuple[Option, ...] = (
    O("timesteps", number(int, 1), 1000, "diffusion steps T", None, "diffusion", ("diffusion_steps",)),
    O("schedule", str, "cosine", "noise schedule (scaled_linear: linear in sqrt(beta), latent diffusion's \"linear\")", SCHEDULES, "diffusion", ("noise_schedule",)),
    O("beta_range", number_list(float, 0, 1, low_open=True, high_open=True, min_items=2, max_items=2), None, "scaled_linear: first and last beta (default 0.0015,0.0205 as in latent diffusion)", None, "diffusion"),
    O("objective", str, "eps", "what the network predicts", ("eps", "x0", "v"), "diffusion"),
    O("learn_sigma", flag_bool, None, "learn the variance with the hybrid loss (default: on for sdm, off otherwise)", None, "diffusion"),
    O("vlb_weight", number(float, 0), 0.001, "weight lambda of the variational-bound term of the hybrid loss", None, "diffusion"),
    O("cond_drop_prob", number(float, 0, 1), None, "probability of dropping the condition in training, for guidance (default 0.1; sdm 0.2)", None, "diffusion", ("drop_rate",)),
    O("dim", number(int, 1), 64, "UNet base channels", None, "diffusion", ("num_channels",)),
    O("dim_mults", number_list(int, 1, min_items=1), [1, 2, 4], "channel multipliers per resolution level", None, "diffusion", ("channel_mult",)),
    O("num_res_blocks", number(int, 1), 2, "residual blocks per level", None, "diffusion"),
    O("attention_resolutions", number_list(int, 1), [16], "feature-map sizes with self-attention", None, "diffusion"),
    O("num_head_channels", number(int, 1), 32, "channels per attention head", None, "diffusion"),
    O("dropout", number(float, 0, 1, high_open=True), 0.0, "dropout in residual blocks", None, "diffusion"),
    O("mid_attention", flag_bool, True, "self-attention in the UNet's middle block", None, "diffusion"),
    O("resblock_updown", flag_bool, None, "down/up sampling inside residual blocks (default: on for sdm, off otherwise)", None, "diffusion"),
    O("use_scale_shift_norm", flag_bool, True, "time embedding as scale and shift of the normalised activations", None, "diffusion"),
    O("use_checkpoint", flag_bool, False, "gradient checkpointing (less memory, more compute)", None, "diffusion"),
)
CONDITION_OPTIONS: tuple[Option, ...] = (
    O("conditions", str_list, None, "conditions the UNet takes: score (WSI data, the default there), label (class or cluster id), or none", None, "conditioned diffusion"),
)


def diffusion_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of GaussianDiffusion.from_config, as stored in checkpoints."""
    return {
        "schedule": config["schedule"],
        **({"beta_range": list(config["beta_range"] or LDM_BETA_RANGE)} if config["schedule"] == "scaled_linear" else {}),
        "timesteps": config["timesteps"],
        "objective": config["objective"],
        "loss_type": config["loss_function"],
        "learn_sigma": bool(config["learn_sigma"]),
        "vlb_weight": config["vlb_weight"],
    }


def check_unet_shape(config: dict[str, Any], image_size: int) -> None:
    """ConfigError naming the options when --dim_mults, --attention_resolutions and --num_head_channels do not fit
    each other, --dim or the image_size x image_size grid the UNet runs on."""
    mults, heads = list(config["dim_mults"]), config["num_head_channels"]
    try:
        _, resolutions, attention = level_resolutions(image_size, mults, config["attention_resolutions"],
                                                      ("--dim_mults", "--attention_resolutions"))
    except ValueError as err:
        raise ConfigError(f"--dim_mults {mults} / --attention_resolutions {config['attention_resolutions']} do not fit "
                          f"the {image_size} px grid: {err}") from None
    levels = [m for m, r in zip(mults, resolutions) if r in attention] + ([mults[-1]] if config["mid_attention"] else [])
    undivided = sorted({config["dim"] * m for m in levels if config["dim"] * m % heads})
    if undivided:
        raise ConfigError(f"--num_head_channels {heads} must divide the channels (--dim {config['dim']} x --dim_mults) "
                          f"of every attention layer; it does not divide {undivided}")


def unet_config(config: dict[str, Any], image_size: int, channels: int, conditions: list[str], **extra: Any) -> dict[str, Any]:
    """Keyword arguments of the UNet on a grid of image_size x image_size x channels (pixels or latents)."""
    check_unet_shape(config, image_size)
    return {
        "image_size": image_size,
        "in_channels": channels,
        "out_channels": 2 * channels if config["learn_sigma"] else channels,
        "dim": config["dim"],
        "dim_mults": list(config["dim_mults"]),
        "num_res_blocks": config["num_res_blocks"],
        "attention_resolutions": list(config["attention_resolutions"]),
        "num_head_channels": config["num_head_channels"],
        "dropout": config["dropout"],
        "mid_attention": bool(config["mid_attention"]),
        "resblock_updown": bool(config["resblock_updown"]),
        "use_scale_shift_norm": bool(config["use_scale_shift_norm"]),
        "use_checkpoint": bool(config["use_checkpoint"]),
        "conditions": list(conditions),
        "cond_drop_prob": config["cond_drop_prob"],
        **extra,
    }


class DiffusionRecipe(Recipe):
    """Base of the diffusion recipes: a UNet under GaussianDiffusion, trained with the denoising loss."""

    options = DIFFUSION_OPTIONS
    losses = DIFFUSION_LOSSES
    default_ema_decay = 0.9995
    default_learn_sigma = False
    default_cond_drop_prob = 0.1
    default_resblock_updown = False

    def wrong_loss_message(self, loss: str) -> str:
        return f"--loss_function {loss} is for classifiers; {self.name} takes {('l1', 'l2', 'huber')}"

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        for name in ("learn_sigma", "cond_drop_prob", "resblock_updown"):
            if config[name] is None:
                config[name] = getattr(self, f"default_{name}")
        if config["beta_range"] is not None:
            if config["schedule"] != "scaled_linear":
                raise ConfigError(f"--beta_range is for --schedule scaled_linear, not {config['schedule']}")
            if config["beta_range"][0] > config["beta_range"][1]:
                raise ConfigError(f"--beta_range: expected two betas 0 < first <= last < 1, got {config['beta_range']}")
        if config["schedule"] == "linear" and config["timesteps"] <= 20:
            raise ConfigError(f"--schedule linear needs --timesteps above 20 (its last beta is 20 / T), got {config['timesteps']}")

    def upgrade(self, model_config: dict[str, Any]) -> dict[str, Any]:
        return {**model_config, "unet": upgrade_unet_config(model_config["unet"])}

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        return UNet(**upgrade_unet_config(model_config["unet"]))

    def conditions(self, config: dict[str, Any]) -> list[str]:
        """The conditions the network of this run takes."""
        return list(config["conditions"])

    def check_conditions(self, config: dict[str, Any], takes: tuple[str, ...], default: list[str]) -> None:
        """Fill --conditions (default: `default`) and check each is known and carried by the data set."""
        if config["conditions"] is None:
            config["conditions"] = default
        for name in set(config["conditions"]) & set(CONDITION_DATASETS):
            if config["dataset"] not in CONDITION_DATASETS[name]:
                wanted = " or ".join(CONDITION_DATASETS[name])
                raise ConfigError(f"--conditions {name} needs --dataset {wanted}, not {config['dataset']}")
        unknown = sorted(set(config["conditions"]) - set(takes))
        if unknown:
            raise ConfigError(f"--conditions: unknown condition(s) {unknown}; {self.name} takes: {', '.join(takes)} or none")

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        return DiffusionTask(GaussianDiffusion.from_config(**model_config["diffusion"]), self.conditions(config))

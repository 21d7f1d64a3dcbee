"""VQ-VAE and KL autoencoders (reconstruction + LPIPS + PatchGAN), their reconstructions and latent features."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from common.errors import ConfigError
from common.files import staged_folder
from common.options import Option, flag_bool, number, number_list
from data.families import TILE_DATASETS
from diffusion.autoencoder import PADDING_MODES, VQVAE, AutoencoderKL
from diffusion.discriminator import PatchDiscriminator
from diffusion.lpips import LPIPS
from recipes.base import Recipe, RenderContext
from recipes.latents import export_features, reconstruct
from recipes.render import single_checkpoint
from recipes.tasks import AutoencoderTask, Task

O = Option
AUTOENCODER_OPTIONS: tuple[Option, ...] = (
    O("ae_channels", number(int, 1), 64, "autoencoder base channels", None, "autoencoder"),
    O("ae_channel_mult", number_list(int, 1, min_items=1), [1, 2, 4], "autoencoder channel multipliers; downsampling factor 2**(levels-1)", None, "autoencoder"),
    O("ae_res_blocks", number(int, 1), 1, "autoencoder residual blocks per level", None, "autoencoder"),
    O("latent_channels", number(int, 1), 4, "channels of the latent", None, "autoencoder"),
    O("ae_padding", str, "zeros", "how the autoencoder's convolutions extend the tile border: zeros (as CompVis), reflect (the tile mirrored) or replicate (its edge repeated)", PADDING_MODES, "autoencoder"),
    O("perceptual_weights", str, None, "local torchvision VGG16 state dict for the LPIPS perceptual loss (none: no perceptual loss)", None, "autoencoder"),
    O("lpips_weights", str, None, "optional LPIPS linear calibration weights (lin layers) for --perceptual_weights", None, "autoencoder"),
    O("perceptual_weight", number(float, 0), 1.0, "weight of the perceptual loss", None, "autoencoder"),
    O("disc_start", number(int, 0), 5000, "step at which the PatchGAN adversarial loss starts (a value past --max_steps: no GAN)", None, "autoencoder"),
    O("disc_weight", number(float, 0), 0.5, "weight of the adaptive adversarial loss", None, "autoencoder"),
    O("disc_learning_rate", number(float, 0, low_open=True), None, "discriminator learning rate (default: --learning_rate)", None, "autoencoder"),
    O("disc_channels", number(int, 1), 64, "PatchGAN base channels", None, "autoencoder"),
    O("disc_layers", number(int, 1), 3, "PatchGAN strided layers", None, "autoencoder"),
    O("codebook_size", number(int, 1), 512, "VQ codebook entries", None, "vq"),
    O("commitment_weight", number(float, 0), 0.25, "VQ commitment loss weight", None, "vq"),
    O("codebook_ema", flag_bool, True, "update the codebook by exponential moving averages (else by gradients)", None, "vq"),
    O("codebook_decay", number(float, 0, 1, high_open=True), 0.99, "EMA decay of the codebook", None, "vq"),
    O("dead_code_threshold", number(float, 0), 1.0, "codes whose EMA usage falls below this are restarted from encoder outputs", None, "vq"),
    O("kl_weight", number(float, 0), 1e-6, "weight of the KL term", None, "kl"),
)
VARIANTS = {"vqvae": ("vq", VQVAE), "autoencoder_kl": ("kl", AutoencoderKL)}


def perceptual_loss(config: dict[str, Any]) -> LPIPS | None:
    """LPIPS over a local VGG16 state dict, or None (said plainly) when no weights are given."""
    if not config["perceptual_weights"]:
        print("no --perceptual_weights given: training without the LPIPS perceptual loss", file=sys.stderr)
        return None
    try:
        return LPIPS("vgg16", config["perceptual_weights"], config["lpips_weights"])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None


class Autoencoder(Recipe):
    """--model_type vqvae or autoencoder_kl: the same encoder/decoder with a VQ bottleneck or a KL term."""

    summary = "autoencoder of tiles (VQ or KL) for latent diffusion; reconstructions and latent features"
    options = AUTOENCODER_OPTIONS
    datasets = TILE_DATASETS
    losses = ("l1", "l2")
    sampling_flags = False

    def __init__(self, name: str):
        super().__init__(name)
        group, self.network_class = VARIANTS[name]
        self.demo_preset = f"configs/demo_{name}.yaml"
        self.option_groups = ("tile data", "autoencoder", group)

    def wrong_loss_message(self, loss: str) -> str:
        return f"--loss_function {loss}: autoencoders reconstruct with l1 or l2"

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        ae = {
            "in_channels": 3,
            "channels": config["ae_channels"],
            "channel_mult": list(config["ae_channel_mult"]),
            "num_res_blocks": config["ae_res_blocks"],
            "latent_channels": config["latent_channels"],
            "padding_mode": config["ae_padding"],
        }
        if self.name == "vqvae":
            ae.update(codebook_size=config["codebook_size"], commitment_weight=config["commitment_weight"],
                      ema_decay=config["codebook_decay"], use_ema=config["codebook_ema"],
                      dead_code_threshold=config["dead_code_threshold"])
        else:
            ae.update(kl_weight=config["kl_weight"])
        return {"autoencoder": ae}

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        return self.network_class(**model_config["autoencoder"])

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        discriminator = PatchDiscriminator(3, config["disc_channels"], config["disc_layers"])
        return AutoencoderTask(config["loss_function"], perceptual_loss(config), config["perceptual_weight"], discriminator,
                               config["disc_start"], config["disc_weight"])

    def render(self, ctx: RenderContext) -> None:
        render_reconstructions(ctx)


def render_reconstructions(ctx: RenderContext) -> None:
    """Reconstructions of the held-out tiles (PSNR, SSIM, grid) and latent features of the training tiles."""
    single_checkpoint(ctx)
    args, loaded, device = ctx.args, ctx.first, ctx.device
    train_tiles = ctx.data.tiles(loaded.config, "train")
    test_tiles = ctx.data.tiles(loaded.config, "test")
    out = Path(args.out_dir)
    result: dict[str, Any] = {}

    def write(folder: Path) -> None:
        result.update(reconstruct(loaded.model, test_tiles, args.batch_size, device, folder))
        result["features"] = export_features(loaded.model, train_tiles, args.batch_size, device, folder / "features.csv")

    staged_folder(out, write)
    print(f"held-out tiles: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} ({out / 'metrics.csv'}, {out / 'grid.png'})")
    print(f"latent features of {result['features']} training tiles: {out / 'features.csv'} (input of python -m tools.cluster_validation)")




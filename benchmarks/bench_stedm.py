"""Style-extracting diffusion (STEDM) speed on random data: training images/s (UNet + style encoder) and s/tile of
guided DDIM sampling, in pixel space or on the latents of a random-weight VQ autoencoder. Prints one JSON line.

python benchmarks/bench_stedm.py --image_size 32 --dim 32 --dim_mults 1,2,2 --num_res_blocks 1 --attention_resolutions 8 \
    --style_encoder resnet18 --style_dim 64 --num_style_images 2 --num_classes 3 --batch_size 8 --sample_steps 50    (demo)
python benchmarks/bench_stedm.py --image_size 512 --latent --ae_channels 128 --ae_channel_mult 1,2,4 --ae_res_blocks 2 \
    --latent_channels 3 --codebook_size 8192 --dim 128 --dim_mults 1,4,8 --num_res_blocks 2 --attention_resolutions none \
    --num_head_channels 128 --style_encoder swin_v2_t --style_dim 512 --num_style_images 1 --num_classes 2 \
    --batch_size 8 --sample_steps 128 --precision bf16                                    (original work: VQ-f4, 512 px)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser  # noqa: E402
from common.options import flag_bool, int_list  # noqa: E402
from diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from diffusion.latent import LatentDiffusion  # noqa: E402
from diffusion.sampling import SamplingSpec, sample  # noqa: E402
from diffusion.style import AGGREGATORS, BACKBONES  # noqa: E402
from diffusion.unet import UNet, count_parameters  # noqa: E402
from recipes.autoencoder import Autoencoder  # noqa: E402
from recipes.style_diffusion import DEFAULT_CFG_RESCALE, DEFAULT_CFG_SCALE, style_network  # noqa: E402

STYLE_DROP_PROB = 0.25  # the recipe's --style_drop_prob default


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--image_size", type=int, default=32, help="pixel tile size (layout and style crops)")
    p.add_argument("--latent", action="store_true", help="diffuse the latents of a random-weight VQ autoencoder")
    p.add_argument("--ae_channels", type=int, default=128)
    p.add_argument("--ae_channel_mult", type=int_list, default=[1, 2, 4], help="downsampling factor 2**(levels-1)")
    p.add_argument("--ae_res_blocks", type=int, default=2)
    p.add_argument("--latent_channels", type=int, default=3)
    p.add_argument("--codebook_size", type=int, default=8192)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--dim_mults", type=int_list, default=[1, 2, 2])
    p.add_argument("--num_res_blocks", type=int, default=1)
    p.add_argument("--attention_resolutions", type=int_list, default=[8], help="'none' for no self-attention in the levels")
    p.add_argument("--num_head_channels", type=int, default=32)
    p.add_argument("--mid_attention", type=flag_bool, default=True)
    p.add_argument("--style_encoder", choices=BACKBONES, default="resnet18")
    p.add_argument("--style_dim", type=int, default=64)
    p.add_argument("--num_style_images", type=int, default=2)
    p.add_argument("--style_size", type=int, default=None, help="style crop size (default: --image_size)")
    p.add_argument("--style_agg", choices=AGGREGATORS, default="mean")
    p.add_argument("--num_classes", type=int, default=3, help="layout classes (one-hot channels)")
    p.add_argument("--batch_size", type=int, default=8, help="training and sampling batch")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first (and a 1-step sampling pass if > 0)")
    p.add_argument("--sample_steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--cfg_scale", type=float, default=DEFAULT_CFG_SCALE, help="guidance on the style (1: one pass)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def autoencoder_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model config recipes/autoencoder.py builds for --model_type vqvae (its other defaults)."""
    return {"autoencoder": {"in_channels": 3, "channels": args.ae_channels, "channel_mult": list(args.ae_channel_mult),
                            "num_res_blocks": args.ae_res_blocks, "latent_channels": args.latent_channels,
                            "codebook_size": args.codebook_size, "commitment_weight": 0.25, "ema_decay": 0.99,
                            "use_ema": True, "dead_code_threshold": 1.0}}


def unet_settings(args: argparse.Namespace, size: int, channels: int) -> dict[str, Any]:
    """UNet keyword arguments as StyleDiffusion.model_config gives them (learn_sigma off, the option defaults)."""
    style = {"encoder": args.style_encoder, "style_dim": args.style_dim, "num_images": args.num_style_images,
             "aggregation": args.style_agg, "encoder_weights": None}
    return {"image_size": size, "in_channels": channels, "out_channels": channels, "dim": args.dim,
            "dim_mults": list(args.dim_mults), "num_res_blocks": args.num_res_blocks,
            "attention_resolutions": list(args.attention_resolutions), "num_head_channels": args.num_head_channels,
            "dropout": 0.0, "mid_attention": args.mid_attention, "resblock_updown": False, "use_scale_shift_norm": True,
            "use_checkpoint": False, "conditions": ["style", "semantic"], "semantic_channels": args.num_classes,
            "concat_semantic": True, "semantic_spade": False, "style_encoder": style,
            "cond_drop_prob": {"style": STYLE_DROP_PROB, "semantic": 0.0}}


def build(args: argparse.Namespace) -> nn.Module:
    """The STEDM network: the UNet alone, or inside a LatentDiffusion with a random-weight autoencoder."""
    if not args.latent:
        return UNet(**unet_settings(args, args.image_size, 3))
    autoencoder = Autoencoder("vqvae").build_network(autoencoder_config(args))
    factor = autoencoder.downsample_factor
    unet = UNet(**unet_settings(args, args.image_size // factor, args.latent_channels))
    return LatentDiffusion(unet, autoencoder, 1.0)


def random_cond(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """Style crops B x n x 3 x S x S in [-1, 1] and a one-hot layout B x K x H x W at pixel size."""
    size, style = args.image_size, args.style_size or args.image_size
    crops = torch.rand(args.batch_size, args.num_style_images, 3, style, style, device=device) * 2 - 1
    labels = torch.randint(0, args.num_classes, (args.batch_size, size, size), device=device)
    semantic = F.one_hot(labels, args.num_classes).permute(0, 3, 1, 2).float()
    return {"style": crops, "semantic": semantic}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Seconds per call of step, after warmup untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return (time.perf_counter() - tic) / repeats


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameter elements of the UNet (without its style encoder), the style encoder and the autoencoder."""
    unet = getattr(model, "unet", model)
    style = count_parameters(style_network(model))
    autoencoder = count_parameters(model.autoencoder) if isinstance(model, LatentDiffusion) else 0
    return {"unet": count_parameters(unet) - style, "style_encoder": style, "autoencoder": autoencoder}


def train_step(model: nn.Module, diffusion: GaussianDiffusion, opt: torch.optim.Optimizer, images: torch.Tensor,
               cond: dict[str, torch.Tensor], dtype: torch.dtype | None) -> Callable[[], None]:
    """One AdamW step of the denoising loss (encoding the images first in latent space)."""
    latent = isinstance(model, LatentDiffusion)

    def step() -> None:
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            x0 = model.encode(images) if latent else images
            loss = diffusion.training_losses(lambda x, t: model(x, t, cond), x0).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sampler(model: nn.Module, diffusion: GaussianDiffusion, cond: dict[str, torch.Tensor], args: argparse.Namespace,
            steps: int, dtype: torch.dtype | None) -> Callable[[], torch.Tensor]:
    """Guided DDIM sampling of one batch, as the recipe renders (style-only guidance, CFG-rescale)."""
    latent = isinstance(model, LatentDiffusion)
    spec = SamplingSpec("ddim", steps, cfg_scale=args.cfg_scale, cfg_rescale=DEFAULT_CFG_RESCALE,
                        guided_conditions=("style",), clip_x0=not latent)
    config = model.config
    device = cond["style"].device

    def run() -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(0)
        shape = (args.batch_size, config["in_channels"], config["image_size"], config["image_size"])
        x_T = torch.randn(shape, generator=generator, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return sample(model, diffusion, x_T, cond, spec, generator=generator)

    return run


def decoder(model: nn.Module, latents: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    """Decoding one batch of latents to images."""

    @torch.no_grad()
    def run() -> None:
        with torch.autocast(latents.device.type, dtype=dtype, enabled=dtype is not None):
            model.decode(latents)

    return run


def sampling_seconds(model: nn.Module, diffusion: GaussianDiffusion, cond: dict[str, torch.Tensor],
                     args: argparse.Namespace, dtype: torch.dtype | None) -> tuple[float, float]:
    """Seconds of one batch's DDIM sampling and of its decoding (0 in pixel space)."""
    device = cond["style"].device
    if args.warmup > 0:
        sampler(model, diffusion, cond, args, 1, dtype)()
    synchronize(device)
    tic = time.perf_counter()
    out = sampler(model, diffusion, cond, args, args.sample_steps, dtype)()
    synchronize(device)
    seconds = time.perf_counter() - tic
    if not isinstance(model, LatentDiffusion):
        return seconds, 0.0
    return seconds, timed(decoder(model, out, dtype), 1 if args.warmup > 0 else 0, 1, device)


def device_name(device: torch.device) -> str:
    """The GPU's name or the CPU's thread count."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args).to(device)
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    cond = random_cond(args, device)
    model.train()
    train_s = timed(train_step(model, diffusion, opt, images, cond, dtype), args.warmup, args.steps, device)
    model.eval()
    sample_s, decode_s = sampling_seconds(model, diffusion, cond, args, dtype)
    config = model.config
    print(json.dumps({
        "benchmark": "stedm_latent" if args.latent else "stedm_pixel",
        "device": device_name(device),
        "parameters": parameter_counts(model),
        "train_images_per_s": round(args.batch_size / train_s, 3),
        "s_per_step": round(train_s, 4),
        "s_per_tile": round((sample_s + decode_s) / args.batch_size, 4),
        "s_per_ddim_step_per_tile": round(sample_s / args.sample_steps / args.batch_size, 4),
        "decode_s_per_tile": round(decode_s / args.batch_size, 4),
        "settings": {"image_size": args.image_size, "grid": [config["in_channels"], config["image_size"], config["image_size"]],
                     "latent": args.latent, "dim": args.dim, "dim_mults": args.dim_mults,
                     "num_res_blocks": args.num_res_blocks, "attention_resolutions": args.attention_resolutions,
                     "mid_attention": args.mid_attention, "num_head_channels": args.num_head_channels,
                     "style_encoder": args.style_encoder, "style_dim": args.style_dim,
                     "num_style_images": args.num_style_images, "style_size": args.style_size or args.image_size,
                     "num_classes": args.num_classes, "batch_size": args.batch_size, "steps": args.steps,
                     "warmup": args.warmup, "sample_steps": args.sample_steps, "cfg_scale": args.cfg_scale,
                     "cfg_rescale": DEFAULT_CFG_RESCALE, "precision": args.precision,
                     **({"autoencoder": autoencoder_config(args)["autoencoder"]} if args.latent else {})},
    }))


if __name__ == "__main__":
    main()

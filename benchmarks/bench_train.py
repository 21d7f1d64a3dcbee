"""Training throughput (images/s), model FLOPs per image and MFU of the diffusion UNets on random data. One JSON line.

--model ldm trains the latent UNet on cached latents, as the KPC recipe does (--image_size is the latents' side):
no autoencoder runs in its training step.

MFU is the achieved FLOP/s (FLOPs of one forward+backward counted by FlopCounterMode, per image, times images/s)
over a matmul peak measured in the same run: a large torch.matmul in the training dtype (fp32, or bf16 / fp16
with --precision) timed on the device.

python benchmarks/bench_train.py --dim 64 --dim_mults 1,2,4 --batch_size 32 --steps 20          (canine, 64 px)
python benchmarks/bench_train.py --model sdm --image_size 128 --dim 128 --dim_mults 1,1,2,2,4 \
    --attention_resolutions 32,16,8 --num_head_channels 64 --batch_size 16                       (MoNuSeg SDM, 128 px)
python benchmarks/bench_train.py --model ldm --image_size 32 --latent_channels 4 --dim 192 --dim_mults 1,2,4 \
    --attention_resolutions 16,8 --batch_size 64                           (KPC LDM: 128 px tiles, 32 x 32 x 4 latents)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser  # noqa: E402
from common.options import int_list, number  # noqa: E402
from diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from diffusion.unet import UNet, count_parameters  # noqa: E402

SEMANTIC_CHANNELS = 5  # one-hot nucleus/background, instance edges, hv maps


def build(args: argparse.Namespace) -> torch.nn.Module:
    common = dict(image_size=args.image_size, dim=args.dim, dim_mults=args.dim_mults, num_res_blocks=args.num_res_blocks,
                  attention_resolutions=args.attention_resolutions, num_head_channels=args.num_head_channels,
                  use_checkpoint=args.use_checkpoint)
    if args.model == "sdm":
        return UNet(**common, out_channels=6, conditions=["semantic"], cond_drop_prob=0.2,
                    semantic_channels=SEMANTIC_CHANNELS, spade_hidden=args.spade_hidden, resblock_updown=True)
    if args.model == "ldm":
        return UNet(**common, in_channels=args.latent_channels, out_channels=args.latent_channels, conditions=["label"],
                    num_labels=args.num_labels)
    return UNet(**common)


def batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random training data of the model type: images (latents for ldm) in [-1, 1] and their condition."""
    channels = args.latent_channels if args.model == "ldm" else 3
    x0 = torch.rand(args.batch_size, channels, args.image_size, args.image_size, device=device) * 2 - 1
    if args.model == "sdm":
        return x0, {"semantic": torch.rand(args.batch_size, SEMANTIC_CHANNELS, args.image_size, args.image_size, device=device)}
    if args.model == "ldm":
        return x0, {"label": torch.randint(0, args.num_labels, (args.batch_size,), device=device)}
    return x0, {"score": torch.rand(args.batch_size, device=device)}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, min_seconds: float = 0.5) -> float:
    """FLOP/s of a size x size torch.matmul in `dtype` on `device`: the best of repeats timed for min_seconds."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    best, spent = float("inf"), 0.0
    while spent < min_seconds or best == float("inf"):
        sync(device)
        tic = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        seconds = time.perf_counter() - tic
        best, spent = min(best, seconds), spent + seconds
    return 2.0 * size**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_step_flops(loss_fn: Callable[[], torch.Tensor], parameters: Iterable[torch.nn.Parameter]) -> int:
    """FLOPs of one forward+backward of loss_fn() (FlopCounterMode); the gradients are cleared again."""
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    for param in parameters:
        param.grad = None
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("diffusion", "sdm", "ldm"), default="diffusion",
                   help="score UNet, SDM (SPADE, learned sigma) or the cluster-conditioned latent UNet")
    p.add_argument("--image_size", type=int, default=64, help="side of the training images (ldm: of the latents)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dim_mults", type=int_list, default=[1, 2, 4])
    p.add_argument("--num_res_blocks", type=int, default=2)
    p.add_argument("--attention_resolutions", type=int_list, default=[16])
    p.add_argument("--num_head_channels", type=int, default=32)
    p.add_argument("--spade_hidden", type=int, default=128, help="sdm: hidden channels of the SPADE blocks")
    p.add_argument("--latent_channels", type=int, default=4, help="ldm: channels of the autoencoder's latents")
    p.add_argument("--num_labels", type=int, default=12, help="ldm: cluster labels the UNet embeds")
    p.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                   help="channels-last memory format of the model and the batch (default: off)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak_size", type=number(int, 64), default=None,
                   help="side of the square matmul timed for the peak (default: 8192 on CUDA, 2048 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if args.compile else model
    diffusion = GaussianDiffusion.from_config("cosine", 1000, learn_sigma=args.model == "sdm")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    x0, cond = batch(args, device)
    x0 = x0.to(memory_format=fmt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def loss_of(network: torch.nn.Module) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return diffusion.training_losses(lambda x, t: network(x, t, cond), x0).mean()

    def step() -> None:
        scaler.scale(loss_of(net)).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    flops_per_image = count_step_flops(lambda: loss_of(model), model.parameters()) / args.batch_size
    for _ in range(args.warmup):
        step()
    sync(device)
    tic = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - tic
    images_per_s = args.batch_size * args.steps / seconds
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_peak(device, dtype or torch.float32, peak_size)
    print(json.dumps({
        "benchmark": f"train_{args.model}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "image_size": args.image_size, "dim": args.dim, "dim_mults": args.dim_mults, "batch_size": args.batch_size,
        "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
        "parameters": count_parameters(model),
        "images_per_s": round(images_per_s, 2),
        "seconds_per_step": round(seconds / args.steps, 4),
        "model_gflop_per_image": round(flops_per_image / 1e9, 3),
        "achieved_gflop_per_s": round(flops_per_image * images_per_s / 1e9, 2),
        "peak_matmul_gflop_per_s": round(peak / 1e9, 2),
        "peak_matmul_dtype": str(dtype or torch.float32).removeprefix("torch."), "peak_matmul_size": peak_size,
        "mfu": round(flops_per_image * images_per_s / peak, 4),
    }))


if __name__ == "__main__":
    main()

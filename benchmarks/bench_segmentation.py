"""Downstream segmentation speed on random data: training images/s and inference tiles/s of the segmentation
recipe's SegmentationNet (smp UNet) with its CE + Dice loss. Prints one JSON line.

python benchmarks/bench_segmentation.py --seg_encoder resnet34 --image_size 256 --batch_size 4 --steps 5
python benchmarks/bench_segmentation.py --seg_encoder mit_b2 --image_size 512 --batch_size 8 --precision bf16   (STEDM's)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.unet import count_parameters  # noqa: E402
from recipes.segmentation import SegmentationNet, ce_dice_loss  # noqa: E402

from common.cli import Parser  # noqa: E402


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--seg_encoder", default="resnet34", help="smp encoder, e.g. resnet34 or mit_b2 (tiles a multiple of 32 px)")
    p.add_argument("--classes", type=int, default=2, help="classes incl. background")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed training steps (and inference batches)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def timed(step: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    """Seconds per call of step, after warmup untimed calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - tic) / repeats


def train_step(model: SegmentationNet, opt: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor,
               dtype: torch.dtype | None) -> Callable[[], None]:
    """One AdamW step of the recipe's 0.1 CE + 0.9 Dice loss."""

    def step() -> None:
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            loss = ce_dice_loss(model(images), masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def predict(model: SegmentationNet, images: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], torch.Tensor]:
    """Class maps of one batch."""

    @torch.no_grad()
    def run() -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            return model(images).argmax(1)

    return run


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SegmentationNet(args.seg_encoder, args.classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    masks = torch.randint(0, args.classes, (args.batch_size, args.image_size, args.image_size), device=device)
    model.train()
    train_s = timed(train_step(model, opt, images, masks, dtype), args.warmup, args.steps, device)
    model.eval()
    infer_s = timed(predict(model, images, dtype), args.warmup, args.steps, device)
    print(json.dumps({
        "benchmark": f"segmentation_{args.seg_encoder}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "parameters": count_parameters(model),
        "train_images_per_s": round(args.batch_size / train_s, 3),
        "s_per_step": round(train_s, 4),
        "inference_tiles_per_s": round(args.batch_size / infer_s, 3),
        "settings": {"seg_encoder": args.seg_encoder, "classes": args.classes, "image_size": args.image_size,
                     "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "precision": args.precision},
    }))


if __name__ == "__main__":
    main()

"""Sampling speed, one JSON line: seconds per transition sequence (one nucleus at K condition values) for each
sampler:steps of --samplers; with --model sdm, seconds per layout-conditioned tile (guided, learned sigma).

python benchmarks/bench_sample.py --dim 64 --num_conditions 6 [--ckpt RUN/last.pt]
python benchmarks/bench_sample.py --model sdm --image_size 128 --dim 128 --dim_mults 1,1,2,2,4 --samplers ddim:50,dpmpp_2m:15
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser, flag_type  # noqa: E402
from common.options import int_list  # noqa: E402
from diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from diffusion.sampling import SamplingSpec, parse_methods, sample  # noqa: E402
from diffusion.unet import UNet  # noqa: E402
from model import load_checkpoint  # noqa: E402
from recipes.transitions import render_sequences  # noqa: E402

DEFAULT_SAMPLERS = "ddpm:1000,ddim:50"


def sdm_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Seconds per tile of guided sampling from random layouts with a randomly initialised SDM UNet."""
    torch.manual_seed(0)
    levels = [args.image_size // 2**i for i in range(len(args.dim_mults))]
    model = UNet(image_size=args.image_size, out_channels=6, dim=args.dim, dim_mults=args.dim_mults,
                 num_res_blocks=args.num_res_blocks, attention_resolutions=[r for r in levels if r <= args.image_size // 4],
                 conditions=["semantic"], cond_drop_prob=0.2, semantic_channels=5, resblock_updown=True).to(device).eval()
    diffusion = GaussianDiffusion.from_config("cosine", 1000, learn_sigma=True)
    maps = torch.rand(args.sequences, 5, args.image_size, args.image_size, device=device)
    x_T = torch.randn(args.sequences, 3, args.image_size, args.image_size, device=device)
    cfg_scale = 1.5 if args.cfg_scale is None else args.cfg_scale
    result = {"benchmark": "sample_sdm", "device": device_name(device), "image_size": args.image_size, "dim": args.dim,
              "tiles_per_batch": args.sequences, "cfg_scale": cfg_scale}
    for sampler, steps in args.samplers:
        seconds = timed(device, lambda: sample(model, diffusion, x_T, {"semantic": maps},
                                               SamplingSpec(sampler, steps, cfg_scale=cfg_scale), generator=None))
        result[f"{sampler}_{steps}_s_per_tile"] = round(seconds / args.sequences, 3)
    print(json.dumps(result))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds `work` takes (CUDA work synchronised on both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("diffusion", "sdm"), default="diffusion", help="score UNet (transitions) or SDM (layout tiles)")
    p.add_argument("--ckpt", help="a diffusion checkpoint; default: a randomly initialised UNet of the given size")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dim_mults", type=int_list, default=[1, 2, 4])
    p.add_argument("--num_res_blocks", type=int, default=2)
    p.add_argument("--num_conditions", type=int, default=6)
    p.add_argument("--sequences", type=int, default=2, help="sequences sampled in one batch")
    p.add_argument("--cfg_scale", type=float, help="guidance scale (default 1 for transitions, 1.5 for sdm)")
    p.add_argument("--samplers", type=flag_type(parse_methods), default=DEFAULT_SAMPLERS,
                   help=f"sampler:steps to time, comma-separated (default {DEFAULT_SAMPLERS})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    if args.model == "sdm":
        sdm_benchmark(args, device)
        return
    if args.ckpt:
        loaded = load_checkpoint(args.ckpt, device)
        model, diffusion, size = loaded.model, loaded.diffusion, loaded.model_config["unet"]["image_size"]
    else:
        torch.manual_seed(0)
        model = UNet(image_size=args.image_size, dim=args.dim, dim_mults=args.dim_mults, num_res_blocks=args.num_res_blocks).to(device).eval()
        diffusion, size = GaussianDiffusion.from_config("cosine", 1000), args.image_size
    conditions = torch.linspace(0, 1, args.num_conditions).tolist()
    cfg_scale = 1.0 if args.cfg_scale is None else args.cfg_scale
    result = {"benchmark": "sample_transition", "device": device_name(device), "image_size": size,
              "num_conditions": args.num_conditions, "sequences_per_batch": args.sequences, "cfg_scale": cfg_scale}
    for sampler, steps in args.samplers:
        spec = SamplingSpec(sampler, steps, cfg_scale=cfg_scale)
        seconds = timed(device, lambda: render_sequences(model, diffusion, conditions, args.sequences, size, 0, spec,
                                                         device, args.sequences, progress=False))
        result[f"{sampler}_{steps}_s_per_sequence"] = round(seconds / args.sequences, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

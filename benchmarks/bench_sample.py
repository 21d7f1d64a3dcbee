"""Seconds per transition sequence (one nucleus at K condition values) for DDPM-1000 and DDIM-50. One JSON line.

python benchmarks/bench_sample.py --dim 64 --num_conditions 6 [--ckpt RUN/last.pt]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import int_list  # noqa: E402
from diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from diffusion.unet import UNet  # noqa: E402
from model import load_checkpoint  # noqa: E402
from transitions import SamplingOptions, render_sequences  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="a diffusion checkpoint; default: a randomly initialised UNet of the given size")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dim_mults", type=int_list, default=[1, 2, 4])
    p.add_argument("--num_res_blocks", type=int, default=2)
    p.add_argument("--num_conditions", type=int, default=6)
    p.add_argument("--sequences", type=int, default=2, help="sequences sampled in one batch")
    p.add_argument("--cfg_scale", type=float, default=1.0)
    p.add_argument("--ddpm_steps", type=int, default=1000)
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--samplers", default="ddpm,ddim", help="which samplers to time (comma-separated)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    if args.ckpt:
        loaded = load_checkpoint(args.ckpt, device)
        model, diffusion, size = loaded.model, loaded.diffusion, loaded.model_config["unet"]["image_size"]
    else:
        torch.manual_seed(0)
        model = UNet(image_size=args.image_size, dim=args.dim, dim_mults=args.dim_mults, num_res_blocks=args.num_res_blocks).to(device).eval()
        diffusion, size = GaussianDiffusion.from_config("cosine", 1000), args.image_size
    conditions = torch.linspace(0, 1, args.num_conditions).tolist()
    result = {"benchmark": "sample_transition", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
              "image_size": size, "num_conditions": args.num_conditions, "sequences_per_batch": args.sequences, "cfg_scale": args.cfg_scale}
    chosen = set(args.samplers.split(","))
    for name, options in [("ddpm", SamplingOptions("ddpm", args.ddpm_steps, cfg_scale=args.cfg_scale)),
                          ("ddim", SamplingOptions("ddim", args.ddim_steps, cfg_scale=args.cfg_scale))]:
        if name not in chosen:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        render_sequences(model, diffusion, conditions, args.sequences, size, 0, options, device, args.sequences, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result[f"{name}_{options.steps}_s_per_sequence"] = round((time.perf_counter() - tic) / args.sequences, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

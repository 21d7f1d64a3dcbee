"""Sampling from a trained checkpoint; what is rendered is up to the recipe of the checkpoint's model type.

diffusion (score): mitosis transition sequences scored by the classifier ensemble
    python inference.py --ckpt RUN/last.pt --classifier_ckpts model_weights/resnet/ --condition_values 0:1:6
diffusion (class label or none) and ldm: tiles per class or cluster (ldm: --paired, one per training tile)
    python inference.py --ckpt RUN/last.pt --cluster_ids 0 1 2 --num_per_cluster 16 --cfg_scale 2
sdm: H&E tiles from nuclei layouts, written as a segmentation training set
    python inference.py --ckpt RUN/last.pt --num_samples 64 --cfg_scale 1.5 2 --timestep_respacing ddim50
vqvae / autoencoder_kl: reconstructions of the held-out tiles and latent features of the training tiles
    python inference.py --ckpt RUN/best.pt --out_dir outputs/autoencoder
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import dataloader
from common.cli import Parser, run_main
from common.errors import ConfigError
from common.files import check_replaceable, check_writable_output
from common.options import number
from common.runtime import pick_device, set_threads
from diffusion.dpm_solver import SPACINGS
from diffusion.sampling import SAMPLERS
from model import MODEL_TYPES, load_checkpoint, load_ensemble, recipe_for
from recipes.base import DataAccess, InferenceFlag, RenderContext


SAMPLING_FLAGS = ("sampler", "steps", "step_spacing", "timestep_respacing", "eta", "save_trajectory", "cfg_scale")


def build_parser() -> argparse.ArgumentParser:
    lines = __doc__.splitlines()
    p = Parser(description=lines[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(lines[2:]))
    common = p.add_argument_group("all checkpoints")
    common.add_argument("--ckpt", "--diffusion_ckpt", dest="ckpt", nargs="+", required=True, help="checkpoint(s) (best.pt, last.pt, step_N.pt); sdm takes several")
    common.add_argument("--seed", type=number(int, 0), default=0, help="seed of the starting noise and of the per-step noise (default 0)")
    common.add_argument("--batch_size", type=number(int, 1), default=8, help="sequences, tiles or layouts per batch (default 8)")
    common.add_argument("--out_dir", default="outputs/samples", help="output folder (default outputs/samples)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    common.add_argument("--threads", type=number(int, 1), help="CPU threads of PyTorch's operators (default: "
                        "OMP_NUM_THREADS, else one per physical core; fewer when other jobs share the cores)")
    sampling = p.add_argument_group("diffusion, sdm and ldm checkpoints: sampling")
    sampling.add_argument("--sampler", choices=SAMPLERS, help="ddpm (ancestral), ddim, or DPM-Solver++: dpmpp_2m, "
                          "dpmpp_3m, dpmpp_2m_sde (default: the model type's, see the README)")
    sampling.add_argument("--steps", type=number(int, 1), help="sampling steps (network evaluations; default: the model "
                          "type's; ddpm respaces when fewer than T)")
    sampling.add_argument("--step_spacing", choices=SPACINGS, help="DPM-Solver++ steps uniform in log-SNR (logsnr, "
                          "default), in time, or Karras' spacing")
    sampling.add_argument("--timestep_respacing", help="instead of --sampler/--steps: ddimN, or section counts such as 250 or 10,15,20 (ddpm)")
    sampling.add_argument("--eta", type=number(float, 0), default=0.0, help="DDIM eta; 0 is deterministic (default 0)")
    sampling.add_argument("--cfg_scale", "--s", dest="cfg_scale", type=number(float, 0), nargs="+",
                          help="classifier-free guidance scale; 1 = conditional only (default 1; sdm 1.5, and takes several)")
    sampling.add_argument("--save_trajectory", action="store_true", help="also write trajectory.gif: x_t and predicted x_0 of the first samples during the reverse process (pixel-space models)")
    sampling.add_argument("--trajectory_every", type=number(int, 1), default=10, help="record every k-th sampling step for --save_trajectory (default 10)")
    seen: dict[str, InferenceFlag] = {}
    for name, model_type in MODEL_TYPES.items():
        flags = [f for f in model_type.recipe.all_inference_flags() if f.dest not in seen]
        if not flags:
            continue
        group = p.add_argument_group(f"{name} checkpoints")
        for flag in flags:
            seen[flag.dest] = flag
            group.add_argument(*flag.names, **flag.kwargs)
    return p


def type_flags() -> set[str]:
    """Every type-specific flag of every recipe."""
    return {f.dest for t in MODEL_TYPES.values() for f in t.recipe.all_inference_flags()}


def check_flags(args: argparse.Namespace, ctx: RenderContext) -> None:
    """Reject flags meant for other model types, naming them and what the checkpoint is."""
    first = ctx.first
    recipe = recipe_for(first.model_type)
    allowed = {f.dest for f in recipe.inference_flags(first)} | (set(SAMPLING_FLAGS) if recipe.sampling_flags else set())
    wrong = [n for n in sorted((type_flags() | set(SAMPLING_FLAGS)) - allowed) if getattr(args, n) not in (None, False)]
    if wrong:
        raise ConfigError(f"--{', --'.join(wrong)}: not for {first.model_type} checkpoints ({first.path})")


def check_common(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    check_writable_output(out, "--out_dir")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"output folder {out} already exists; pass --overwrite to replace it")
        check_replaceable(out, "--out_dir", inputs_of(args))


def inputs_of(args: argparse.Namespace) -> list[Path]:
    """The existing files and folders named by any flag (checkpoints, ensembles, layouts): never to be deleted."""
    values = [v for name, value in vars(args).items() if name != "out_dir"
              for v in (value if isinstance(value, list) else [value])]
    return [Path(v) for v in values if isinstance(v, str) and v and Path(v).exists()]


DATA_ACCESS = DataAccess(validation_set=dataloader.validation_set, layouts=dataloader.layout_dataset, tiles=dataloader.stack_split)


def run(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    check_common(args)
    device = pick_device(args.device)
    set_threads(args.threads)
    first = load_checkpoint(args.ckpt[0], device)
    recipe = recipe_for(first.model_type)
    if not recipe.renders:
        renderable = [name for name, t in MODEL_TYPES.items() if t.recipe.renders]
        raise ConfigError(f"--ckpt {args.ckpt[0]} holds a {first.model_type} classifier; sampling needs a "
                          f"{', '.join(renderable[:-1])} or {renderable[-1]} checkpoint")
    checkpoints = [first] + [load_checkpoint(p, device) for p in args.ckpt[1:]]
    ctx = RenderContext(args, device, checkpoints, lambda paths, reference=None: load_ensemble(paths, device, reference), DATA_ACCESS)
    check_flags(args, ctx)
    recipe.render(ctx)
    return Path(args.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Inference helpers every sampling recipe shares: the sampler choice, guidance scales, trajectories."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from common.errors import ConfigError
from diffusion.sampling import SamplingSpec
from recipes.base import RenderContext
from recipes.trajectory import TrajectoryRecorder


def sampling_choice(args: argparse.Namespace, cfg_scale: float = 1.0, strength: float = 1.0) -> SamplingSpec:
    """--timestep_respacing, or --sampler/--steps, with --eta, as one SamplingSpec at this guidance scale
    (and SDEdit strength, for starts from real images)."""
    if args.timestep_respacing and (args.sampler or args.steps):
        raise ConfigError("--timestep_respacing replaces --sampler/--steps: give one or the other")
    if not 0 <= args.eta < math.inf:
        raise ConfigError(f"--eta must be a finite number >= 0, got {args.eta}")
    if not math.isfinite(cfg_scale):
        raise ConfigError(f"--cfg_scale must be a finite number, got {cfg_scale}")
    fields = dict(eta=args.eta, cfg_scale=cfg_scale, strength=strength)
    if args.timestep_respacing:
        try:
            return SamplingSpec.parse_respacing(args.timestep_respacing, **fields)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    sampler, steps = args.sampler or "ddim", args.steps if args.steps is not None else 50
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    return SamplingSpec(sampler, steps, **fields)


def one_guidance_scale(args: argparse.Namespace, what: str) -> float:
    """The single --cfg_scale of a transition or tile run (default 1: conditional only)."""
    if args.cfg_scale is None:
        return 1.0
    if len(args.cfg_scale) != 1:
        raise ConfigError(f"--cfg_scale: {what} take one guidance scale, got {args.cfg_scale}")
    return args.cfg_scale[0]


def single_checkpoint(ctx: RenderContext) -> None:
    if len(ctx.checkpoints) != 1:
        raise ConfigError(f"--ckpt: {ctx.first.model_type} checkpoints are sampled one at a time")


def make_recorder(args: argparse.Namespace, pixel_space: bool = True) -> TrajectoryRecorder | None:
    if not args.save_trajectory:
        return None
    if not pixel_space:
        raise ConfigError("--save_trajectory shows pixels: it is for pixel-space models (diffusion, sdm), not ldm latents")
    if args.trajectory_every < 1:
        raise ConfigError(f"--trajectory_every must be at least 1, got {args.trajectory_every}")
    return TrajectoryRecorder(every=args.trajectory_every)


def save_trajectory(recorder: TrajectoryRecorder | None, folder: Path) -> None:
    if recorder is not None:
        recorder.save_gif(folder / "trajectory.gif")
        recorder.save_strip(folder / "trajectory.png")

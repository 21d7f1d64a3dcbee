"""Inference helpers every sampling recipe shares: the sampler choice, guidance scales, trajectories."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from common.errors import ConfigError
from diffusion.sampling import DPM_SOLVERS, SamplingSpec
from recipes.base import LoadedModel, RenderContext
from recipes.trajectory import TrajectoryRecorder


DEFAULT_STEPS = 50
# The sampler and steps each model type renders with when --sampler and --steps are not given: the fewest steps
# that stayed within tolerance of the 1000-step references (README, "Sampling speed and the defaults").
DEFAULT_SAMPLING = {"diffusion": ("dpmpp_2m", 15), "sdm": ("dpmpp_2m", 15), "ldm": ("dpmpp_2m", 15),
                    "stedm": ("dpmpp_2m", 10)}


def sampling_choice(args: argparse.Namespace, cfg_scale: float = 1.0, strength: float = 1.0,
                    checkpoints: Sequence[LoadedModel] = ()) -> SamplingSpec:
    """--timestep_respacing, or --sampler/--steps, with --eta, as one SamplingSpec at this guidance scale
    (and SDEdit strength, for starts from real images), checked against the timesteps of `checkpoints`
    (the default --steps is at most their T)."""
    if args.timestep_respacing and (args.sampler or args.steps):
        raise ConfigError("--timestep_respacing replaces --sampler/--steps: give one or the other")
    fields = dict(eta=args.eta, cfg_scale=cfg_scale, strength=strength)
    spacing = getattr(args, "step_spacing", None)
    if spacing is not None:
        if args.timestep_respacing or default_sampling(args.sampler, checkpoints)[0] not in DPM_SOLVERS:
            raise ConfigError(f"--step_spacing {spacing} is for the DPM-Solver++ samplers ({', '.join(DPM_SOLVERS)}); "
                              "give --sampler with one of them")
        fields["spacing"] = spacing
    if args.timestep_respacing:
        try:
            spec = SamplingSpec.parse_respacing(args.timestep_respacing, **fields)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    else:
        sampler, default_steps = default_sampling(args.sampler, checkpoints)
        default = min([default_steps] + [loaded.diffusion.num_timesteps for loaded in checkpoints])
        steps = args.steps if args.steps is not None else default
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}")
        spec = SamplingSpec(sampler, steps, **fields)
    check_steps_fit(args, spec, checkpoints)
    return spec


def default_sampling(sampler: str | None, checkpoints: Sequence[LoadedModel]) -> tuple[str, int]:
    """(sampler, default steps): the model type's default when --sampler is not given (or names it), else
    --sampler with DEFAULT_STEPS."""
    chosen = DEFAULT_SAMPLING.get(checkpoints[0].model_type, ("ddim", DEFAULT_STEPS)) if checkpoints else ("ddim", DEFAULT_STEPS)
    if sampler is None or sampler == chosen[0]:
        return chosen
    return sampler, DEFAULT_STEPS


def check_steps_fit(args: argparse.Namespace, spec: SamplingSpec, checkpoints: Sequence[LoadedModel]) -> None:
    """ConfigError naming the flag and the checkpoint when the sampling steps exceed its --timesteps."""
    flag, value = ("--timestep_respacing", args.timestep_respacing) if args.timestep_respacing else ("--steps", spec.steps)
    for loaded in checkpoints:
        timesteps = loaded.diffusion.num_timesteps
        try:
            spec.check_fits(timesteps)
        except ValueError as err:
            raise ConfigError(f"{flag} {value}: --ckpt {loaded.path} was trained with --timesteps {timesteps}, "
                              f"expected at most {timesteps} steps ({err})") from None


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
    return TrajectoryRecorder(every=args.trajectory_every)


def save_trajectory(recorder: TrajectoryRecorder | None, folder: Path) -> None:
    if recorder is not None:
        recorder.save_gif(folder / "trajectory.gif")
        recorder.save_strip(folder / "trajectory.png")

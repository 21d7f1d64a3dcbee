"""The one sampling entry of every model type: a SamplingSpec says how, `sample` runs it.

`sample` turns a conditional network into a model_fn with classifier-free guidance (conditional and
unconditional passes as one batch), picks the process the sampler walks (DDPM respaced to fewer steps),
starts from noise or from real images noised to `strength` (SDEdit), and runs the sampler. A new solver is
added here once: a name in SAMPLERS, its checks in SamplingSpec, its branch in `_run`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.guidance import ConditionalModel, classifier_free_guidance
from diffusion.dpm_solver import SPACINGS, dpm_solver_sample
from diffusion.respace import respace, space_timesteps
from diffusion.samplers import StepCallback, ddim_sample, ddpm_sample, sdedit_start

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m")
# DPM-Solver++ variants: (order, SDE).
DPM_SOLVERS = {"dpmpp_2m": (2, False), "dpmpp_2m_sde": (2, True), "dpmpp_3m": (3, False)}
RESPACING_FLAG = "--timestep_respacing"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _section_counts(text: str) -> list[int] | None:
    """[10, 15, 20] for '10,15,20' (every part a positive integer), else None."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) >= 1 for part in parts):
        return None
    return [int(part) for part in parts]


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample.

    sampler: "ddpm" (ancestral), "ddim", or DPM-Solver++: "dpmpp_2m", "dpmpp_3m" (ODE), "dpmpp_2m_sde".
    steps: for ddim and DPM-Solver++ the number of network evaluations (int); for ddpm the number of respaced
        timesteps (int) or section counts such as "10,15,20" (the T timesteps cut into sections, each keeping
        its count). DDPM walks every timestep when the steps keep all T of them.
    eta: DDIM noise (0 deterministic, 1 DDPM-like); unused by the others.
    spacing: DPM-Solver++'s steps: uniform in log-SNR ("logsnr"), in time ("time") or Karras' ("karras").
    cfg_scale: classifier-free guidance scale; 1 is the conditional pass alone.
    clip_x0: clip the predicted x0 to [-1, 1] at every step (pixel-space data).
    strength: where a start from real images begins, in (0, 1]: their noise level as a fraction of the
        process (1.0 = the last timestep, i.e. from noise). Used only when `sample` gets start_images.
    cfg_rescale: CFG-rescale in [0, 1] (0: plain guidance).
    guided_conditions: the conditions guidance drops in its unconditional pass (None: all of them).
    """

    sampler: str = "ddim"
    steps: int | str = 50
    eta: float = 0.0
    cfg_scale: float = 1.0
    clip_x0: bool = True
    strength: float = 1.0
    cfg_rescale: float = 0.0
    guided_conditions: tuple[str, ...] | None = None
    spacing: str = "logsnr"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        steps = self.steps
        if isinstance(steps, str) and steps.strip().isdigit():
            steps = int(steps.strip())
        if self.sampler == "ddpm" and isinstance(steps, str):
            counts = _section_counts(steps)
            if counts is None:
                raise ValueError(f"ddpm steps must be a positive integer or section counts like '10,15,20', got {self.steps!r}")
            steps = ",".join(str(count) for count in counts)
        elif not _positive_int(steps):
            raise ValueError(f"{self.sampler} steps must be a positive integer, got {self.steps!r}")
        object.__setattr__(self, "steps", steps)
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta < math.inf:
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta!r}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number, got {self.cfg_scale!r}")
        if not isinstance(self.clip_x0, bool):
            raise ValueError(f"clip_x0 must be True or False, got {self.clip_x0!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        if isinstance(self.cfg_rescale, bool) or not isinstance(self.cfg_rescale, (int, float)) or not 0.0 <= self.cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale must be in [0, 1], got {self.cfg_rescale!r}")
        if self.guided_conditions is not None:
            object.__setattr__(self, "guided_conditions", tuple(str(n) for n in self.guided_conditions))
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")

    def check_fits(self, num_timesteps: int) -> None:
        """ValueError unless the steps fit a process of `num_timesteps` timesteps."""
        if self.sampler == "ddpm":
            space_timesteps(num_timesteps, self.steps)
        elif self.steps > num_timesteps:
            raise ValueError(f"{self.sampler} cannot take {self.steps} steps out of {num_timesteps}; expected 1..{num_timesteps}")

    @classmethod
    def parse_respacing(cls, text: str, **fields: Any) -> "SamplingSpec":
        """'ddim50' -> DDIM with 50 steps; '250' or '10,15,20' -> ancestral DDPM over respaced timesteps.

        `fields` sets the other fields (eta, cfg_scale, clip_x0, strength).
        """
        text = str(text).strip()
        if text.startswith("ddim"):
            if not text[4:].isdigit() or int(text[4:]) < 1:
                raise ValueError(f"{RESPACING_FLAG}: expected ddimN, e.g. ddim50, got {text!r}")
            return cls("ddim", int(text[4:]), **fields)
        counts = _section_counts(text)
        if counts is None:
            raise ValueError(
                f"{RESPACING_FLAG}: expected ddimN or section counts like 250 or 10,15,20, got {text!r}"
            )
        return cls("ddpm", counts[0] if len(counts) == 1 else ",".join(str(count) for count in counts), **fields)


def parse_methods(text: str) -> list[tuple[str, int]]:
    """'ddim:50,dpmpp_2m:10' -> [("ddim", 50), ("dpmpp_2m", 10)]: the sampler:steps lists of the benchmarks.

    ValueError naming the part that is not a known sampler with a positive step count.
    """
    methods = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, _, steps = part.partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"expected sampler:steps such as dpmpp_2m:15 (samplers: {', '.join(SAMPLERS)}), got {part!r}")
        methods.append((name, int(steps)))
    if not methods:
        raise ValueError(f"expected a comma-separated list of sampler:steps, got {text!r}")
    return methods


def sampling_process(diffusion: GaussianDiffusion, spec: SamplingSpec) -> GaussianDiffusion:
    """The process the sampler walks: for ddpm respaced to spec.steps (unless they keep every timestep)."""
    if spec.sampler != "ddpm":
        return diffusion
    kept = space_timesteps(diffusion.num_timesteps, spec.steps)
    if kept == list(range(diffusion.num_timesteps)):
        return diffusion
    return respace(diffusion, kept)


@torch.no_grad()
def sample(
    model: ConditionalModel,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    cond: dict[str, torch.Tensor],
    spec: SamplingSpec,
    *,
    generator: torch.Generator | None,
    noise_index: torch.Tensor | None = None,
    start_images: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    guided_channels: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Samples for a batch, from x_T (or, with start_images, from those noised with x_T to spec.strength).

    model(x, t, cond, drop_cond) is guided at spec.cfg_scale; guided_channels (default: x_T's channels when
    the process learns its variance, else all) are the output channels guidance combines. The per-step
    noise comes from `generator`; noise_index[b] picks the noise row of element b (see diffusion.samplers),
    so elements sharing a row share their noise. callback(step_index, t, x_t, pred_x0) sees every step;
    `progress` shows a bar over the steps with the time left.
    """
    if not isinstance(spec, SamplingSpec):
        raise TypeError(f"spec must be a SamplingSpec, got {type(spec).__name__}")
    if start_images is None and spec.strength != 1.0:
        raise ValueError(f"strength {spec.strength} is for starts from real images, but no start_images were given")
    if guided_channels is None and diffusion.learn_sigma:
        guided_channels = x_T.shape[1]
    model_fn = classifier_free_guidance(model, cond, spec.cfg_scale, guided_channels=guided_channels,
                                        guided_conditions=spec.guided_conditions, rescale=spec.cfg_rescale)
    process = sampling_process(diffusion, spec)
    x, t_start = x_T, None
    if start_images is not None:
        x, t_start = sdedit_start(process, start_images, spec.strength, x_T)
    return _run(process, model_fn, x, spec, t_start=t_start, generator=generator, noise_index=noise_index,
                callback=callback, progress=progress)


def _run(process: GaussianDiffusion, model_fn, x: torch.Tensor, spec: SamplingSpec, **common: Any) -> torch.Tensor:
    if spec.sampler == "ddpm":
        return ddpm_sample(process, model_fn, x, clip_x0=spec.clip_x0, **common)
    if spec.sampler == "ddim":
        return ddim_sample(process, model_fn, x, steps=spec.steps, eta=spec.eta, clip_x0=spec.clip_x0, **common)
    if spec.sampler in DPM_SOLVERS:
        order, sde = DPM_SOLVERS[spec.sampler]
        return dpm_solver_sample(process, model_fn, x, steps=spec.steps, order=order, sde=sde, spacing=spec.spacing,
                                 clip_x0=spec.clip_x0, **common)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {spec.sampler!r}")

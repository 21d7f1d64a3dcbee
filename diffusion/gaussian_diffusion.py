"""Gaussian diffusion maths: the forward process, its posterior, model parameterisations and the training loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from diffusion.schedules import make_betas

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OBJECTIVES = ("eps", "x0", "v")
LOSS_TYPES = ("l2", "l1", "huber")


def standard_normal(
    shape: tuple[int, ...] | torch.Size,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Float32 N(0, 1) noise on `device`, drawn on the generator's own device when a generator is given."""
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return noise.to(device)


class GaussianDiffusion:
    """A discrete Gaussian diffusion process defined by its betas; holds no network.

    Schedules are kept as float64 CPU tensors and gathered per timestep as float32 on the device of `t`.
    A model_fn is any callable `model_fn(x_t, t) -> Tensor` shaped like x_t; it always receives the timestep
    values of `timestep_map` (the original timesteps when this process is a respaced one).
    """

    def __init__(
        self,
        betas: torch.Tensor,
        objective: str = "eps",
        loss_type: str = "l2",
        timestep_map: torch.Tensor | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must all lie in the open interval (0, 1)")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        num_timesteps = betas.numel()
        if timestep_map is None:
            timestep_map = torch.arange(num_timesteps, dtype=torch.long)
        timestep_map = torch.as_tensor(timestep_map).detach().cpu()
        if timestep_map.shape != (num_timesteps,) or timestep_map.dtype != torch.long:
            raise ValueError(
                f"timestep_map must be a LongTensor of shape ({num_timesteps},), "
                f"got {timestep_map.dtype} of shape {tuple(timestep_map.shape)}"
            )

        self.objective = objective
        self.loss_type = loss_type
        self.num_timesteps = num_timesteps
        self.timestep_map = timestep_map
        self.betas = betas

        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.log_one_minus_alphas_cumprod = torch.log(self.one_minus_alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = self.one_minus_alphas_cumprod.sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        one_minus_ab = self.one_minus_alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_ab
        # The posterior variance is 0 at t=0; its log takes the t=1 value there, as in DDPM.
        first = self.posterior_variance[1:2] if num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus_ab
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / one_minus_ab

        self._device_copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    @classmethod
    def from_config(
        cls, schedule: str, timesteps: int, objective: str = "eps", loss_type: str = "l2"
    ) -> GaussianDiffusion:
        """Build the process for a named noise schedule (see `diffusion.schedules.SCHEDULES`)."""
        return cls(make_betas(schedule, timesteps), objective=objective, loss_type=loss_type)

    # -- gathering per-timestep values -------------------------------------------------------------

    def _gather(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Schedule `name` at timesteps `t` as float32, shaped (B, 1, ..., 1) to broadcast against x."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
        if t.dtype != torch.long:
            raise ValueError(f"t must be a LongTensor of timestep indices, got {t.dtype}")
        key = (name, t.device)
        values = self._device_copies.get(key)
        if values is None:
            values = getattr(self, name).to(device=t.device, dtype=torch.float32)
            self._device_copies[key] = values
        return values[t].reshape(-1, *([1] * (x.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values the network receives for internal indices t."""
        return self.timestep_map.to(t.device)[t]

    def model_output(self, model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Run model_fn on (x_t, mapped t) and check its output is shaped like x_t."""
        out = model_fn(x_t, self.model_timesteps(t))
        if out.shape != x_t.shape:
            raise ValueError(
                f"model output has shape {tuple(out.shape)}; expected the input's shape {tuple(x_t.shape)}"
            )
        return out

    # -- forward process ---------------------------------------------------------------------------

    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0)."""
        mean = self._gather("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._gather("one_minus_alphas_cumprod", t, x0)
        log_variance = self._gather("log_one_minus_alphas_cumprod", t, x0)
        return mean, variance.expand_as(x0), log_variance.expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) using `noise` (fresh N(0, 1) when not given)."""
        if noise is None:
            noise = torch.randn_like(x0)
        if noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(x0.shape)}")
        return (
            self._gather("sqrt_alphas_cumprod", t, x0) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._gather("posterior_mean_coef1", t, x_t) * x0 + self._gather("posterior_mean_coef2", t, x_t) * x_t
        variance = self._gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # -- parameterisation conversions --------------------------------------------------------------

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0
        ) / self._gather("sqrt_recipm1_alphas_cumprod", t, x_t)

    def predict_v(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity target v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        return (
            self._gather("sqrt_alphas_cumprod", t, x0) * eps
            - self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (
            self._gather("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._gather("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (
            self._gather("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + self._gather("sqrt_alphas_cumprod", t, x_t) * v
        )

    # -- reverse process ---------------------------------------------------------------------------

    def model_predictions(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_x0, pred_eps) from a network output under this objective; clipping x0 to [-1, 1] if asked."""
        if self.objective == "eps":
            pred_eps = model_out
            pred_x0 = self.predict_x0_from_eps(x_t, t, pred_eps)
        elif self.objective == "x0":
            pred_x0 = model_out
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        else:
            pred_x0 = self.predict_x0_from_v(x_t, t, model_out)
            pred_eps = self.predict_eps_from_v(x_t, t, model_out)
        if clip_x0:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        return pred_x0, pred_eps

    def p_mean_variance(
        self, model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = True
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) with the fixed posterior variance (beta-tilde) and the model's x0 in the mean."""
        model_out = self.model_output(model_fn, x_t, t)
        pred_x0, pred_eps = self.model_predictions(model_out, x_t, t, clip_x0=clip_x0)
        mean, variance, log_variance = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_x0": pred_x0,
            "pred_eps": pred_eps,
        }

    # -- training ----------------------------------------------------------------------------------

    def sample_timesteps(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Timesteps drawn uniformly from [0, T), on `device`."""
        if generator is None:
            return torch.randint(0, self.num_timesteps, (batch,), device=device)
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=generator.device)
        return t.to(device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for this objective."""
        if self.objective == "eps":
            return noise
        if self.objective == "x0":
            return x0
        return self.predict_v(x0, noise, t)

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample loss (mean over non-batch dims) between the model output and the objective's target."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = standard_normal(x0.shape, x0.device, generator).to(x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_out = self.model_output(model_fn, x_t, t)
        target = self.training_target(x0, noise, t)
        if self.loss_type == "l2":
            per_element = F.mse_loss(model_out, target, reduction="none")
        elif self.loss_type == "l1":
            per_element = F.l1_loss(model_out, target, reduction="none")
        else:
            per_element = F.smooth_l1_loss(model_out, target, reduction="none")
        return per_element.flatten(1).mean(dim=1)

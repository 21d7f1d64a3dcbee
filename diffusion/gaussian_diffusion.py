"""Gaussian diffusion maths: the forward process, its posterior, model parameterisations, the training loss
(simple, or hybrid with a learned variance) and the variational bound in bits per dimension."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
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

    With `learn_sigma` the model_fn returns 2C channels for C-channel x_t: the objective's prediction, then a
    value v in [-1, 1] per element that sets the reverse variance between beta-tilde (v = -1) and beta (v = 1),
    and the training loss adds `vlb_weight * T` times the variational-bound term of the sampled timestep.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        objective: str = "eps",
        loss_type: str = "l2",
        timestep_map: torch.Tensor | None = None,
        learn_sigma: bool = False,
        vlb_weight: float = 0.001,
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
        if not isinstance(learn_sigma, bool):
            raise ValueError(f"learn_sigma must be True or False, got {learn_sigma!r}")
        if (
            isinstance(vlb_weight, bool)
            or not isinstance(vlb_weight, (int, float))
            or not math.isfinite(vlb_weight)
            or vlb_weight < 0
        ):
            raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
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
        self.learn_sigma = learn_sigma
        self.vlb_weight = float(vlb_weight)
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
        self.log_betas = torch.log(betas)
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus_ab
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / one_minus_ab

        self._device_copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    @classmethod
    def from_config(
        cls,
        schedule: str,
        timesteps: int,
        objective: str = "eps",
        loss_type: str = "l2",
        learn_sigma: bool = False,
        vlb_weight: float = 0.001,
        beta_range: tuple[float, float] | None = None,
    ) -> GaussianDiffusion:
        """Build the process for a named noise schedule (see `diffusion.schedules.SCHEDULES`)."""
        return cls(
            make_betas(schedule, timesteps, tuple(beta_range) if beta_range is not None else None),
            objective=objective,
            loss_type=loss_type,
            learn_sigma=learn_sigma,
            vlb_weight=vlb_weight,
        )

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

    def model_output_shape(self, x_t: torch.Tensor) -> tuple[int, ...]:
        """The shape model_fn must return for x_t: x_t's own, with twice its channels when learning sigma."""
        if not self.learn_sigma:
            return tuple(x_t.shape)
        if x_t.ndim < 2:
            raise ValueError(f"x_t must have a channel dimension to learn sigma, got shape {tuple(x_t.shape)}")
        return (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])

    def model_output(self, model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Run model_fn on (x_t, mapped t) and check its output shape (x_t's, or 2C channels with learn_sigma)."""
        out = model_fn(x_t, self.model_timesteps(t))
        expected = self.model_output_shape(x_t)
        if tuple(out.shape) != expected:
            what = "the input's shape"
            if self.learn_sigma:
                what += " with twice its channels (learn_sigma)"
            raise ValueError(f"model output has shape {tuple(out.shape)}; expected {what} {expected}")
        return out

    def split_model_output(
        self, model_out: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the objective's prediction, the variance values v or None): the first C and last C channels."""
        if not self.learn_sigma:
            return model_out, None
        channels = x_t.shape[1]
        return model_out[:, :channels], model_out[:, channels:]

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
        """(pred_x0, pred_eps) from a network output under this objective; clipping x0 to [-1, 1] if asked.

        With learn_sigma only the first C channels (the prediction) are used.
        """
        model_out, _ = self.split_model_output(model_out, x_t)
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

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log variance frac * log(beta_t) + (1 - frac) * log(clipped beta-tilde_t), frac = (v + 1) / 2."""
        frac = (v + 1.0) / 2.0
        log_beta = self._gather("log_betas", t, v)
        log_beta_tilde = self._gather("posterior_log_variance_clipped", t, v)
        return frac * log_beta + (1.0 - frac) * log_beta_tilde

    def p_mean_variance(
        self, model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = True
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): the model's x0 in the posterior mean; learned variance, else beta-tilde."""
        model_out = self.model_output(model_fn, x_t, t)
        return self.p_mean_variance_from_output(model_out, x_t, t, clip_x0=clip_x0)

    def p_mean_variance_from_output(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = True
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from an already computed network output (see `p_mean_variance`)."""
        _, v = self.split_model_output(model_out, x_t)
        pred_x0, pred_eps = self.model_predictions(model_out, x_t, t, clip_x0=clip_x0)
        mean, variance, log_variance = self.q_posterior_mean_variance(pred_x0, x_t, t)
        if v is not None:
            log_variance = self.learned_log_variance(v, t)
            variance = torch.exp(log_variance)
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
        """Per-sample training loss: the simple loss, plus vlb_weight * T * the VLB term with learn_sigma."""
        return self.training_loss_terms(model_fn, x0, t=t, noise=noise, generator=generator)["loss"]

    def training_loss_terms(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample "loss", "simple" and "vb" (each Tensor[B]) at timesteps t (uniform when not given).

        "simple" is the loss_type loss of the prediction channels against the objective's target (mean over
        non-batch dims); "vb" is the VLB term of t in bits/dim (see `vb_terms_bpd`, x0 unclipped). With
        learn_sigma, "vb" sees the prediction channels detached, so it trains only the variance, and
        "loss" = simple + vlb_weight * T * vb. Without it "loss" = simple and "vb" is only reported (detached).
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = standard_normal(x0.shape, x0.device, generator).to(x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_out = self.model_output(model_fn, x_t, t)
        prediction, v = self.split_model_output(model_out, x_t)
        simple = self._simple_loss(prediction, self.training_target(x0, noise, t))
        if v is None:
            vb = self.vb_terms_bpd(model_out.detach(), x0, x_t, t, clip_x0=False)
            return {"loss": simple, "simple": simple, "vb": vb}
        frozen_mean_out = torch.cat([prediction.detach(), v], dim=1)
        vb = self.vb_terms_bpd(frozen_mean_out, x0, x_t, t, clip_x0=False)
        loss = simple + self.vlb_weight * self.num_timesteps * vb
        return {"loss": loss, "simple": simple, "vb": vb}

    def _simple_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "l2":
            per_element = F.mse_loss(prediction, target, reduction="none")
        elif self.loss_type == "l1":
            per_element = F.l1_loss(prediction, target, reduction="none")
        else:
            per_element = F.smooth_l1_loss(prediction, target, reduction="none")
        return per_element.flatten(1).mean(dim=1)

    # -- variational bound -------------------------------------------------------------------------

    def vb_terms_bpd(
        self,
        model_out: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_x0: bool = True,
    ) -> torch.Tensor:
        """The VLB term of each sample's timestep in bits/dim, Tensor[B].

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t > 0, and the negative log-likelihood of x0
        (8-bit data in [-1, 1]) under the discretized Gaussian decoder p(x_0 | x_1) where t = 0.
        """
        reverse = self.p_mean_variance_from_output(model_out, x_t, t, clip_x0=clip_x0)
        return self._vb_from_reverse(reverse, x0, x_t, t)

    def _vb_from_reverse(
        self, reverse: dict[str, torch.Tensor], x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, reverse["mean"], reverse["log_variance"])
        decoder_nll = -discretized_gaussian_log_likelihood(
            x0, means=reverse["mean"], log_scales=0.5 * reverse["log_variance"]
        )
        kl_bpd = kl.flatten(1).mean(dim=1) / math.log(2.0)
        decoder_bpd = decoder_nll.flatten(1).mean(dim=1) / math.log(2.0)
        return torch.where(t == 0, decoder_bpd, kl_bpd)

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim, Tensor[B]; independent of the model.

        Computed in float64: the term is tiny (alpha-bar_T is near 0) and would drown in float32 rounding.
        """
        alpha_bar = self.alphas_cumprod[-1].item()
        mean = math.sqrt(alpha_bar) * x0.double()
        log_variance = torch.full_like(mean, math.log1p(-alpha_bar))
        kl = normal_kl(mean, log_variance, 0.0, 0.0).flatten(1).mean(dim=1) / math.log(2.0)
        return kl.to(x0.dtype)

    @torch.no_grad()
    def variational_bound(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        clip_x0: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The variational bound on -log p(x0) in bits/dim, one noise draw per timestep, over all T steps.

        Returns "total_bpd" (Tensor[B]: the sum of every term and the prior), "prior_bpd" (Tensor[B]),
        "vb" (Tensor[B, T]: column t is the term of timestep t) and "mse" (Tensor[B, T]: the squared error
        of the model's noise prediction). Works for learned and fixed variance alike.
        """
        batch = x0.shape[0]
        terms: list[torch.Tensor] = []
        errors: list[torch.Tensor] = []
        steps = range(self.num_timesteps - 1, -1, -1)
        for step in tqdm(steps, desc="variational bound", disable=not progress, leave=False):
            t = torch.full((batch,), step, dtype=torch.long, device=x0.device)
            noise = standard_normal(x0.shape, x0.device, generator).to(x0.dtype)
            x_t = self.q_sample(x0, t, noise)
            model_out = self.model_output(model_fn, x_t, t)
            reverse = self.p_mean_variance_from_output(model_out, x_t, t, clip_x0=clip_x0)
            terms.append(self._vb_from_reverse(reverse, x0, x_t, t))
            errors.append((reverse["pred_eps"] - noise).pow(2).flatten(1).mean(dim=1))
        vb = torch.stack(terms[::-1], dim=1)
        mse = torch.stack(errors[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "mse": mse}

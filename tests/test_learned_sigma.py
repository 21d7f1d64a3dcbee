"""Tests of learned variance: the Gaussian KL, the discretized decoder likelihood, the hybrid loss, the
variational bound in bits per dimension, guidance on the prediction channels only, and respacing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.guidance import classifier_free_guidance
from diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl
from diffusion.respace import respace, space_timesteps
from diffusion.samplers import ddim_sample, ddpm_sample

EIGHT_BIT_VALUES = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0


def learned_diffusion(timesteps: int = 50, **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion.from_config("linear", timesteps, learn_sigma=True, **kwargs)


def fake_learned_model(eps_scale: float, v: torch.Tensor | float):
    """A 2C-channel model_fn: eps = eps_scale * x_t, then the variance values v (broadcast to x_t)."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([eps_scale * x, torch.as_tensor(v, dtype=x.dtype).expand_as(x)], dim=1)

    return model_fn


# -- losses.py -----------------------------------------------------------------------------------------


def test_normal_kl_of_identical_gaussians_is_zero() -> None:
    mean = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    logvar = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros(4, 3), atol=1e-7)


def test_normal_kl_matches_closed_form_for_scalars() -> None:
    mean1, var1, mean2, var2 = 1.0, 2.0, -0.5, 0.5
    expected = math.log(math.sqrt(var2) / math.sqrt(var1)) + (var1 + (mean1 - mean2) ** 2) / (2 * var2) - 0.5
    kl = normal_kl(torch.tensor(mean1), math.log(var1), mean2, torch.tensor(math.log(var2)))
    assert kl.item() == pytest.approx(expected, rel=1e-6)


def test_normal_kl_is_non_negative_and_matches_torch_distributions() -> None:
    generator = torch.Generator().manual_seed(2)
    mean1, mean2 = torch.randn(2, 500, generator=generator, dtype=torch.float64)
    logvar1, logvar2 = 2 * torch.randn(2, 500, generator=generator, dtype=torch.float64)
    kl = normal_kl(mean1, logvar1, mean2, logvar2)
    assert bool((kl >= 0).all())
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean1, torch.exp(0.5 * logvar1)),
        torch.distributions.Normal(mean2, torch.exp(0.5 * logvar2)),
    )
    assert torch.allclose(kl, reference, rtol=1e-9, atol=1e-12)


def test_normal_kl_needs_a_tensor() -> None:
    with pytest.raises(ValueError, match="at least one tensor"):
        normal_kl(0.0, 0.0, 1.0, 0.0)


def test_approx_standard_normal_cdf_is_close_to_the_exact_cdf() -> None:
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    error = (approx_standard_normal_cdf(x) - torch.from_numpy(norm.cdf(x.numpy()))).abs().max()
    assert error.item() < 1e-3


@pytest.mark.parametrize(
    "mean, scale", [(0.1, 0.05), (-0.7, 0.3), (0.95, 0.002), (0.0, 5.0), (3.0, 0.1), (-1.0, 1e-4)]
)
def test_discretized_bin_probabilities_sum_to_one(mean: float, scale: float) -> None:
    means = torch.full_like(EIGHT_BIT_VALUES, mean)
    log_scales = torch.full_like(EIGHT_BIT_VALUES, math.log(scale))
    log_probs = discretized_gaussian_log_likelihood(EIGHT_BIT_VALUES, means, log_scales)
    assert bool(torch.isfinite(log_probs).all())
    assert bool((log_probs <= 0).all())
    assert log_probs.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_likelihood_matches_gaussian_bin_masses() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0])
    means = torch.tensor([-0.9, -0.45, 0.02, 0.31, 0.8])
    scales = torch.tensor([0.2, 0.03, 0.01, 0.5, 0.1])
    log_probs = discretized_gaussian_log_likelihood(x, means, scales.log())
    xs, ms, ss = x.double().numpy(), means.double().numpy(), scales.double().numpy()
    upper = norm.cdf((xs + 1 / 255 - ms) / ss)
    lower = norm.cdf((xs - 1 / 255 - ms) / ss)
    expected = np.log(np.where(xs < -0.999, upper, np.where(xs > 0.999, 1 - lower, upper - lower)))
    np.testing.assert_allclose(log_probs.numpy(), expected, rtol=1e-5)


def test_discretized_likelihood_is_finite_with_finite_gradients_far_from_the_mean() -> None:
    x = torch.tensor([-1.0, 1.0, -1.0, 1.0, 0.5, -0.5, 0.0])
    means = torch.tensor([1.0, -1.0, -1.0, 1.0, -0.9, 0.9, 0.0], requires_grad=True)
    log_scales = torch.tensor([-5.0, -5.0, -5.0, -5.0, -6.0, -6.0, 8.0], requires_grad=True)
    log_probs = discretized_gaussian_log_likelihood(x, means, log_scales)
    assert bool(torch.isfinite(log_probs).all())
    assert log_probs[0].item() < -1000 and log_probs[4].item() < -1000
    assert log_probs[2].item() == pytest.approx(math.log(norm.cdf(1 / 255 / math.exp(-5.0))), abs=1e-6)
    log_probs.sum().backward()
    assert bool(torch.isfinite(means.grad).all()) and bool(torch.isfinite(log_scales.grad).all())


def test_discretized_likelihood_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="share one shape"):
        discretized_gaussian_log_likelihood(torch.zeros(3), torch.zeros(3), torch.zeros(2))


# -- learned variance ----------------------------------------------------------------------------------


def test_variance_interpolates_between_clipped_beta_tilde_and_beta() -> None:
    diffusion = learned_diffusion()
    betas = diffusion.betas.numpy()
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    beta_tilde = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    clipped_log_beta_tilde = np.log(np.concatenate([[beta_tilde[1]], beta_tilde[1:]]))
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 1, 20, 49])
    by_v = {
        v: diffusion.p_mean_variance(fake_learned_model(0.1, v), x, t)["log_variance"][:, 0, 0, 0].double().numpy()
        for v in (1.0, -1.0, 0.0)
    }
    np.testing.assert_allclose(by_v[1.0], np.log(betas[t.numpy()]), rtol=1e-5)
    np.testing.assert_allclose(by_v[-1.0], clipped_log_beta_tilde[t.numpy()], rtol=1e-5)
    np.testing.assert_allclose(by_v[0.0], (by_v[1.0] + by_v[-1.0]) / 2, rtol=1e-5)
    fixed = GaussianDiffusion.from_config("linear", 50).p_mean_variance(lambda x, t: 0.1 * x, x, t)
    learned = diffusion.p_mean_variance(fake_learned_model(0.1, -1.0), x, t)
    assert torch.allclose(fixed["log_variance"], learned["log_variance"])
    # At t = 0 the fixed variance is beta-tilde_0 = 0 while both log variances hold the clipped value.
    assert torch.allclose(fixed["variance"][1:], learned["variance"][1:])
    assert torch.allclose(fixed["mean"], learned["mean"])


def test_model_output_shape_is_checked_for_both_variance_kinds() -> None:
    x = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="twice its channels"):
        learned_diffusion().model_output(lambda x, t: x, x, t)
    with pytest.raises(ValueError, match="input's shape"):
        GaussianDiffusion.from_config("linear", 50).model_output(lambda x, t: torch.cat([x, x], 1), x, t)


@pytest.mark.parametrize("bad", [{"vlb_weight": -1.0}, {"vlb_weight": float("nan")}, {"learn_sigma": 1}])
def test_bad_learned_sigma_arguments_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        GaussianDiffusion.from_config("linear", 50, **bad)


def test_ddim_uses_only_the_prediction_channels() -> None:
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    plain = ddim_sample(GaussianDiffusion.from_config("linear", 50), lambda x, t: 0.2 * x, x_T, steps=10)
    learned = ddim_sample(learned_diffusion(), fake_learned_model(0.2, 0.7), x_T, steps=10)
    assert torch.allclose(plain, learned)


# -- the VLB terms and the hybrid loss -----------------------------------------------------------------


def direct_vb_terms_bits(
    diffusion: GaussianDiffusion, x0: np.ndarray, noise: np.ndarray, t: np.ndarray, eps_scale: float, v: np.ndarray
) -> np.ndarray:
    """The VLB term of each sample in bits/dim, written out from the DDPM formulas in float64."""
    betas = diffusion.betas.numpy()
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    beta_tilde = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    out = []
    for b, step in enumerate(t):
        ab, ab_prev, beta = alpha_bar[step], alpha_bar_prev[step], betas[step]
        x_t = np.sqrt(ab) * x0[b] + np.sqrt(1 - ab) * noise[b]
        pred_x0 = (x_t - np.sqrt(1 - ab) * eps_scale * x_t) / np.sqrt(ab)

        def posterior_mean(start: np.ndarray) -> np.ndarray:
            return (beta * np.sqrt(ab_prev) * start + (1 - ab_prev) * np.sqrt(1 - beta) * x_t) / (1 - ab)

        frac = (v[b] + 1) / 2
        low = beta_tilde[max(step, 1)]
        model_var = np.exp(frac * np.log(beta) + (1 - frac) * np.log(low))
        model_mean = posterior_mean(pred_x0)
        if step == 0:
            scale = np.sqrt(model_var)
            mass = norm.cdf((x0[b] + 1 / 255 - model_mean) / scale) - norm.cdf((x0[b] - 1 / 255 - model_mean) / scale)
            out.append(-np.log(mass).mean() / np.log(2))
        else:
            true_var = beta_tilde[step]
            kl = 0.5 * (
                np.log(model_var / true_var) + (true_var + (posterior_mean(x0[b]) - model_mean) ** 2) / model_var - 1
            )
            out.append(kl.mean() / np.log(2))
    return np.array(out)


def test_vb_terms_equal_a_direct_gaussian_kl_and_decoder_nll() -> None:
    diffusion = learned_diffusion(vlb_weight=0.01)
    generator = torch.Generator().manual_seed(5)
    x0 = torch.rand(4, 2, 3, 3, generator=generator) * 1.6 - 0.8
    noise = torch.randn(4, 2, 3, 3, generator=generator)
    v = torch.rand(4, 2, 3, 3, generator=generator) * 2 - 1
    t = torch.tensor([0, 1, 17, 49])
    terms = diffusion.training_loss_terms(fake_learned_model(0.3, v), x0, t=t, noise=noise)
    assert set(terms) == {"loss", "simple", "vb"}
    assert all(value.shape == (4,) for value in terms.values())
    assert bool(torch.isfinite(terms["vb"]).all()) and bool((terms["vb"] >= 0).all())
    expected = direct_vb_terms_bits(
        diffusion, x0.double().numpy(), noise.double().numpy(), t.numpy(), 0.3, v.double().numpy()
    )
    np.testing.assert_allclose(terms["vb"].detach().numpy(), expected, rtol=2e-4)
    expected_simple = ((0.3 * diffusion.q_sample(x0, t, noise) - noise) ** 2).flatten(1).mean(1)
    assert torch.allclose(terms["simple"], expected_simple)
    assert torch.allclose(terms["loss"], terms["simple"] + 0.01 * 50 * terms["vb"])
    loss = diffusion.training_losses(fake_learned_model(0.3, v), x0, t=t, noise=noise)
    assert torch.allclose(loss, terms["loss"])


def test_fixed_variance_loss_is_the_simple_loss_and_reports_its_vb() -> None:
    diffusion = GaussianDiffusion.from_config("linear", 50)
    generator = torch.Generator().manual_seed(6)
    x0 = torch.rand(3, 2, 3, 3, generator=generator) * 1.6 - 0.8
    noise = torch.randn(3, 2, 3, 3, generator=generator)
    t = torch.tensor([0, 9, 30])
    terms = diffusion.training_loss_terms(lambda x, t: 0.3 * x, x0, t=t, noise=noise)
    assert torch.equal(terms["loss"], terms["simple"])
    always_low = -np.ones((3, 2, 3, 3))
    expected = direct_vb_terms_bits(diffusion, x0.double().numpy(), noise.double().numpy(), t.numpy(), 0.3, always_low)
    np.testing.assert_allclose(terms["vb"].numpy(), expected, rtol=2e-4)


class TinyLearnedSigmaModel(nn.Module):
    """eps = mean_weight * x; v = tanh(var_weight * x + var_bias): separate parameters for mean and variance."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_weight = nn.Parameter(torch.tensor(0.5))
        self.var_weight = nn.Parameter(torch.tensor(0.3))
        self.var_bias = nn.Parameter(torch.tensor(0.2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean_weight * x, torch.tanh(self.var_weight * x + self.var_bias)], dim=1)


def test_vlb_gradient_reaches_only_the_variance_channels() -> None:
    diffusion = learned_diffusion()
    model = TinyLearnedSigmaModel()
    generator = torch.Generator().manual_seed(7)
    x0 = torch.rand(4, 2, 4, 4, generator=generator) * 1.6 - 0.8
    t = torch.tensor([0, 3, 20, 49])
    terms = diffusion.training_loss_terms(model, x0, t=t, generator=generator)
    parameters = [model.mean_weight, model.var_weight, model.var_bias]
    vb_grads = torch.autograd.grad(terms["vb"].sum(), parameters, retain_graph=True, materialize_grads=True)
    assert vb_grads[0].item() == 0.0
    assert vb_grads[1].abs().item() > 0 and vb_grads[2].abs().item() > 0
    simple_grads = torch.autograd.grad(terms["simple"].sum(), parameters, retain_graph=True, materialize_grads=True)
    assert simple_grads[0].abs().item() > 0 and simple_grads[1].item() == 0.0 and simple_grads[2].item() == 0.0
    loss_grads = torch.autograd.grad(terms["loss"].sum(), parameters)
    assert torch.allclose(loss_grads[0], simple_grads[0])
    assert torch.allclose(loss_grads[2], diffusion.vlb_weight * diffusion.num_timesteps * vb_grads[2])


# -- variational bound ---------------------------------------------------------------------------------


def test_prior_bpd_matches_the_closed_form_kl() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 40)
    x0 = torch.tensor([[0.9, -0.4], [0.0, 1.0]], dtype=torch.float64).view(2, 1, 1, 2)
    ab = diffusion.alphas_cumprod[-1].item()
    mean, var = math.sqrt(ab) * x0.flatten(1), 1 - ab
    expected = (0.5 * (var + mean**2 - 1 - math.log(var))).mean(1) / math.log(2)
    assert torch.allclose(diffusion.prior_bpd(x0.float()).double(), expected, rtol=1e-4)


def gaussian_exact_model(diffusion: GaussianDiffusion, std: float, learn_sigma: bool):
    """Exact E[eps | x_t] for data x0 ~ N(0, std^2) per element; with learn_sigma also the v giving the exact
    reverse variance Var[x_{t-1} | x_t] = beta-tilde_t + coef1_t^2 Var[x0 | x_t] (it lies in [beta-tilde, beta])."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        view = (-1, *([1] * (x_t.ndim - 1)))
        ab = diffusion.alphas_cumprod[t].view(view)
        x = x_t.double()
        x0 = ab.sqrt() * std**2 / (ab * std**2 + 1 - ab) * x
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        if not learn_sigma:
            return eps.float()
        x0_variance = std**2 * (1 - ab) / (ab * std**2 + 1 - ab)
        coef1 = diffusion.posterior_mean_coef1[t].view(view)
        variance = diffusion.posterior_variance[t].view(view) + coef1**2 * x0_variance
        low, high = diffusion.posterior_log_variance_clipped[t].view(view), diffusion.log_betas[t].view(view)
        frac = (variance.log() - low) / (high - low)
        assert bool((frac >= -1e-9).all() and (frac <= 1 + 1e-9).all())
        return torch.cat([eps, (2 * frac - 1).expand_as(x)], dim=1).float()

    return model_fn


def test_bits_per_dim_of_gaussian_data_match_the_analytic_nll() -> None:
    """For x0 ~ N(0, 0.2^2) per dimension the true reverse conditionals are Gaussian, so a model with the exact
    posterior mean of the noise and the exact reverse variance (reachable by the learned interpolation) makes
    the bound tight: E[total_bpd] = -log2(p(x0) * 2/255) per dimension. The comparison is meaningful because
    with std 0.2 no value comes near the open-ended edge bins at +-1, the decoder's std (~sqrt(beta_0) = 0.045)
    is wide against the bin width 2/255 so a bin's mass is its density times the width, and the prior term is
    ~1e-7 bits. One noise draw per step leaves ~0.02 bits of Monte-Carlo noise per sample over 3072 dims.
    The fixed (beta-tilde) variance is not the true one, so its bound is clearly looser."""
    std = 0.2
    x0 = std * torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    analytic = (0.5 * math.log(2 * math.pi * std**2) + x0.double() ** 2 / (2 * std**2)).flatten(1).mean(1)
    analytic = analytic / math.log(2) - math.log2(2 / 255)

    learned = learned_diffusion(50)
    result = learned.variational_bound(
        gaussian_exact_model(learned, std, True), x0, generator=torch.Generator().manual_seed(9), clip_x0=False
    )
    assert result["vb"].shape == (16, 50) and result["mse"].shape == (16, 50)
    assert torch.allclose(result["total_bpd"], result["vb"].sum(1) + result["prior_bpd"])
    assert result["prior_bpd"].max().item() < 1e-4
    difference = result["total_bpd"].double() - analytic
    assert abs(difference.mean().item()) < 0.03
    assert difference.abs().max().item() < 0.12

    fixed = GaussianDiffusion.from_config("linear", 50)
    fixed_result = fixed.variational_bound(
        gaussian_exact_model(fixed, std, False), x0, generator=torch.Generator().manual_seed(9), clip_x0=False
    )
    assert (fixed_result["total_bpd"].double() - analytic).mean().item() > 0.5
    assert torch.allclose(fixed_result["mse"], result["mse"], rtol=1e-4, atol=1e-6)


# -- guidance ------------------------------------------------------------------------------------------


class FakeConditionalLearnedSigma:
    """Prediction channels x + cond (0 when dropped); variance channels tanh(cond) (-0.5 when dropped)."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor], drop: torch.Tensor
    ) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        value = cond["score"].view(-1, 1, 1, 1).expand_as(x)
        keep = (~drop).view(-1, 1, 1, 1)
        prediction = x + torch.where(keep, value, torch.zeros_like(value))
        variance = torch.where(keep, torch.tanh(value), torch.full_like(value, -0.5))
        return torch.cat([prediction, variance], dim=1)


@pytest.mark.parametrize("scale", [1.0, 0.0, 3.0])
def test_guidance_combines_only_the_guided_channels(scale: float) -> None:
    model = FakeConditionalLearnedSigma()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(10))
    t = torch.tensor([5, 5, 5])
    cond = {"score": torch.tensor([0.2, 0.6, 1.0])}
    out = classifier_free_guidance(model, cond, scale, guided_channels=2)(x, t)
    score = cond["score"].view(-1, 1, 1, 1).expand_as(x)
    conditional_prediction, unconditional_prediction = x + score, x
    guided = unconditional_prediction + scale * (conditional_prediction - unconditional_prediction)
    assert torch.allclose(out[:, :2], guided)
    assert torch.allclose(out[:, 2:], torch.tanh(score))
    assert model.batch_sizes == ([3] if scale == 1.0 else [6])


def test_guidance_without_guided_channels_combines_every_channel() -> None:
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(11))
    cond = {"score": torch.tensor([0.5, 1.0])}
    out = classifier_free_guidance(FakeConditionalLearnedSigma(), cond, 2.0)(x, torch.tensor([1, 1]))
    score = cond["score"].view(-1, 1, 1, 1).expand_as(x)
    assert torch.allclose(out[:, 1:], -0.5 + 2.0 * (torch.tanh(score) + 0.5))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_guidance_rejects_bad_guided_channels(bad) -> None:
    with pytest.raises(ValueError, match="guided_channels"):
        classifier_free_guidance(FakeConditionalLearnedSigma(), {}, 2.0, guided_channels=bad)


def test_guidance_rejects_more_guided_channels_than_the_output_has() -> None:
    model_fn = classifier_free_guidance(FakeConditionalLearnedSigma(), {"score": torch.ones(1)}, 2.0, guided_channels=5)
    with pytest.raises(ValueError, match="at least 5 channels"):
        model_fn(torch.zeros(1, 2, 2, 2), torch.tensor([0]))


# -- respacing -----------------------------------------------------------------------------------------


def test_respace_keeps_learned_sigma_and_samples() -> None:
    source = GaussianDiffusion.from_config(
        "linear", 100, objective="v", loss_type="huber", learn_sigma=True, vlb_weight=0.01
    )
    spaced = respace(source, space_timesteps(100, 10))
    assert (spaced.learn_sigma, spaced.vlb_weight, spaced.objective, spaced.loss_type) == (True, 0.01, "v", "huber")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(12))
    t = torch.tensor([3, 9])
    log_variance = spaced.p_mean_variance(fake_learned_model(0.1, 1.0), x, t)["log_variance"]
    assert torch.allclose(log_variance[:, 0, 0, 0].double(), spaced.betas[t].log(), rtol=1e-5)
    seen: list[int] = []

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.extend(t.tolist())
        return fake_learned_model(0.1, 0.0)(x, t)

    sample = ddpm_sample(spaced, model_fn, x, generator=torch.Generator().manual_seed(13))
    assert sample.shape == x.shape and bool(torch.isfinite(sample).all())
    assert sorted(set(seen)) == spaced.timestep_map.tolist()

"""Tests of the diffusion core: schedules, forward/posterior maths, losses, respacing, samplers, guidance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.guidance import classifier_free_guidance, conditional_model_fn
from diffusion.respace import respace, space_timesteps
from diffusion.samplers import ddim_sample, ddpm_sample, noise_like, sdedit_start
from diffusion.schedules import SCHEDULES, make_betas

DATA_POINTS = torch.tensor(
    [
        [0.8, -0.5, 0.3, -0.9],
        [-0.6, 0.7, -0.2, 0.4],
        [0.1, 0.1, -0.8, 0.9],
    ]
).reshape(3, 1, 2, 2)


def linear_diffusion(objective: str = "eps", loss_type: str = "l2", timesteps: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion.from_config("linear", timesteps, objective=objective, loss_type=loss_type)


def oracle_model(reference: GaussianDiffusion, points: torch.Tensor, objective: str):
    """Exact E[x0 | x_t] for data uniform over `points`, expressed in `objective`; t are original timesteps."""
    flat_points = points.flatten(1).double()

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = reference.alphas_cumprod[t].view(-1, 1)
        x = x_t.flatten(1).double()
        squared = ((x[:, None, :] - ab.sqrt()[:, :, None] * flat_points[None]) ** 2).sum(-1)
        weights = torch.softmax(-squared / (2 * (1 - ab)), dim=1)
        x0 = weights @ flat_points
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        out = {"x0": x0, "eps": eps, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[objective]
        return out.float().view_as(x_t)

    return model_fn


def gaussian_oracle_model(reference: GaussianDiffusion, mean: float, std: float):
    """Exact eps prediction for data x0 ~ N(mean, std^2) per element; t are original timesteps."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = reference.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        x = x_t.double()
        x0 = mean + ab.sqrt() * std**2 / (ab * std**2 + 1 - ab) * (x - ab.sqrt() * mean)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).float()

    return model_fn


def distance_to_nearest_point(samples: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distances = torch.cdist(samples.flatten(1), points.flatten(1))
    return distances.min(dim=1)


def assert_lands_on_data_points(samples: torch.Tensor) -> None:
    """Every sample sits on one of DATA_POINTS, and they do not all pick the same one."""
    distance, nearest = distance_to_nearest_point(samples, DATA_POINTS)
    assert distance.max().item() < 1e-3
    assert len(set(nearest.tolist())) >= 2


# -- schedules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("timesteps", [1000, 50])
def test_schedule_shape_range_and_monotone_alpha_bar(schedule: str, timesteps: int) -> None:
    betas = make_betas(schedule, timesteps)
    assert betas.shape == (timesteps,)
    assert betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert alpha_bar[0] > 0.99
    if schedule != "scaled_linear" or timesteps == 1000:  # scaled_linear's fixed betas are meant for T = 1000
        assert alpha_bar[-1] < 1e-3


def test_schedule_endpoints() -> None:
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4)
    assert linear[-1].item() == pytest.approx(0.02)
    assert make_betas("linear", 250)[-1].item() == pytest.approx(0.08)
    cosine = make_betas("cosine", 1000)
    assert cosine.max().item() == pytest.approx(0.999)
    assert cosine[0].item() < 1e-4
    assert torch.cumprod(1 - cosine, 0)[499].item() == pytest.approx(0.5, abs=0.02)
    sigmoid_alpha_bar = torch.cumprod(1 - make_betas("sigmoid", 1000), 0)
    assert sigmoid_alpha_bar[499].item() == pytest.approx(0.5, abs=0.01)


def test_unknown_schedule_lists_choices() -> None:
    with pytest.raises(ValueError, match="linear, cosine, sigmoid"):
        make_betas("quadratic", 100)
    with pytest.raises(ValueError, match="timesteps"):
        make_betas("cosine", 0)
    with pytest.raises(ValueError, match="timesteps > 20"):
        make_betas("linear", 10)


def test_bad_constructor_arguments() -> None:
    betas = make_betas("cosine", 10)
    with pytest.raises(ValueError, match="objective"):
        GaussianDiffusion(betas, objective="score")
    with pytest.raises(ValueError, match="loss_type"):
        GaussianDiffusion(betas, loss_type="l3")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GaussianDiffusion(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="timestep_map"):
        GaussianDiffusion(betas, timestep_map=torch.arange(5))


# -- forward process and posterior --------------------------------------------------------------------


def test_q_sample_empirical_moments_match_closed_form() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    x0_row = torch.tensor([[-0.8, 0.1, 0.9]])
    draws = 20000
    generator = torch.Generator().manual_seed(0)
    for step in (10, 300, 900):
        x0 = x0_row.expand(draws, 3)
        t = torch.full((draws,), step, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = diffusion.q_sample(x0, t, noise)
        ab = diffusion.alphas_cumprod[step].item()
        expected_mean = np.sqrt(ab) * x0_row[0]
        assert torch.allclose(x_t.mean(0), expected_mean, atol=4 * np.sqrt((1 - ab) / draws))
        assert torch.allclose(x_t.var(0), torch.full((3,), 1 - ab), rtol=0.05)
        mean, variance, log_variance = diffusion.q_mean_variance(x0[:2], t[:2])
        assert torch.allclose(mean, expected_mean.expand(2, 3), atol=1e-6)
        assert torch.allclose(variance, torch.full((2, 3), 1 - ab), rtol=1e-5)
        assert torch.allclose(log_variance, torch.full((2, 3), np.log(1 - ab)), rtol=1e-5)


def test_posterior_matches_closed_form_from_betas() -> None:
    diffusion = GaussianDiffusion.from_config("linear", 1000)
    betas = make_betas("linear", 1000).numpy()
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    t = torch.arange(1000)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(1000, 2, generator=generator)
    x_t = torch.randn(1000, 2, generator=generator)
    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, x_t, t)

    coef_x0 = betas * np.sqrt(alpha_bar_prev) / (1 - alpha_bar)
    coef_xt = (1 - alpha_bar_prev) * np.sqrt(1 - betas) / (1 - alpha_bar)
    expected_mean = coef_x0[:, None] * x0.double().numpy() + coef_xt[:, None] * x_t.double().numpy()
    expected_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance[:, 0].numpy(), expected_variance, rtol=1e-5, atol=1e-12)
    assert variance[0, 0].item() == 0.0
    np.testing.assert_allclose(log_variance[1:, 0].numpy(), np.log(expected_variance[1:]), rtol=1e-5)
    assert log_variance[0, 0].item() == pytest.approx(np.log(expected_variance[1]), rel=1e-5)


@pytest.mark.parametrize("step", [1, 10, 500, 999])
def test_posterior_matches_bayes_by_completing_the_square(step: int) -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    betas = make_betas("cosine", 1000).numpy()
    alpha_bar_prev = np.prod(1 - betas[:step])
    x0_value, x_t_value = 0.7, -0.3

    def log_joint(x_prev: np.ndarray) -> np.ndarray:
        """log q(x_{t-1} | x0) + log q(x_t | x_{t-1}) up to a constant: quadratic in x_{t-1}."""
        prior = -((x_prev - np.sqrt(alpha_bar_prev) * x0_value) ** 2) / (2 * (1 - alpha_bar_prev))
        likelihood = -((x_t_value - np.sqrt(1 - betas[step]) * x_prev) ** 2) / (2 * betas[step])
        return prior + likelihood

    grid = np.linspace(-1.0, 1.0, 9)
    quadratic, linear, _ = np.polyfit(grid, log_joint(grid), 2)
    bayes_variance = -1 / (2 * quadratic)
    bayes_mean = -linear / (2 * quadratic)

    t = torch.tensor([step])
    mean, variance, _ = diffusion.q_posterior_mean_variance(
        torch.tensor([[x0_value]]), torch.tensor([[x_t_value]]), t
    )
    assert mean.item() == pytest.approx(bayes_mean, rel=1e-4, abs=1e-6)
    assert variance.item() == pytest.approx(bayes_variance, rel=1e-4)


# -- conversions and losses ---------------------------------------------------------------------------


def test_eps_x0_v_conversions_round_trip() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(6, 3, 4, 4, generator=generator) * 2 - 1
    eps = torch.randn(6, 3, 4, 4, generator=generator)
    t = torch.tensor([0, 1, 100, 500, 900, 980])
    x_t = diffusion.q_sample(x0, t, eps)
    v = diffusion.predict_v(x0, eps, t)
    assert torch.allclose(diffusion.predict_x0_from_eps(x_t, t, eps), x0, atol=2e-4)
    assert torch.allclose(diffusion.predict_eps_from_x0(x_t, t, x0), eps, atol=2e-4)
    assert torch.allclose(diffusion.predict_x0_from_v(x_t, t, v), x0, atol=1e-5)
    assert torch.allclose(diffusion.predict_eps_from_v(x_t, t, v), eps, atol=1e-5)
    assert not torch.allclose(v, eps, atol=1e-2)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_model_predictions_recover_x0_and_eps(objective: str) -> None:
    diffusion = GaussianDiffusion.from_config("linear", 1000, objective=objective)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 2, 3, 3, generator=generator) * 1.6 - 0.8
    eps = torch.randn(4, 2, 3, 3, generator=generator)
    t = torch.tensor([3, 200, 600, 950])
    x_t = diffusion.q_sample(x0, t, eps)
    target = diffusion.training_target(x0, eps, t)
    for clip in (False, True):
        pred_x0, pred_eps = diffusion.model_predictions(target, x_t, t, clip_x0=clip)
        assert torch.allclose(pred_x0, x0, atol=1e-3)
        assert torch.allclose(pred_eps, eps, atol=1e-3)


def test_clipping_bounds_x0_and_keeps_eps_consistent() -> None:
    diffusion = GaussianDiffusion.from_config("linear", 1000, objective="x0")
    x_t = torch.randn(2, 1, 2, 2)
    t = torch.tensor([500, 500])
    far_x0 = torch.full_like(x_t, 3.0)
    pred_x0, pred_eps = diffusion.model_predictions(far_x0, x_t, t, clip_x0=True)
    assert torch.equal(pred_x0, torch.ones_like(x_t))
    assert torch.allclose(diffusion.predict_x0_from_eps(x_t, t, pred_eps), pred_x0, atol=1e-5)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("loss_type", ["l2", "l1", "huber"])
def test_training_loss_zero_for_exact_target_and_positive_otherwise(objective: str, loss_type: str) -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 100, objective=objective, loss_type=loss_type)
    generator = torch.Generator().manual_seed(4)
    x0 = torch.rand(5, 3, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(5, 3, 4, 4, generator=generator)
    t = torch.tensor([0, 10, 50, 80, 99])
    target = diffusion.training_target(x0, noise, t)
    expected_target = {"eps": noise, "x0": x0, "v": diffusion.predict_v(x0, noise, t)}[objective]
    assert torch.equal(target, expected_target)

    exact = diffusion.training_losses(lambda x_t, step: target, x0, t=t, noise=noise)
    assert exact.shape == (5,)
    assert torch.allclose(exact, torch.zeros(5))

    expected = {
        "l2": (0.25, 4.0),
        "l1": (0.5, 2.0),
        "huber": (0.125, 1.5),
    }[loss_type]
    for offset, value in zip((0.5, 2.0), expected):
        losses = diffusion.training_losses(lambda x_t, step: target + offset, x0, t=t, noise=noise)
        assert torch.allclose(losses, torch.full((5,), value), rtol=1e-5)


def test_training_losses_use_the_generator() -> None:
    diffusion = linear_diffusion()
    x0 = torch.zeros(8, 1, 2, 2)
    seen: list[torch.Tensor] = []

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x_t)

    first = diffusion.training_losses(model_fn, x0, generator=torch.Generator().manual_seed(5))
    again = diffusion.training_losses(model_fn, x0, generator=torch.Generator().manual_seed(5))
    other = diffusion.training_losses(model_fn, x0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert torch.equal(seen[0], seen[1])
    assert not torch.equal(first, other)
    timesteps = diffusion.sample_timesteps(5000, "cpu", torch.Generator().manual_seed(7))
    assert timesteps.dtype == torch.long
    assert timesteps.min().item() == 0 and timesteps.max().item() == 999
    assert len(torch.unique(timesteps)) > 900


def test_model_output_of_wrong_shape_is_rejected() -> None:
    diffusion = linear_diffusion()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="model output has shape"):
        diffusion.training_losses(lambda x_t, t: torch.zeros(2, 6, 4, 4), x)
    with pytest.raises(ValueError, match="t must have shape"):
        diffusion.q_sample(x, torch.tensor([1, 2, 3]), torch.zeros_like(x))


# -- respacing ----------------------------------------------------------------------------------------


def test_space_timesteps_specs() -> None:
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert space_timesteps(1000, "5") == space_timesteps(1000, 5)
    sections = space_timesteps(300, "10,15,20")
    assert len(sections) == 45 == len(set(sections))
    assert sections == sorted(sections)
    counts = [sum(start <= s < start + 100 for s in sections) for start in (0, 100, 200)]
    assert counts == [10, 15, 20]
    assert {0, 99, 100, 199, 200, 299} <= set(sections)
    assert space_timesteps(10, "1,1") == [0, 5]


@pytest.mark.parametrize("spec", ["ddim7", "abc", "0", "5,x", 11, "20,20", "ddim", 0])
def test_space_timesteps_rejects_bad_specs(spec: str | int) -> None:
    total = 10 if spec in ("ddim7", 11) else 30
    with pytest.raises(ValueError, match="timestep spacing"):
        space_timesteps(total, spec)


def test_respaced_alpha_bars_and_timestep_map() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000, objective="v")
    kept = space_timesteps(1000, "ddim25")
    respaced = respace(diffusion, kept)
    assert respaced.num_timesteps == 25
    assert respaced.objective == "v"
    assert torch.allclose(respaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12, atol=0)
    assert respaced.timestep_map.tolist() == kept

    nested = respace(respaced, [0, 10, 24])
    assert nested.timestep_map.tolist() == [kept[0], kept[10], kept[24]]
    assert torch.allclose(nested.alphas_cumprod, diffusion.alphas_cumprod[[kept[0], kept[10], kept[24]]])

    received: list[int] = []

    def recording_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        received.append(int(t[0]))
        return torch.zeros_like(x_t)

    ddpm_sample(respaced, recording_model, torch.randn(2, 1, 2, 2))
    assert received == kept[::-1]
    with pytest.raises(ValueError, match="use_timesteps"):
        respace(diffusion, [1000])


# -- samplers -----------------------------------------------------------------------------------------


def test_ddpm_with_oracle_lands_on_the_data_points() -> None:
    diffusion = linear_diffusion(objective="eps")
    x_T = torch.randn(12, 1, 2, 2, generator=torch.Generator().manual_seed(8))
    model_fn = oracle_model(diffusion, DATA_POINTS, "eps")
    samples = ddpm_sample(diffusion, model_fn, x_T, generator=torch.Generator().manual_seed(9))
    assert_lands_on_data_points(samples)


def test_respaced_ddpm_with_oracle_lands_on_the_data_points() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000, objective="v")
    respaced = respace(diffusion, space_timesteps(1000, 100))
    x_T = torch.randn(12, 1, 2, 2, generator=torch.Generator().manual_seed(10))
    model_fn = oracle_model(diffusion, DATA_POINTS, "v")
    samples = ddpm_sample(respaced, model_fn, x_T, generator=torch.Generator().manual_seed(11))
    assert_lands_on_data_points(samples)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_oracle_lands_on_the_data_points(eta: float) -> None:
    diffusion = linear_diffusion(objective="x0")
    x_T = torch.randn(12, 1, 2, 2, generator=torch.Generator().manual_seed(12))
    model_fn = oracle_model(diffusion, DATA_POINTS, "x0")
    samples = ddim_sample(diffusion, model_fn, x_T, steps=50, eta=eta, generator=torch.Generator().manual_seed(13))
    assert_lands_on_data_points(samples)


def test_ddim_eta0_recovers_a_single_data_point_exactly() -> None:
    diffusion = linear_diffusion(objective="eps")
    point = DATA_POINTS[:1]
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(14))
    model_fn = oracle_model(diffusion, point, "eps")
    samples = ddim_sample(diffusion, model_fn, x_T, steps=20, eta=0.0, clip_x0=False)
    assert torch.allclose(samples, point.expand_as(samples), atol=1e-5)


def test_samplers_reproduce_gaussian_data_moments() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000, objective="eps")
    model_fn = gaussian_oracle_model(diffusion, 0.3, 0.5)
    x_T = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(23))
    ddpm = ddpm_sample(diffusion, model_fn, x_T, generator=torch.Generator().manual_seed(24), clip_x0=False)
    ddim = ddim_sample(diffusion, model_fn, x_T, steps=200, eta=0.0, clip_x0=False)
    for samples in (ddpm, ddim):
        assert samples.mean().item() == pytest.approx(0.3, abs=0.02)
        assert samples.std().item() == pytest.approx(0.5, abs=0.02)


def test_ddim_eta1_over_every_step_equals_ddpm() -> None:
    diffusion = GaussianDiffusion.from_config("linear", 1000, objective="eps")
    model_fn = gaussian_oracle_model(diffusion, -0.2, 0.4)
    x_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(25))
    ddim = ddim_sample(diffusion, model_fn, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(26))
    ddpm = ddpm_sample(diffusion, model_fn, x_T, generator=torch.Generator().manual_seed(26))
    assert torch.allclose(ddim, ddpm, atol=1e-4)


def _wobbly_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, element-wise stand-in network."""
    return torch.tanh(x_t) * 0.5 + 1e-4 * t.view(-1, *([1] * (x_t.ndim - 1)))


def test_ddim_eta0_is_deterministic_and_eta_positive_follows_the_seed() -> None:
    diffusion = linear_diffusion()
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(15))
    plain = ddim_sample(diffusion, _wobbly_model, x_T, steps=10, eta=0.0)
    for seed in (0, 1):
        seeded = ddim_sample(
            diffusion, _wobbly_model, x_T, steps=10, eta=0.0, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(seeded, plain)

    def stochastic(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return ddim_sample(diffusion, _wobbly_model, x_T, steps=10, eta=0.5, generator=generator)

    assert torch.equal(stochastic(0), stochastic(0))
    assert not torch.allclose(stochastic(0), stochastic(1), atol=1e-3)
    assert not torch.allclose(stochastic(0), plain, atol=1e-3)


def test_noise_index_shares_per_step_noise() -> None:
    diffusion = respace(linear_diffusion(), space_timesteps(1000, 20))
    x_T = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(16)).expand(3, 2, 3, 3).clone()

    def run(noise_index: torch.Tensor | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(17)
        return ddpm_sample(diffusion, _wobbly_model, x_T, generator=generator, noise_index=noise_index)

    shared = run(torch.tensor([0, 0, 1]))
    assert torch.equal(shared[0], shared[1])
    assert not torch.allclose(shared[0], shared[2], atol=1e-3)
    independent = run(None)
    assert not torch.allclose(independent[0], independent[1], atol=1e-3)
    with pytest.raises(ValueError, match="noise_index"):
        run(torch.tensor([0, 1]))


def test_noise_like_rows_follow_the_index() -> None:
    generator = torch.Generator().manual_seed(18)
    noise = noise_like((4, 2, 3), generator, "cpu", torch.tensor([2, 0, 2, 1]))
    assert noise.shape == (4, 2, 3)
    assert torch.equal(noise[0], noise[2])
    reference = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(18))
    assert torch.equal(noise, reference[[2, 0, 2, 1]])


def test_t_start_and_callback() -> None:
    diffusion = linear_diffusion()
    calls: list[tuple[int, int]] = []

    def callback(step_index: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        assert x_t.shape == pred_x0.shape == (2, 1, 2, 2)
        calls.append((step_index, t))

    ddpm_sample(diffusion, _wobbly_model, torch.randn(2, 1, 2, 2), t_start=5, callback=callback)
    assert calls == [(i, 5 - i) for i in range(6)]
    calls.clear()
    ddim_sample(diffusion, _wobbly_model, torch.randn(2, 1, 2, 2), steps=4, t_start=300, callback=callback)
    assert calls == [(0, 300), (1, 200), (2, 100), (3, 0)]
    with pytest.raises(ValueError, match="t_start"):
        ddpm_sample(diffusion, _wobbly_model, torch.randn(2, 1, 2, 2), t_start=1000)


def test_sdedit_start_has_q_sample_statistics() -> None:
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    draws = 20000
    x0 = torch.tensor([[0.6, -0.4]]).expand(draws, 2)
    noise = torch.randn(draws, 2, generator=torch.Generator().manual_seed(19))
    x_t, t_start = sdedit_start(diffusion, x0, 0.3, noise)
    assert t_start == 300
    ab = diffusion.alphas_cumprod[300].item()
    assert torch.allclose(x_t.mean(0), np.sqrt(ab) * x0[0], atol=4 * np.sqrt((1 - ab) / draws))
    assert torch.allclose(x_t.var(0), torch.full((2,), 1 - ab), rtol=0.05)
    assert sdedit_start(diffusion, x0[:1], 1.0, noise[:1])[1] == 999
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match="strength"):
            sdedit_start(diffusion, x0[:1], strength, noise[:1])


# -- guidance -----------------------------------------------------------------------------------------


class CountingConditionalModel:
    """Fake conditional network: conditional output x + score, unconditional output x - 1."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.drops: list[torch.Tensor] = []

    def __call__(self, x, t, cond, drop_cond):
        self.batches.append(x.shape[0])
        self.drops.append(drop_cond.clone())
        shape = (-1, *([1] * (x.ndim - 1)))
        conditional = x + cond["score"].view(shape)
        return torch.where(drop_cond.view(shape), x - 1.0, conditional)


def test_classifier_free_guidance_combines_one_batched_pass() -> None:
    x = torch.randn(3, 1, 2, 2)
    t = torch.tensor([5, 5, 5])
    cond = {"score": torch.tensor([0.0, 0.5, 1.0])}
    conditional_out = x + cond["score"].view(-1, 1, 1, 1)
    unconditional_out = x - 1.0

    model = CountingConditionalModel()
    assert torch.allclose(classifier_free_guidance(model, cond, 1.0)(x, t), conditional_out)
    assert model.batches == [3]
    assert not model.drops[0].any()
    assert torch.allclose(conditional_model_fn(model, cond)(x, t), conditional_out)

    model = CountingConditionalModel()
    assert torch.allclose(classifier_free_guidance(model, cond, 0.0)(x, t), unconditional_out)
    guided = classifier_free_guidance(model, cond, 2.5)(x, t)
    assert torch.allclose(guided, unconditional_out + 2.5 * (conditional_out - unconditional_out))
    assert model.batches == [6, 6]
    assert model.drops[1].tolist() == [False] * 3 + [True] * 3


def test_classifier_free_guidance_makes_one_call_per_sampling_step() -> None:
    diffusion = linear_diffusion()
    model = CountingConditionalModel()
    cond = {"score": torch.tensor([0.2, 0.9])}
    ddim_sample(diffusion, classifier_free_guidance(model, cond, 3.0), torch.randn(2, 1, 2, 2), steps=5)
    assert model.batches == [4] * 5
    with pytest.raises(ValueError, match="condition 'score'"):
        classifier_free_guidance(model, cond, 3.0)(torch.randn(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))


# -- devices ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_a_cpu_generator() -> None:
    diffusion = linear_diffusion(objective="v")
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(20))
    model_fn = oracle_model(diffusion, DATA_POINTS, "v")

    def cuda_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_t.is_cuda and t.is_cuda
        return model_fn(x_t.cpu(), t.cpu()).cuda()

    cpu = ddim_sample(diffusion, model_fn, x_T, steps=20, eta=1.0, generator=torch.Generator().manual_seed(21))
    gpu = ddim_sample(
        diffusion, cuda_model, x_T.cuda(), steps=20, eta=1.0, generator=torch.Generator().manual_seed(21)
    )
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    x0 = DATA_POINTS.cuda()
    losses = diffusion.training_losses(
        lambda x_t, t: torch.zeros_like(x_t), x0, generator=torch.Generator().manual_seed(22)
    )
    assert losses.is_cuda and losses.shape == (3,)


def test_scaled_linear_is_linear_in_the_square_root_of_beta() -> None:
    betas = make_betas("scaled_linear", 1000, (0.0015, 0.0205))
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0205)
    roots = betas.sqrt()
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(999), atol=1e-12)
    assert betas[500].item() == pytest.approx(((0.0015 ** 0.5 + 500 / 999 * (0.0205 ** 0.5 - 0.0015 ** 0.5))) ** 2)

"""DPM-Solver++ against the closed-form probability-flow ODE of Gaussian data, its orders, objectives, learned
sigma, the SDE variant's noise and its step spacings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.dpm_solver import dpm_solver_sample, log_snr, solver_timesteps
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.samplers import ddim_sample, ddpm_sample
from diffusion.sampling import SamplingSpec, sample

MEAN, STD = 0.3, 0.5


def process(schedule: str = "linear", learn_sigma: bool = False) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(schedule, 1000, learn_sigma=learn_sigma)


def gaussian_oracle(diffusion: GaussianDiffusion, objective: str = "eps", extra_channels: bool = False):
    """The exact network for data x0 ~ N(MEAN, STD^2) per element, in float64, in `objective`'s terms."""
    abar = diffusion.alphas_cumprod

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        x0 = MEAN + a.sqrt() * STD**2 / (a * STD**2 + 1 - a) * (x_t - a.sqrt() * MEAN)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[objective]
        if extra_channels:  # learned-sigma networks append variance values, which the solver must ignore
            out = torch.cat([out, torch.rand_like(out) * 2 - 1], dim=1)
        return out

    return model_fn


def exact_solution(diffusion: GaussianDiffusion, x_T: torch.Tensor, start: int) -> torch.Tensor:
    """The probability-flow ODE carried exactly from x_T at `start` to t = 0 (for Gaussian data the flow is the
    affine map between the Gaussian marginals), then the clean-image jump every solver makes there: E[x0 | x_0]."""
    a_start, a0 = diffusion.alphas_cumprod[start], diffusion.alphas_cumprod[0]
    spread = lambda a: (a * STD**2 + 1 - a).sqrt()  # noqa: E731 - the marginal's std at alpha-bar a
    x_at_0 = a0.sqrt() * MEAN + spread(a0) * (x_T - a_start.sqrt() * MEAN) / spread(a_start)
    return MEAN + a0.sqrt() * STD**2 / spread(a0) ** 2 * (x_at_0 - a0.sqrt() * MEAN)


@pytest.fixture(scope="module")
def start_noise() -> torch.Tensor:
    return torch.randn(2048, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def solver_error(diffusion, x_T, steps, order, spacing="logsnr") -> float:
    out = dpm_solver_sample(diffusion, gaussian_oracle(diffusion), x_T, steps=steps, order=order, spacing=spacing,
                            clip_x0=False)
    return float((out - exact_solution(diffusion, x_T, 999)).abs().max())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("order, low, high", [(2, 3.0, 5.0), (3, 6.0, 16.0)])
def test_the_error_falls_at_the_solvers_order_as_steps_double(start_noise, schedule, order, low, high):
    diffusion = process(schedule)
    errors = [solver_error(diffusion, start_noise, steps, order) for steps in (20, 40, 80)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(low <= r <= high for r in ratios), (errors, ratios)


def test_ddim_the_first_order_solver_halves_its_error_as_steps_double(start_noise):
    diffusion = process()
    exact = exact_solution(diffusion, start_noise, 999)
    errors = [float((ddim_sample(diffusion, gaussian_oracle(diffusion), start_noise, steps=n, clip_x0=False) - exact).abs().max())
              for n in (20, 40, 80)]
    assert all(1.8 <= errors[i] / errors[i + 1] <= 2.2 for i in range(2)), errors


def test_twenty_steps_lie_within_the_stated_tolerance_of_the_exact_answer(start_noise):
    """At 20 steps (uniform log-SNR, linear schedule, T = 1000) DPM-Solver++(2M) is within 0.03 of the exact ODE
    solution for every sample (6 % of the data's std); DDIM needs about 160 steps for the same."""
    diffusion = process()
    assert solver_error(diffusion, start_noise, 20, 2) < 0.03
    assert solver_error(diffusion, start_noise, 20, 3) < 0.01
    ddim20 = ddim_sample(diffusion, gaussian_oracle(diffusion), start_noise, steps=20, clip_x0=False)
    assert float((ddim20 - exact_solution(diffusion, start_noise, 999)).abs().max()) > 0.2


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_every_objective_gives_the_same_samples(start_noise, objective):
    eps = GaussianDiffusion.from_config("linear", 1000, objective="eps")
    other = GaussianDiffusion.from_config("linear", 1000, objective=objective)
    a = dpm_solver_sample(eps, gaussian_oracle(eps, "eps"), start_noise, steps=15, clip_x0=False)
    b = dpm_solver_sample(other, gaussian_oracle(other, objective), start_noise, steps=15, clip_x0=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the process's coefficients are float32


def test_learned_sigma_uses_the_mean_only(start_noise):
    plain, learned = process(), process(learn_sigma=True)
    a = dpm_solver_sample(plain, gaussian_oracle(plain), start_noise, steps=12, clip_x0=False)
    b = dpm_solver_sample(learned, gaussian_oracle(learned, extra_channels=True), start_noise, steps=12, clip_x0=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_sde_variant_reaches_the_data_distribution(start_noise):
    diffusion = process()
    out = dpm_solver_sample(diffusion, gaussian_oracle(diffusion), start_noise.repeat(4, 1), steps=40, sde=True,
                            clip_x0=False, generator=torch.Generator().manual_seed(3))
    assert abs(float(out.mean()) - MEAN) < 0.03 and abs(float(out.std()) - STD) < 0.03


def test_the_sde_noise_follows_the_generator_and_the_noise_index():
    diffusion = process()
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)).repeat(4, 1, 1, 1)
    index = torch.tensor([0, 0, 1, 1])
    run = lambda seed: dpm_solver_sample(diffusion, gaussian_oracle(diffusion), x_T, steps=8, sde=True,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed), noise_index=index)
    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first[0], first[1]) and torch.equal(first[2], first[3])
    assert not torch.equal(first[0], first[2])


@pytest.mark.parametrize("spacing", ["logsnr", "time", "karras"])
def test_step_spacings_run_from_the_start_to_zero(spacing):
    diffusion = process()
    steps = solver_timesteps(diffusion, 999, 15, spacing)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) <= 15
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert solver_timesteps(diffusion, 4, 15, spacing) == [4, 3, 2, 1, 0]


def test_logsnr_spacing_is_uniform_in_log_snr():
    diffusion = process()
    steps = solver_timesteps(diffusion, 999, 10, "logsnr")
    gaps = np.diff(log_snr(diffusion)[steps])
    assert len(steps) == 10 and np.allclose(gaps, gaps.mean(), rtol=0.15)


def test_an_sdedit_start_begins_at_its_timestep(start_noise):
    diffusion = process()
    seen = []
    dpm_solver_sample(diffusion, gaussian_oracle(diffusion), start_noise, steps=6, t_start=400, clip_x0=False,
                      callback=lambda i, t, x, x0: seen.append(t))
    assert seen[0] == 400 and seen[-1] == 0 and len(seen) == 6
    out = dpm_solver_sample(diffusion, gaussian_oracle(diffusion), start_noise, steps=60, t_start=400, clip_x0=False)
    torch.testing.assert_close(out, exact_solution(diffusion, start_noise, 400), rtol=0, atol=2e-3)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m"])
def test_the_sampling_entry_runs_each_variant(start_noise, sampler):
    diffusion = process()

    class Oracle(torch.nn.Module):
        def forward(self, x, t, cond=None, drop_cond=None):
            return gaussian_oracle(diffusion)(x, t)

    spec = SamplingSpec(sampler, 20, clip_x0=False)
    out = sample(Oracle(), diffusion, start_noise, {}, spec, generator=torch.Generator().manual_seed(1))
    if sampler == "dpmpp_2m_sde":
        assert abs(float(out.mean()) - MEAN) < 0.05 and abs(float(out.std()) - STD) < 0.05
    else:
        assert float((out - exact_solution(diffusion, start_noise, 999)).abs().max()) < 0.03


def test_bad_arguments_are_refused():
    diffusion = process()
    x_T = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        dpm_solver_sample(diffusion, gaussian_oracle(diffusion), x_T, order=3, sde=True)
    with pytest.raises(ValueError, match="spacing must be one of"):
        SamplingSpec("dpmpp_2m", 10, spacing="quadratic")
    with pytest.raises(ValueError, match="dpmpp_2m cannot take 2000 steps out of 1000"):
        SamplingSpec("dpmpp_2m", 2000).check_fits(1000)


def test_ddpm_reference_is_untouched_by_the_new_entry(start_noise):
    diffusion = process()
    spec = SamplingSpec("ddpm", 1000)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, cond=None, drop_cond=None):
            return gaussian_oracle(diffusion)(x, t)

    a = sample(Oracle(), diffusion, start_noise[:8], {}, spec, generator=torch.Generator().manual_seed(2))
    b = ddpm_sample(diffusion, gaussian_oracle(diffusion), start_noise[:8], generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)

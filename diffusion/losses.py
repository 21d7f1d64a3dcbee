"""Likelihood terms of the variational bound: the Gaussian KL and the discretized Gaussian decoder likelihood."""
from __future__ import annotations

import math

import torch

# 8-bit data mapped to [-1, 1]: 256 bins of width 2/255 centred on k/127.5 - 1.
BIN_HALF_WIDTH = 1.0 / 255.0
EDGE = 1.0 - BIN_HALF_WIDTH
# Smallest gap allowed between two log-CDFs, so the log of a vanishing bin mass stays finite.
_MIN_LOG_GAP = 1e-300


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats, broadcasting its arguments."""
    reference = next((value for value in (mean1, logvar1, mean2, logvar2) if torch.is_tensor(value)), None)
    if reference is None:
        raise ValueError("normal_kl needs at least one tensor argument among mean1, logvar1, mean2, logvar2")
    mean1, logvar1, mean2, logvar2 = (
        value if torch.is_tensor(value) else torch.tensor(value, dtype=reference.dtype, device=reference.device)
        for value in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF by the tanh approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _log_mass_between(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower <= upper, computed in the tail on the side away from the mode."""
    below_mode = (lower + upper) <= 0
    # Below the mode both CDFs are small: subtract them in log space. Above it, use Phi(b) - Phi(a) = Phi(-a) - Phi(-b).
    big = torch.where(below_mode, torch.special.log_ndtr(upper), torch.special.log_ndtr(-lower))
    small = torch.where(below_mode, torch.special.log_ndtr(lower), torch.special.log_ndtr(-upper))
    gap = (small - big).clamp(max=-_MIN_LOG_GAP)
    return big + torch.log(-torch.expm1(gap))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data x in [-1, 1] under a Gaussian integrated over its bin.

    Each value owns the bin [x - 1/255, x + 1/255]; the lowest bin extends to -inf and the highest to +inf,
    so the probabilities of the 256 values sum to one. Computed in float64 with exact log-CDFs, so far-off
    bins stay finite; returned in the dtype of x.
    """
    if x.shape != means.shape or x.shape != log_scales.shape:
        raise ValueError(
            f"x, means and log_scales must share one shape, got {tuple(x.shape)}, "
            f"{tuple(means.shape)} and {tuple(log_scales.shape)}"
        )
    values, centres, scales = x.double(), means.double(), log_scales.double()
    inv_scale = torch.exp(-scales)
    lower = (values - BIN_HALF_WIDTH - centres) * inv_scale
    upper = (values + BIN_HALF_WIDTH - centres) * inv_scale
    log_probs = torch.where(
        values < -EDGE,
        torch.special.log_ndtr(upper),
        torch.where(values > EDGE, torch.special.log_ndtr(-lower), _log_mass_between(lower, upper)),
    )
    return log_probs.to(x.dtype)

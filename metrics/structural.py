"""SSIM and multi-scale SSIM of image batches in [-1, 1], and per-pair scoring over real and generated sets.

Images are passed in the toolkit's range [-1, 1] and scored in [0, 1] with data range 1, the standard convention
(SSIM's luminance term is not shift-invariant, so scoring [-1, 1] with data range 2 gives other numbers): the
result equals scikit-image's `structural_similarity` on the uint8 images with `data_range=255`.

Default settings (those of Wang et al. 2004 and of scikit-image's `structural_similarity` with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False`): local statistics are weighted by a Gaussian of
sigma 1.5 truncated at 3.5 sigma (11 taps), images are extended by mirroring at the border (scipy's "reflect", the
edge pixel repeated), variances are population variances, K1 = 0.01, K2 = 0.03, and a strip of (win_size - 1) // 2
pixels along each border is left out of the mean. As in scikit-image, with the Gaussian window `win_size` sets
only that strip and the smallest image allowed; the Gaussian itself always has 11 taps. scikit-image's call
without `win_size` equals `win_size=11`. With `gaussian=False` the window is a uniform win_size x win_size box
(scikit-image's `uniform_filter`). `sample_covariance=True` multiplies variances and covariance by
NP / (NP - 1) with NP = win_size ** 2, as scikit-image's `use_sample_covariance=True` does for either window.
Colour images are scored per channel and the channels averaged.

`ms_ssim_pooled` follows torchmetrics' `multiscale_structural_similarity_index_measure` instead (see there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError, DataError

SIGMA = 1.5
TRUNCATE = 3.5
K1 = 0.01
K2 = 0.03
# Wang, Simoncelli and Bovik (2003): weights of scales 1 (finest) to 5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_DEFAULT_WINDOW = 11
SSIM_DEFAULT_WINDOW = 11
# torchmetrics needs height // 16 > 10 (and the same of the width) for 5 scales with an 11 px kernel.
POOLED_MIN_SIZE = MS_SSIM_DEFAULT_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def gaussian_taps(sigma: float = SIGMA, truncate: float = TRUNCATE) -> Tensor:
    """The normalised 1-D Gaussian that scipy.ndimage uses for this sigma and truncation (float64)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def uniform_taps(size: int) -> Tensor:
    """The 1-D box of scipy's `uniform_filter` of this (odd) size (float64)."""
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def _border_index(size: int, pad: int, device: torch.device, repeat_edge: bool) -> Tensor:
    """Indices extending an axis of `size` by `pad` per side by mirroring: with the edge pixel repeated as scipy's
    "reflect" (d c b a | a b c d), or without it as torch's "reflect" padding (d c b | a b c d)."""
    positions = torch.arange(-pad, size + pad, device=device)
    period = 2 * size if repeat_edge else max(2 * size - 2, 1)
    positions = positions % period
    mirrored = (2 * size - 1 if repeat_edge else 2 * size - 2) - positions
    return torch.where(positions < size, positions, mirrored)


def _separable_filter(images: Tensor, taps: Tensor, repeat_edge: bool = True) -> Tensor:
    """Separable filter of (N, C, H, W) images with mirrored borders; output has the input's size."""
    n, c, h, w = images.shape
    pad = taps.numel() // 2
    kernel = taps.to(device=images.device, dtype=images.dtype)
    rows = images.index_select(2, _border_index(h, pad, images.device, repeat_edge))
    rows = F.conv2d(rows.reshape(n * c, 1, h + 2 * pad, w), kernel.view(1, 1, -1, 1))
    cols = rows.index_select(3, _border_index(w, pad, images.device, repeat_edge))
    return F.conv2d(cols, kernel.view(1, 1, 1, -1)).reshape(n, c, h, w)


def _check_pair(x: Tensor, y: Tensor, win_size: int) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"x and y: expected two image batches of one shape (B, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size: expected an odd number >= 3, got {win_size}")


def unit_range(images: Tensor) -> Tensor:
    """Images in [-1, 1] mapped to [0, 1], the range SSIM is scored in (data range 1)."""
    return (images + 1.0) * 0.5


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _ssim_maps(
    x: Tensor, y: Tensor, taps: Tensor, cov_norm: float = 1.0, repeat_edge: bool = True, clamp_variances: bool = False
) -> tuple[Tensor, Tensor]:
    """Full-size maps of luminance * contrast-structure and of contrast-structure of images in [0, 1] (data range 1)."""
    batch = x.shape[0]
    stats = _separable_filter(torch.cat([x, y, x * x, y * y, x * y]), taps, repeat_edge).split(batch)
    mu_x, mu_y, xx, yy, xy = stats
    var_x = cov_norm * (xx - mu_x * mu_x)
    var_y = cov_norm * (yy - mu_y * mu_y)
    cov = cov_norm * (xy - mu_x * mu_y)
    if clamp_variances:
        var_x, var_y = var_x.clamp_min(0.0), var_y.clamp_min(0.0)
    c1, c2 = K1**2, K2**2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance * contrast_structure, contrast_structure


def _ssim_terms(
    x: Tensor, y: Tensor, win_size: int, gaussian: bool = True, sample_covariance: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-channel means over the cropped maps of luminance * contrast-structure and of contrast-structure, (B, C),
    of images in [0, 1]."""
    h, w = x.shape[-2:]
    if min(h, w) < win_size:
        raise DataError(f"images of {h}x{w} px are smaller than the {win_size} px SSIM window")
    compute = _compute_dtype(x)
    taps = gaussian_taps() if gaussian else uniform_taps(win_size)
    points = win_size**2
    cov_norm = points / (points - 1) if sample_covariance else 1.0
    full, cs = _ssim_maps(x.to(compute), y.to(compute), taps, cov_norm)
    crop = (win_size - 1) // 2
    inner = (..., slice(crop, h - crop), slice(crop, w - crop))
    return full[inner].flatten(2).double().mean(2), cs[inner].flatten(2).double().mean(2)


def ssim(
    x: Tensor, y: Tensor, win_size: int = SSIM_DEFAULT_WINDOW, gaussian: bool = True, sample_covariance: bool = False
) -> Tensor:
    """SSIM of each pair of images in two (B, C, H, W) batches in [-1, 1], as a float64 Tensor[B], scored in [0, 1].

    Equals scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=gaussian,
    sigma=1.5, use_sample_covariance=sample_covariance, win_size=win_size)` on the uint8 images (see the module
    docstring).
    """
    _check_pair(x, y, win_size)
    full, _ = _ssim_terms(unit_range(x), unit_range(y), win_size, gaussian, sample_covariance)
    return full.mean(1)


def fitting_scales(size: int, win_size: int = MS_SSIM_DEFAULT_WINDOW, limit: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many scales (at most `limit`) keep a full window at the coarsest one, halving the size at each scale."""
    scales = 0
    while scales < limit and size // 2**scales >= win_size:
        scales += 1
    return scales


def ms_ssim(
    x: Tensor,
    y: Tensor,
    scales: int | None = None,
    win_size: int = MS_SSIM_DEFAULT_WINDOW,
    weights: tuple[float, ...] | None = None,
) -> Tensor:
    """Multi-scale SSIM of each pair of images in two (B, C, H, W) batches in [-1, 1], as a float64 Tensor[B],
    scored in [0, 1] with data range 1.

    Scale 1 is the image itself and each further scale halves it by 2x2 average pooling. Contrast-structure
    enters at every scale and luminance at the coarsest only; each term is clamped at 0 before its weight is
    applied, per channel, and the channels are averaged. The standard five scales with an 11 px window need
    images of at least 176 px, so by default as many scales are used as keep a full window at the coarsest one
    (3 for 64 px patches, 2 for 32 px) and the standard weights of those scales are renormalised to sum to 1.
    """
    _check_pair(x, y, win_size)
    height, width = x.shape[-2:]
    available = fitting_scales(min(height, width), win_size, limit=max(scales or 0, len(MS_SSIM_WEIGHTS)))
    if available == 0:
        raise DataError(f"ms_ssim: images of {height}x{width} px are smaller than the {win_size} px window")
    if scales is None:
        scales = min(available, len(MS_SSIM_WEIGHTS))
    if scales < 1 or scales > available:
        raise ValueError(
            f"ms_ssim: scales={scales} does not fit images of {height}x{width} px with a {win_size} px window "
            f"(at most {available})"
        )
    if weights is None:
        if scales > len(MS_SSIM_WEIGHTS):
            raise ValueError(f"ms_ssim: pass weights for {scales} scales (standard weights exist for up to 5)")
        weights = MS_SSIM_WEIGHTS[:scales]
    if len(weights) != scales or any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise ValueError(f"ms_ssim: weights must be {scales} non-negative numbers with a positive sum, got {weights}")
    total = math.fsum(weights)
    terms = []
    x, y = unit_range(x), unit_range(y)
    for scale in range(scales):
        full, cs = _ssim_terms(x, y, win_size)
        terms.append(full if scale == scales - 1 else cs)
        if scale < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(terms).clamp_min(0.0)
    exponents = torch.tensor([weight / total for weight in weights], dtype=stacked.dtype, device=stacked.device)
    return (stacked ** exponents.view(-1, 1, 1)).prod(0).mean(1)


def ms_ssim_pooled(x: Tensor, y: Tensor) -> Tensor:
    """Multi-scale SSIM of each pair in two (B, C, H, W) batches in [-1, 1] as torchmetrics'
    `MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0)` computes it (float64 Tensor[B], images in [0, 1]).

    Five scales with the standard weights as they are (their sum is 1.0001) and an 11-tap Gaussian (sigma 1.5);
    borders extended by torch's "reflect" padding (the edge pixel not repeated); variances clamped at 0; at each
    scale the maps are averaged over channels and pixels together, then clamped at 0 (normalize="relu") before
    the weights apply. Contrast-structure leaves out a 5 px strip along each border; the coarsest scale's SSIM
    is the mean over its whole map, border included. Images need at least 176 px per side.
    """
    _check_pair(x, y, MS_SSIM_DEFAULT_WINDOW)
    height, width = x.shape[-2:]
    if min(height, width) < POOLED_MIN_SIZE:
        raise DataError(
            f"ms_ssim: images of {height}x{width} px are too small for the torchmetrics convention, which needs at "
            f"least {POOLED_MIN_SIZE}x{POOLED_MIN_SIZE} px (5 scales with an 11 px kernel)"
        )
    compute = _compute_dtype(x)
    x, y = unit_range(x).to(compute), unit_range(y).to(compute)
    taps = gaussian_taps()
    crop = taps.numel() // 2
    terms = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        full, cs = _ssim_maps(x, y, taps, repeat_edge=False, clamp_variances=True)
        if scale == len(MS_SSIM_WEIGHTS) - 1:
            terms.append(full.flatten(1).double().mean(1))
        else:
            terms.append(cs[..., crop:-crop, crop:-crop].flatten(1).double().mean(1))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(terms).clamp_min(0.0)
    exponents = torch.tensor(MS_SSIM_WEIGHTS, dtype=stacked.dtype, device=stacked.device)
    return (stacked ** exponents.view(-1, 1)).prod(0)


@dataclass(frozen=True)
class SSIMConvention:
    """How SSIM and MS-SSIM are scored: the SSIM window (`window` px; with the Gaussian it sets the border strip
    left out), its weighting, the covariance estimate, and which MS-SSIM (`wang`: `ms_ssim`, per channel with the
    scales that fit; `torchmetrics`: `ms_ssim_pooled`). Data range is always 1 on images in [0, 1]."""

    preset: str = "default"
    window: int = SSIM_DEFAULT_WINDOW
    gaussian: bool = True
    sample_covariance: bool = False
    ms_ssim: str = "wang"

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ConfigError(f"--ssim_window: expected an odd number >= 3, got {self.window}")
        if self.ms_ssim not in MS_SSIM_CONVENTIONS:
            raise ConfigError(f"ms_ssim convention: expected one of {', '.join(MS_SSIM_CONVENTIONS)}, got {self.ms_ssim!r}")

    def ssim_fn(self) -> ScoreFn:
        return lambda x, y: ssim(x, y, self.window, self.gaussian, self.sample_covariance)

    def ms_ssim_fn(self) -> ScoreFn:
        return MS_SSIM_CONVENTIONS[self.ms_ssim]

    def record(self) -> dict[str, Any]:
        """The convention as flat result fields."""
        return {
            "ssim_preset": self.preset,
            "ssim_window": self.window,
            "ssim_weights": "gaussian_11_sigma_1.5" if self.gaussian else "uniform",
            "ssim_covariance": "sample" if self.sample_covariance else "population",
            "ssim_data_range": 1.0,
            "ms_ssim_convention": self.ms_ssim,
        }


MS_SSIM_CONVENTIONS: dict[str, ScoreFn] = {"wang": ms_ssim, "torchmetrics": ms_ssim_pooled}


def paired_scores(real: Tensor, fake: Tensor, fn: ScoreFn, batch_size: int = 64) -> Tensor:
    """fn(real[i], fake[i]) for every i, computed `batch_size` pairs at a time, as Tensor[N]."""
    if real.shape != fake.shape:
        raise ValueError(
            f"paired_scores: real and fake must have one shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive number, got {batch_size}")
    return torch.cat([fn(real[i : i + batch_size], fake[i : i + batch_size]) for i in range(0, len(real), batch_size)])


def unpaired_scores(
    real: Tensor, fake: Tensor, fn: ScoreFn, pairs: int = 1000, seed: int = 0, batch_size: int = 64
) -> float:
    """Mean of fn(real[i], fake[j]) over `pairs` index pairs drawn uniformly with replacement (seeded)."""
    if real.ndim != 4 or fake.ndim != 4 or real.shape[1:] != fake.shape[1:] or not len(real) or not len(fake):
        raise ValueError(
            f"unpaired_scores: real and fake must be non-empty image batches of one image shape, "
            f"got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if pairs < 1:
        raise ConfigError(f"pairs: expected a positive number, got {pairs}")
    generator = torch.Generator().manual_seed(seed)
    real_index = torch.randint(len(real), (pairs,), generator=generator)
    fake_index = torch.randint(len(fake), (pairs,), generator=generator)
    scores = [
        fn(real[real_index[i : i + batch_size].to(real.device)], fake[fake_index[i : i + batch_size].to(fake.device)])
        for i in range(0, pairs, batch_size)
    ]
    return float(torch.cat(scores).double().mean())

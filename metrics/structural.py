"""SSIM and multi-scale SSIM of image batches in [-1, 1], and per-pair scoring over real and generated sets.

Images are passed in the toolkit's range [-1, 1] and scored in [0, 1] with data range 1, the standard convention
(SSIM's luminance term is not shift-invariant, so scoring [-1, 1] with data range 2 gives other numbers): the
result equals scikit-image's `structural_similarity` on the uint8 images with `data_range=255`.

Settings (those of Wang et al. 2004 and of scikit-image's `structural_similarity` with `gaussian_weights=True,
sigma=1.5, use_sample_covariance=False`): local statistics are weighted by a Gaussian of sigma 1.5 truncated at
3.5 sigma (11 taps), images are extended by mirroring at the border (scipy's "reflect", the edge pixel repeated),
variances are population variances, K1 = 0.01, K2 = 0.03, and a strip of (win_size - 1) // 2 pixels along each
border is left out of the mean. As in scikit-image, `win_size` sets only that strip and the smallest image
allowed; the Gaussian itself always has 11 taps. scikit-image's call without `win_size` equals `win_size=11`.
Colour images are scored per channel and the channels averaged.
"""
from __future__ import annotations

import math
from typing import Callable

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

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def gaussian_taps(sigma: float = SIGMA, truncate: float = TRUNCATE) -> Tensor:
    """The normalised 1-D Gaussian that scipy.ndimage uses for this sigma and truncation (float64)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _symmetric_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Indices extending an axis of `size` by `pad` per side as scipy's "reflect" mode does (d c b a | a b c d)."""
    positions = torch.arange(-pad, size + pad, device=device) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)


def _gaussian_filter(images: Tensor, taps: Tensor) -> Tensor:
    """Separable Gaussian filter of (N, C, H, W) images with mirrored borders; output has the input's size."""
    n, c, h, w = images.shape
    pad = taps.numel() // 2
    kernel = taps.to(device=images.device, dtype=images.dtype)
    rows = images.index_select(2, _symmetric_index(h, pad, images.device))
    rows = F.conv2d(rows.reshape(n * c, 1, h + 2 * pad, w), kernel.view(1, 1, -1, 1))
    cols = rows.index_select(3, _symmetric_index(w, pad, images.device))
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


def _ssim_terms(x: Tensor, y: Tensor, win_size: int) -> tuple[Tensor, Tensor]:
    """Per-channel means over the cropped maps of luminance * contrast-structure and of contrast-structure, (B, C),
    of images in [0, 1]."""
    h, w = x.shape[-2:]
    if min(h, w) < win_size:
        raise DataError(f"images of {h}x{w} px are smaller than the {win_size} px SSIM window")
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(compute), y.to(compute)
    data_range = 1.0
    taps = gaussian_taps()
    batch = x.shape[0]
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), taps).split(batch)
    mu_x, mu_y, xx, yy, xy = stats
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    crop = (win_size - 1) // 2
    inner = (..., slice(crop, h - crop), slice(crop, w - crop))
    full = (luminance * contrast_structure)[inner].flatten(2).double().mean(2)
    cs = contrast_structure[inner].flatten(2).double().mean(2)
    return full, cs


def ssim(x: Tensor, y: Tensor, win_size: int = 7) -> Tensor:
    """SSIM of each pair of images in two (B, C, H, W) batches in [-1, 1], as a float64 Tensor[B], scored in [0, 1].

    Equals scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, win_size=win_size)` on the uint8 images (see the module docstring).
    """
    _check_pair(x, y, win_size)
    full, _ = _ssim_terms(unit_range(x), unit_range(y), win_size)
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

"""SSIM window conventions against scikit-image, and MS-SSIM against torchmetrics (a test-only reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from common.errors import ConfigError, DataError
from metrics.structural import MS_SSIM_WEIGHTS, SSIMConvention, ms_ssim, ms_ssim_pooled, ssim


def tissue_like_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 RGB batches (2, size, size, 3): smooth blobs with texture, and a noisy, shifted copy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], -1)
    images = 150 + 60 * base[None] + rng.normal(0, 20, (2, size, size, 3))
    noisy = np.roll(images, 1, axis=2) + rng.normal(0, 25, images.shape)
    return (np.clip(images, 0, 255).astype(np.uint8), np.clip(noisy, 0, 255).astype(np.uint8))


def toolkit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float64 (B, 3, H, W) in [-1, 1], as tools.evaluate reads images."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0


def reference_ssim(a: np.ndarray, b: np.ndarray, **settings) -> torch.Tensor:
    return torch.tensor([structural_similarity(x, y, channel_axis=-1, data_range=255, **settings) for x, y in zip(a, b)],
                        dtype=torch.float64)


@pytest.mark.parametrize(
    "window, gaussian, sample_covariance",
    [(3, False, True), (7, True, False), (11, True, False), (5, False, False), (9, True, True)],
)
def test_ssim_settings_equal_scikit_image(window: int, gaussian: bool, sample_covariance: bool) -> None:
    a, b = tissue_like_pair(40, seed=window)
    ours = ssim(toolkit_range(a), toolkit_range(b), window, gaussian, sample_covariance)
    expected = reference_ssim(a, b, win_size=window, gaussian_weights=gaussian, sigma=1.5,
                              use_sample_covariance=sample_covariance)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_default_convention_is_scikit_images_gaussian_with_population_covariance() -> None:
    a, b = tissue_like_pair(32, seed=1)
    score = SSIMConvention().ssim_fn()(toolkit_range(a), toolkit_range(b))
    # Wang et al.'s settings are scikit-image's with gaussian_weights=True and no win_size (which then means 11).
    expected = reference_ssim(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    torch.testing.assert_close(score, expected, atol=1e-6, rtol=0)
    # The kpc SSIM (win_size 3, uniform, sample covariance) gives another number on the same images.
    kpc = SSIMConvention("kpc", 3, False, True, "torchmetrics").ssim_fn()(toolkit_range(a), toolkit_range(b))
    torch.testing.assert_close(kpc, reference_ssim(a, b, win_size=3, use_sample_covariance=True), atol=1e-6, rtol=0)
    assert (kpc - score).abs().min() > 1e-3


def test_float32_images_agree_with_scikit_image_too() -> None:
    a, b = tissue_like_pair(24, seed=2)
    ours = ssim(toolkit_range(a).float(), toolkit_range(b).float(), 3, False, True)
    torch.testing.assert_close(ours, reference_ssim(a, b, win_size=3, use_sample_covariance=True), atol=1e-5, rtol=0)


def test_pooled_ms_ssim_equals_torchmetrics() -> None:
    a, b = tissue_like_pair(192, seed=3)
    x, y = toolkit_range(a)[..., :180], toolkit_range(b)[..., :180]
    expected = multiscale_structural_similarity_index_measure((y + 1) / 2, (x + 1) / 2, data_range=1.0, reduction="none")
    torch.testing.assert_close(ms_ssim_pooled(x, y), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ms_ssim_pooled(x.float(), y.float()), expected, atol=1e-5, rtol=0)
    assert 0.05 < float(expected.min()) < 0.95


def test_pooled_ms_ssim_needs_176_px_as_torchmetrics() -> None:
    a, _ = tissue_like_pair(176, seed=4)
    x = toolkit_range(a)
    assert ms_ssim_pooled(x, x).tolist() == pytest.approx([1.0, 1.0])
    multiscale_structural_similarity_index_measure((x + 1) / 2, (x + 1) / 2, data_range=1.0)
    small = x[..., :175, :]
    with pytest.raises(ValueError, match="the image height must be larger"):
        multiscale_structural_similarity_index_measure((small + 1) / 2, (small + 1) / 2, data_range=1.0)
    with pytest.raises(DataError, match="at least 176x176 px"):
        ms_ssim_pooled(small, small)


def test_default_ms_ssim_equals_torchmetrics_in_its_contrast_structure_scales() -> None:
    """On one channel, with the same weights and the coarsest-scale SSIM left out (weight 0), the two agree: what
    differs is only that torchmetrics averages the coarsest SSIM map with its border and does not renormalise."""
    a, b = tissue_like_pair(192, seed=5)
    x, y = toolkit_range(a)[:, :1], toolkit_range(b)[:, :1]
    weights = MS_SSIM_WEIGHTS[:4] + (0.0,)
    betas = tuple(w / sum(weights) for w in weights)
    expected = multiscale_structural_similarity_index_measure((y + 1) / 2, (x + 1) / 2, data_range=1.0,
                                                              reduction="none", betas=betas)
    torch.testing.assert_close(ms_ssim(x, y, scales=5, weights=weights), expected, atol=1e-6, rtol=0)
    full_default = ms_ssim(x, y)
    full_torchmetrics = multiscale_structural_similarity_index_measure((y + 1) / 2, (x + 1) / 2, data_range=1.0,
                                                                       reduction="none")
    assert (full_default - full_torchmetrics).abs().max() < 1e-2


def test_convention_rejects_even_windows_and_records_itself() -> None:
    with pytest.raises(ConfigError, match="--ssim_window"):
        SSIMConvention(window=4)
    record = SSIMConvention("kpc", 3, False, True, "torchmetrics").record()
    assert record == {"ssim_preset": "kpc", "ssim_window": 3, "ssim_weights": "uniform", "ssim_covariance": "sample",
                      "ssim_data_range": 1.0, "ms_ssim_convention": "torchmetrics"}

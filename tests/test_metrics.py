"""Image-quality metrics: SSIM against scikit-image, MS-SSIM, FID/KID/precision-recall, and the feature networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import structural_similarity
from torchvision.models import inception_v3

from recipes.classifier import ResNetClassifier
from metrics import (
    ClassifierFeatures,
    EfficientNetLite0Features,
    InceptionFeatures,
    extract,
    fid,
    frechet_distance,
    kid,
    kid_subset_size,
    ms_ssim,
    paired_scores,
    precision_recall,
    ssim,
    unpaired_scores,
)


def structured_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth blobs on a gradient with stripes, in [-1, 1]: images with real structure at several scales."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for _ in range(n):
        centre = torch.rand(3, 2, generator=generator) * 1.4 - 0.7
        blobs = sum(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05) for cx, cy in centre)
        phase = float(torch.rand(1, generator=generator)) * 6.0
        stripes = 0.3 * torch.sin(12 * xx + phase)
        channels = [blobs - 0.5 + c * 0.2 * yy + stripes * (c == 1) for c in range(3)]
        images.append(torch.stack(channels).clamp(-1, 1))
    return torch.stack(images)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    return ((images.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float64 in [-1, 1], the toolkit's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0


def skimage_ssim(x: np.ndarray, y: np.ndarray, **kwargs) -> torch.Tensor:
    """scikit-image's SSIM of uint8 (B, H, W, C) image pairs: Gaussian window, population statistics."""
    return torch.tensor(
        [
            structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, **kwargs)
            for a, b in zip(x, y)
        ],
        dtype=torch.float64,
    )


# --- SSIM / MS-SSIM -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_equals_scikit_image(size: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(size)
    if kind == "random":
        x = torch.rand(3, 3, size, size, generator=generator) * 2 - 1
    else:
        x = structured_images(3, size, seed=size)
    y = (x + 0.25 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    y[0] = torch.flip(x[0], dims=[-1])
    a, b = to_uint8(x), to_uint8(y)
    torch.testing.assert_close(ssim(from_uint8(a), from_uint8(b), win_size=7), skimage_ssim(a, b, win_size=7), atol=1e-6, rtol=0)
    # scikit-image's call without win_size crops the 11-tap filter's radius: win_size=11 here.
    torch.testing.assert_close(ssim(from_uint8(a), from_uint8(b), win_size=11), skimage_ssim(a, b), atol=1e-6, rtol=0)


def test_ssim_is_scored_in_the_unit_range_not_in_minus_one_to_one() -> None:
    """The luminance term is not shift-invariant: [-1, 1] with data range 2 would give another number."""
    dark = torch.full((1, 3, 16, 16), -0.9, dtype=torch.float64)
    darker = torch.full((1, 3, 16, 16), -0.95, dtype=torch.float64)
    mu_x, mu_y, c1 = 0.05, 0.025, 0.01 ** 2  # the same images in [0, 1]
    expected = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    assert ssim(dark, darker).item() == pytest.approx(expected)
    assert skimage_ssim(to_uint8(dark), to_uint8(darker)).item() == pytest.approx(ssim(from_uint8(to_uint8(dark)), from_uint8(to_uint8(darker))).item(), abs=1e-9)


def test_ssim_of_identical_images_is_one_and_window_must_fit() -> None:
    x = structured_images(2, 32, seed=0)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="5x5 px"):
        ssim(x[..., :5, :5], x[..., :5, :5])
    with pytest.raises(ValueError, match="win_size"):
        ssim(x, x, win_size=6)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise() -> None:
    x = structured_images(2, 64, seed=1)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    scores = torch.stack([ms_ssim(x, x + level * noise) for level in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)])
    assert (scores[1:] < scores[:-1]).all(), scores
    assert scores[-1].max() < 0.7


def test_ms_ssim_uses_the_scales_that_fit_with_renormalised_weights() -> None:
    x = structured_images(2, 64, seed=3)
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(-1, 1)
    # 64 px with an 11 px window: scales of 64, 32 and 16 px, standard weights of the first three renormalised.
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(x, y, scales=3, weights=(0.0448, 0.2856, 0.3001)))
    # One scale with weight 1 is plain SSIM.
    torch.testing.assert_close(ms_ssim(x, y, scales=1), ssim(x, y, win_size=11))
    # The scales differ: dropping the coarsest one changes the score.
    assert not torch.allclose(ms_ssim(x, y, scales=2), ms_ssim(x, y, scales=3))


def test_ms_ssim_rejects_images_too_small_for_the_scales() -> None:
    x = structured_images(1, 64, seed=5)
    with pytest.raises(ValueError, match="64x64 px"):
        ms_ssim(x, x, scales=4)
    small = x[..., :9, :9]
    with pytest.raises(ValueError, match="9x9 px"):
        ms_ssim(small, small)
    assert ms_ssim(small, small, win_size=7).item() == pytest.approx(1.0)


def test_paired_and_unpaired_scores() -> None:
    real = structured_images(5, 32, seed=6)
    fake = (real + 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    paired = paired_scores(real, fake, ssim, batch_size=2)
    torch.testing.assert_close(paired, ssim(real, fake))
    unpaired = unpaired_scores(real, fake, ssim, pairs=40, seed=0, batch_size=16)
    assert unpaired == unpaired_scores(real, fake, ssim, pairs=40, seed=0)
    # Most random pairs are different images: far less similar than the matching pairs.
    assert unpaired < paired.mean().item() - 0.2
    with pytest.raises(ValueError, match="one shape"):
        paired_scores(real, fake[:3], ssim)


# --- distribution distances ------------------------------------------------------------------------------------


def test_frechet_distance_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12))
    b = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)
    assert fid(a, b) == pytest.approx(expected, rel=1e-8)
    assert fid(b, a) == pytest.approx(fid(a, b), rel=1e-8)
    assert abs(fid(a, a)) < 1e-8


def test_frechet_distance_of_singular_covariances_is_finite() -> None:
    rng = np.random.default_rng(1)
    # 5 samples in 20 dimensions: rank-deficient covariances.
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
    value = fid(a, b)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(a, b[:, :10])


def test_kid_is_unbiased_and_detects_a_shift() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    mean, std = kid(a, b, subsets=20, subset_size=50, seed=0)
    # A biased (V-statistic) estimate would sit near 2 (E k(x,x) - E k(x,y)) / m ~ 0.27, far above its std.
    assert abs(mean) < std
    shifted_mean, shifted_std = kid(a, b + 0.5, subsets=20, subset_size=50, seed=0)
    assert shifted_mean > 3 * shifted_std and shifted_mean > 10 * abs(mean)
    assert kid(a, b, subsets=3, subset_size=5000) == kid(a, b, subsets=3, subset_size=200)


def test_kid_subsets_are_random_draws_even_when_the_sets_are_not_larger_than_a_subset() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert kid_subset_size(300, 300, 1000) == 150 and kid_subset_size(5000, 3000, 1000) == 1000
    _, std = kid(a, b, subset_size=1000)
    assert std > 1e-6  # the whole set every time would give exactly 0


def test_precision_recall() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 8))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, rng.normal(size=(200, 8)) + 100.0, k=3) == (0.0, 0.0)
    # Four well-separated 2-D modes; the fake set draws from two of them only.
    modes = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    real_modes = np.concatenate([mode + rng.normal(size=(150, 2)) for mode in modes])
    fake_half = np.concatenate([mode + rng.normal(size=(150, 2)) for mode in modes[:2]])
    precision, recall = precision_recall(real_modes, fake_half, k=3)
    assert precision > 0.9
    assert 0.4 < recall <= 0.5


# --- feature networks ---------------------------------------------------------------------------------------


def test_efficientnet_lite0_features_load_offline_and_are_deterministic() -> None:
    extractor = EfficientNetLite0Features()
    images = structured_images(2, 32, seed=8)
    first = extractor(images)
    assert first.shape == (2, 1280) and torch.isfinite(first).all()
    torch.testing.assert_close(extractor(images), first)
    assert not torch.allclose(first[0], first[1])
    assert extractor.comparable_with_published is False and not extractor.training
    array = extract(extractor, [images[:1], {"image": images[1:]}], "cpu")
    assert array.shape == (2, 1280) and array.dtype == np.float64
    np.testing.assert_allclose(array, first.double().numpy(), atol=1e-5)


def test_inception_features_from_a_local_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    extractor = InceptionFeatures(path)
    features = extractor(structured_images(2, 32, seed=9))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert extractor.comparable_with_published is False
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InceptionFeatures(missing)


def test_classifier_features_are_the_input_of_the_final_layer() -> None:
    torch.manual_seed(0)
    model = ResNetClassifier("resnet18").eval()
    extractor = ClassifierFeatures(model)
    images = structured_images(3, 32, seed=10)
    features = extractor(images)
    assert features.shape == (3, 512) and extractor.dim == 512
    head = model.backbone.fc
    torch.testing.assert_close(head(features).squeeze(1), model(images))
    assert not head._forward_pre_hooks

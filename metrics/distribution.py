"""Distances between sets of image features: Frechet distance (FID), kernel inception distance (KID), and
k-nearest-neighbour precision and recall (Kynkaanniemi et al. 2019). Features are (N, D) arrays."""
from __future__ import annotations

import sys
import warnings

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from common.errors import ConfigError, DataError

# Largest imaginary part of the diagonal of sqrt(sigma1 sigma2) that is treated as rounding error.
IMAGINARY_TOLERANCE = 1e-3
# Rows of query points compared against all manifold points at once in precision/recall.
DISTANCE_CHUNK = 1024
SINGULAR_NOTE = ("note: covariance near-singular (fewer images than feature dimensions?); "
                 "added {eps:g} * I as pytorch-fid does")


def _as_features(feats: np.ndarray, argument: str, min_rows: int = 2) -> np.ndarray:
    array = np.asarray(feats, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < min_rows or array.shape[1] < 1:
        raise DataError(
            f"{argument}: expected a 2-D (N, D) feature array with N >= {min_rows}, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise DataError(f"{argument}: features contain NaN or infinite values")
    return array


def _check_same_dim(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feats_real and feats_fake: feature sizes differ ({real.shape[1]} vs {fake.shape[1]})")


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) between two Gaussians.

    When the matrix square root of the product is not finite or scipy finds the product singular, eps * I is
    added to both covariances and the root taken again, with a one-line note on stderr (as pytorch-fid and
    clean-fid do; the traces are then those of the offset covariances too, so identical sets still score 0);
    imaginary parts left by rounding are dropped, larger ones are an error.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(mu, dtype=np.float64)) for mu in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, dtype=np.float64)) for sigma in (sigma1, sigma2))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: expected means of shape ({dim},) and covariances of ({dim}, {dim}), got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    root, singular = _quiet_sqrtm(sigma1 @ sigma2)
    if singular or not np.isfinite(root).all():
        print(SINGULAR_NOTE.format(eps=eps), file=sys.stderr)
        offset = eps * np.eye(dim)
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        root, _ = _quiet_sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(root):
        largest = np.abs(np.diagonal(root).imag).max()
        if largest > IMAGINARY_TOLERANCE:
            raise DataError(f"frechet_distance: sqrt(sigma1 sigma2) has imaginary parts up to {largest:.3g}")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def _quiet_sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's matrix square root, and whether scipy warned that the matrix is singular (the warning is kept quiet)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    return root, any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)


def gaussian_statistics(feats: np.ndarray, argument: str = "feats") -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features."""
    array = _as_features(feats, argument)
    return array.mean(0), np.atleast_2d(np.cov(array, rowvar=False))


def fid(feats_real: np.ndarray, feats_fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets."""
    mu1, sigma1 = gaussian_statistics(feats_real, "feats_real")
    mu2, sigma2 = gaussian_statistics(feats_fake, "feats_fake")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feats_real and feats_fake: feature sizes differ ({mu1.shape[0]} vs {mu2.shape[0]})")
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3 (diagonal terms of k(x, x), k(y, y) left out)."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid_subset_size(n_real: int, n_fake: int, subset_size: int) -> int:
    """Rows per KID subset: `subset_size`, or half the smaller set when that set is not larger than it (so subsets
    are random draws, not the whole set again and again)."""
    smaller = min(n_real, n_fake)
    return subset_size if smaller > subset_size else max(2, smaller // 2)


def kid(
    feats_real: np.ndarray, feats_fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance: mean and std of the unbiased polynomial-kernel MMD^2 over random subsets.

    100 subsets by default (as torchmetrics and clean-fid); each draws `kid_subset_size` rows without replacement
    from each set (torchmetrics and clean-fid take the whole smaller set when it has at most `subset_size` rows,
    which makes every subset the same and the std zero).
    """
    real = _as_features(feats_real, "feats_real")
    fake = _as_features(feats_fake, "feats_fake")
    _check_same_dim(real, fake)
    if subsets < 1:
        raise ConfigError(f"subsets: expected a positive number, got {subsets}")
    if subset_size < 2:
        raise ConfigError(f"subset_size: expected at least 2, got {subset_size}")
    size = kid_subset_size(len(real), len(fake), subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for subset in range(subsets):
        real_rows = rng.choice(len(real), size, replace=False)
        fake_rows = rng.choice(len(fake), size, replace=False)
        values[subset] = _polynomial_mmd2(real[real_rows], fake[fake_rows])
    return float(values.mean()), float(values.std())


def _kth_neighbour_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance of every point to its k-th nearest other point of the same set."""
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(feats).kneighbors(feats)
    return distances[:, k]


def _share_inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of query points within radii[j] of at least one centres[j]."""
    inside = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), DISTANCE_CHUNK):
        distances = cdist(queries[start : start + DISTANCE_CHUNK], centres)
        inside[start : start + DISTANCE_CHUNK] = (distances <= radii[None, :]).any(1)
    return float(inside.mean())


def precision_recall(feats_real: np.ndarray, feats_fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall: precision is the share of fake features inside the real k-NN manifold
    (within the k-th neighbour radius of some real feature), recall the share of real features inside the
    fake manifold."""
    if k < 1:
        raise ConfigError(f"k: expected a positive number, got {k}")
    real = _as_features(feats_real, "feats_real", min_rows=k + 1)
    fake = _as_features(feats_fake, "feats_fake", min_rows=k + 1)
    _check_same_dim(real, fake)
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k))
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall

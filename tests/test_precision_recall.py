"""k-NN precision and recall (Kynkaanniemi et al. 2019) against known answers and a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import DataError
from metrics.distribution import precision_recall


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """The reference algorithm written out: radius = distance to the k-th nearest other point of the same set."""
    def radii(points: np.ndarray) -> np.ndarray:
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself

    def share_inside(queries: np.ndarray, centres: np.ndarray) -> float:
        distances = np.linalg.norm(queries[:, None] - centres[None], axis=-1)
        return float((distances <= radii(centres)[None]).any(1).mean())

    return share_inside(fake, real), share_inside(real, fake)


def test_identical_sets_give_one_and_one() -> None:
    feats = np.random.default_rng(0).standard_normal((30, 16))
    assert precision_recall(feats, feats.copy()) == (1.0, 1.0)


def test_far_apart_clusters_give_zero_and_zero() -> None:
    rng = np.random.default_rng(1)
    real = rng.standard_normal((25, 8))
    assert precision_recall(real, rng.standard_normal((25, 8)) + 100.0) == (0.0, 0.0)


def test_small_two_dimensional_case_by_hand() -> None:
    # Real: the corners of the unit square; with k = 1 each radius is 1 (a corner's nearest other corner).
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Fake: a tight pair (radii 0.1) and one far point (radius = its distance to the pair, about 4.2).
    fake = np.array([[0.5, 0.5], [0.5, 0.6], [3.5, 3.5]])
    # Precision: (0.5, 0.5) and (0.5, 0.6) lie within 1 of a corner, (3.5, 3.5) does not -> 2/3.
    # Recall: only the far fake's sphere (radius |(3.5, 3.5) - (0.5, 0.6)| = 4.17) reaches corners:
    # (1, 1) is 3.54 away, (0, 1) and (1, 0) 4.30, (0, 0) 4.95 -> 1/4.
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 3) and recall == pytest.approx(1 / 4)
    assert (precision, recall) == brute_force_precision_recall(real, fake, k=1)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_on_overlapping_sets(k: int) -> None:
    rng = np.random.default_rng(k)
    real = rng.standard_normal((60, 5))
    fake = 0.8 * rng.standard_normal((45, 5)) + 0.7
    result = precision_recall(real, fake, k=k)
    assert result == brute_force_precision_recall(real, fake, k=k)
    assert 0.0 < min(result) < 1.0


def test_float32_features_and_duplicates_keep_the_reference_radii() -> None:
    rng = np.random.default_rng(7)
    real = np.repeat(rng.standard_normal((10, 4)), 2, axis=0).astype(np.float32)
    fake = (real[::2] + 0.05 * rng.standard_normal((10, 4))).astype(np.float32)
    expected = brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64))
    assert precision_recall(real, fake) == expected


def test_too_few_features_for_k_is_a_data_error() -> None:
    with pytest.raises(DataError, match="N >= 4"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)))

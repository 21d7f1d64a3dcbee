"""Batches that mix two sources at a fixed ratio (mitotic vs negative patches, synthetic vs real tiles).

A batch of B holds floor(r * B) items of the mixed-in source, plus one more with probability
r * B - floor(r * B), so every batch is as close to the ratio as it can be and the expected share is exactly r.
"""
from __future__ import annotations

import math

import numpy as np


def mixed_count(ratio: float, batch_size: int, rng: np.random.Generator) -> int:
    """How many of a batch of `batch_size` come from the mixed-in source (draws one number from `rng`)."""
    exact = ratio * batch_size
    return int(math.floor(exact)) + int(rng.random() < exact - math.floor(exact))


def mixed_slots(ratio: float, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """bool per position of a batch, True at the `mixed_count` positions of the mixed-in source (a random
    permutation drawn from `rng` after the count)."""
    count = mixed_count(ratio, batch_size, rng)
    return rng.permutation(batch_size) < count

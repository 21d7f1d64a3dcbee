"""Shared fixtures: the real reference data (when present) and a small synthetic data set."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.synthetic import SyntheticConfig, generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Two 768 px synthetic slides with their SlideRunner database and split file."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(root, SyntheticConfig(num_slides=2, size=768, seed=3), progress=False)
    return root


def tiny_config(synthetic_root: Path, out_dir: Path, **overrides) -> list[str]:
    """CLI arguments of a tiny training run on the synthetic fixture."""
    args = {
        "dataset": "synthetic",
        "data_root": str(synthetic_root),
        "out_dir": str(out_dir),
        "tile_size": 16,
        "batch_size": 4,
        "batch_validation": 8,
        "max_steps": 4,
        "val_every": 2,
        "val_batches": 1,
        "log_every": 1,
        "num_workers": 0,
        "seed": 0,
    }
    args.update(overrides)
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def check_styled_item(item: dict, num_classes: int, num_style: int, size: int) -> None:
    """Assert the styled-sample contract: float32 image and style crops in [-1, 1], a one-hot float32 mask."""
    assert item["image"].shape == (3, size, size) and item["image"].dtype == np.float32
    assert item["semantic"].shape == (num_classes, size, size) and item["semantic"].dtype == np.float32
    assert item["style"].shape == (num_style, 3, size, size) and item["style"].dtype == np.float32
    for key in ("image", "style"):
        assert -1.0 <= item[key].min() and item[key].max() <= 1.0
    assert np.array_equal(item["semantic"].sum(0), np.ones((size, size)))

"""Checkpoint files: one plain dict per file, written atomically and read with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.errors import CheckpointError
from common.files import atomic_path

# 2: the one UNet vocabulary (dim, dim_mults, attention_resolutions, ...) and its parameter names. Version 1
# files (score UNet or SDMUNet) still load: their UNet config and weights are upgraded when the network is built.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename it into place."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read as a checkpoint of this toolkit: {err}") from None
    if not isinstance(payload, dict) or "model_type" not in payload or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} lacks model_type/model: not a checkpoint of this toolkit")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this version reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return payload


def load_local_weights(module: torch.nn.Module, path: Path, option: str, head: tuple[str, ...],
                       unfit: str) -> tuple[list[str], list[str]]:
    """Load the local state dict `path` (given as --`option`) less the keys starting with `head` into `module`
    non-strictly; give the (missing, unexpected) keys. ValueError "--option path {unfit}: ..." where it fails."""
    if not path.is_file():
        raise FileNotFoundError(f"--{option}: file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        missing, unexpected = module.load_state_dict(state, strict=False)
    except (RuntimeError, AttributeError, OSError) as err:
        raise ValueError(f"--{option} {path} {unfit}: {err}") from None
    return missing, unexpected

"""Checkpoint files: one plain dict per file, written atomically and read with weights_only=True."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from common.errors import CheckpointError
from common.files import atomic_path

# 2: the one UNet vocabulary (dim, dim_mults, attention_resolutions, ...) and its parameter names. Version 1
# files (score UNet or SDMUNet) still load: their UNet config and weights are upgraded when the network is built.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def load_failure(err: BaseException) -> str:
    """Why torch.load refused a file, without torch's advice to load it unsafely (weights_only=False)."""
    text = str(err)
    if "weights_only" in text or "Unsupported global" in text:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds Python objects{what} besides tensors and plain data; such files can run code when "
                "loaded, so this toolkit does not load them")
    return text.splitlines()[0] if text else type(err).__name__


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
        raise CheckpointError(f"checkpoint {path} cannot be read as a checkpoint of this toolkit: {load_failure(err)}") from None
    if not isinstance(payload, dict) or "model_type" not in payload or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} lacks model_type/model: not a checkpoint of this toolkit")
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this version reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return payload


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The readable checkpoint of the highest step among the run folder's last.pt, best.pt and step_N.pt files,
    its contents, and one note per newer file that could not be read. CheckpointError when none can be read."""
    found: list[tuple[int, Path, dict[str, Any]]] = []
    notes: list[str] = []
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).is_file():
            try:
                payload = read_checkpoint(run_dir / name)
                found.append((int(payload.get("step", 0)), run_dir / name, payload))
            except CheckpointError as err:
                notes.append(str(err))
    known = max((step for step, _, _ in found), default=-1)
    numbered = sorted(((int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))),
                      reverse=True)
    for step, path in numbered:
        if step <= known:
            break
        try:
            payload = read_checkpoint(path)
        except CheckpointError as err:
            notes.append(str(err))
            continue
        found.append((int(payload.get("step", step)), path, payload))
        break
    if not found:
        detail = "; ".join(notes) if notes else "no last.pt, best.pt or step_N.pt in it"
        raise CheckpointError(f"--resume {run_dir}: no readable checkpoint ({detail})")
    step, path, payload = max(found, key=lambda item: item[0])
    return path, payload, notes


def checked_network(build: Callable[[], torch.nn.Module], weights: Any, path: str | Path, what: str) -> torch.nn.Module:
    """build() with `weights` loaded, after building it on the meta device (no memory) and checking that every
    weight fits: a stored config that asks for another or a huge network is refused before anything is allocated."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as err:  # a config that describes no network fails in many ways
        raise CheckpointError(f"checkpoint {path}: its model_config does not describe a {what} network ({err})") from None
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path}: its weights are a {type(weights).__name__}, not a state dict")
    try:
        skeleton.load_state_dict(weights, assign=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the stored model_config ({err})") from None
    del skeleton
    model = build()
    model.load_state_dict(weights)
    return model


def load_local_weights(module: torch.nn.Module, path: Path, option: str, head: tuple[str, ...],
                       unfit: str) -> tuple[list[str], list[str]]:
    """Load the local state dict `path` (given as --`option`) less the keys starting with `head` into `module`
    non-strictly; give the (missing, unexpected) keys. ValueError "--option path {unfit}: ..." where it fails."""
    if not path.is_file():
        raise FileNotFoundError(f"--{option}: file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"--{option} {path} cannot be read as a PyTorch state dict: {load_failure(err)}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        hint = " (it is a checkpoint of this toolkit: give a plain state dict of the network)" if isinstance(state, dict) and "model_type" in state else ""
        raise ValueError(f"--{option} {path} {unfit}: expected a state dict (parameter names -> tensors), found a "
                         f"{type(state).__name__}{hint}")
    try:
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        missing, unexpected = module.load_state_dict(state, strict=False)
    except (RuntimeError, AttributeError, OSError) as err:
        raise ValueError(f"--{option} {path} {unfit}: {err}") from None
    return missing, unexpected

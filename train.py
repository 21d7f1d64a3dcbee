"""Train a model: `python train.py --model_type <any registered type> --dataset ... [flags]` (see model.MODEL_TYPES).

Multi-GPU / multi-process: `torchrun --nproc_per_node N train.py ...` (DDP; NCCL on GPU, gloo on CPU).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import yaml

from common.checkpoint import read_checkpoint
from common.cli import run_main
from common.errors import ConfigError, UserError
from common.runtime import init_distributed, is_main, pick_device
from dataloader import build_dataloaders
from model import OPTIONS, recipe_for, resolve_config, run_dir_for
from trainer import RESUME_MAY_CHANGE, Trainer


def resume_config(run_dir: Path, cli: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored config of a run, with the few options that may change on resume taken from the CLI."""
    state = read_checkpoint(run_dir / "last.pt")
    config = dict(state["config"])
    for name in cli["explicit"]:
        if name in RESUME_MAY_CHANGE:
            config[name] = cli[name]
        elif cli[name] != config.get(name, OPTIONS.by_name[name].default):
            raise ConfigError(
                f"--{name} differs from the run being resumed ({config.get(name)!r}); "
                f"on --resume only {', '.join(sorted(RESUME_MAY_CHANGE - {'resume'}))} may change"
            )
    config["resume"] = str(run_dir)
    return config, state


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the folders (deepest first) this run created, as long as nothing was written into them."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """Whether `run_dir` holds an earlier run (ConfigError unless --overwrite may replace it)."""
    taken = run_dir.exists() and any(run_dir.iterdir())
    if taken and not overwrite:
        raise ConfigError(f"run folder {run_dir} already exists; pass --overwrite to replace it or --resume {run_dir} to continue")
    return taken


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if check_run_dir(run_dir, overwrite):
        if is_main():
            shutil.rmtree(run_dir)
    if dist.is_initialized():
        dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse, build, train; returns the run folder."""
    cli = resolve_config(argv)
    state = None
    if cli.get("resume"):
        run_dir = Path(cli["resume"])
        config, state = resume_config(run_dir, cli)
    else:
        config = cli
        run_dir = run_dir_for(config)
    device = pick_device(config["device"])
    if config["precision"] == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    init_distributed(device)
    if state is None:
        check_run_dir(run_dir, config["overwrite"])  # before the data is built, so a taken folder fails at once

    member = config.get("ensemble") or 0
    seed = config["seed"] + member
    torch.manual_seed(seed)
    start_batch = state["sampler_position"] if state else 0
    data = build_dataloaders({**config, "seed": seed}, start_batch=start_batch)
    config["tile_size"] = data.tile_size

    created = missing_folders(run_dir)
    if state is None:
        prepare_run_dir(run_dir, config["overwrite"])
    recipe = recipe_for(config["model_type"])
    try:
        built = recipe.build(config, data, state, device, run_dir)
    except UserError:
        if is_main():
            remove_if_empty(created)
        raise
    if is_main():
        (run_dir / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "explicit"}, sort_keys=True))
    trainer = Trainer(config, built.model, config["model_type"], built.model_config, built.task, built.data.train,
                      built.data.val, run_dir, device, state)
    metrics = trainer.fit()
    if is_main():
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"finished at step {trainer.step}; checkpoints in {run_dir}" + (f" (validation: {summary})" if summary else ""))
    return run_dir


def shut_down_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv, cleanup=shut_down_processes)


if __name__ == "__main__":
    sys.exit(main())

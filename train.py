"""Train a model: `python train.py --model_type diffusion|resnet18|resnet34|resnet50 --dataset ... [flags]`.

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

from builders import build_recipe
from checkpoint import CheckpointError, read_checkpoint
from config import BY_NAME, RESUME_MAY_CHANGE, ConfigError, resolve, run_dir_for
from data.annotations import DataError
from dataloader import build_dataloaders
from runtime import init_distributed, is_main, pick_device
from trainer import Trainer, TrainingError

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError)


def resume_config(run_dir: Path, cli: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored config of a run, with the few options that may change on resume taken from the CLI."""
    state = read_checkpoint(run_dir / "last.pt")
    config = dict(state["config"])
    for name in cli["explicit"]:
        if name in RESUME_MAY_CHANGE:
            config[name] = cli[name]
        elif cli[name] != config.get(name, BY_NAME[name].default):
            raise ConfigError(
                f"--{name} differs from the run being resumed ({config.get(name)!r}); "
                f"on --resume only {', '.join(sorted(RESUME_MAY_CHANGE - {'resume'}))} may change"
            )
    config["resume"] = str(run_dir)
    return config, state


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"run folder {run_dir} already exists; pass --overwrite to replace it or --resume {run_dir} to continue"
            )
        if is_main():
            shutil.rmtree(run_dir)
    if dist.is_initialized():
        dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse, build, train; returns the run folder."""
    cli = resolve(argv)
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
        prepare_run_dir(run_dir, config["overwrite"])

    member = config["ensemble"] or 0
    seed = config["seed"] + member
    torch.manual_seed(seed)
    data_config = {**config, "seed": seed}
    start_batch = state["sampler_position"] if state else 0
    data = build_dataloaders(data_config, start_batch=start_batch)
    config["tile_size"] = data_config["tile_size"]

    recipe = build_recipe(config, data, state, device, run_dir)
    if is_main():
        (run_dir / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "explicit"}, sort_keys=True))
    trainer = Trainer(config, recipe.model, config["model_type"], recipe.model_config, recipe.task, recipe.data.train,
                      recipe.data.val, run_dir, device, state)
    metrics = trainer.fit()
    if is_main():
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"finished at step {trainer.step}; checkpoints in {run_dir}" + (f" (validation: {summary})" if summary else ""))
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

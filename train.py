"""Train a model: `python train.py --model_type <any registered type> --dataset ... [flags]` (see model.MODEL_TYPES).

Multi-GPU / multi-process: `torchrun --nproc_per_node N train.py ...` (DDP; NCCL on GPU, gloo on CPU).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import yaml

from common.checkpoint import newest_checkpoint
from common.cli import run_main
from common.errors import ConfigError
from common.files import check_writable_output, remove_ours, write_text_atomic
from common.run_folder import RunLock, check_name_part, check_new_run_dir, open_existing_run, open_new_run
from common.runtime import init_distributed, is_main, pick_device, set_threads
from dataloader import build_dataloaders
from model import OPTIONS, check_stored_config, recipe_for, resolve_config, run_dir_for
from trainer import RESUME_MAY_CHANGE, Trainer


def resume_config(run_dir: Path, cli: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored config of a run's newest good checkpoint, with the few options that may change on resume taken
    from the CLI."""
    path, state, notes = newest_checkpoint(run_dir)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    check_stored_config(path, state)
    print(f"resuming {run_dir} from {path.name} (step {state['step']})", file=sys.stderr)
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


def check_new_run(config: dict[str, Any], run_dir: Path) -> None:
    """Before any data is built: the run folder's name, place and output folder are fine, and a taken folder is
    refused unless --overwrite may replace it."""
    if config.get("date"):
        check_name_part(str(config["date"]), "--date")
    check_new_run_dir(run_dir, Path(config["out_dir"]), config["overwrite"], inputs_of(config))
    check_writable_output(Path(config["out_dir"]), "--out_dir")


def inputs_of(config: dict[str, Any]) -> list[Path]:
    """The existing files and folders named by a run's options (which --overwrite must never delete)."""
    return [Path(v) for k, v in config.items() if k != "out_dir" and isinstance(v, str) and v and Path(v).exists()]


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and not path.is_symlink() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the folders (deepest first) this run created, as long as nothing was written into them."""
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("*.pt"))


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse, build, train; returns the run folder."""
    cli = resolve_config(argv)
    state = None
    lock: RunLock | None = None
    if cli.get("resume"):
        run_dir = Path(cli["resume"])
        if is_main():
            lock = open_existing_run(run_dir)
        try:
            config, state = resume_config(run_dir, cli)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    else:
        config = cli
        run_dir = run_dir_for(config)
        check_new_run(config, run_dir)
    try:
        return train(config, state, run_dir, lock)
    finally:
        if lock is not None:
            lock.release()


def train(config: dict[str, Any], state: dict[str, Any] | None, run_dir: Path, lock: RunLock | None) -> Path:
    """Build the data and the model and run the trainer; a new run's folder is removed again when the run fails
    before its first checkpoint (so a rerun is not blocked)."""
    device = pick_device(config["device"])
    set_threads(config.get("threads"))
    if config["precision"] == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    init_distributed(device)

    member = config.get("ensemble") or 0
    seed = config["seed"] + member
    torch.manual_seed(seed)
    start_batch = state["sampler_position"] if state else 0
    data = build_dataloaders({**config, "seed": seed}, start_batch=start_batch)
    config["tile_size"] = data.tile_size

    new_lock = None
    created = missing_folders(run_dir.parent)
    if state is None:
        if is_main():
            new_lock = open_new_run(run_dir, Path(config["out_dir"]), config["overwrite"], inputs_of(config), "train.py")
            if new_lock.stale_owner:
                print(f"note: {run_dir} held the lock of {new_lock.stale_owner}, which is no longer running; taken over",
                      file=sys.stderr)
        if dist.is_initialized():
            dist.barrier()
    elif lock is not None and lock.stale_owner:
        print(f"note: {run_dir} held the lock of {lock.stale_owner}, which is no longer running; taken over",
              file=sys.stderr)
    try:
        built = recipe_for(config["model_type"]).build(config, data, state, device, run_dir)
        if is_main():
            stored = {k: v for k, v in config.items() if k != "explicit"}
            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(stored, sort_keys=True))
        trainer = Trainer(config, built.model, config["model_type"], built.model_config, built.task, built.data.train,
                          built.data.val, run_dir, device, state)
        metrics = trainer.fit()
    except BaseException:
        if new_lock is not None and not has_checkpoint(run_dir):
            remove_ours(run_dir, "run folder")
            remove_if_empty(created)
        raise
    finally:
        if new_lock is not None:
            new_lock.release()
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

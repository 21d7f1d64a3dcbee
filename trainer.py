"""Trainer: the one training loop for every model type (optimiser, EMA, AMP, accumulation, DDP, checkpoints, logs)."""
from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.checkpoint import save_checkpoint
from common.errors import ConfigError, Stopped, TrainingError
from common.files import atomic_path
from common.options import Option, flag_bool, number
from recipes.tasks import Task

STEP_CHECKPOINT = "step_{:07d}.pt"

O = Option
TRAIN_OPTIONS: tuple[Option, ...] = (
    O("optimizer", str, "adamw", "optimiser", ("adam", "adamw", "sgd"), "train"),
    O("learning_rate", number(float, 0, low_open=True), 1e-4, "peak learning rate (with --scale_lr: per image of a step)", None, "train", ("lr",)),
    O("scale_lr", flag_bool, False, "use --learning_rate x --batch_size x number of processes (GPUs) as the learning rate, as STEDM does", None, "train"),
    O("weight_decay", number(float, 0), 0.0, "weight decay", None, "train"),
    O("lr_schedule", str, "constant", "after warm-up: constant or cosine decay to zero", ("constant", "cosine"), "train"),
    O("warmup_steps", number(int, 0), 0, "linear learning-rate warm-up steps", None, "train"),
    O("batch_size", number(int, 1), 32, "training batch size per process", None, "train"),
    O("batch_validation", number(int, 1), 64, "validation batch size", None, "train"),
    O("max_steps", number(int, 1), 10000, "optimiser steps to train for", None, "train"),
    O("grad_accum", number(int, 1), 1, "micro-batches accumulated per optimiser step (no all-reduce until the last)", None, "train"),
    O("grad_clip", number(float, 0), 1.0, "clip the gradient norm to this (0: off)", None, "train"),
    O("ema_decay", number(float, 0, 1, high_open=True), None, "EMA decay of the weights (0: off; default 0.9995 for diffusion models, 0 for classifiers and autoencoders)", None, "train"),
    O("precision", str, "fp32", "fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA)", ("fp32", "bf16", "fp16"), "train"),
    O("loss_function", str, None, "diffusion and sdm: l1, l2 or huber (default l2); classifiers: bce; segmentation: ce_dice", ("l1", "l2", "huber", "bce", "ce_dice"), "train"),
    O("val_every", number(int, 0), 500, "validate every N steps (0: only at the end)", None, "train"),
    O("val_batches", number(int, 0), 0, "validation batches per validation (0: the whole set)", None, "train"),
    O("save_every", number(int, 0), 0, "also keep a checkpoint every N steps (0: only last and best)", None, "train"),
    O("log_every", number(int, 1), 50, "write training loss to the logs every N steps", None, "train"),
    O("early_stopping", number(int, 0), 0, "stop after N validations without improvement (0: off)", None, "train"),
    O("compile", flag_bool, False, "torch.compile the network", None, "train"),
    O("channels_last", flag_bool, None, "channels-last memory format; default: on for CUDA, and on CPU with --precision fp32 (where it measured faster; with bf16 on CPU it measured slower)", None, "train"),
)
RESUME_MAY_CHANGE = {"max_steps", "device", "num_workers", "threads", "resume", "early_stopping", "val_every", "save_every", "log_every"}


def check_training_options(config: dict) -> None:
    """Ranges that depend on another option (ConfigError); the option table checks each option's own range."""
    if config["warmup_steps"] > config["max_steps"]:
        raise ConfigError(f"--warmup_steps {config['warmup_steps']} is more than --max_steps {config['max_steps']}: "
                          "the learning rate would never reach its peak; expected --warmup_steps <= --max_steps")


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel whose decay ramps up as min(decay, (1 + n) / (10 + n)) over n updates;
    integer buffers are copied."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        pairs = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)  # integer buffers (e.g. batch-norm counters) follow the model
        if pairs:
            torch._foreach_lerp_([a for a, _ in pairs], [c for _, c in pairs], 1.0 - d)

    return update


def lr_lambda(warmup: int, total: int, schedule: str):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def effective_lr(config: dict) -> float:
    """--learning_rate, times --batch_size and the number of processes with --scale_lr."""
    if not config.get("scale_lr"):
        return config["learning_rate"]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return config["learning_rate"] * config["batch_size"] * world


def build_optimizer(config: dict, params, device: torch.device) -> torch.optim.Optimizer:
    lr, wd = effective_lr(config), config["weight_decay"]
    fused = {"fused": True} if device.type == "cuda" else {}
    if config["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


class CsvLog:
    """Append-only CSV log; on resume, rows past the resumed step are dropped so the log matches the weights.

    The file is rewritten through a temporary file and appended to without following links.
    """

    def __init__(self, path: Path, fields: list[str], resume_step: int | None):
        self.path = path
        self.fields = fields
        rows: list[dict] = []
        if resume_step is not None and path.is_file() and not path.is_symlink():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


class StopSignals:
    """While active, SIGINT and SIGTERM raise Stopped in the main thread, except during a save: then the signal
    waits until the checkpoint is written whole."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.saving = False
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.saving:
            self.pending = signum
            print(f"\n{signal.Signals(signum).name}: the run stops once the checkpoint being written is complete",
                  file=sys.stderr, flush=True)
            return
        raise Stopped(signum)

    @contextlib.contextmanager
    def protect(self, stop_after: bool = True):
        """Hold signals back while the block runs; a signal that came meanwhile stops the run after it (when
        `stop_after`)."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False
        if stop_after and self.pending is not None:
            raise Stopped(self.pending)


class NonFiniteLoss(Exception):
    """The loss of a step was NaN or infinite (the weights are still those of the step before)."""


class Trainer:
    """Runs `task` on `model` for config['max_steps'] optimiser steps and writes everything into run_dir."""

    def __init__(
        self,
        config: dict,
        model: nn.Module,
        model_type: str,
        model_config: dict,
        task: Task,
        train_loader,
        val_loader,
        run_dir: Path,
        device: torch.device,
        resume_state: dict | None = None,
    ):
        self.config = config
        self.model_type = model_type
        self.model_config = model_config
        self.task = task
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run_dir = Path(run_dir)
        self.device = device
        self.distributed = dist.is_available() and dist.is_initialized()
        self.is_main = not self.distributed or dist.get_rank() == 0

        channels_last = config["channels_last"]
        if channels_last is None:
            channels_last = device.type == "cuda" or (device.type == "cpu" and config["precision"] == "fp32")
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=memory_format)
        self.optimizer = build_optimizer(config, self.model.parameters(), device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config["warmup_steps"], config["max_steps"], config["lr_schedule"])
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=config["precision"] == "fp16")
        self.discriminator = task.discriminator
        self.d_optimizer = None
        if self.discriminator is not None:
            self.discriminator.to(device)
            d_config = {**config, "learning_rate": config.get("disc_learning_rate") or config["learning_rate"]}
            self.d_optimizer = build_optimizer(d_config, self.discriminator.parameters(), device)
        self.ema = None
        if config["ema_decay"] > 0:
            self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(config["ema_decay"]), use_buffers=True)
        self.step = 0
        self.saved_step: int | None = None
        self.signals = StopSignals()
        self.best: float | None = None
        self.bad_validations = 0
        if resume_state is not None:
            self._load_state(resume_state)
        self.rng_at_step = self._rng_state()

        self.network: nn.Module = self.model
        self.d_network = self.discriminator
        if self.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=ids)
            if self.discriminator is not None:
                self.d_network = DistributedDataParallel(self.discriminator, device_ids=ids)
        if config["compile"]:
            self.network = torch.compile(self.network)

    # --- state -------------------------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(state["ema_count"])
        if self.discriminator is not None and state.get("discriminator") is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.step = state["step"]
        self.best = state.get("best")
        self.bad_validations = state.get("bad_validations", 0)
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def state_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "model_config": self.model_config,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_count": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": self.optimizer.state_dict(),
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": self.rng_at_step,
            "sampler_position": self.step * self.config["grad_accum"],
            "best": self.best,
            "bad_validations": self.bad_validations,
            "world_size": dist.get_world_size() if self.distributed else 1,
            "config": self.config,
        }

    def save(self, name: str) -> None:
        if self.is_main:
            with self.signals.protect():
                save_checkpoint(self.state_dict(), self.run_dir / name)

    def save_progress(self) -> None:
        """last.pt at the current step (a signal during the save waits for it)."""
        self.save("last.pt")
        self.saved_step = self.step

    def save_on_failure(self) -> str:
        """Save last.pt after a failure, when there is progress to keep; say what the run folder now holds."""
        if self.saved_step == self.step and (self.run_dir / "last.pt").is_file():
            return f"progress up to step {self.step} is in {self.run_dir / 'last.pt'}"
        if self.step == 0 or not self.is_main:
            return "no checkpoint was written (no step was completed)"
        try:
            with self.signals.protect(stop_after=False):
                save_checkpoint(self.state_dict(), self.run_dir / "last.pt")
        except OSError as err:
            return f"last.pt could not be saved ({err.strerror or err})"
        self.saved_step = self.step
        return f"progress up to step {self.step} is saved in {self.run_dir / 'last.pt'}"

    # --- loop ----------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.config["precision"] == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config["precision"] == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_step(self, batches) -> float:
        """One optimiser step over grad_accum micro-batches (and the discriminator's step, when adversarial)."""
        accum = self.config["grad_accum"]
        self.task.set_step(self.step)
        adversarial = self.discriminator is not None and self.task.discriminator_active()
        total = torch.zeros((), device=self.device)
        for i in range(accum):
            batch = next(batches)
            sync = not self.distributed or i == accum - 1
            if self.discriminator is not None:
                self.discriminator.requires_grad_(False)
            with (contextlib.nullcontext() if sync else self.network.no_sync()):
                with self._autocast():
                    loss = self.task.training_loss(self.network, batch, self.device) / accum
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
            if adversarial:
                self.discriminator.requires_grad_(True)
                with (contextlib.nullcontext() if sync else self.d_network.no_sync()):
                    with self._autocast():
                        d_loss = self.task.discriminator_loss(self.d_network, self.device) / accum
                    self.scaler.scale(d_loss).backward()
        if self.distributed:
            dist.all_reduce(total)
            total /= dist.get_world_size()
        value = float(total)
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
        if self.config["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.scaler.step(self.optimizer)
        if adversarial:
            self.scaler.step(self.d_optimizer)
            self.d_optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return value

    def evaluation_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        model = self.evaluation_model()
        was_training = model.training
        model.eval()
        try:
            with self._autocast():
                metrics = self.task.validate(model, self.val_loader, self.device, self.config["val_batches"])
                if self.is_main:
                    self.task.write_pictures(model, self.val_loader, self.device, self.run_dir / "pictures" / f"step_{self.step:07d}.png")
            return metrics
        finally:
            model.train(was_training)

    def fit(self) -> dict[str, float]:
        """Train to max_steps (or early stop); returns the last validation metrics."""
        cfg = self.config
        resumed = self.step if self.step > 0 else None
        writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=resumed) if self.is_main else None
        extra = list(self.task.log_fields)
        train_log = CsvLog(self.run_dir / "train_log.csv", ["step", "loss", "lr", "images_per_s", *extra], resumed) if self.is_main else None
        val_log = None
        metrics: dict[str, float] = {}
        batches = iter(self.train_loader)
        self.model.train()
        bar = tqdm(total=cfg["max_steps"], initial=self.step, desc=f"train {self.model_type}", disable=not self.is_main, dynamic_ncols=True)
        tic, images = time.perf_counter(), 0
        self.signals.__enter__()
        try:
            while self.step < cfg["max_steps"]:
                self.rng_at_step = self._rng_state()
                loss = self._train_step(batches)
                self.step += 1
                self.rng_at_step = self._rng_state()
                images += cfg["batch_size"] * cfg["grad_accum"] * (dist.get_world_size() if self.distributed else 1)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                last = self.step == cfg["max_steps"]
                if self.is_main and (self.step % cfg["log_every"] == 0 or last):
                    rate = images / max(time.perf_counter() - tic, 1e-9)
                    lr = self.scheduler.get_last_lr()[0]
                    logs = dict(self.task.last_logs)
                    train_log.write({"step": self.step, "loss": loss, "lr": lr, "images_per_s": rate, **logs})
                    writer.add_scalar("train/loss", loss, self.step)
                    for name, value in logs.items():
                        writer.add_scalar(f"train/{name}", value, self.step)
                    writer.add_scalar("train/lr", lr, self.step)
                    tic, images = time.perf_counter(), 0
                if self.val_loader is not None and ((cfg["val_every"] and self.step % cfg["val_every"] == 0) or last):
                    metrics = self.validate()
                    if self.is_main:
                        if val_log is None:
                            val_log = CsvLog(self.run_dir / "val_log.csv", ["step", *metrics], resumed)
                        val_log.write({"step": self.step, **metrics})
                        for name, value in metrics.items():
                            writer.add_scalar(f"val/{name}", value, self.step)
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    if self._improved(metrics[self.task.monitor]):
                        self.best, self.bad_validations = metrics[self.task.monitor], 0
                        self.save("best.pt")
                    else:
                        self.bad_validations += 1
                    self.save_progress()
                    if cfg["early_stopping"] and self.bad_validations >= cfg["early_stopping"]:
                        bar.write(f"early stopping at step {self.step}: no improvement in {self.bad_validations} validations")
                        break
                if cfg["save_every"] and self.step % cfg["save_every"] == 0:
                    self.save(STEP_CHECKPOINT.format(self.step))
                    if self.saved_step != self.step:
                        self.save_progress()
            else:
                if self.saved_step != self.step:
                    self.save_progress()
        except KeyboardInterrupt as err:
            where = self.save_on_failure()
            name = signal.Signals(err.signum).name if isinstance(err, Stopped) else "interrupted"
            print(f"\n{name}: stopped at step {self.step}; {where}", file=sys.stderr)
            raise
        except NonFiniteLoss as err:
            where = self.save_on_failure()
            raise TrainingError(f"non-finite loss ({err}) at step {self.step + 1}; stopped, {where} (try a lower "
                                "--learning_rate or --precision fp32)") from None
        except Exception:
            print(f"stopped by an error at step {self.step}; {self.save_on_failure()}", file=sys.stderr)
            raise
        finally:
            bar.close()
            self.signals.__exit__()
            if writer is not None:
                writer.close()
        return metrics

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.task.higher_is_better else value < self.best

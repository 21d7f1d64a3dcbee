"""The recipe protocol: everything one model type is, with defaults that most types share.

A recipe owns its flags and their defaults, its contradiction checks, the stored model config, the network
built from that config alone, the training task, the run-folder name and what `inference.py` renders for it.
`model.py` lists the model types; nothing else branches on them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from common.checkpoint import read_checkpoint
from common.errors import ConfigError
from common.options import Option
from diffusion.gaussian_diffusion import GaussianDiffusion
from recipes.tasks import Task

SHARED_GROUPS = ("run", "patches", "train")


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint alone, with what it was trained with."""

    model: nn.Module
    model_type: str
    model_config: dict[str, Any]
    config: dict[str, Any]
    step: int
    path: Path

    @property
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion.from_config(**self.model_config["diffusion"])


@dataclass
class Built:
    """What train.py hands to the Trainer: the network, its stored config, the task and the data (maybe replaced)."""

    model: nn.Module
    model_config: dict[str, Any]
    task: Task
    data: Any


@dataclass(frozen=True)
class InferenceFlag:
    """One inference.py flag: argparse names and keyword arguments (the first name without dashes is its key)."""

    names: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.names[0].lstrip("-"))


@dataclass(frozen=True)
class DataAccess:
    """How a recipe reaches the data a checkpoint was trained on (dataloader.py's functions, handed down)."""

    validation_set: Callable[[dict[str, Any]], Any]
    layouts: Callable[[dict[str, Any], dict[str, Any], str | None], Any]
    tiles: Callable[..., Any]


@dataclass
class RenderContext:
    """What inference.py gives a recipe's render(): the flags, the device, every --ckpt loaded, the ensemble
    loader and the data access."""

    args: argparse.Namespace
    device: torch.device
    checkpoints: list[LoadedModel]
    load_ensemble: Callable[..., tuple[nn.Module, list[Path]]]  # (paths, reference=config to match) -> ensemble, files
    data: DataAccess

    @property
    def first(self) -> LoadedModel:
        return self.checkpoints[0]


class Recipe:
    """Base of every recipe; `name` is the --model_type it was registered under."""

    summary = ""
    demo_preset = ""
    option_groups: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    datasets: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()
    default_ema_decay = 0.0
    renders = True
    sampling_flags = True
    training_only_keys = frozenset({"cond_drop_prob", "dropout", "use_checkpoint"})

    def __init__(self, name: str):
        self.name = name

    # --- options -------------------------------------------------------------------------------------------
    def takes(self, group: str) -> bool:
        return group in SHARED_GROUPS or group in self.option_groups

    def finalise(self, config: dict[str, Any]) -> None:
        """Fill this type's defaults in config and reject contradictory options (ConfigError)."""
        loss = config["loss_function"]
        config["loss_function"] = loss or self.losses[0]
        if config["loss_function"] not in self.losses:
            raise ConfigError(self.wrong_loss_message(loss))
        if config["ema_decay"] is None:
            config["ema_decay"] = self.default_ema_decay

    def wrong_loss_message(self, loss: str) -> str:
        return f"--loss_function {loss}: {self.name} takes {' or '.join(self.losses)}"

    # --- network -------------------------------------------------------------------------------------------
    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        """The plain dict stored in checkpoints that rebuilds the network with no flags."""
        raise NotImplementedError

    def upgrade(self, model_config: dict[str, Any]) -> dict[str, Any]:
        """A model config written by an older format version, in today's form (identity by default)."""
        return model_config

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        raise NotImplementedError

    def build(self, config: dict[str, Any], data: Any, state: dict | None, device: torch.device, run_dir: Path) -> Built:
        """Network (fresh, from the resumed run's model config, or from --init_from), its config and task."""
        model_config = self.upgrade(state["model_config"]) if state is not None else self.model_config(config, data)
        model = self.build_network(model_config)
        if state is None:
            self.initialise(model, config)
            if config.get("init_from"):
                self.init_from(model, model_config, config["init_from"])
        return Built(model, model_config, self.task(config, model_config), data)

    def initialise(self, model: nn.Module, config: dict[str, Any]) -> None:
        """Weights a fresh run starts from before --init_from (nothing by default)."""

    def init_from(self, model: nn.Module, model_config: dict[str, Any], path: str | Path) -> None:
        """Start from the (EMA, when present) weights of another run of the same architecture (fine-tuning)."""
        state = read_checkpoint(path)
        if state["model_type"] != self.name:
            raise ConfigError(f"--init_from {path} holds a {state['model_type']} model; this run trains {self.name}")
        mine_full, theirs_full = self.upgrade(model_config), self.upgrade(state["model_config"])
        mine, theirs = mine_full.get("unet", mine_full), theirs_full.get("unet", theirs_full)
        skip = self.training_only_keys
        differ = sorted(k for k in set(mine) | set(theirs) if k not in skip and mine.get(k) != theirs.get(k))
        if differ or mine_full.get("maps") != theirs_full.get("maps"):
            shown = differ or ["condition maps"]
            raise ConfigError(f"--init_from {path}: architecture differs in {', '.join(shown)}; use the options of that run")
        model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])

    # --- run folder ----------------------------------------------------------------------------------------
    def run_dir(self, config: dict[str, Any]) -> Path:
        """<out_dir>/<model_type>_<dataset>[_cluster<id>][_<date>]."""
        suffix = f"_{config['date']}" if config.get("date") else ""
        cluster = f"_cluster{config['cluster_id']}" if config.get("cluster_id") is not None else ""
        return Path(config["out_dir"]) / f"{self.name}_{config['dataset']}{cluster}{suffix}"

    # --- inference -----------------------------------------------------------------------------------------
    def inference_flags(self, loaded: LoadedModel) -> tuple[InferenceFlag, ...]:
        """The type-specific inference.py flags a checkpoint of this type takes."""
        return ()

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        """Every type-specific inference.py flag this recipe may take (for the parser)."""
        return ()

    def render(self, ctx: RenderContext) -> None:
        raise ConfigError(f"--ckpt {ctx.first.path} holds a {self.name} model, which inference.py does not sample")

"""MODEL_TYPES, the registry: the only list of --model_type values. Options, checks, networks and checkpoints
of every type are reached through it; each entry points at the recipe that owns the type.

Adding a model type: write one recipe module in recipes/ (a `recipes.base.Recipe` subclass) and add one line below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from common.checkpoint import checked_network, read_checkpoint
from common.errors import CheckpointError, ConfigError
from common.options import Option, OptionTable, flag_bool, number
from dataloader import DATA_OPTIONS, check_data_options
from data.families import DATASETS
from recipes import autoencoder, classifier, latent, score_diffusion, segmentation, semantic, style_diffusion
from recipes.base import LoadedModel, Recipe
from recipes.classifier import Ensemble
from trainer import TRAIN_OPTIONS, check_training_options


@dataclass(frozen=True)
class ModelType:
    """One --model_type: its name and the recipe that owns everything it is."""

    name: str
    recipe: Recipe


def entry(name: str, recipe: Callable[[str], Recipe]) -> ModelType:
    return ModelType(name, recipe(name))


MODEL_TYPES: dict[str, ModelType] = {t.name: t for t in (
    entry("diffusion", score_diffusion.ScoreDiffusion),
    entry("sdm", semantic.SemanticDiffusion),
    entry("ldm", latent.LatentDiffusionRecipe),
    entry("vqvae", autoencoder.Autoencoder),
    entry("autoencoder_kl", autoencoder.Autoencoder),
    entry("resnet18", classifier.Classifier),
    entry("resnet34", classifier.Classifier),
    entry("resnet50", classifier.Classifier),
    entry("segmentation", segmentation.SegmentationRecipe),
    entry("stedm", style_diffusion.StyleDiffusion),
)}

O = Option
RUN_OPTIONS: tuple[Option, ...] = (
    O("dataset", str, None, "data set: " + ", ".join(DATASETS), DATASETS),
    O("model_type", str, None, "what to train: " + ", ".join(MODEL_TYPES), tuple(MODEL_TYPES)),
    O("date", str, None, "tag appended to the run folder name (e.g. 2024-05-01)"),
    O("data_root", str, None, "data folder (default data/<dataset>)"),
    O("out_dir", str, "model_weights", "parent folder of run folders"),
    O("seed", number(int, 0), 0, "random seed (an ensemble member adds its index)"),
    O("resume", str, None, "continue the run in this run folder exactly where it stopped"),
    O("init_from", str, None, "start from the weights of this checkpoint (fine-tuning: new optimiser, LR and steps)"),
    O("overwrite", flag_bool, False, "replace an existing run folder"),
    O("device", str, "auto", "auto, cpu, cuda or cuda:N"),
    O("num_workers", number(int, 0), 2, "data-loading worker processes per rank"),
    O("threads", number(int, 1), None, "CPU threads of PyTorch's operators (default: OMP_NUM_THREADS, else one per physical core; fewer when other jobs share the cores)"),
)


def recipe_for(model_type: str) -> Recipe:
    return MODEL_TYPES[model_type].recipe


def _option_table() -> OptionTable:
    """Shared options, then each recipe's own (options several recipes share are listed once)."""
    options: dict[str, Option] = {}
    for opt in RUN_OPTIONS + DATA_OPTIONS + TRAIN_OPTIONS:
        options[opt.name] = opt
    for model_type in MODEL_TYPES.values():
        for opt in model_type.recipe.options:
            options.setdefault(opt.name, opt)
    order = ["run", "patches", "slides", "wsi data", "layout data", "tile data", "pcam data", "segmentation data", "region data", "clusters", "train"]
    return OptionTable(sorted(options.values(), key=lambda o: order.index(o.group) if o.group in order else len(order)))


OPTIONS = _option_table()


def group_users(group: str) -> str:
    """Which model types take an option group, for --help and the README."""
    users = sorted(name for name, t in MODEL_TYPES.items() if t.recipe.takes(group))
    return "all model types" if len(users) == len(MODEL_TYPES) else ", ".join(users)


def group_titles() -> dict[str, str]:
    return {group: group_users(group) for group in OPTIONS.groups()}


def build_parser():
    titles = {group: f"{group} ({users})" for group, users in group_titles().items()}
    return OPTIONS.build_parser("Train a model of any registered --model_type (see the README's option tables).", titles)


def options_markdown() -> str:
    """The README's option tables (between its <!-- flags --> markers)."""
    return OPTIONS.markdown(group_titles())


def resolve_config(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Defaults <- YAML <- CLI flags, then the model type's defaults and checks of contradictory options."""
    return finalise(OPTIONS.parse(build_parser(), argv))


def finalise(config: dict[str, Any]) -> dict[str, Any]:
    """Fill model-type defaults and reject contradictory options (ConfigError)."""
    if config.get("resume"):
        if config.get("overwrite"):
            raise ConfigError("--resume and --overwrite contradict each other: resume keeps the run folder")
        if config.get("init_from"):
            raise ConfigError("--resume and --init_from contradict each other: resume continues its own weights")
        return config
    for name in ("dataset", "model_type"):
        if config[name] is None:
            choices = DATASETS if name == "dataset" else tuple(MODEL_TYPES)
            raise ConfigError(f"--{name} is required (one of {', '.join(choices)})")
    model_type, explicit = config["model_type"], set(config.get("explicit", ()))
    recipe = recipe_for(model_type)
    wrong = sorted(n for n in explicit if n in OPTIONS.by_name and not recipe.takes(OPTIONS.by_name[n].group))
    if wrong:
        raise ConfigError(f"--model_type {model_type} does not take --{', --'.join(wrong)}")
    if config["dataset"] not in recipe.datasets:
        raise ConfigError(f"--model_type {model_type} trains on --dataset {' or '.join(recipe.datasets)}, not {config['dataset']}")
    recipe.finalise(config)
    check_data_options(config)
    check_training_options(config)
    return config


def run_dir_for(config: dict[str, Any]) -> Path:
    """The run folder of a resolved config (the recipe names it)."""
    return recipe_for(config["model_type"]).run_dir(config)


def build_network(model_type: str, model_config: dict[str, Any]) -> nn.Module:
    """The network a stored model config describes (old format versions upgraded)."""
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    return recipe_for(model_type).build_network(model_config)


def check_stored_config(path: str | Path, state: dict[str, Any]) -> None:
    """CheckpointError when a checkpoint's model type or run options are unknown to this version of the toolkit."""
    version = state.get("format_version")
    if state["model_type"] not in MODEL_TYPES:
        raise CheckpointError(f"checkpoint {path} (format version {version}) holds an unknown model type "
                              f"{state['model_type']!r}; this version knows {', '.join(MODEL_TYPES)}")
    stored = state.get("config", {})
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} (format version {version}): its run config is not a mapping")
    unknown = sorted(str(k) for k in stored if k not in OPTIONS.by_name and k != "explicit")
    if unknown:
        raise CheckpointError(f"checkpoint {path} (format version {version}) has run options this version of the "
                              f"toolkit does not know: {', '.join(unknown)}; it was written by another version")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedModel:
    """Rebuild the network stored in a checkpoint, in eval mode on `device` (EMA weights when present)."""
    state = read_checkpoint(path)
    check_stored_config(path, state)
    recipe = recipe_for(state["model_type"])
    model_config = recipe.upgrade(state["model_config"])
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model = checked_network(lambda: recipe.build_network(model_config), weights, path, state["model_type"])
    model.to(device).eval()
    return LoadedModel(model, state["model_type"], model_config, state.get("config", {}), state["step"], Path(path))


def classifier_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (e.g. model_weights/resnet/) into one checkpoint per ensemble member.

    In a folder, each run folder (one holding best.pt or last.pt) gives its best.pt, or last.pt without one.
    """
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_file():
            found.append(item)
            continue
        if not item.is_dir():
            raise CheckpointError(f"--classifier_ckpts: {item} is neither a checkpoint file nor a folder")
        runs = sorted({p.parent for p in item.rglob("*.pt") if p.name in ("best.pt", "last.pt")})
        if not runs:
            raise CheckpointError(f"--classifier_ckpts: no best.pt or last.pt below {item}")
        found.extend(run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt" for run in runs)
    return found


# What a classifier must share with the images it scores.
SCORING_SETTINGS = ("tile_size", "scaling")


def check_scoring_settings(file: Path, member: dict[str, Any], reference: dict[str, Any], what: str) -> None:
    """CheckpointError naming the classifier file when its tile size or pixel scaling differs from `reference`'s."""
    differ = [f"{key} {member.get(key)} (the {what}: {reference.get(key)})" for key in SCORING_SETTINGS
              if key in reference and member.get(key) != reference.get(key)]
    if differ:
        raise CheckpointError(f"--classifier_ckpts: {file} was trained with {', '.join(differ)}; its scores of these "
                              "images would not mean what they say. Use classifiers trained like the diffusion model")


def load_ensemble(paths: Sequence[str | Path], device: str | torch.device = "cpu",
                  reference: dict[str, Any] | None = None, what: str = "diffusion checkpoint") -> tuple[Ensemble, list[Path]]:
    """The classifiers of `paths` as one ensemble (checked against the tile size and pixel scaling of `reference`)."""
    files = classifier_checkpoints(paths)
    members = []
    for file in files:
        loaded = load_checkpoint(file, device)
        if not isinstance(recipe_for(loaded.model_type), classifier.Classifier):
            raise CheckpointError(f"--classifier_ckpts: {file} holds a {loaded.model_type} model, not a classifier")
        if reference is not None:
            check_scoring_settings(file, loaded.config, reference, what)
        members.append(loaded.model)
    return Ensemble(members).to(device).eval(), files

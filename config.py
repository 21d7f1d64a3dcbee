"""Training options: one table drives the argparse CLI, YAML presets and validation of the resolved config."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

DATASETS = ("canine", "meningioma", "midog", "synthetic")
CLASSIFIERS = ("resnet18", "resnet34", "resnet50")
MODEL_TYPES = ("diffusion",) + CLASSIFIERS
DIFFUSION_LOSSES = ("l1", "l2", "huber")


class ConfigError(ValueError):
    """A bad flag, YAML key or combination of options."""


def int_list(text: Any) -> list[int]:
    """'1,2,4' or [1, 2, 4] -> [1, 2, 4]; '' or 'none' -> []."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return []
    return [int(v) for v in text.split(",") if v.strip()]


def str_list(text: Any) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']; '' or 'none' -> []."""
    if isinstance(text, (list, tuple)):
        return [str(v).strip() for v in text if str(v).strip()]
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return []
    return [v.strip() for v in text.split(",") if v.strip()]


def flag_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Option:
    name: str
    kind: Callable[[Any], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None
    group: str = "general"


OPTIONS: tuple[Option, ...] = (
    # run
    Option("dataset", str, None, "data set: " + ", ".join(DATASETS), DATASETS, "run"),
    Option("model_type", str, None, "what to train: " + ", ".join(MODEL_TYPES), MODEL_TYPES, "run"),
    Option("date", str, None, "tag appended to the run folder name (e.g. 2024-05-01)", None, "run"),
    Option("data_root", str, None, "data folder (default data/<dataset>)", None, "run"),
    Option("out_dir", str, "model_weights", "parent folder of run folders", None, "run"),
    Option("seed", int, 0, "random seed (an ensemble member adds its index)", None, "run"),
    Option("resume", str, None, "continue the run in this run folder exactly where it stopped", None, "run"),
    Option("overwrite", flag_bool, False, "replace an existing run folder", None, "run"),
    Option("device", str, "auto", "auto, cpu, cuda or cuda:N", None, "run"),
    Option("num_workers", int, 2, "data-loading worker processes per rank", None, "run"),
    # data
    Option("slides_dir", str, None, "folder of whole-slide images (default: the data set's layout)", None, "data"),
    Option("annotation_file", str, None, "SlideRunner .sqlite, MIDOG .json or meningioma folder", None, "data"),
    Option("mitotic_classes", str_list, None, "class names counted as mitotic (comma-separated)", None, "data"),
    Option("negative_classes", str_list, None, "class names used as negatives (default: the data set's)", None, "data"),
    Option("tumor_types", str_list, None, "MIDOG: keep only these tumour types", None, "data"),
    Option("annotators", str_list, None, "SlideRunner: persons whose votes make the soft labels", None, "data"),
    Option("indeterminate", str, "negative", "meningioma: what INDET spots are", ("negative", "mitotic", "skip"), "data"),
    Option("split", str, None, "train/val split: slides (CSV) or y_percentile (default: slides when a split file exists)", ("slides", "y_percentile"), "data"),
    Option("split_file", str, None, "CSV with columns slide,split for --split slides", None, "data"),
    Option("val_fraction", float, 0.2, "share of each slide's annotations (by y) for --split y_percentile", None, "data"),
    Option("tile_size", int, 64, "patch size in level-0 pixels", None, "data"),
    Option("mite_ratio", float, 0.5, "fraction of mitotic patches in each training batch", None, "data"),
    Option("soft_vs_hard", str, "hard", "labels: hard (agreed class) or soft (share of mitotic votes)", ("soft", "hard"), "data"),
    Option("soft_mode", str, "binned", "soft labels binned to 0/0.5/1 or continuous", ("binned", "continuous"), "data"),
    Option("max_offset", int, 0, "random shift of the patch centre, in pixels", None, "data"),
    Option("augment", flag_bool, True, "random 90-degree rotations and flips", None, "data"),
    Option("scaling", str, "minmax", "pixel scaling to [-1, 1]: minmax or per-image 99th percentile", ("minmax", "percentile"), "data"),
    # optimisation
    Option("optimizer", str, "adamw", "optimiser", ("adam", "adamw", "sgd"), "train"),
    Option("learning_rate", float, 1e-4, "peak learning rate", None, "train"),
    Option("weight_decay", float, 0.0, "weight decay", None, "train"),
    Option("lr_schedule", str, "constant", "after warm-up: constant or cosine decay to zero", ("constant", "cosine"), "train"),
    Option("warmup_steps", int, 0, "linear learning-rate warm-up steps", None, "train"),
    Option("batch_size", int, 32, "training batch size per process", None, "train"),
    Option("batch_validation", int, 64, "validation batch size", None, "train"),
    Option("max_steps", int, 10000, "optimiser steps to train for", None, "train"),
    Option("grad_accum", int, 1, "micro-batches accumulated per optimiser step (no all-reduce until the last)", None, "train"),
    Option("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", None, "train"),
    Option("ema_decay", float, None, "EMA decay of the weights (0: off; default 0.9995 diffusion, 0 classifiers)", None, "train"),
    Option("precision", str, "fp32", "fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA)", ("fp32", "bf16", "fp16"), "train"),
    Option("loss_function", str, None, "diffusion: l1, l2 or huber (default l2); classifiers: bce", ("l1", "l2", "huber", "bce"), "train"),
    Option("val_every", int, 500, "validate every N steps (0: only at the end)", None, "train"),
    Option("val_batches", int, 0, "validation batches per validation (0: the whole set)", None, "train"),
    Option("save_every", int, 0, "also keep a checkpoint every N steps (0: only last and best)", None, "train"),
    Option("log_every", int, 50, "write training loss to the logs every N steps", None, "train"),
    Option("early_stopping", int, 0, "stop after N validations without improvement (0: off)", None, "train"),
    Option("compile", flag_bool, False, "torch.compile the network", None, "train"),
    Option("channels_last", flag_bool, False, "channels-last memory format (faster convolutions on GPU)", None, "train"),
    # classifiers
    Option("ensemble", int, None, "train ensemble member N (own seed, folder resnet/Ensemble_N)", None, "classifier"),
    Option("pretrained_weights", str, None, "local torchvision ResNet state dict to start from", None, "classifier"),
    # diffusion
    Option("timesteps", int, 1000, "diffusion steps T", None, "diffusion"),
    Option("schedule", str, "cosine", "noise schedule", ("linear", "cosine", "sigmoid"), "diffusion"),
    Option("objective", str, "eps", "what the network predicts", ("eps", "x0", "v"), "diffusion"),
    Option("conditions", str_list, ["score"], "conditions the UNet takes: score, or none", None, "diffusion"),
    Option("cond_drop_prob", float, 0.1, "probability of dropping the condition in training (for guidance)", None, "diffusion"),
    Option("dim", int, 64, "UNet base channels", None, "diffusion"),
    Option("dim_mults", int_list, [1, 2, 4], "channel multipliers per resolution level", None, "diffusion"),
    Option("num_res_blocks", int, 2, "residual blocks per level", None, "diffusion"),
    Option("attention_resolutions", int_list, [16], "feature-map sizes with self-attention", None, "diffusion"),
    Option("num_head_channels", int, 32, "channels per attention head", None, "diffusion"),
    Option("dropout", float, 0.0, "dropout in residual blocks", None, "diffusion"),
)
BY_NAME = {o.name: o for o in OPTIONS}
DIFFUSION_ONLY = {o.name for o in OPTIONS if o.group == "diffusion"}
CLASSIFIER_ONLY = {o.name for o in OPTIONS if o.group == "classifier"}
RESUME_MAY_CHANGE = {"max_steps", "device", "num_workers", "resume", "early_stopping", "val_every", "save_every", "log_every"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a conditional diffusion model or a ResNet mitosis classifier on WSI patches.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of options (keys are flag names); flags override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in OPTIONS:
        group = groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        default = "" if opt.default is None else f" (default: {opt.default})"
        if opt.kind is flag_bool:
            group.add_argument(f"--{opt.name}", action=argparse.BooleanOptionalAction, help=opt.help + default)
        else:
            group.add_argument(f"--{opt.name}", type=str, help=opt.help + default, metavar=opt.name.upper())
    return parser


def convert(name: str, value: Any, source: str) -> Any:
    """Convert a raw CLI/YAML value to the option's type, with an error naming where it came from."""
    opt = BY_NAME.get(name)
    if opt is None:
        raise ConfigError(f"{source}: unknown option {name!r}")
    if value is None:
        return None
    try:
        out = opt.kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: option {name} expects {opt.kind.__name__}, got {value!r} ({err})") from None
    if opt.choices is not None and out not in opt.choices:
        raise ConfigError(f"{source}: option {name} must be one of {list(opt.choices)}, got {out!r}")
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    return {k: convert(k, v, f"--config {path}") for k, v in raw.items()}


def resolve(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Defaults <- YAML <- CLI flags, then per-model-type defaults and checks of contradictory options."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    explicit: dict[str, Any] = {}
    if "config" in args:
        explicit.update(load_yaml(args.pop("config")))
    explicit.update({k: convert(k, v, f"--{k}") for k, v in args.items()})
    config = {o.name: o.default for o in OPTIONS}
    config.update(explicit)
    config["explicit"] = sorted(explicit)
    return finalise(config)


def finalise(config: dict[str, Any]) -> dict[str, Any]:
    """Fill model-type defaults and reject contradictory options."""
    if config.get("resume"):
        if config.get("overwrite"):
            raise ConfigError("--resume and --overwrite contradict each other: resume keeps the run folder")
        return config
    for name in ("dataset", "model_type"):
        if config[name] is None:
            choices = DATASETS if name == "dataset" else MODEL_TYPES
            raise ConfigError(f"--{name} is required (one of {', '.join(choices)})")
    explicit = set(config.get("explicit", ()))
    is_diffusion = config["model_type"] == "diffusion"
    wrong = sorted((CLASSIFIER_ONLY if is_diffusion else DIFFUSION_ONLY) & explicit)
    if wrong:
        raise ConfigError(
            f"--model_type {config['model_type']} does not take --{', --'.join(wrong)}"
        )
    loss = config["loss_function"]
    if is_diffusion:
        config["loss_function"] = loss or "l2"
        if config["loss_function"] not in DIFFUSION_LOSSES:
            raise ConfigError(f"--loss_function {loss} is for classifiers; diffusion takes {DIFFUSION_LOSSES}")
        unknown = sorted(set(config["conditions"]) - {"score"})
        if unknown:
            raise ConfigError(f"--conditions: unknown condition(s) {unknown}; this model type takes: score")
        if not 0.0 <= config["cond_drop_prob"] <= 1.0:
            raise ConfigError(f"--cond_drop_prob must be in [0, 1], got {config['cond_drop_prob']}")
    else:
        config["loss_function"] = loss or "bce"
        if config["loss_function"] != "bce":
            raise ConfigError(f"--loss_function {loss} is for diffusion; classifiers train with bce")
    if config["ema_decay"] is None:
        config["ema_decay"] = 0.9995 if is_diffusion else 0.0
    checks = [
        ("tile_size", config["tile_size"] >= 8, "at least 8"),
        ("batch_size", config["batch_size"] >= 1, "at least 1"),
        ("batch_validation", config["batch_validation"] >= 1, "at least 1"),
        ("max_steps", config["max_steps"] >= 1, "at least 1"),
        ("grad_accum", config["grad_accum"] >= 1, "at least 1"),
        ("learning_rate", config["learning_rate"] > 0, "positive"),
        ("mite_ratio", 0.0 <= config["mite_ratio"] <= 1.0, "in [0, 1]"),
        ("ema_decay", 0.0 <= config["ema_decay"] < 1.0, "in [0, 1)"),
        ("max_offset", config["max_offset"] >= 0, "non-negative"),
        ("num_workers", config["num_workers"] >= 0, "non-negative"),
        ("ensemble", config["ensemble"] is None or config["ensemble"] >= 0, "a non-negative member index"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"--{name} must be {expected}, got {config[name]}")
    if config["split"] == "slides" and config["split_file"] is None and config["dataset"] != "synthetic":
        raise ConfigError("--split slides needs --split_file CSV (columns slide,split)")
    return config


def run_dir_for(config: dict[str, Any]) -> Path:
    """model_weights/diffusion_<dataset>[_<date>] or model_weights/resnet[_<date>]/Ensemble_<N>."""
    suffix = f"_{config['date']}" if config.get("date") else ""
    out = Path(config["out_dir"])
    if config["model_type"] == "diffusion":
        return out / f"diffusion_{config['dataset']}{suffix}"
    member = config["ensemble"] if config["ensemble"] is not None else 0
    return out / f"resnet{suffix}" / f"Ensemble_{member}"

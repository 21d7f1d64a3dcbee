"""Training options: one table drives the argparse CLI, YAML presets and validation of the resolved config."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

WSI_DATASETS = ("canine", "meningioma", "midog", "synthetic")
LAYOUT_DATASETS = ("monuseg", "synthetic_monuseg")
TILE_DATASETS = ("npy", "synthetic_tiles")
PCAM_DATASETS = ("pcam", "synthetic_pcam")
DATASETS = WSI_DATASETS + LAYOUT_DATASETS + TILE_DATASETS + PCAM_DATASETS
CLASSIFIERS = ("resnet18", "resnet34", "resnet50")
AUTOENCODERS = ("vqvae", "autoencoder_kl")
DIFFUSION_TYPES = ("diffusion", "sdm", "ldm")
MODEL_TYPES = DIFFUSION_TYPES + AUTOENCODERS + CLASSIFIERS
DIFFUSION_LOSSES = ("l1", "l2", "huber")
ALL = frozenset(MODEL_TYPES)
# Which model types take the options of each group.
GROUP_MODELS: dict[str, frozenset[str]] = {
    "run": ALL,
    "patches": ALL,
    "wsi data": frozenset(("diffusion",) + CLASSIFIERS),
    "layout data": frozenset({"sdm"}),
    "tile data": frozenset(AUTOENCODERS + ("ldm",)),
    "pcam data": frozenset({"diffusion"}),
    "clusters": frozenset({"sdm", "ldm"}),
    "train": ALL,
    "classifier": frozenset(CLASSIFIERS),
    "diffusion": frozenset(DIFFUSION_TYPES),
    "conditioned diffusion": frozenset({"diffusion", "ldm"}),
    "sdm": frozenset({"sdm"}),
    "autoencoder": frozenset(AUTOENCODERS),
    "vq": frozenset({"vqvae"}),
    "kl": frozenset({"autoencoder_kl"}),
    "ldm": frozenset({"ldm"}),
}
# Which data sets each model type trains on.
MODEL_DATA = {
    "diffusion": WSI_DATASETS + PCAM_DATASETS,
    **{m: WSI_DATASETS for m in CLASSIFIERS},
    "sdm": LAYOUT_DATASETS,
    **{m: TILE_DATASETS for m in AUTOENCODERS + ("ldm",)},
}
CONDITIONS = {"diffusion": ("score", "label"), "ldm": ("label",)}


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
    group: str = "run"
    aliases: tuple[str, ...] = ()


O = Option
OPTIONS: tuple[Option, ...] = (
    # run
    O("dataset", str, None, "data set: " + ", ".join(DATASETS), DATASETS),
    O("model_type", str, None, "what to train: " + ", ".join(MODEL_TYPES), MODEL_TYPES),
    O("date", str, None, "tag appended to the run folder name (e.g. 2024-05-01)"),
    O("data_root", str, None, "data folder (default data/<dataset>)"),
    O("out_dir", str, "model_weights", "parent folder of run folders"),
    O("seed", int, 0, "random seed (an ensemble member adds its index)"),
    O("resume", str, None, "continue the run in this run folder exactly where it stopped"),
    O("init_from", str, None, "start from the weights of this checkpoint (fine-tuning: new optimiser, LR and steps)"),
    O("overwrite", flag_bool, False, "replace an existing run folder"),
    O("device", str, "auto", "auto, cpu, cuda or cuda:N"),
    O("num_workers", int, 2, "data-loading worker processes per rank"),
    # patches
    O("tile_size", int, 64, "patch size in pixels (level 0 of a slide, or the tiles cut from layout images)", None, "patches"),
    O("val_fraction", float, 0.2, "validation share: of each slide's annotations by y (y_percentile), of the layout images, or of a stack's training tiles", None, "patches"),
    O("augment", flag_bool, True, "random 90-degree rotations and flips", None, "patches"),
    # WSI data
    O("slides_dir", str, None, "folder of whole-slide images (default: the data set's layout)", None, "wsi data"),
    O("annotation_file", str, None, "SlideRunner .sqlite, MIDOG .json or meningioma folder", None, "wsi data"),
    O("mitotic_classes", str_list, None, "class names counted as mitotic (comma-separated)", None, "wsi data"),
    O("negative_classes", str_list, None, "class names used as negatives (default: the data set's)", None, "wsi data"),
    O("tumor_types", str_list, None, "MIDOG: keep only these tumour types", None, "wsi data"),
    O("annotators", str_list, None, "SlideRunner: persons whose votes make the soft labels", None, "wsi data"),
    O("indeterminate", str, "negative", "meningioma: what INDET spots are", ("negative", "mitotic", "skip"), "wsi data"),
    O("split", str, None, "train/val split: slides (CSV) or y_percentile (default: slides when a split file exists)", ("slides", "y_percentile"), "wsi data"),
    O("split_file", str, None, "CSV with columns slide,split for --split slides", None, "wsi data"),
    O("mite_ratio", float, 0.5, "fraction of mitotic patches in each training batch", None, "wsi data"),
    O("soft_vs_hard", str, "hard", "labels: hard (agreed class) or soft (share of mitotic votes)", ("soft", "hard"), "wsi data"),
    O("soft_mode", str, "binned", "soft labels binned to 0/0.5/1 or continuous", ("binned", "continuous"), "wsi data"),
    O("max_offset", int, 0, "random shift of the patch centre, in pixels", None, "wsi data"),
    O("scaling", str, "minmax", "pixel scaling to [-1, 1]: minmax or per-image 99th percentile", ("minmax", "percentile"), "wsi data"),
    # layout data
    O("stride", int, None, "stride of the tiling of layout images (default: --tile_size)", None, "layout data"),
    O("min_area", int, 30, "nuclei fragments smaller than this many pixels are dropped", None, "layout data"),
    O("num_classes", int, 2, "semantic classes incl. background (2: nucleus vs background)", None, "layout data"),
    O("no_instance", flag_bool, False, "leave out the instance-edge map", None, "layout data"),
    O("use_hv_map", flag_bool, False, "add HoVer-Net horizontal/vertical distance maps (2 channels)", None, "layout data"),
    O("use_col_map", flag_bool, False, "add the colour map: each nucleus filled with its mean colour (3 channels)", None, "layout data"),
    O("cluster_id", int, None, "the cluster of --cluster_file to train on", None, "layout data"),
    # tile stacks
    O("stack_slice", int, 0, "which slice S of an (N, S, H, W, 3) stack", None, "tile data"),
    O("test_size", int, 1000, "the last N tiles of the stack are the held-out test split", None, "tile data"),
    # PatchCamelyon
    O("pcam_crop", int, None, "centre crop of the 96 px PatchCamelyon patches (32 in the PCam DDPM work)", None, "pcam data"),
    O("class_filter", int, None, "train on one PatchCamelyon class only (0 non-cancerous, 1 cancerous)", None, "pcam data"),
    # clusters
    O("cluster_file", str, None, "cluster CSV: sdm trains on --cluster_id of cluster.py's tiles; ldm takes every tile's cluster as its label", None, "clusters"),
    # optimisation
    O("optimizer", str, "adamw", "optimiser", ("adam", "adamw", "sgd"), "train"),
    O("learning_rate", float, 1e-4, "peak learning rate", None, "train", ("lr",)),
    O("weight_decay", float, 0.0, "weight decay", None, "train"),
    O("lr_schedule", str, "constant", "after warm-up: constant or cosine decay to zero", ("constant", "cosine"), "train"),
    O("warmup_steps", int, 0, "linear learning-rate warm-up steps", None, "train"),
    O("batch_size", int, 32, "training batch size per process", None, "train"),
    O("batch_validation", int, 64, "validation batch size", None, "train"),
    O("max_steps", int, 10000, "optimiser steps to train for", None, "train"),
    O("grad_accum", int, 1, "micro-batches accumulated per optimiser step (no all-reduce until the last)", None, "train"),
    O("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", None, "train"),
    O("ema_decay", float, None, "EMA decay of the weights (0: off; default 0.9995 for diffusion models, 0 for classifiers and autoencoders)", None, "train"),
    O("precision", str, "fp32", "fp32, bf16 autocast, or fp16 autocast with loss scaling (CUDA)", ("fp32", "bf16", "fp16"), "train"),
    O("loss_function", str, None, "diffusion and sdm: l1, l2 or huber (default l2); classifiers: bce", ("l1", "l2", "huber", "bce"), "train"),
    O("val_every", int, 500, "validate every N steps (0: only at the end)", None, "train"),
    O("val_batches", int, 0, "validation batches per validation (0: the whole set)", None, "train"),
    O("save_every", int, 0, "also keep a checkpoint every N steps (0: only last and best)", None, "train"),
    O("log_every", int, 50, "write training loss to the logs every N steps", None, "train"),
    O("early_stopping", int, 0, "stop after N validations without improvement (0: off)", None, "train"),
    O("compile", flag_bool, False, "torch.compile the network", None, "train"),
    O("channels_last", flag_bool, False, "channels-last memory format (faster convolutions on GPU)", None, "train"),
    # classifiers
    O("ensemble", int, None, "train ensemble member N (own seed, folder resnet/Ensemble_N)", None, "classifier"),
    O("pretrained_weights", str, None, "local torchvision ResNet state dict to start from", None, "classifier"),
    # diffusion (score-conditioned and sdm)
    O("timesteps", int, 1000, "diffusion steps T", None, "diffusion", ("diffusion_steps",)),
    O("schedule", str, "cosine", "noise schedule", ("linear", "cosine", "sigmoid"), "diffusion", ("noise_schedule",)),
    O("objective", str, "eps", "what the network predicts", ("eps", "x0", "v"), "diffusion"),
    O("learn_sigma", flag_bool, None, "learn the variance with the hybrid loss (default: on for sdm, off for diffusion)", None, "diffusion"),
    O("vlb_weight", float, 0.001, "weight lambda of the variational-bound term of the hybrid loss", None, "diffusion"),
    O("cond_drop_prob", float, None, "probability of dropping the condition in training, for guidance (default 0.1; sdm 0.2)", None, "diffusion", ("drop_rate",)),
    O("dim", int, 64, "UNet base channels", None, "diffusion", ("num_channels",)),
    O("dim_mults", int_list, [1, 2, 4], "channel multipliers per resolution level", None, "diffusion", ("channel_mult",)),
    O("num_res_blocks", int, 2, "residual blocks per level", None, "diffusion"),
    O("attention_resolutions", int_list, [16], "feature-map sizes with self-attention", None, "diffusion"),
    O("num_head_channels", int, 32, "channels per attention head", None, "diffusion"),
    O("mid_attention", flag_bool, True, "self-attention in the UNet's middle block (score and ldm UNets)", None, "conditioned diffusion"),
    O("dropout", float, 0.0, "dropout in residual blocks", None, "diffusion"),
    O("conditions", str_list, None, "conditions the UNet takes: score (WSI data, the default there), label (class or cluster id), or none", None, "conditioned diffusion"),
    # sdm
    O("spade_hidden", int, 128, "hidden channels of each SPADE block's convolutions", None, "sdm"),
    O("use_checkpoint", flag_bool, False, "gradient checkpointing (less memory, more compute)", None, "sdm"),
    O("resblock_updown", flag_bool, True, "down/up sampling inside residual blocks", None, "sdm"),
    O("use_scale_shift_norm", flag_bool, True, "time embedding as scale and shift of the normalised activations", None, "sdm"),
    # autoencoders
    O("ae_channels", int, 64, "autoencoder base channels", None, "autoencoder"),
    O("ae_channel_mult", int_list, [1, 2, 4], "autoencoder channel multipliers; downsampling factor 2**(levels-1)", None, "autoencoder"),
    O("ae_res_blocks", int, 1, "autoencoder residual blocks per level", None, "autoencoder"),
    O("latent_channels", int, 4, "channels of the latent", None, "autoencoder"),
    O("perceptual_weights", str, None, "local torchvision VGG16 state dict for the LPIPS perceptual loss (none: no perceptual loss)", None, "autoencoder"),
    O("lpips_weights", str, None, "optional LPIPS linear calibration weights (lin layers) for --perceptual_weights", None, "autoencoder"),
    O("perceptual_weight", float, 1.0, "weight of the perceptual loss", None, "autoencoder"),
    O("disc_start", int, 5000, "step at which the PatchGAN adversarial loss starts (a value past --max_steps: no GAN)", None, "autoencoder"),
    O("disc_weight", float, 0.5, "weight of the adaptive adversarial loss", None, "autoencoder"),
    O("disc_learning_rate", float, None, "discriminator learning rate (default: --learning_rate)", None, "autoencoder"),
    O("disc_channels", int, 64, "PatchGAN base channels", None, "autoencoder"),
    O("disc_layers", int, 3, "PatchGAN strided layers", None, "autoencoder"),
    O("codebook_size", int, 512, "VQ codebook entries", None, "vq"),
    O("commitment_weight", float, 0.25, "VQ commitment loss weight", None, "vq"),
    O("codebook_ema", flag_bool, True, "update the codebook by exponential moving averages (else by gradients)", None, "vq"),
    O("codebook_decay", float, 0.99, "EMA decay of the codebook", None, "vq"),
    O("dead_code_threshold", float, 1.0, "codes whose EMA usage falls below this are restarted from encoder outputs", None, "vq"),
    O("kl_weight", float, 1e-6, "weight of the KL term", None, "kl"),
    # latent diffusion
    O("autoencoder_ckpt", str, None, "checkpoint of a trained vqvae or autoencoder_kl (required for ldm)", None, "ldm"),
    O("cache_latents", flag_bool, False, "encode the training tiles once and train on the cached latents (no augmentation)", None, "ldm"),
    O("scale_batches", int, 20, "batches used to measure the latent scale factor (1 / std)", None, "ldm"),
    O("freeze_backbone", flag_bool, False, "fine-tuning: train only the condition (cluster) embedding", None, "ldm"),
)
BY_NAME = {o.name: o for o in OPTIONS}
ALIASES = {alias: o.name for o in OPTIONS for alias in o.aliases}
RESUME_MAY_CHANGE = {"max_steps", "device", "num_workers", "resume", "early_stopping", "val_every", "save_every", "log_every"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a diffusion model (score-conditioned or semantic/SDM) or a ResNet mitosis classifier.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of options (keys are flag names); flags override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in OPTIONS:
        group = groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        default = "" if opt.default is None else f" (default: {opt.default})"
        names = [f"--{opt.name}", *(f"--{a}" for a in opt.aliases)]
        if opt.kind is flag_bool and opt.default is not False:
            group.add_argument(*names, dest=opt.name, action=argparse.BooleanOptionalAction, help=opt.help + default)
        elif opt.kind is flag_bool:
            group.add_argument(*names, dest=opt.name, action="store_const", const=True, help=opt.help)
        else:
            group.add_argument(*names, dest=opt.name, type=str, help=opt.help + default, metavar=opt.name.upper())
    return parser


def convert(name: str, value: Any, source: str) -> Any:
    """Convert a raw CLI/YAML value to the option's type, with an error naming where it came from."""
    opt = BY_NAME.get(ALIASES.get(name, name))
    if opt is None:
        raise ConfigError(f"{source}: unknown option {name!r}")
    if value is None:
        return None
    try:
        out = opt.kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: option {opt.name} expects {opt.kind.__name__}, got {value!r} ({err})") from None
    if opt.choices is not None and out not in opt.choices:
        raise ConfigError(f"{source}: option {opt.name} must be one of {list(opt.choices)}, got {out!r}")
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
    return {ALIASES.get(k, k): convert(k, v, f"--config {path}") for k, v in raw.items()}


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
        if config.get("init_from"):
            raise ConfigError("--resume and --init_from contradict each other: resume continues its own weights")
        return config
    for name in ("dataset", "model_type"):
        if config[name] is None:
            choices = DATASETS if name == "dataset" else MODEL_TYPES
            raise ConfigError(f"--{name} is required (one of {', '.join(choices)})")
    model_type, explicit = config["model_type"], set(config.get("explicit", ()))
    wrong = sorted(n for n in explicit if n in BY_NAME and model_type not in GROUP_MODELS[BY_NAME[n].group])
    if wrong:
        raise ConfigError(f"--model_type {model_type} does not take --{', --'.join(wrong)}")
    if config["dataset"] not in MODEL_DATA[model_type]:
        wanted = MODEL_DATA[model_type]
        raise ConfigError(f"--model_type {model_type} trains on --dataset {' or '.join(wanted)}, not {config['dataset']}")
    is_diffusion = model_type in DIFFUSION_TYPES
    loss = config["loss_function"]
    if model_type in AUTOENCODERS:
        config["loss_function"] = loss or "l1"
        if config["loss_function"] not in ("l1", "l2"):
            raise ConfigError(f"--loss_function {loss}: autoencoders reconstruct with l1 or l2")
    elif is_diffusion:
        config["loss_function"] = loss or "l2"
        if config["loss_function"] not in DIFFUSION_LOSSES:
            raise ConfigError(f"--loss_function {loss} is for classifiers; {model_type} takes {DIFFUSION_LOSSES}")
        if config["learn_sigma"] is None:
            config["learn_sigma"] = model_type == "sdm"
        if config["cond_drop_prob"] is None:
            config["cond_drop_prob"] = 0.2 if model_type == "sdm" else 0.1
        if config["schedule"] == "linear" and config["timesteps"] <= 20:
            raise ConfigError(f"--schedule linear needs --timesteps above 20 (its last beta is 20 / T), got {config['timesteps']}")
        if not 0.0 <= config["cond_drop_prob"] <= 1.0:
            raise ConfigError(f"--cond_drop_prob must be in [0, 1], got {config['cond_drop_prob']}")
        if model_type in CONDITIONS:
            if config["conditions"] is None:
                config["conditions"] = ["score"] if config["dataset"] in WSI_DATASETS else []
            wanted = {"score": WSI_DATASETS, "label": PCAM_DATASETS + TILE_DATASETS}
            for name in set(config["conditions"]) & set(wanted):
                if config["dataset"] not in wanted[name]:
                    raise ConfigError(f"--conditions {name} needs --dataset {' or '.join(wanted[name])}, not {config['dataset']}")
            unknown = sorted(set(config["conditions"]) - set(CONDITIONS[model_type]))
            if unknown:
                raise ConfigError(f"--conditions: unknown condition(s) {unknown}; {model_type} takes: {', '.join(CONDITIONS[model_type])} or none")
        if model_type == "ldm":
            if not config["autoencoder_ckpt"]:
                raise ConfigError("--model_type ldm needs --autoencoder_ckpt (a trained vqvae or autoencoder_kl)")
            if "label" in config["conditions"] and not config["cluster_file"]:
                raise ConfigError("--conditions label needs --cluster_file (the tiles' cluster ids)")
    else:
        config["loss_function"] = loss or "bce"
        if config["loss_function"] != "bce":
            raise ConfigError(f"--loss_function {loss} is for diffusion; classifiers train with bce")
    if config["ema_decay"] is None:
        config["ema_decay"] = 0.9995 if is_diffusion else 0.0
    if model_type == "sdm" and config["cluster_file"] and config["cluster_id"] is None:
        raise ConfigError("--cluster_file for sdm needs --cluster_id (the cluster to train on)")
    if config["stride"] is None:
        config["stride"] = config["tile_size"]
    checks = [
        ("tile_size", config["tile_size"] >= 8, "at least 8"),
        ("stride", config["stride"] >= 1, "at least 1"),
        ("batch_size", config["batch_size"] >= 1, "at least 1"),
        ("batch_validation", config["batch_validation"] >= 1, "at least 1"),
        ("max_steps", config["max_steps"] >= 1, "at least 1"),
        ("grad_accum", config["grad_accum"] >= 1, "at least 1"),
        ("learning_rate", config["learning_rate"] > 0, "positive"),
        ("mite_ratio", 0.0 <= config["mite_ratio"] <= 1.0, "in [0, 1]"),
        ("ema_decay", 0.0 <= config["ema_decay"] < 1.0, "in [0, 1)"),
        ("vlb_weight", config["vlb_weight"] >= 0.0, "non-negative"),
        ("max_offset", config["max_offset"] >= 0, "non-negative"),
        ("num_workers", config["num_workers"] >= 0, "non-negative"),
        ("num_classes", config["num_classes"] >= 2, "at least 2 (background and nucleus)"),
        ("test_size", config["test_size"] >= 0, "non-negative"),
        ("scale_batches", config["scale_batches"] >= 1, "at least 1"),
        ("ensemble", config["ensemble"] is None or config["ensemble"] >= 0, "a non-negative member index"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"--{name} must be {expected}, got {config[name]}")
    if config["split"] == "slides" and config["split_file"] is None and config["dataset"] != "synthetic":
        raise ConfigError("--split slides needs --split_file CSV (columns slide,split)")
    if config["cluster_id"] is not None and not config["cluster_file"]:
        raise ConfigError("--cluster_id needs --cluster_file")
    return config


def run_dir_for(config: dict[str, Any]) -> Path:
    """model_weights/<diffusion|sdm>_<dataset>[_<date>] or model_weights/resnet[_<date>]/Ensemble_<N>."""
    suffix = f"_{config['date']}" if config.get("date") else ""
    out = Path(config["out_dir"])
    if config["model_type"] in DIFFUSION_TYPES + AUTOENCODERS:
        cluster = f"_cluster{config['cluster_id']}" if config.get("cluster_id") is not None else ""
        return out / f"{config['model_type']}_{config['dataset']}{cluster}{suffix}"
    member = config["ensemble"] if config["ensemble"] is not None else 0
    return out / f"resnet{suffix}" / f"Ensemble_{member}"


def map_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The condition maps an sdm model was trained with (stored so sampling builds the same maps)."""
    return {
        "num_classes": config["num_classes"],
        "instance": not config["no_instance"],
        "hv": bool(config["use_hv_map"]),
        "colour": bool(config["use_col_map"]),
    }

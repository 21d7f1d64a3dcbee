"""Numeric options out of range or not finite: train.py (flags and YAML --config) and inference.py refuse them
with exit code 2 and a message naming the option and the expected range, before anything is written."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest
import yaml

import inference
import train
from conftest import tiny_config
from model import load_checkpoint, resolve_config
from recipes.render import sampling_choice
from test_train import TINY_UNET

# Each row: (model type, dataset, option, bad value, words the message must contain).
TRAIN_BAD = [
    ("diffusion", "synthetic", "timesteps", "0", "at least 1"),
    ("diffusion", "synthetic", "dim", "0", "at least 1"),
    ("diffusion", "synthetic", "dropout", "2", "in [0, 1)"),
    ("diffusion", "synthetic", "dropout", "nan", "in [0, 1)"),
    ("diffusion", "synthetic", "weight_decay", "-1", "at least 0"),
    ("diffusion", "synthetic", "num_head_channels", "0", "at least 1"),
    ("diffusion", "synthetic", "dim_mults", "", "at least 1 value, each at least 1"),
    ("diffusion", "synthetic", "dim_mults", "1,0", "each at least 1"),
    ("diffusion", "synthetic", "attention_resolutions", "8,x", "each at least 1"),
    ("diffusion", "synthetic", "log_every", "0", "at least 1"),
    ("diffusion", "synthetic", "grad_clip", "nan", "at least 0"),
    ("diffusion", "synthetic", "learning_rate", "0", "greater than 0"),
    ("diffusion", "synthetic", "learning_rate", "inf", "greater than 0"),
    ("diffusion", "synthetic", "ema_decay", "1", "in [0, 1)"),
    ("diffusion", "synthetic", "batch_size", "0", "at least 1"),
    ("diffusion", "synthetic", "max_steps", "2.5", "at least 1"),
    ("diffusion", "synthetic", "warmup_steps", "-1", "at least 0"),
    ("diffusion", "synthetic", "val_every", "-1", "at least 0"),
    ("diffusion", "synthetic", "seed", "-1", "at least 0"),
    ("diffusion", "synthetic", "num_workers", "-1", "at least 0"),
    ("diffusion", "synthetic", "cond_drop_prob", "1.5", "in [0, 1]"),
    ("diffusion", "synthetic", "vlb_weight", "-0.1", "at least 0"),
    ("diffusion", "synthetic", "beta_range", "0.1", "exactly 2 values"),
    ("diffusion", "synthetic", "beta_range", "0.1,1", "each in (0, 1)"),
    ("diffusion", "synthetic", "tile_size", "4", "at least 8"),
    ("diffusion", "synthetic", "val_fraction", "1", "in [0, 1)"),
    ("diffusion", "synthetic", "mite_ratio", "nan", "in [0, 1]"),
    ("diffusion", "synthetic", "soft_thresholds", "nan,0.5", "comma-separated values"),
    ("resnet18", "synthetic", "color_jitter_p", "-0.5", "in [0, 1]"),
    ("resnet18", "synthetic", "color_jitter", "0.5,1.5", "exactly 8 values"),
    ("resnet18", "synthetic", "classifier_upsample", "0", "at least 1"),
    ("sdm", "synthetic_monuseg", "num_classes", "1", "at least 2"),
    ("sdm", "synthetic_monuseg", "spade_hidden", "0", "at least 1"),
    ("diffusion", "synthetic_pcam", "class_filter", "2", "in [0, 1]"),
    ("vqvae", "synthetic_tiles", "codebook_decay", "1", "in [0, 1)"),
    ("vqvae", "synthetic_tiles", "ae_channel_mult", "none", "at least 1 value"),
    ("autoencoder_kl", "synthetic_tiles", "kl_weight", "-1e-6", "at least 0"),
    ("ldm", "synthetic_tiles", "scale_batches", "0", "at least 1"),
    ("stedm", "synthetic_regions", "style_drop_prob", "inf", "in [0, 1]"),
    ("stedm", "synthetic_regions", "mpp", "0", "greater than 0"),
    ("segmentation", "seg_tiles", "seg_classes", "1", "at least 2"),
    ("segmentation", "seg_tiles", "ratios", "0.5,-0.5", "each at least 0"),
]
ROW_IDS = [f"{row[2]}={row[3]!r}" for row in TRAIN_BAD]

# Values at the edge of their range, accepted alike from the CLI and from a YAML --config.
TRAIN_EDGES = [
    ("dropout", "0"), ("ema_decay", "0"), ("cond_drop_prob", "1"), ("grad_clip", "0"), ("val_fraction", "0"),
    ("mite_ratio", "1"), ("seed", "0"), ("num_workers", "0"), ("timesteps", "1"), ("attention_resolutions", "none"),
    ("dim_mults", "1"), ("tile_size", "8"), ("val_every", "0"), ("weight_decay", "0"),
]


def exit_code(main: Callable[[Sequence[str]], int], argv: list[str]) -> int:
    """main's return value, or the code of the SystemExit that argparse raises."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def check_refused(code: int, err: str, words: Sequence[str], out: Path) -> None:
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


@pytest.mark.parametrize("model_type, dataset, option, value, expected", TRAIN_BAD, ids=ROW_IDS)
def test_train_flag_out_of_range(tmp_path, capsys, model_type, dataset, option, value, expected):
    out = tmp_path / "runs"
    argv = ["--dataset", dataset, "--model_type", model_type, f"--{option}={value}", "--out_dir", str(out)]
    code = exit_code(train.main, argv)
    words = [f"--{option} must be ", expected, f"(option {option} expects", repr(value)]
    check_refused(code, capsys.readouterr().err, words, out)


def yaml_value(value: str):
    """The YAML scalar or list a user would write for a flag's text."""
    if value in ("nan", "inf"):
        return float(value)
    if "," in value:
        return [yaml.safe_load(v) for v in value.split(",")]
    return yaml.safe_load(value) if value else []


@pytest.mark.parametrize("model_type, dataset, option, value, expected", TRAIN_BAD, ids=ROW_IDS)
def test_train_yaml_key_out_of_range(tmp_path, capsys, model_type, dataset, option, value, expected):
    out = tmp_path / "runs"
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"dataset": dataset, "model_type": model_type, option: yaml_value(value),
                                      "out_dir": str(out)}))
    code = exit_code(train.main, ["--config", str(preset)])
    check_refused(code, capsys.readouterr().err, [f"--config {preset}: {option} must be", expected], out)


@pytest.mark.parametrize("option", ["timesteps", "dim_mults", "grad_clip"])
def test_train_yaml_key_without_a_value(tmp_path, capsys, option):
    preset = tmp_path / "preset.yaml"
    preset.write_text(f"dataset: synthetic\nmodel_type: diffusion\nout_dir: {tmp_path / 'runs'}\n{option}:\n")
    code = exit_code(train.main, ["--config", str(preset)])
    check_refused(code, capsys.readouterr().err, [f"--config {preset}: {option} must be", "got no value"], tmp_path / "runs")


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["not a text file (expected UTF-8 YAML)"]),
    ("tile_size: 64\nschedule: linéaire\n".encode("latin-1"), ["not a text file"]),
    (b"- dataset\n- synthetic\n", ["expected a mapping of option names to values"]),
    (b"dataset: [unclosed\n", ["not valid YAML"]),
    (b"dataset: !!python/object/apply:os.system [echo unsafe]\n", ["not valid YAML"]),
], ids=["binary", "latin1", "list", "broken", "python_tag"])
def test_train_config_file_that_is_no_yaml_mapping(tmp_path, capsys, content, words):
    preset = tmp_path / "preset.yaml"
    preset.write_bytes(content)
    code = exit_code(train.main, ["--config", str(preset), "--out_dir", str(tmp_path / "runs")])
    check_refused(code, capsys.readouterr().err, [f"--config {preset}", *words], tmp_path / "runs")


@pytest.mark.parametrize("argv, words", [
    (["--warmup_steps", "11", "--max_steps", "10"], ["--warmup_steps 11", "--max_steps 10"]),
    (["--beta_range", "0.02,0.01", "--schedule", "scaled_linear"], ["--beta_range", "first <= last"]),
    (["--schedule", "linear", "--timesteps", "20"], ["--schedule linear", "--timesteps above 20"]),
], ids=["warmup_past_max_steps", "beta_range_decreasing", "linear_schedule_short"])
def test_train_options_that_contradict_each_other(tmp_path, capsys, argv, words):
    out = tmp_path / "runs"
    code = exit_code(train.main, ["--dataset", "synthetic", "--model_type", "diffusion", "--out_dir", str(out), *argv])
    check_refused(code, capsys.readouterr().err, words, out)


@pytest.mark.parametrize("option, value", TRAIN_EDGES, ids=[f"{o}={v}" for o, v in TRAIN_EDGES])
def test_train_edge_values_are_accepted(tmp_path, option, value):
    flags = resolve_config(["--dataset", "synthetic", "--model_type", "diffusion", f"--{option}", value])
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"dataset": "synthetic", "model_type": "diffusion", option: yaml_value(value)}))
    assert resolve_config(["--config", str(preset)])[option] == flags[option]


def test_warmup_may_equal_max_steps():
    config = resolve_config(["--dataset", "synthetic", "--model_type", "diffusion", "--warmup_steps", "10", "--max_steps", "10"])
    assert config["warmup_steps"] == config["max_steps"] == 10


@pytest.mark.parametrize("extra, words", [
    ({"num_head_channels": 32}, ["--num_head_channels 32", "--dim 8", "[16]"]),
    ({"attention_resolutions": 64}, ["--attention_resolutions", "[64] never occur", "16 px"]),
], ids=["heads_do_not_divide_channels", "attention_level_missing"])
def test_train_unet_options_that_do_not_fit(synthetic_root, tmp_path, capsys, extra, words):
    out = tmp_path / "runs"
    argv = tiny_config(synthetic_root, out, **{**TINY_UNET, "max_steps": 1, "val_every": 0, **extra})
    code = exit_code(train.main, argv)
    check_refused(code, capsys.readouterr().err, words, out / "diffusion_synthetic")


# ----------------------------------------------------------------------------------------------- inference.py

@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A score-conditioned diffusion checkpoint with T = 50 timesteps."""
    out = tmp_path_factory.mktemp("runs")
    return train.run(tiny_config(synthetic_root, out, **{**TINY_UNET, "max_steps": 1, "val_every": 0})) / "last.pt"


# Refused by the parser, before any checkpoint is read: (flags, words).
INFERENCE_FLAG_BAD = [
    (["--eta", "nan"], ["argument --eta", "a finite number >= 0", "'nan'"]),
    (["--eta", "-1"], ["argument --eta", "a finite number >= 0"]),
    (["--cfg_scale", "nan"], ["argument --cfg_scale/--s", "a finite number >= 0"]),
    (["--s", "1.5", "nan"], ["argument --cfg_scale/--s", "'nan'"]),
    (["--cfg_scale", "-2"], ["argument --cfg_scale/--s", "a finite number >= 0"]),
    (["--batch_size", "0"], ["argument --batch_size", "an integer >= 1"]),
    (["--steps", "0"], ["argument --steps", "an integer >= 1"]),
    (["--seed", "-3"], ["argument --seed", "an integer >= 0"]),
    (["--trajectory_every", "0"], ["argument --trajectory_every", "an integer >= 1"]),
    (["--strength", "0"], ["argument --strength", "> 0 and <= 1"]),
    (["--strength", "inf"], ["argument --strength", "> 0 and <= 1"]),
    (["--num_sequences", "0"], ["argument --num_sequences", "an integer >= 1"]),
    (["--from_patch", "0", "-1"], ["argument --from_patch", "an integer >= 0"]),
    (["--num_per_cluster", "0"], ["argument --num_per_cluster", "an integer >= 1"]),
    (["--cluster_ids", "-1"], ["argument --cluster_ids", "an integer >= 0"]),
    (["--num_samples", "0"], ["argument --num_samples", "an integer >= 1"]),
    (["--cfg_rescale", "1.5"], ["argument --cfg_rescale", ">= 0 and <= 1"]),
    (["--cfg_rescale", "nan"], ["argument --cfg_rescale", ">= 0 and <= 1"]),
]


@pytest.mark.parametrize("flags, words", INFERENCE_FLAG_BAD, ids=[" ".join(f) for f, _ in INFERENCE_FLAG_BAD])
def test_inference_flag_out_of_range(tmp_path, capsys, flags, words):
    out = tmp_path / "o"
    code = exit_code(inference.main, ["--ckpt", str(tmp_path / "any.pt"), *flags, "--out_dir", str(out)])
    check_refused(code, capsys.readouterr().err, words, out)


# Refused once the checkpoint (T = 50) is known: (flags, words).
INFERENCE_CHECKPOINT_BAD = [
    (["--conditions", "nan,inf"], ["--condition_values", "finite"]),
    (["--conditions", "0:inf:3"], ["--condition_values", "finite"]),
    (["--timestep_respacing", "5000"], ["--timestep_respacing 5000", "--timesteps 50", "at most 50"]),
    (["--timestep_respacing", "ddim51"], ["--timestep_respacing ddim51", "--timesteps 50"]),
    (["--timestep_respacing", "10,30"], ["--timestep_respacing 10,30", "--timesteps 50"]),
    (["--steps", "51"], ["--steps 51", "--timesteps 50"]),
    (["--sampler", "ddpm", "--steps", "60"], ["--steps 60", "--timesteps 50"]),
]


@pytest.mark.parametrize("flags, words", INFERENCE_CHECKPOINT_BAD, ids=[" ".join(f) for f, _ in INFERENCE_CHECKPOINT_BAD])
def test_inference_value_that_does_not_fit_the_checkpoint(checkpoint, tmp_path, capsys, flags, words):
    out = tmp_path / "o"
    argv = ["--ckpt", str(checkpoint), "--classifier_ckpts", str(tmp_path / "classifiers"), *flags, "--out_dir", str(out)]
    code = exit_code(inference.main, argv)
    check_refused(code, capsys.readouterr().err, [*words, "error: "], out)


@pytest.mark.parametrize("flags, sampler, steps", [
    ([], "dpmpp_2m", 15),
    (["--timestep_respacing", "50"], "ddpm", 50),
    (["--timestep_respacing", "ddim50"], "ddim", 50),
    (["--timestep_respacing", "25,25"], "ddpm", "25,25"),
    (["--sampler", "ddpm", "--steps", "50", "--eta", "0", "--cfg_scale", "0", "--strength", "1"], "ddpm", 50),
], ids=["defaults", "respacing_T", "ddim_T", "sections_T", "edges"])
def test_inference_edge_values_are_accepted(checkpoint, flags, sampler, steps):
    args = inference.build_parser().parse_args(["--ckpt", str(checkpoint), *flags])
    spec = sampling_choice(args, cfg_scale=(args.cfg_scale or [1.0])[0], checkpoints=[load_checkpoint(checkpoint)])
    assert (spec.sampler, spec.steps) == (sampler, steps)

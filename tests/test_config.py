"""Option parsing: YAML presets, CLI overrides, and contradictory or unknown options."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from model import resolve_config as resolve
from model import MODEL_TYPES, options_markdown, run_dir_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_cli_overrides_yaml(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("dataset: synthetic\nmodel_type: diffusion\nbatch_size: 8\ndim_mults: [1, 2]\n")
    config = resolve(["--config", str(preset), "--batch_size", "4"])
    assert config["batch_size"] == 4 and config["dim_mults"] == [1, 2]
    assert config["loss_function"] == "l2" and config["ema_decay"] == pytest.approx(0.9995)


def test_classifier_defaults():
    config = resolve(["--dataset", "synthetic", "--model_type", "resnet34", "--ensemble", "2"])
    assert config["loss_function"] == "bce" and config["ema_decay"] == 0.0
    assert run_dir_for(config).parts[-2:] == ("resnet", "Ensemble_2")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "synthetic", "--model_type", "diffusion", "--ensemble", "1"], "does not take --ensemble"),
        (["--dataset", "synthetic", "--model_type", "resnet18", "--dim", "32"], "does not take --dim"),
        (["--dataset", "synthetic", "--model_type", "resnet18", "--loss_function", "l1"], "classifiers train with bce"),
        (["--dataset", "synthetic", "--model_type", "diffusion", "--loss_function", "bce"], "diffusion takes"),
        (["--dataset", "synthetic", "--model_type", "diffusion", "--conditions", "colour"], "unknown condition"),
        (["--dataset", "synthetic", "--model_type", "diffusion", "--conditions", "label"], "--conditions label needs --dataset pcam"),
        (["--dataset", "synthetic", "--model_type", "diffusion", "--mite_ratio", "1.5"], "--mite_ratio must be in"),
        (["--dataset", "synthetic", "--model_type", "diffusion", "--batch_size", "x"], "batch_size expects int"),
        (["--dataset", "nowhere", "--model_type", "diffusion"], "dataset must be one of"),
        (["--model_type", "diffusion"], "--dataset is required"),
        (["--resume", "runs/x", "--overwrite"], "contradict"),
    ],
)
def test_bad_options(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve(argv)


def test_unknown_yaml_key_names_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("dataset: synthetic\nmodel_type: diffusion\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown option 'batchsize'"):
        resolve(["--config", str(preset)])


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        resolve(["--dataset", "synthetic", "--model_type", "diffusion", "--no_such_flag", "1"])
    assert exc.value.code == 2
    assert "--no_such_flag" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_resolves(preset):
    config = resolve(["--config", str(CONFIGS / preset)] + (["--ensemble", "0"] if "resnet" in preset else []))
    assert config["model_type"] in MODEL_TYPES


def test_readme_option_tables_are_the_registry_tables():
    readme = (CONFIGS.parent / "README.md").read_text()
    start = readme.index("<!-- flags -->\n") + len("<!-- flags -->\n")
    assert readme[start:readme.index("<!-- /flags -->")] == options_markdown()


def test_option_groups_name_the_model_types_that_take_them():
    tables = options_markdown()
    assert "**sdm** (sdm)" in tables and "**classifier** (resnet18, resnet34, resnet50)" in tables
    assert "**diffusion** (diffusion, ldm, sdm, stedm)" in tables and "**run** (all model types)" in tables

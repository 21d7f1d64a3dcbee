"""Checkpoints of format version 1 (the score UNet and SDMUNet of that time) keep loading and predicting the same.

tests/fixtures/legacy_*_v1.pt were written by the trainer of that version (see tests/fixtures/README.md); beside
each, *_outputs.pt holds a fixed input (x, t, cond, drop_cond) and that network's outputs for it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import model as model_module
from common.checkpoint import FORMAT_VERSION, READABLE_VERSIONS
from common.errors import CheckpointError
from diffusion.unet import UNet, legacy_parameter_name, upgrade_state_dict, upgrade_unet_config

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = ["legacy_diffusion_v1", "legacy_sdm_v1"]


def legacy_state(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def reference(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_checkpoint_gives_the_stored_outputs(name):
    loaded = model_module.load_checkpoint(FIXTURES / f"{name}.pt")
    ref = reference(name)
    assert isinstance(loaded.model, UNet) and not loaded.model.training
    with torch.no_grad():
        out = loaded.model(ref["x"], ref["t"], ref["cond"])
        dropped = loaded.model(ref["x"], ref["t"], ref["cond"], ref["drop_cond"])
    assert out.abs().mean() > 1e-2  # a trained network, not the zero-initialised output conv
    torch.testing.assert_close(out, ref["out"], atol=1e-6, rtol=0)
    torch.testing.assert_close(dropped, ref["out_dropped"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_config_upgrades_to_the_same_architecture(name):
    state = legacy_state(name)
    old = state["model_config"]["unet"]
    new = upgrade_unet_config(old)
    assert {"attn_resolutions", "model_channels", "channel_mult"}.isdisjoint(new)
    assert upgrade_unet_config(new) == new
    net = UNet(**new)
    assert net.config == new
    shapes = {key: tuple(value.shape) for key, value in upgrade_state_dict(state["model"]).items()}
    assert shapes == {key: tuple(value.shape) for key, value in net.state_dict().items()}


@pytest.mark.parametrize("name", LEGACY)
def test_parameter_order_is_unchanged(name):
    """Optimizer state maps to parameters by position, so --resume of a version-1 run needs the same order."""
    state = legacy_state(name)
    net = UNet(**upgrade_unet_config(state["model_config"]["unet"]))
    parameters = dict(net.named_parameters())
    legacy_order = [key for key in upgrade_state_dict(state["model"]) if key in parameters]
    assert legacy_order == list(parameters)


def test_score_unet_upgrade_renames_only_the_earlier_names():
    old = {"image_size": 16, "dim": 8, "dim_mults": [1, 2], "attn_resolutions": [8], "num_head_channels": 8}
    new = upgrade_unet_config(old)
    assert new["attention_resolutions"] == [8] and new["conditions"] == ["score"] and not new["resblock_updown"]
    assert upgrade_unet_config({**new, "dim_mults": (1, 2)})["dim_mults"] == [1, 2]
    with pytest.raises(ValueError, match="both 'attn_resolutions'"):
        upgrade_unet_config({**new, "attn_resolutions": [8]})
    assert legacy_parameter_name("down.0.0.in_layers.0.weight") == "input_blocks.0.0.in_norm.weight"
    assert legacy_parameter_name("up.2.1.in_layers.2.bias") == "output_blocks.2.1.in_conv.bias"
    assert legacy_parameter_name("mid.1.qkv.weight") == "middle_block.1.qkv.weight"
    assert legacy_parameter_name("init_conv.weight") == "input_conv.weight"
    for current in ("input_blocks.0.0.in_norm.weight", "cond_embed.embeddings.score.mlp.0.weight", "out_norm.bias"):
        assert legacy_parameter_name(current) == current


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_weights_load_into_a_nested_unet(name):
    """The renaming works below a prefix too (the UNet of latent diffusion) and in copies (the EMA model)."""
    state = legacy_state(name)
    ref = reference(name)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = UNet(**upgrade_unet_config(state["model_config"]["unet"]))

    wrapper = copy.deepcopy(Wrapper())
    weights = {f"unet.{key}": value for key, value in state["ema"].items()}
    wrapper.load_state_dict(weights, strict=True)
    assert list(weights) == [f"unet.{key}" for key in state["ema"]]  # the caller's dict is left as it was
    with torch.no_grad():
        out = wrapper.unet.eval()(ref["x"], ref["t"], ref["cond"])
    torch.testing.assert_close(out, ref["out"], atol=1e-6, rtol=0)


def test_format_version_two_is_written_and_one_and_two_are_read(tmp_path):
    assert FORMAT_VERSION == 2 and READABLE_VERSIONS == (1, 2)
    state = legacy_state("legacy_diffusion_v1")
    assert state["format_version"] == 1
    for version in (2, 3):
        path = tmp_path / f"v{version}.pt"
        torch.save({**state, "format_version": version}, path)
        if version in READABLE_VERSIONS:
            assert model_module.load_checkpoint(path).step == state["step"]
        else:
            with pytest.raises(CheckpointError, match="format version 3"):
                model_module.load_checkpoint(path)

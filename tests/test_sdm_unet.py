"""The semantic (SDM) use of the UNet: SPADE, the zero-map null, and an encoder blind to the layout.

Shapes, gradient checkpointing, config round trips and argument checks of the semantic network are covered
with the other networks in test_unet.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion.guidance import classifier_free_guidance
from diffusion.spade import SPADE, norm_groups
from diffusion.unet import UNet, upgrade_unet_config
from diffusion.unet_blocks import ResBlock
from test_unet import SEMANTIC, inputs, layouts, tiny_unet


def tiny_sdm(**overrides) -> UNet:
    return tiny_unet(**{**SEMANTIC, **overrides})


def sdm_inputs(model: UNet, batch: int = 2):
    """Noisy images, timesteps and two different semantic maps for model."""
    x, t = inputs(model, batch=batch)
    return (x, t, *layouts(model, x))


# SPADE


def test_spade_output_depends_on_the_map():
    torch.manual_seed(0)
    spade = SPADE(8, 3, hidden=16)
    x = torch.randn(2, 8, 8, 8)
    seg = torch.zeros(2, 3, 8, 8)
    other = seg.clone()
    other[:, 1, 2:5, 2:5] = 1.0
    out, out_other = spade(x, seg), spade(x, other)
    assert (out - out_other).abs().max() > 1e-3
    # the change stays near the changed pixels (two 3x3 convs reach two pixels further)
    torch.testing.assert_close(out_other[:, :, :, 7], out[:, :, :, 7])


def test_spade_zero_map_is_group_norm_with_the_conv_biases():
    torch.manual_seed(0)
    spade = SPADE(8, 3, hidden=16)
    x = torch.randn(2, 8, 6, 6) * 3 + 1
    out = spade(x, torch.zeros(2, 3, 6, 6))
    normalised = F.group_norm(x, norm_groups(8))
    expected = normalised * (1 + spade.gamma.bias.view(1, -1, 1, 1)) + spade.beta.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)
    groups = normalised.view(2, norm_groups(8), -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(2, norm_groups(8)), atol=1e-5, rtol=0)
    torch.testing.assert_close(groups.var(-1, unbiased=False), torch.ones(2, norm_groups(8)), atol=1e-3, rtol=0)


def test_spade_resizes_the_map_with_nearest_neighbours():
    torch.manual_seed(0)
    spade = SPADE(4, 2, hidden=8)
    x = torch.randn(1, 4, 4, 4)
    seg = torch.rand(1, 2, 16, 16)
    torch.testing.assert_close(spade(x, seg), spade(x, seg[:, :, ::4, ::4]))


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (1, 3, 8, 8), (2, 3, 8)])
def test_spade_rejects_a_map_of_the_wrong_shape(shape):
    spade = SPADE(4, 3, hidden=8)
    with pytest.raises(ValueError, match="seg must have shape"):
        spade(torch.randn(2, 4, 8, 8), torch.zeros(shape))


def test_a_spade_res_block_needs_the_map():
    block = ResBlock(4, 4, emb_dim=8, semantic_channels=2, spade_hidden=4)
    with pytest.raises(ValueError, match="needs the semantic map"):
        block(torch.randn(1, 4, 4, 4), torch.randn(1, 8))


# conditioning


def test_semantic_map_and_timestep_change_the_output():
    model = tiny_sdm().eval()
    x, t, seg, other = sdm_inputs(model)
    with torch.no_grad():
        out = model(x, t, {"semantic": seg})
        assert (out - model(x, t, {"semantic": other})).abs().max() > 1e-4
        assert (out - model(x, t + 100, {"semantic": seg})).abs().max() > 1e-4


def test_drop_cond_uses_the_zero_map():
    model = tiny_sdm().eval()
    x, t, seg, other = sdm_inputs(model)
    everything = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        zero_map = model(x, t, {"semantic": torch.zeros_like(seg)})
        dropped = model(x, t, {"semantic": seg}, everything)
        torch.testing.assert_close(dropped, zero_map)
        torch.testing.assert_close(model(x, t, {"semantic": other}, everything), zero_map)
        torch.testing.assert_close(model(x, t, None, everything), zero_map)
        torch.testing.assert_close(model(x, t, {"semantic": seg}, True), zero_map)
        first_only = model(x, t, {"semantic": seg}, torch.tensor([True, False]))
        conditional = model(x, t, {"semantic": seg})
    torch.testing.assert_close(first_only[0], zero_map[0])
    torch.testing.assert_close(first_only[1], conditional[1])
    assert (conditional[0] - zero_map[0]).abs().max() > 1e-4


def test_dropped_rows_ignore_nan_maps():
    model = tiny_sdm().eval()
    x, t, seg, _ = sdm_inputs(model)
    with torch.no_grad():
        out = model(x, t, {"semantic": torch.full_like(seg, float("nan"))}, torch.ones(2, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_training_dropout_probability_one_is_the_zero_map_and_eval_is_deterministic():
    model = tiny_sdm(cond_drop_prob=1.0)
    x, t, seg, _ = sdm_inputs(model)
    with torch.no_grad():
        model.train()
        trained = model(x, t, {"semantic": seg})
        model.eval()
        zero_map = model(x, t, {"semantic": torch.zeros_like(seg)})
        first, second = model(x, t, {"semantic": seg}), model(x, t, {"semantic": seg})
    torch.testing.assert_close(trained, zero_map)
    assert torch.equal(first, second)
    assert (first - zero_map).abs().max() > 1e-4


def test_training_dropout_draws_rows_from_the_global_rng():
    model = tiny_sdm(cond_drop_prob=0.5)
    x, t, seg, _ = sdm_inputs(model, batch=8)
    torch.manual_seed(5)
    expected_drop = torch.rand(8) < 0.5
    assert 0 < int(expected_drop.sum()) < 8
    with torch.no_grad():
        model.eval()
        reference = model(x, t, {"semantic": seg}, expected_drop)
        model.train()
        torch.manual_seed(5)
        trained = model(x, t, {"semantic": seg})
    torch.testing.assert_close(trained, reference)


def test_classifier_free_guidance_combines_conditional_and_zero_map_passes():
    model = tiny_sdm().eval()
    x, t, seg, _ = sdm_inputs(model)
    with torch.no_grad():
        conditional = model(x, t, {"semantic": seg})
        unconditional = model(x, t, {"semantic": torch.zeros_like(seg)})
        guided = classifier_free_guidance(model, {"semantic": seg}, 3.0)(x, t)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_bad_conditions_raise_value_error():
    model = tiny_sdm().eval()
    x, t, seg, _ = sdm_inputs(model)
    with pytest.raises(ValueError, match="'semantic' is missing"):
        model(x, t, {})
    with pytest.raises(ValueError, match="'semantic' is missing"):
        model(x, t, None, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"cond\['semantic'\] must have shape"):
        model(x, t, {"semantic": seg[:, :1]})
    with pytest.raises(ValueError, match=r"cond\['semantic'\] must have shape"):
        model(x, t, {"semantic": seg[:, :, :8, :8]})
    with pytest.raises(ValueError, match="drop_cond"):
        model(x, t, {"semantic": seg}, torch.ones(2))
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :2], t, {"semantic": seg})
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1], {"semantic": seg})


# encoder isolation


def encoder_outputs(model: UNet, x, t, seg) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    stages = [model.input_conv, *model.input_blocks]
    hooks = [stage.register_forward_hook(lambda m, a, out: outputs.append(out)) for stage in stages]
    with torch.no_grad():
        model(x, t, {"semantic": seg})
    for hook in hooks:
        hook.remove()
    return outputs


def test_encoder_does_not_see_the_semantic_map():
    model = tiny_sdm().eval()
    x, t, seg, other = sdm_inputs(model)
    first, second = encoder_outputs(model, x, t, seg), encoder_outputs(model, x, t, other)
    assert len(first) == 1 + len(model.input_blocks)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_concatenated_semantic_map_reaches_the_encoder():
    model = tiny_sdm(concat_semantic=True).eval()
    assert model.input_conv.in_channels == 3 + 2
    x, t, seg, other = sdm_inputs(model)
    first, second = encoder_outputs(model, x, t, seg), encoder_outputs(model, x, t, other)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(first, second))


# the earlier SDMUNet's layout


def test_earlier_sdm_defaults_build_the_128px_sdm_layout():
    config = upgrade_unet_config({"model_channels": 64})
    assert config["dim_mults"] == [1, 1, 2, 2, 4] and config["out_channels"] == 6 and config["image_size"] == 128
    assert config["conditions"] == ["semantic"] and config["resblock_updown"] and config["cond_drop_prob"] == 0.2
    model = UNet(**config)
    spade_blocks = [m for m in model.modules() if isinstance(m, ResBlock) and m.semantic]
    assert len(spade_blocks) == 2 + 5 * 3 + 4  # middle, decoder blocks, decoder upsampling blocks
    assert not any(isinstance(m, SPADE) for m in model.input_blocks.modules())

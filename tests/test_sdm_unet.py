from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffusion.guidance import classifier_free_guidance
from diffusion.sdm_unet import ResBlock, SDMUNet
from diffusion.spade import SPADE
from diffusion.unet import norm_groups

TINY = dict(
    image_size=16, in_channels=3, out_channels=6, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(8,), num_head_channels=8, semantic_channels=2, cond_drop_prob=0.0,
)


def tiny_sdm(**overrides) -> SDMUNet:
    """A tiny SDM UNet whose zero-initialised output conv is perturbed, so its output depends on its inputs."""
    torch.manual_seed(0)
    model = SDMUNet(**{**TINY, **overrides})
    torch.nn.init.normal_(model.final_conv.weight, std=0.1)
    torch.nn.init.normal_(model.final_conv.bias, std=0.1)
    return model


def inputs(model: SDMUNet, batch: int = 2, size: tuple[int, int] | None = None, seed: int = 1):
    """Noisy images, timesteps and two different semantic maps for model."""
    height, width = size or (model.config["image_size"],) * 2
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, height, width, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    maps = [torch.rand(batch, model.semantic_channels, height, width, generator=generator).round() for _ in range(2)]
    return x, t, maps[0], maps[1]


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


# shapes


def expected_feature_shapes(config: dict, height: int, width: int) -> tuple[list, list]:
    """(channels, height, width) after every encoder and every decoder stage of an SDM UNet."""
    mc, mults, blocks = config["model_channels"], config["channel_mult"], config["num_res_blocks"]
    encoder, decoder = [], []
    for level, mult in enumerate(mults):
        scale = 2**level
        encoder += [(mc * mult, height // scale, width // scale)] * blocks
        if level < len(mults) - 1:
            encoder.append((mc * mult, height // (2 * scale), width // (2 * scale)))
    for level in reversed(range(len(mults))):
        scale = 2**level
        decoder += [(mc * mults[level], height // scale, width // scale)] * blocks
        up = scale // 2 if level > 0 else scale
        decoder.append((mc * mults[level], height // up, width // up))
    return encoder, decoder


@pytest.mark.parametrize(
    "overrides, size",
    [
        (dict(), None),
        (dict(image_size=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16, 8),
              resblock_updown=False, use_scale_shift_norm=False), None),
        (dict(in_channels=1, out_channels=2, channel_mult=(1,), attention_resolutions=(), concat_semantic=True,
              semantic_channels=4), None),
        (dict(channel_mult=(1, 1, 2), attention_resolutions=(16, 4), dropout=0.1), (16, 32)),
    ],
)
def test_feature_shapes_at_every_level_and_learned_sigma_output(overrides, size):
    model = tiny_sdm(**overrides).eval()
    config = model.config
    assert config["out_channels"] == 2 * config["in_channels"]
    x, t, seg, _ = inputs(model, size=size)
    seen: dict[str, list] = {"encoder": [], "decoder": []}
    hooks = [stage.register_forward_hook(lambda m, a, out: seen["encoder"].append(tuple(out.shape[1:])))
             for stage in model.input_blocks]
    hooks += [stage.register_forward_hook(lambda m, a, out: seen["decoder"].append(tuple(out.shape[1:])))
              for stage in model.output_blocks]
    with torch.no_grad():
        out = model(x, t, {"semantic": seg})
    for hook in hooks:
        hook.remove()
    encoder, decoder = expected_feature_shapes(config, x.shape[2], x.shape[3])
    assert seen["encoder"] == encoder
    assert seen["decoder"] == decoder
    assert out.shape == (2, config["out_channels"], x.shape[2], x.shape[3])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("overrides", [dict(), dict(resblock_updown=False, concat_semantic=True)])
def test_channels_last_input_and_model_give_the_same_output(overrides):
    model = tiny_sdm(**overrides).eval()
    x, t, seg, _ = inputs(model)
    cl = torch.channels_last
    with torch.no_grad():
        out = model(x, t, {"semantic": seg})
        out_cl = model(x.contiguous(memory_format=cl), t, {"semantic": seg.contiguous(memory_format=cl)})
        model.to(memory_format=cl)
        out_cl_model = model(x.contiguous(memory_format=cl), t, {"semantic": seg.contiguous(memory_format=cl)})
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_cl_model, out, atol=1e-5, rtol=1e-4)


def test_output_conv_is_zero_initialised():
    model = SDMUNet(**TINY)
    x, t, seg, _ = inputs(model)
    assert torch.equal(model(x, t, {"semantic": seg}), torch.zeros(2, 6, 16, 16))


# conditioning


def test_semantic_map_and_timestep_change_the_output():
    model = tiny_sdm().eval()
    x, t, seg, other = inputs(model)
    with torch.no_grad():
        out = model(x, t, {"semantic": seg})
        assert (out - model(x, t, {"semantic": other})).abs().max() > 1e-4
        assert (out - model(x, t + 100, {"semantic": seg})).abs().max() > 1e-4


def test_drop_cond_uses_the_zero_map():
    model = tiny_sdm().eval()
    x, t, seg, other = inputs(model)
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
    x, t, seg, _ = inputs(model)
    with torch.no_grad():
        out = model(x, t, {"semantic": torch.full_like(seg, float("nan"))}, torch.ones(2, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_training_dropout_probability_one_is_the_zero_map_and_eval_is_deterministic():
    model = tiny_sdm(cond_drop_prob=1.0)
    x, t, seg, _ = inputs(model)
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
    x, t, seg, _ = inputs(model, batch=8)
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
    x, t, seg, _ = inputs(model)
    with torch.no_grad():
        conditional = model(x, t, {"semantic": seg})
        unconditional = model(x, t, {"semantic": torch.zeros_like(seg)})
        guided = classifier_free_guidance(model, {"semantic": seg}, 3.0)(x, t)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_bad_conditions_raise_value_error():
    model = tiny_sdm().eval()
    x, t, seg, _ = inputs(model)
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


def encoder_outputs(model: SDMUNet, x, t, seg) -> list[torch.Tensor]:
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
    x, t, seg, other = inputs(model)
    first, second = encoder_outputs(model, x, t, seg), encoder_outputs(model, x, t, other)
    assert len(first) == 1 + len(model.input_blocks)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_concatenated_semantic_map_reaches_the_encoder():
    model = tiny_sdm(concat_semantic=True).eval()
    assert model.input_conv.in_channels == 3 + 2
    x, t, seg, other = inputs(model)
    first, second = encoder_outputs(model, x, t, seg), encoder_outputs(model, x, t, other)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(first, second))


# gradient checkpointing


@pytest.mark.parametrize("resblock_updown", [True, False])
def test_checkpointing_gives_the_same_outputs_and_gradients(resblock_updown):
    plain = tiny_sdm(dropout=0.2, cond_drop_prob=0.3, resblock_updown=resblock_updown).train()
    checkpointed = tiny_sdm(dropout=0.2, cond_drop_prob=0.3, resblock_updown=resblock_updown,
                            use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t, seg, _ = inputs(plain, batch=4)
    calls = []
    checkpointed.middle_block[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)
        out = model(x, t, {"semantic": seg})
        (out**2).mean().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    assert len(calls) == 2  # forward, then recomputed in the backward pass
    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert grads_plain["middle_block.0.in_norm.gamma.weight"].abs().max() > 0


# config


def test_rebuild_from_json_config_gives_the_same_network():
    model = tiny_sdm(resblock_updown=False, concat_semantic=True, use_checkpoint=True).eval()
    config = json.loads(json.dumps(model.config))
    assert config == model.config
    assert config["conditions"] == ["semantic"] and model.conditions == ("semantic",)
    rebuilt = SDMUNet(**config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x, t, seg, _ = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t, {"semantic": seg}), model(x, t, {"semantic": seg}))
    assert rebuilt.config == model.config


def test_default_config_builds_the_128px_sdm_layout():
    model = SDMUNet()
    config = model.config
    assert config["channel_mult"] == [1, 1, 2, 2, 4] and config["out_channels"] == 6
    spade_blocks = [m for m in model.modules() if isinstance(m, ResBlock) and m.semantic]
    assert len(spade_blocks) == 2 + 5 * 3 + 4  # middle, decoder blocks, decoder upsampling blocks
    assert not any(isinstance(m, SPADE) for m in model.input_blocks.modules())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=18, channel_mult=(1, 2, 2)), "image_size"),
        (dict(attention_resolutions=(4,)), "attention_resolutions"),
        (dict(num_head_channels=5), "num_head_channels"),
        (dict(attention_resolutions=(), num_head_channels=12), "num_head_channels"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(model_channels=0), "model_channels"),
        (dict(semantic_channels=0), "semantic_channels"),
        (dict(num_res_blocks=1.5), "num_res_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(cond_drop_prob=1.5), "cond_drop_prob"),
        (dict(resblock_updown="yes"), "resblock_updown"),
        (dict(conditions=("score",)), "conditions"),
    ],
)
def test_bad_config_raises_value_error_naming_the_argument(overrides, message):
    with pytest.raises(ValueError, match=message):
        SDMUNet(**{**TINY, **overrides})

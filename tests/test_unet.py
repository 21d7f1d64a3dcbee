from __future__ import annotations

import json
import math

import pytest
import torch

from diffusion.conditioning import ConditionEmbedder, ScoreEmbedding
from diffusion.guidance import classifier_free_guidance
from diffusion.spade import SPADE, norm_groups
from diffusion.unet import UNet, count_parameters, upgrade_unet_config
from diffusion.unet_blocks import AttentionBlock, Downsample, ResBlock, Upsample

TINY = dict(image_size=16, dim=16, dim_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,), num_head_channels=8)
# the semantic (SDM-style) network: learned-sigma output, SPADE decoder, resampling res-blocks
SEMANTIC = dict(out_channels=6, conditions=("semantic",), semantic_channels=2, cond_drop_prob=0.0, resblock_updown=True)
# both kinds of condition at once
SCORE_AND_SEMANTIC = dict(conditions=("score", "semantic"), semantic_channels=2, cond_drop_prob=0.0)


def tiny_unet(**overrides) -> UNet:
    """A tiny UNet whose zero-initialised output conv is perturbed, so its output depends on its inputs."""
    torch.manual_seed(0)
    model = UNet(**{**TINY, **overrides})
    torch.nn.init.normal_(model.final_conv.weight, std=0.1)
    torch.nn.init.normal_(model.final_conv.bias, std=0.1)
    return model


def inputs(model: UNet, batch: int = 2, size: tuple[int, int] | None = None, seed: int = 1):
    """Noisy images and timesteps for model."""
    height, width = size or (model.config["image_size"],) * 2
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, height, width, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, t


def layouts(model: UNet, x: torch.Tensor, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different binary semantic maps matching the images x."""
    generator = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], model.semantic_channels, x.shape[2], x.shape[3])
    return tuple(torch.rand(shape, generator=generator).round() for _ in range(2))


def conditions_for(model: UNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A valid cond dict for every condition the model takes."""
    cond: dict[str, torch.Tensor] = {}
    if "score" in model.conditions:
        cond["score"] = torch.linspace(0.2, 0.9, x.shape[0])
    if "label" in model.conditions:
        cond["label"] = torch.arange(x.shape[0]) % model.config["num_labels"]
    if "semantic" in model.conditions:
        cond["semantic"] = layouts(model, x)[0]
    return cond


# shapes and layout


def expected_feature_shapes(config: dict, height: int, width: int) -> tuple[list, list]:
    """(channels, height, width) after every encoder and every decoder stage."""
    dim, mults, blocks = config["dim"], config["dim_mults"], config["num_res_blocks"]
    encoder, decoder = [], []
    for level, mult in enumerate(mults):
        scale = 2**level
        encoder += [(dim * mult, height // scale, width // scale)] * blocks
        if level < len(mults) - 1:
            encoder.append((dim * mult, height // (2 * scale), width // (2 * scale)))
    for level in reversed(range(len(mults))):
        scale = 2**level
        decoder += [(dim * mults[level], height // scale, width // scale)] * blocks
        up = scale // 2 if level > 0 else scale
        decoder.append((dim * mults[level], height // up, width // up))
    return encoder, decoder


@pytest.mark.parametrize(
    "overrides, size",
    [
        (dict(), None),
        (dict(image_size=32, dim_mults=(1, 2, 2), attention_resolutions=(16, 8), num_res_blocks=2), None),
        (dict(out_channels=6, attention_resolutions=(), mid_attention=False), None),
        (dict(in_channels=4, out_channels=4, dim_mults=(1,), attention_resolutions=(16,), dropout=0.1), None),
        (dict(dim=24, num_head_channels=12, conditions=()), None),
        (dict(resblock_updown=True, use_scale_shift_norm=False, dim_mults=(1, 1, 2), attention_resolutions=(16, 4)),
         (16, 32)),
        (SEMANTIC, None),
        ({**SEMANTIC, "image_size": 32, "dim_mults": (1, 2, 2), "num_res_blocks": 2,
          "attention_resolutions": (16, 8), "resblock_updown": False, "use_scale_shift_norm": False}, None),
        ({**SEMANTIC, "in_channels": 1, "out_channels": 2, "dim_mults": (1,), "attention_resolutions": (),
          "concat_semantic": True, "semantic_channels": 4}, None),
        ({**SEMANTIC, "dim_mults": (1, 1, 2), "attention_resolutions": (16, 4), "dropout": 0.1}, (16, 32)),
        (SCORE_AND_SEMANTIC, None),
    ],
)
def test_feature_shapes_at_every_level_and_the_output(overrides, size):
    model = tiny_unet(**overrides).eval()
    config = model.config
    x, t = inputs(model, size=size)
    seen: dict[str, list] = {"encoder": [], "decoder": []}
    hooks = [stage.register_forward_hook(lambda m, a, out: seen["encoder"].append(tuple(out.shape[1:])))
             for stage in model.input_blocks]
    hooks += [stage.register_forward_hook(lambda m, a, out: seen["decoder"].append(tuple(out.shape[1:])))
              for stage in model.output_blocks]
    with torch.no_grad():
        out = model(x, t, conditions_for(model, x))
    for hook in hooks:
        hook.remove()
    encoder, decoder = expected_feature_shapes(config, x.shape[2], x.shape[3])
    assert seen["encoder"] == encoder
    assert seen["decoder"] == decoder
    assert out.shape == (2, config["out_channels"], x.shape[2], x.shape[3])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(out_channels=6, attention_resolutions=(), mid_attention=False),
        dict(dim=24, num_head_channels=12, conditions=()),
        dict(resblock_updown=True),
        SEMANTIC,
        {**SEMANTIC, "resblock_updown": False, "concat_semantic": True},
        SCORE_AND_SEMANTIC,
    ],
)
def test_channels_last_input_and_model_give_the_same_output(overrides):
    model = tiny_unet(**overrides).eval()
    x, t = inputs(model)
    cond = conditions_for(model, x)
    cl = torch.channels_last
    cond_cl = {k: v.contiguous(memory_format=cl) if v.dim() == 4 else v for k, v in cond.items()}
    with torch.no_grad():
        out = model(x, t, cond)
        out_cl = model(x.contiguous(memory_format=cl), t, cond_cl)
        model.to(memory_format=cl)
        out_cl_model = model(x.contiguous(memory_format=cl), t, cond_cl)
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_cl_model, out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("overrides", [dict(), SEMANTIC])
def test_output_conv_is_zero_initialised(overrides):
    model = UNet(**{**TINY, **overrides})
    x, t = inputs(model)
    out = model(x, t, conditions_for(model, x))
    assert torch.equal(out, torch.zeros(2, model.config["out_channels"], 16, 16))


def test_resampling_res_blocks_replace_the_resampling_convs():
    plain, updown = tiny_unet(), tiny_unet(resblock_updown=True)
    assert any(isinstance(m, (Downsample, Upsample)) for m in plain.modules())
    assert not any(isinstance(m, (Downsample, Upsample)) for m in updown.modules())
    modes = [m.resample for m in updown.modules() if isinstance(m, ResBlock) and m.resample]
    assert modes == ["down", "up"]


def test_mid_attention_adds_one_attention_block_to_the_middle():
    with_attention = tiny_unet(attention_resolutions=())
    without = tiny_unet(attention_resolutions=(), mid_attention=False)
    assert [type(m) for m in with_attention.middle_block] == [ResBlock, AttentionBlock, ResBlock]
    assert [type(m) for m in without.middle_block] == [ResBlock, ResBlock]
    attention_size = count_parameters(with_attention.middle_block[1])
    assert count_parameters(with_attention) - count_parameters(without) == attention_size


@pytest.mark.parametrize(
    "overrides",
    [dict(resblock_updown=True), dict(resblock_updown=True, mid_attention=False)],
)
def test_score_network_with_resampling_res_blocks_follows_its_score(overrides):
    model = tiny_unet(**overrides).eval()
    x, t = inputs(model)
    with torch.no_grad():
        low = model(x, t, {"score": torch.zeros(2)})
        high = model(x, t, {"score": torch.ones(2)})
        dropped = model(x, t, {"score": torch.ones(2)}, torch.tensor([True, False]))
        null = model(x, t, None, drop_cond=True)
    assert (low - high).abs().max() > 1e-4
    torch.testing.assert_close(dropped[0], null[0])
    torch.testing.assert_close(dropped[1], high[1])


# vector conditions


def test_score_and_timestep_change_the_output():
    model = tiny_unet().eval()
    x, t = inputs(model)
    with torch.no_grad():
        low = model(x, t, {"score": torch.zeros(2)})
        high = model(x, t, {"score": torch.ones(2)})
        later = model(x, t + 100, {"score": torch.zeros(2)})
    assert (low - high).abs().max() > 1e-4
    assert (low - later).abs().max() > 1e-4


def test_score_shape_b1_equals_shape_b():
    model = tiny_unet().eval()
    x, t = inputs(model)
    score = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, {"score": score}), model(x, t, {"score": score[:, None]}))


def test_scalar_timestep_is_shared_by_the_batch():
    model = tiny_unet().eval()
    x, _ = inputs(model)
    cond = {"score": torch.tensor([0.3, 0.7])}
    with torch.no_grad():
        torch.testing.assert_close(model(x, 250, cond), model(x, torch.tensor([250, 250]), cond))


def test_dropped_rows_ignore_the_score():
    model = tiny_unet().eval()
    x, t = inputs(model)
    drop = torch.tensor([True, False])
    with torch.no_grad():
        low = model(x, t, {"score": torch.zeros(2)}, drop_cond=drop)
        high = model(x, t, {"score": torch.ones(2)}, drop_cond=drop)
        unconditional = model(x, t, None, drop_cond=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(low[0], high[0])
    torch.testing.assert_close(low[0], unconditional[0])
    assert (low[1] - high[1]).abs().max() > 1e-4


def test_eval_mode_never_drops_at_random():
    model = tiny_unet(cond_drop_prob=1.0).eval()
    x, t = inputs(model)
    cond = {"score": torch.ones(2)}
    with torch.no_grad():
        first = model(x, t, cond)
        second = model(x, t, cond)
        null = model(x, t, None, drop_cond=True)
    assert torch.equal(first, second)
    assert (first - null).abs().max() > 1e-4


def test_train_mode_with_drop_prob_one_gives_the_null_output():
    model = tiny_unet(cond_drop_prob=1.0)
    x, t = inputs(model)
    with torch.no_grad():
        model.train()
        dropped = model(x, t, {"score": torch.ones(2)})
        model.eval()
        null = model(x, t, None, drop_cond=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(dropped, null)


def test_random_dropping_follows_the_probability_and_the_torch_rng():
    embedder = ConditionEmbedder(["score"], dim=8, drop_prob={"score": 0.3}).train()
    score = torch.ones(4000)
    null = embedder.embeddings["score"].null_embedding.detach()
    torch.manual_seed(5)
    first = embedder({"score": score}, 4000, None).detach()
    torch.manual_seed(5)
    second = embedder({"score": score}, 4000, None).detach()
    is_null = (first == null).all(dim=1)
    assert torch.equal(first, second)
    assert abs(is_null.float().mean().item() - 0.3) < 0.04


def test_gradients_reach_the_null_only_when_dropping():
    model = tiny_unet()
    x, t = inputs(model)
    embedding = model.cond_embed.embeddings["score"]
    first_linear = embedding.mlp[0].weight

    score = torch.tensor([0.2, 0.8])
    model(x, t, {"score": score}, drop_cond=torch.ones(2, dtype=torch.bool)).square().mean().backward()
    assert embedding.null_embedding.grad is not None and embedding.null_embedding.grad.abs().sum() > 0
    assert first_linear.grad is None or first_linear.grad.abs().sum() == 0

    model.zero_grad(set_to_none=True)
    model(x, t, {"score": score}, drop_cond=torch.zeros(2, dtype=torch.bool)).square().mean().backward()
    assert first_linear.grad is not None and first_linear.grad.abs().sum() > 0
    assert embedding.null_embedding.grad is None or embedding.null_embedding.grad.abs().sum() == 0


def test_nan_score_in_a_dropped_row_keeps_gradients_finite():
    embedding = ScoreEmbedding(8)
    out = embedding(torch.tensor([float("nan"), 0.5]), torch.tensor([True, False]))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in embedding.parameters())


def test_label_condition_embeds_ids_and_rejects_unknown_ones():
    torch.manual_seed(0)
    model = UNet(image_size=16, dim=16, dim_mults=(1, 2), attention_resolutions=(), num_head_channels=16,
                 conditions=("label",), num_labels=3).eval()
    torch.nn.init.normal_(model.final_conv.weight, std=0.05)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    a = model(x, t, {"label": torch.tensor([0, 0])})
    b = model(x, t, {"label": torch.tensor([2, 2])})
    assert not torch.allclose(a, b)
    same = x[:1].repeat(2, 1, 1, 1)
    null = model(same, t, {"label": torch.tensor([0, 2])}, drop_cond=torch.tensor([True, True]))
    torch.testing.assert_close(null[0], null[1])
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model(x, t, {"label": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="num_labels"):
        UNet(image_size=16, dim=16, dim_mults=(1, 2), attention_resolutions=(), num_head_channels=16,
             conditions=("label",))


# a vector condition and the semantic layout together


def test_score_and_semantic_both_steer_the_output():
    model = tiny_unet(**SCORE_AND_SEMANTIC).eval()
    x, t = inputs(model)
    seg, other = layouts(model, x)
    with torch.no_grad():
        out = model(x, t, {"score": torch.zeros(2), "semantic": seg})
        assert (out - model(x, t, {"score": torch.ones(2), "semantic": seg})).abs().max() > 1e-4
        assert (out - model(x, t, {"score": torch.zeros(2), "semantic": other})).abs().max() > 1e-4


def test_drop_cond_nulls_every_condition_of_its_rows():
    model = tiny_unet(**SCORE_AND_SEMANTIC).eval()
    x, t = inputs(model)
    seg, other = layouts(model, x)
    drop = torch.tensor([True, False])
    with torch.no_grad():
        null = model(x, t, None, drop_cond=True)
        a = model(x, t, {"score": torch.zeros(2), "semantic": seg}, drop)
        b = model(x, t, {"score": torch.ones(2), "semantic": other}, drop)
        conditional = model(x, t, {"score": torch.zeros(2), "semantic": seg})
    torch.testing.assert_close(a[0], null[0])
    torch.testing.assert_close(b[0], null[0])
    torch.testing.assert_close(a[1], conditional[1])
    assert (a[1] - b[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="'semantic' is missing"):
        model(x, t, {"score": torch.zeros(2)}, drop)
    with pytest.raises(ValueError, match="'score' is missing"):
        model(x, t, {"semantic": seg}, drop)


@pytest.mark.parametrize("dropped, kept", [("score", "semantic"), ("semantic", "score")])
def test_each_condition_is_dropped_in_training_with_its_own_probability(dropped, kept):
    model = tiny_unet(**{**SCORE_AND_SEMANTIC, "cond_drop_prob": {dropped: 1.0, kept: 0.0}}).train()
    x, t = inputs(model)
    seg, other = layouts(model, x)
    values = {"score": (torch.zeros(2), torch.ones(2)), "semantic": (seg, other)}
    with torch.no_grad():
        base = model(x, t, {"score": values["score"][0], "semantic": values["semantic"][0]})
        changed_dropped = model(x, t, {dropped: values[dropped][1], kept: values[kept][0]})
        changed_kept = model(x, t, {dropped: values[dropped][0], kept: values[kept][1]})
    torch.testing.assert_close(changed_dropped, base)
    assert (changed_kept - base).abs().max() > 1e-4


def test_classifier_free_guidance_over_score_and_semantic():
    model = tiny_unet(**SCORE_AND_SEMANTIC).eval()
    x, t = inputs(model)
    seg, _ = layouts(model, x)
    cond = {"score": torch.tensor([0.1, 0.9]), "semantic": seg}
    with torch.no_grad():
        conditional = model(x, t, cond)
        unconditional = model(x, t, None, drop_cond=True)
        guided = classifier_free_guidance(model, cond, 2.5)(x, t)
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


# gradient checkpointing


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(resblock_updown=True, use_scale_shift_norm=False),
        SEMANTIC,
        {**SEMANTIC, "resblock_updown": False},
        {**SCORE_AND_SEMANTIC, "conditions": ("label", "semantic"), "num_labels": 3, "resblock_updown": True},
    ],
)
def test_checkpointing_gives_the_same_outputs_and_gradients(overrides):
    overrides = {**overrides, "dropout": 0.2, "cond_drop_prob": 0.3}
    plain = tiny_unet(**overrides).train()
    checkpointed = tiny_unet(**overrides, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = inputs(plain, batch=4)
    cond = conditions_for(plain, x)
    calls = []
    checkpointed.middle_block[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)
        out = model(x, t, cond)
        (out**2).mean().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                                       if p.grad is not None}))
    assert len(calls) == 2  # forward, then recomputed in the backward pass
    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_plain.keys() == grads_ckpt.keys()
    assert "input_blocks.0.0.in_conv.weight" in grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    if "semantic" in plain.conditions:
        assert grads_plain["middle_block.0.in_norm.gamma.weight"].abs().max() > 0


def test_checkpointing_is_off_in_eval_and_without_grad():
    model = tiny_unet(use_checkpoint=True)
    x, t = inputs(model)
    calls = []
    model.middle_block[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        model(x, t, {"score": torch.zeros(2)})
    model.eval()
    model(x, t, {"score": torch.zeros(2)}).sum().backward()
    assert len(calls) == 2


# attention and norms


def test_attention_block_matches_manual_softmax_attention():
    torch.manual_seed(3)
    block = AttentionBlock(channels=8, num_head_channels=4)
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        out = block(x)
        qkv = block.qkv(block.norm(x)).reshape(2, 3, 2, 4, 9)  # (b, qkv, heads, d, pixels)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (b, heads, pixels, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
        attended = (weights @ v).transpose(-1, -2).reshape(2, 8, 3, 3)
        expected = x + block.proj(attended)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels, groups", [(16, 16), (64, 32), (48, 24), (3, 3), (40, 20)])
def test_norm_groups_divide_the_channels(channels, groups):
    assert norm_groups(channels) == groups


def test_only_the_semantic_network_has_spade_and_only_after_the_encoder():
    assert not any(isinstance(m, SPADE) for m in tiny_unet().modules())
    semantic = tiny_unet(**SCORE_AND_SEMANTIC)
    assert any(isinstance(m, SPADE) for m in semantic.middle_block.modules())
    assert not any(isinstance(m, SPADE) for m in semantic.input_blocks.modules())


# errors


def test_missing_condition_is_an_error():
    model = tiny_unet()
    x, t = inputs(model)
    with pytest.raises(ValueError, match="'score' is missing"):
        model(x, t, None)
    with pytest.raises(ValueError, match="'score' is missing"):
        model(x, t, {"label": torch.zeros(2)}, drop_cond=torch.tensor([True, False]))


def test_bad_call_arguments_are_errors():
    model = tiny_unet()
    x, t = inputs(model)
    cond = {"score": torch.zeros(2)}
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :2], t, cond)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(x[:, :, :15, :15], t, cond)
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.zeros(3), cond)
    with pytest.raises(ValueError, match="drop_cond"):
        model(x, t, cond, drop_cond=torch.zeros(2))
    with pytest.raises(ValueError, match="score must have shape"):
        model(x, t, {"score": torch.zeros(2, 2)})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=18, dim_mults=(1, 2, 2)), "image_size=18 must be divisible"),
        (dict(attention_resolutions=(4,)), "attention_resolutions"),
        (dict(num_head_channels=5), "num_head_channels"),
        (dict(attention_resolutions=(), num_head_channels=12), "num_head_channels"),
        (dict(conditions=("score", "colour")), "known conditions are \\['label', 'score', 'semantic', 'style'\\]"),
        (dict(conditions=("score", "score")), "repeat"),
        (dict(conditions="score"), "list of condition names"),
        (dict(cond_drop_prob=1.5), "cond_drop_prob"),
        (dict(cond_drop_prob={"label": 0.1}), "drop_prob"),
        (dict(cond_drop_prob={"score": 0.1, "semantic": 0.2}), "drop_prob"),
        (dict(dim_mults=()), "dim_mults"),
        (dict(dim_mults=(1, 0)), "dim_mults"),
        (dict(dim=0), "dim"),
        (dict(num_res_blocks=1.5), "num_res_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(resblock_updown="yes"), "resblock_updown"),
        (dict(use_checkpoint=1), "use_checkpoint"),
        (dict(spade_hidden=0), "spade_hidden"),
        (dict(semantic_channels=3), "semantic_channels=3 needs 'semantic' in conditions"),
        (dict(concat_semantic=True), "concat_semantic needs 'semantic'"),
        (dict(conditions=("semantic",)), "semantic_channels"),
        (dict(conditions=("semantic",), semantic_channels=0), "semantic_channels"),
        (dict(conditions=("semantic", "score"), semantic_channels=2, cond_drop_prob={"score": 0.1}),
         "no probability for conditions \\['semantic'\\]"),
    ],
)
def test_bad_config_is_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**TINY, **overrides})


# config


@pytest.mark.parametrize(
    "overrides",
    [
        dict(cond_drop_prob={"score": 0.2}),
        dict(resblock_updown=True, mid_attention=False, use_checkpoint=True),
        {**SEMANTIC, "resblock_updown": False, "concat_semantic": True, "use_checkpoint": True},
        {**SCORE_AND_SEMANTIC, "cond_drop_prob": {"score": 0.1, "semantic": 0.3}},
    ],
)
def test_config_rebuilds_an_identical_architecture(overrides):
    model = tiny_unet(**overrides).eval()
    config = json.loads(json.dumps(model.config))
    assert config == model.config
    assert config == upgrade_unet_config(config)
    assert list(model.conditions) == config["conditions"]
    rebuilt = UNet(**config).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config == model.config
    x, t = inputs(model)
    cond = conditions_for(model, x)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t, cond), model(x, t, cond))


def test_config_is_a_copy():
    model = tiny_unet()
    model.config["dim_mults"].append(8)
    assert model.config["dim_mults"] == [1, 2]


def test_unconditional_unet_has_no_condition_parameters():
    conditional = tiny_unet()
    unconditional = tiny_unet(conditions=())
    assert unconditional.cond_embed is None
    embedder_size = count_parameters(conditional.cond_embed)
    assert count_parameters(conditional) - count_parameters(unconditional) == embedder_size > 0


def test_count_parameters_can_skip_frozen_parameters():
    model = tiny_unet()
    total = count_parameters(model)
    model.time_mlp.requires_grad_(False)
    frozen = count_parameters(model.time_mlp)
    assert count_parameters(model, trainable_only=True) == total - frozen
    assert count_parameters(model) == total


# numerics and training


@pytest.mark.parametrize("overrides", [dict(), SCORE_AND_SEMANTIC])
def test_bf16_autocast_on_cpu_runs_and_stays_close(overrides):
    model = tiny_unet(**overrides).eval()
    x, t = inputs(model)
    cond = conditions_for(model, x)
    with torch.no_grad():
        reference = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last), t, cond)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_a_few_training_steps_reduce_a_score_dependent_loss():
    torch.manual_seed(0)
    model = UNet(**TINY, cond_drop_prob=0.0)
    x, t = inputs(model, batch=1)
    x, t = x.expand(4, -1, -1, -1), t.expand(4)  # identical inputs: only the score tells the rows apart
    score = torch.tensor([0.0, 1.0, 0.0, 1.0])
    target = score.view(4, 1, 1, 1).expand(4, 3, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (model(x, t, {"score": score}) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        low = model(x, t, {"score": torch.zeros(4)})
        high = model(x, t, {"score": torch.ones(4)})
    assert (high - low).mean() > 0.05

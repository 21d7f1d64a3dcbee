from __future__ import annotations

import json
import math

import pytest
import torch

from diffusion.conditioning import ConditionEmbedder, ScoreEmbedding
from diffusion.unet import AttentionBlock, UNet, count_parameters, norm_groups

TINY = dict(image_size=16, dim=16, dim_mults=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_head_channels=8)


def tiny_unet(**overrides) -> UNet:
    """A tiny UNet whose zero-initialised output conv is perturbed, so its output depends on its inputs."""
    torch.manual_seed(0)
    model = UNet(**{**TINY, **overrides})
    torch.nn.init.normal_(model.final_conv.weight, std=0.1)
    torch.nn.init.normal_(model.final_conv.bias, std=0.1)
    return model


def inputs(batch: int = 2, size: int = 16, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, t


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(image_size=32, dim_mults=(1, 2, 2), attn_resolutions=(16, 8), num_res_blocks=2),
        dict(out_channels=6, attn_resolutions=(), mid_attention=False),
        dict(in_channels=4, out_channels=4, dim_mults=(1,), attn_resolutions=(16,), dropout=0.1),
        dict(dim=24, num_head_channels=12, conditions=()),
    ],
)
def test_output_shape_and_channels_last_match(overrides):
    model = tiny_unet(**overrides).eval()
    config = model.config
    x, t = inputs(size=config["image_size"], channels=config["in_channels"])
    cond = {"score": torch.tensor([0.2, 0.9])} if config["conditions"] else None
    with torch.no_grad():
        out = model(x, t, cond)
        out_cl = model(x.contiguous(memory_format=torch.channels_last), t, cond)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl_model = model_cl(x.contiguous(memory_format=torch.channels_last), t, cond)
    assert out.shape == (2, config["out_channels"], config["image_size"], config["image_size"])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_cl_model, out, atol=1e-5, rtol=1e-4)


def test_output_conv_is_zero_initialised():
    model = UNet(**TINY)
    x, t = inputs()
    assert torch.equal(model(x, t, {"score": torch.tensor([0.0, 1.0])}), torch.zeros(2, 3, 16, 16))


def test_score_and_timestep_change_the_output():
    model = tiny_unet().eval()
    x, t = inputs()
    with torch.no_grad():
        low = model(x, t, {"score": torch.zeros(2)})
        high = model(x, t, {"score": torch.ones(2)})
        later = model(x, t + 100, {"score": torch.zeros(2)})
    assert (low - high).abs().max() > 1e-4
    assert (low - later).abs().max() > 1e-4


def test_score_shape_b1_equals_shape_b():
    model = tiny_unet().eval()
    x, t = inputs()
    score = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, {"score": score}), model(x, t, {"score": score[:, None]}))


def test_scalar_timestep_is_shared_by_the_batch():
    model = tiny_unet().eval()
    x, _ = inputs()
    cond = {"score": torch.tensor([0.3, 0.7])}
    with torch.no_grad():
        torch.testing.assert_close(model(x, 250, cond), model(x, torch.tensor([250, 250]), cond))


def test_dropped_rows_ignore_the_score():
    model = tiny_unet().eval()
    x, t = inputs()
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
    x, t = inputs()
    cond = {"score": torch.ones(2)}
    with torch.no_grad():
        first = model(x, t, cond)
        second = model(x, t, cond)
        null = model(x, t, None, drop_cond=True)
    assert torch.equal(first, second)
    assert (first - null).abs().max() > 1e-4


def test_train_mode_with_drop_prob_one_gives_the_null_output():
    model = tiny_unet(cond_drop_prob=1.0)
    x, t = inputs()
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
    x, t = inputs()
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


def test_missing_condition_is_an_error():
    model = tiny_unet()
    x, t = inputs()
    with pytest.raises(ValueError, match="'score' is missing"):
        model(x, t, None)
    with pytest.raises(ValueError, match="'score' is missing"):
        model(x, t, {"label": torch.zeros(2)}, drop_cond=torch.tensor([True, False]))


def test_bad_call_arguments_are_errors():
    model = tiny_unet()
    x, t = inputs()
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
        (dict(attn_resolutions=(4,)), "attn_resolutions"),
        (dict(num_head_channels=5), "num_head_channels"),
        (dict(conditions=("score", "colour")), "known conditions are \\['label', 'score'\\]"),
        (dict(conditions=("score", "score")), "repeat"),
        (dict(cond_drop_prob=1.5), "drop_prob"),
        (dict(cond_drop_prob={"label": 0.1}), "drop_prob"),
        (dict(dim_mults=()), "dim_mults"),
        (dict(dim=0), "dim"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_config_is_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**TINY, **overrides})


def test_config_rebuilds_an_identical_architecture():
    model = tiny_unet(cond_drop_prob={"score": 0.2}).eval()
    config = json.loads(json.dumps(model.config))
    rebuilt = UNet(**config).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config == model.config
    x, t = inputs()
    cond = {"score": torch.tensor([0.1, 0.6])}
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


def test_bf16_autocast_on_cpu_runs_and_stays_close():
    model = tiny_unet().eval()
    x, t = inputs()
    cond = {"score": torch.tensor([0.0, 1.0])}
    with torch.no_grad():
        reference = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last), t, cond)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_a_few_training_steps_reduce_a_score_dependent_loss():
    torch.manual_seed(0)
    model = UNet(**TINY, cond_drop_prob=0.0)
    x, t = inputs(batch=1)
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


@pytest.mark.parametrize("channels, groups", [(16, 16), (64, 32), (48, 24), (3, 3), (40, 20)])
def test_norm_groups_divide_the_channels(channels, groups):
    assert norm_groups(channels) == groups


def test_label_condition_embeds_ids_and_rejects_unknown_ones():
    torch.manual_seed(0)
    model = UNet(image_size=16, dim=16, dim_mults=(1, 2), attn_resolutions=(), num_head_channels=16,
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
        UNet(image_size=16, dim=16, dim_mults=(1, 2), attn_resolutions=(), num_head_channels=16, conditions=("label",))

"""Style conditioning: the encoder trains, aggregation is permutation-invariant, style dropout, guidance on the style
only (the layout stays in both passes), and the CFG-rescale formula."""
from __future__ import annotations

import pytest
import torch

from diffusion.conditioning import ConditionEmbedder
from diffusion.guidance import classifier_free_guidance, rescale_guidance
from diffusion.style import StyleAggregator
from diffusion.unet import UNet

STYLE = {"encoder": "resnet18", "style_dim": 16, "num_images": 2, "aggregation": "mean"}


def style_unet(**overrides) -> UNet:
    kwargs = dict(image_size=16, in_channels=3, out_channels=3, dim=8, dim_mults=(1, 2), num_res_blocks=1,
                  attention_resolutions=(), num_head_channels=8, conditions=["style", "semantic"],
                  cond_drop_prob={"style": 0.25, "semantic": 0.0}, semantic_channels=2, concat_semantic=True,
                  semantic_spade=False, style_encoder=STYLE)
    kwargs.update(overrides)
    return UNet(**kwargs)


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    t = torch.randint(0, 100, (batch,), generator=g)
    cond = {"style": torch.rand(batch, 2, 3, 16, 16, generator=g) * 2 - 1,
            "semantic": (torch.rand(batch, 2, 16, 16, generator=g) > 0.5).float()}
    return x, t, cond


def test_the_style_encoder_is_trained():
    torch.manual_seed(0)
    model = style_unet(cond_drop_prob={"style": 0.0, "semantic": 0.0})
    encoder = model.cond_embed.embeddings["style"].encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items() if v.is_floating_point()}
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, cond = inputs()
    model(x, t, cond).square().mean().backward()
    optimiser.step()
    changed = [k for k, v in encoder.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.conv1") for k in changed) and "projection.weight" in changed


@pytest.mark.parametrize("mode", ["mean", "max", "attention"])
def test_aggregation_is_permutation_invariant(mode):
    torch.manual_seed(0)
    aggregator = StyleAggregator(mode, 16, 4).eval()
    vectors = torch.randn(3, 4, 16)
    permuted = vectors[:, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(aggregator(vectors), aggregator(permuted), rtol=1e-5, atol=1e-6)


def test_linear_aggregation_depends_on_order_and_needs_n_images():
    torch.manual_seed(0)
    aggregator = StyleAggregator("linear", 8, 2)
    vectors = torch.randn(1, 2, 8)
    assert not torch.allclose(aggregator(vectors), aggregator(vectors.flip(1)))
    with pytest.raises(ValueError, match="exactly 2 style images"):
        aggregator(torch.randn(1, 3, 8))


def test_style_is_dropped_to_its_null_at_the_given_rate():
    torch.manual_seed(0)
    settings = {**STYLE, "num_images": 1}
    embedder = ConditionEmbedder(["style"], 8, {"style": 0.25}, settings={"style": settings}).train()
    rows = 400
    out = embedder({"style": torch.rand(rows, 1, 3, 8, 8) * 2 - 1}, rows)
    share = float((out == embedder.embeddings["style"].null_embedding).all(dim=1).float().mean())
    assert 0.19 < share < 0.31


def test_style_guidance_keeps_the_layout_in_both_passes():
    seen = []

    def model(x, t, cond, drop_cond):
        seen.append(drop_cond)
        return x

    x, t, cond = inputs()
    classifier_free_guidance(model, cond, 2.0, guided_conditions=("style",))(x, t)
    assert set(seen[0]) == {"style"} and seen[0]["style"].tolist() == [False, False, True, True]


def test_guidance_on_the_style_only_changes_nothing_when_the_style_is_ignored():
    torch.manual_seed(0)
    model = style_unet().eval()
    x, t, cond = inputs()
    with torch.no_grad():
        plain = model(x, t, cond)
        guided = classifier_free_guidance(model, cond, 3.0, guided_conditions=("style",))(x, t)
        uncond_style = model(x, t, cond, {"style": torch.ones(2, dtype=torch.bool)})
    torch.testing.assert_close(guided, uncond_style + 3.0 * (plain - uncond_style), rtol=1e-4, atol=1e-5)


def test_cfg_rescale_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    guided, conditional = torch.randn(2, 3, 4, 4, generator=g) * 3, torch.randn(2, 3, 4, 4, generator=g)
    out = rescale_guidance(guided, conditional, 0.7)
    for b in range(2):
        ratio = conditional[b].std() / guided[b].std()
        torch.testing.assert_close(out[b], 0.7 * guided[b] * ratio + 0.3 * guided[b])
    assert torch.equal(rescale_guidance(guided, conditional, 0.0), guided)


def test_style_network_config_rebuilds_it():
    torch.manual_seed(0)
    model = style_unet()
    rebuilt = UNet(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    x, t, cond = inputs()
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, cond), rebuilt(x, t, cond))


def test_style_settings_go_with_the_style_condition():
    with pytest.raises(ValueError, match="style_encoder"):
        style_unet(conditions=["semantic"], cond_drop_prob=0.0)
    with pytest.raises(ValueError, match="concat_semantic"):
        style_unet(concat_semantic=False)

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from diffusion.autoencoder import AutoencoderKL, Decoder, Encoder, VQVAE, gaussian_kl
from diffusion.discriminator import PatchDiscriminator, adaptive_weight, generator_adv_loss, hinge_d_loss
from diffusion.quantizer import VectorQuantizer

TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3)


def image(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def quantizer_with(codebook: list[list[float]], **kwargs) -> VectorQuantizer:
    vectors = torch.tensor(codebook)
    quantizer = VectorQuantizer(vectors.shape[0], vectors.shape[1], **kwargs)
    quantizer.reset_codebook(vectors)
    return quantizer


def as_map(rows: torch.Tensor) -> torch.Tensor:
    """(N, dim) vectors as a (1, dim, 1, N) feature map."""
    return rows.t().reshape(1, rows.shape[1], 1, rows.shape[0])


def clustered_encodings(centres: torch.Tensor, per_centre: int, spread: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = centres.repeat_interleave(per_centre, dim=0)
    return rows + spread * torch.randn(rows.shape, generator=generator)


# ---------------------------------------------------------------- vector quantiser


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = VQVAE(**TINY, codebook_size=16).train()
    x = image()
    recon, aux = model(x)
    F.mse_loss(recon, x).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0


def test_commitment_and_codebook_losses_on_a_hand_made_case():
    codebook = [[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]]
    z = as_map(torch.tensor([[0.2, 0.1], [0.9, 1.3]]))
    squared_error = ((0.2**2 + 0.1**2) + (0.1**2 + 0.3**2)) / 4

    ema = quantizer_with(codebook, commitment_weight=0.5).eval()
    z_q, loss, info = ema(z)
    assert info["codes"].tolist() == [[[0, 1]]]
    torch.testing.assert_close(z_q, as_map(torch.tensor([[0.0, 0.0], [1.0, 1.0]])))
    assert float(loss) == pytest.approx(0.5 * squared_error)

    learned = quantizer_with(codebook, commitment_weight=0.5, use_ema=False).eval()
    _, loss, _ = learned(z)
    assert float(loss.detach()) == pytest.approx(0.5 * squared_error + squared_error)


def test_codebook_learns_by_gradient_without_ema_and_not_with_it():
    codebook = [[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]]
    z = as_map(torch.tensor([[0.2, 0.1], [0.9, 1.3]])).requires_grad_(True)
    learned = quantizer_with(codebook, use_ema=False).eval()
    _, loss, _ = learned(z)
    loss.backward()
    grad = learned.codebook.grad
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    assert torch.equal(grad[2], torch.zeros(2))
    # d/de mean((z - e)^2) over the 4 elements: -2 (z - e) / 4
    torch.testing.assert_close(grad[0], torch.tensor([-0.1, -0.05]))

    ema = quantizer_with(codebook)
    assert "codebook" not in dict(ema.named_parameters())
    assert "codebook" in dict(ema.named_buffers())


def test_ema_update_moves_used_codes_toward_their_encodings_only_in_training():
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    codebook = [[1.0, 0.0], [0.0, 1.0], [-3.0, -3.0]]
    encodings = clustered_encodings(centres, per_centre=8, spread=0.1, seed=1)
    means = torch.stack([encodings[:8].mean(0), encodings[8:].mean(0)])
    quantizer = quantizer_with(codebook, ema_decay=0.9, dead_code_threshold=0.0)

    before = quantizer.codebook.clone()
    quantizer.eval()(as_map(encodings))
    assert torch.equal(quantizer.codebook, before)

    quantizer.train()(as_map(encodings))
    after = quantizer.codebook.clone()
    assert ((after[:2] - means).norm(dim=1) < (before[:2] - means).norm(dim=1)).all()
    torch.testing.assert_close(after[2], before[2], atol=1e-3, rtol=0)

    for _ in range(200):
        quantizer(as_map(encodings))
    torch.testing.assert_close(quantizer.codebook[:2], means, atol=1e-3, rtol=0)


def test_dead_code_is_restarted_on_an_encoding():
    codebook = [[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]
    encodings = clustered_encodings(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), per_centre=4, spread=0.05, seed=2)
    quantizer = quantizer_with(codebook, dead_code_threshold=1.0).train()
    torch.manual_seed(0)
    _, _, info = quantizer(as_map(encodings))
    assert 2 not in info["codes"].unique().tolist()
    distances = (encodings - quantizer.codebook[2]).norm(dim=1)
    assert float(distances.min()) < 1e-6
    assert float(quantizer.cluster_size[2]) == pytest.approx(1.0)
    torch.testing.assert_close(quantizer.embed_sum[2], quantizer.codebook[2])

    kept = quantizer_with(codebook, dead_code_threshold=0.0).train()
    kept(as_map(encodings))
    assert float(kept.codebook[2].norm()) > 100


def test_perplexity_and_usage_of_a_known_assignment():
    codebook = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    # codes 0, 0, 1, 2: probabilities 1/2, 1/4, 1/4 -> entropy 1.5 ln 2
    encodings = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.9, 0.0], [0.0, 0.9]])
    quantizer = quantizer_with(codebook).eval()
    z_q, _, info = quantizer(as_map(encodings))
    assert float(info["perplexity"]) == pytest.approx(math.exp(1.5 * math.log(2)))
    assert float(info["usage"]) == pytest.approx(0.75)
    torch.testing.assert_close(quantizer.lookup(info["codes"]), z_q)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        quantizer.lookup(torch.tensor([[4]]))


def test_distances_in_float32_under_autocast():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 4).eval()
    z = torch.randn(2, 4, 4, 4)
    _, _, reference = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, info = quantizer(z)
    assert torch.equal(info["codes"], reference["codes"])
    assert z_q.dtype == z.dtype and loss.dtype == torch.float32


def test_quantizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(8, 4, ema_decay=1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4"):
        VectorQuantizer(8, 4)(torch.zeros(1, 3, 2, 2))


def _ddp_worker(rank: int, folder: str, encodings: torch.Tensor, codebook: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        half = encodings.shape[0] // 2
        mine = encodings[rank * half:(rank + 1) * half]
        synced = VectorQuantizer(codebook.shape[0], codebook.shape[1], ema_decay=0.5, dead_code_threshold=0.0)
        synced.reset_codebook(codebook)
        synced.train()(as_map(mine))
        restarted = VectorQuantizer(codebook.shape[0], codebook.shape[1], dead_code_threshold=1.0)
        restarted.reset_codebook(codebook)
        torch.manual_seed(rank)
        restarted.train()(as_map(mine + rank))
        torch.save({"synced": synced.codebook, "restarted": restarted.codebook}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ema_statistics_are_all_reduced_across_processes(tmp_path: Path):
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    encodings = clustered_encodings(codebook[:2], per_centre=4, spread=0.2, seed=3)[torch.randperm(8)]
    mp.spawn(_ddp_worker, args=(str(tmp_path), encodings, codebook), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    single = quantizer_with(codebook.tolist(), ema_decay=0.5, dead_code_threshold=0.0).train()
    single(as_map(encodings))
    for state in ranks:
        torch.testing.assert_close(state["synced"], single.codebook)
    assert torch.equal(ranks[0]["restarted"], ranks[1]["restarted"])
    assert float(ranks[0]["restarted"][2].norm()) < 10


# ---------------------------------------------------------------- KL autoencoder


def test_gaussian_kl_closed_form():
    mean = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.5]])
    expected = [
        0.5 * ((0.25 + 1 - 1 - 0) + (1 + 2 - 1 - math.log(2.0))),
        0.5 * ((0 + math.exp(-1) - 1 + 1) + (4 + math.exp(0.5) - 1 - 0.5)),
    ]
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.tensor(expected))
    torch.testing.assert_close(gaussian_kl(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)), torch.zeros(3))


def test_kl_autoencoder_aux_terms_and_sampling(monkeypatch):
    model = AutoencoderKL(**TINY, kl_weight=0.01)
    x = image()
    mean = torch.full((2, 3, 8, 8), 0.5)
    logvar = torch.full((2, 3, 8, 8), math.log(0.25))
    monkeypatch.setattr(model, "posterior", lambda _x: (mean, logvar))
    per_element = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25))
    _, aux = model.eval()(x)
    assert float(aux["kl"]) == pytest.approx(per_element * 3 * 8 * 8)
    assert float(aux["kl_loss"]) == pytest.approx(0.01 * per_element * 3 * 8 * 8)

    assert torch.equal(model.encode(x), mean)
    torch.manual_seed(5)
    drawn = model.encode(x, sample=True)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, mean + 0.5 * torch.randn_like(mean))


def test_kl_log_variance_is_clamped():
    model = AutoencoderKL(**TINY)
    with torch.no_grad():
        model.quant_conv.bias[3:].fill_(100.0)
        model.quant_conv.weight.zero_()
    _, logvar = model.posterior(image())
    assert float(logvar.detach().max()) == 20.0


# ---------------------------------------------------------------- shapes, configs, validation


@pytest.mark.parametrize("cls", [VQVAE, AutoencoderKL])
@pytest.mark.parametrize("channel_mult, factor", [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_latent_and_reconstruction_shapes(cls, channel_mult, factor):
    torch.manual_seed(0)
    model = cls(**{**TINY, "channel_mult": channel_mult}).eval()
    x = image(size=16)
    with torch.no_grad():
        z = model.encode(x)
        recon, aux = model(x)
        assert model.decode(z).shape == x.shape and recon.shape == x.shape
    assert model.downsample_factor == factor
    assert z.shape == (2, model.latent_channels, 16 // factor, 16 // factor)
    assert model.last_layer is model.decoder.conv_out.weight
    if cls is VQVAE:
        assert aux["codes"].shape == (2, 16 // factor, 16 // factor)
        assert set(aux) == {"vq_loss", "perplexity", "codes", "usage"}
    else:
        assert set(aux) == {"kl", "kl_loss"}


@pytest.mark.parametrize(
    "cls, extra", [(VQVAE, dict(codebook_size=8, use_ema=False)), (AutoencoderKL, dict(kl_weight=1e-3))]
)
def test_rebuild_from_config(cls, extra):
    torch.manual_seed(0)
    model = cls(**TINY, **extra).eval()
    rebuilt = cls(**json.loads(json.dumps(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], model(x)[0])
    assert model.config == rebuilt.config


def test_vq_decode_can_snap_to_the_codebook():
    torch.manual_seed(0)
    model = VQVAE(**TINY, codebook_size=8).eval()
    with torch.no_grad():
        z_q = model.encode(image())
        noisy = z_q + 1e-4 * torch.randn_like(z_q)
        torch.testing.assert_close(model.decode(noisy, quantize=True), model.decode(z_q))
        assert not torch.equal(model.decode(noisy), model.decode(z_q))


def test_encoder_decoder_standalone():
    encoder, decoder = Encoder(3, 8, (1, 2, 2), 1, 5), Decoder(3, 8, (1, 2, 2), 1, 5)
    h = encoder(image(size=16))
    assert h.shape == (2, 5, 4, 4)
    assert decoder(h).shape == (2, 3, 16, 16)


def test_autoencoders_reject_bad_arguments():
    with pytest.raises(ValueError, match="channel_mult"):
        VQVAE(**{**TINY, "channel_mult": ()})
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAE(**TINY, codebook_size=0)
    with pytest.raises(ValueError, match="ema_eps"):
        VQVAE(**TINY, ema_eps=0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderKL(**TINY, kl_weight=-1.0)
    with pytest.raises(ValueError, match="latent_channels"):
        AutoencoderKL(**{**TINY, "latent_channels": 0})
    with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
        AutoencoderKL(**TINY)(image(size=15))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 3"):
        VQVAE(**TINY).decode(torch.zeros(1, 4, 8, 8))


# ---------------------------------------------------------------- discriminator and adversarial losses


@pytest.mark.parametrize("size, num_layers, side", [(32, 3, 2), (16, 2, 2), (64, 3, 6)])
def test_patch_discriminator_output_shape(size, num_layers, side):
    disc = PatchDiscriminator(3, 8, num_layers).train()
    out = disc(image(batch=1, size=size))
    assert out.shape == (1, 1, side, side)
    assert disc.output_side(size) == side


def test_patch_discriminator_init_and_small_input():
    disc = PatchDiscriminator(3, 16, 3)
    weights = torch.cat([m.weight.detach().flatten() for m in disc.modules() if isinstance(m, torch.nn.Conv2d)])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.05)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    with pytest.raises(ValueError, match="too small"):
        disc(image(size=8))


def test_hinge_and_generator_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = 0, 0.5, 2; relu(1 + fake) = 0, 1, 2
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert float(generator_adv_loss(fake)) == pytest.approx(1.0 / 3)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    rec = (w * a).sum() + 7.0
    g = (w**2 * b).sum()  # gradient 2 w b = (0, -4, 0)
    weight = adaptive_weight(rec, g, w)
    assert float(weight) == pytest.approx(5.0 / (4.0 + 1e-4))
    assert not weight.requires_grad
    assert float(adaptive_weight(rec, g, w, max_weight=0.5)) == 0.5
    (rec + g).backward()  # the graph was retained
    torch.testing.assert_close(w.grad, a + 2 * w.detach() * b)


def test_adaptive_weight_at_the_decoder_last_layer():
    torch.manual_seed(0)
    model = VQVAE(**TINY, codebook_size=8).train()
    disc = PatchDiscriminator(3, 8, 2)
    x = image()
    recon, _ = model(x)
    weight = adaptive_weight(F.l1_loss(recon, x), generator_adv_loss(disc(recon)), model.last_layer)
    assert math.isfinite(float(weight)) and float(weight) > 0


@pytest.mark.parametrize("cls, extra", [(VQVAE, dict(codebook_size=8, use_ema=False)), (AutoencoderKL, {})])
def test_reflect_padding_treats_border_pixels_like_inner_ones(cls, extra):
    """A flat tile stays flat through a mirrored-border autoencoder; zero padding marks the border."""
    flat = torch.full((1, 3, 16, 16), 0.3)
    spreads = {}
    for mode in ("zeros", "reflect"):
        torch.manual_seed(0)
        model = cls(**TINY, **extra, padding_mode=mode).eval()
        with torch.no_grad():
            spreads[mode] = model(flat)[0].std(dim=(2, 3)).max().item()
    assert spreads["reflect"] < 1e-5
    assert spreads["zeros"] > 1e-3


def test_padding_mode_is_stored_and_old_configs_mean_zeros():
    model = VQVAE(**TINY, codebook_size=8, padding_mode="reflect")
    assert model.config["padding_mode"] == "reflect"
    assert VQVAE(**TINY, codebook_size=8).config["padding_mode"] == "zeros"
    padded = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == "reflect" for m in padded)
    with pytest.raises(ValueError, match="padding_mode"):
        AutoencoderKL(**TINY, padding_mode="circle")

"""Latent diffusion speed on random data: autoencoder and LDM training images/s, LDM sampling s/tile. One JSON line.

python benchmarks/bench_latent.py --image_size 128 --ae_channels 64 --ae_channel_mult 1,2,4 --batch_size 16
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser  # noqa: E402
from common.options import int_list  # noqa: E402
from diffusion.autoencoder import AutoencoderKL, VQVAE  # noqa: E402
from diffusion.discriminator import PatchDiscriminator, generator_adv_loss, hinge_d_loss  # noqa: E402
from diffusion.gaussian_diffusion import GaussianDiffusion  # noqa: E402
from diffusion.latent import LatentDiffusion  # noqa: E402
from diffusion.samplers import ddim_sample  # noqa: E402
from diffusion.guidance import classifier_free_guidance  # noqa: E402
from diffusion.unet import UNet  # noqa: E402


def timed(step, repeats: int, device: torch.device) -> float:
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - tic) / repeats


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--autoencoder", choices=("vqvae", "autoencoder_kl"), default="vqvae")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--ae_channels", type=int, default=64)
    p.add_argument("--ae_channel_mult", type=int_list, default=[1, 2, 4])
    p.add_argument("--latent_channels", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dim_mults", type=int_list, default=[1, 2, 4])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    kind = VQVAE if args.autoencoder == "vqvae" else AutoencoderKL
    ae = kind(channels=args.ae_channels, channel_mult=args.ae_channel_mult, latent_channels=args.latent_channels).to(device)
    disc = PatchDiscriminator(3, 64, 3).to(device)
    opt = torch.optim.AdamW(list(ae.parameters()) + list(disc.parameters()), lr=1e-4)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1

    def ae_step() -> None:
        recon, aux = ae(x)
        loss = (recon - x).abs().mean() + aux.get("vq_loss", aux.get("kl_loss")) + 0.1 * generator_adv_loss(disc(recon))
        loss = loss + hinge_d_loss(disc(x), disc(recon.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ae_seconds = timed(ae_step, args.steps, device)
    ae.eval()
    latent_size = args.image_size // ae.downsample_factor
    unet = UNet(image_size=latent_size, in_channels=args.latent_channels, out_channels=args.latent_channels, dim=args.dim,
                dim_mults=args.dim_mults, attention_resolutions=[latent_size // 2], conditions=("label",), num_labels=12)
    model = LatentDiffusion(unet, ae, 1.0).to(device)
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    ldm_opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    labels = torch.randint(0, 12, (args.batch_size,), device=device)

    def ldm_step() -> None:
        z = model.encode(x)
        loss = diffusion.training_losses(lambda zt, t: model(zt, t, {"label": labels}), z).mean()
        loss.backward()
        ldm_opt.step()
        ldm_opt.zero_grad(set_to_none=True)

    ldm_seconds = timed(ldm_step, args.steps, device)
    model.eval()

    @torch.no_grad()
    def sample() -> None:
        z = torch.randn(args.batch_size, args.latent_channels, latent_size, latent_size, device=device)
        fn = classifier_free_guidance(model, {"label": labels}, 2.0)
        model.decode(ddim_sample(diffusion, fn, z, steps=args.ddim_steps))

    sample_seconds = timed(sample, 1, device)
    print(json.dumps({
        "benchmark": "latent_diffusion",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "image_size": args.image_size, "autoencoder": args.autoencoder, "latent": [args.latent_channels, latent_size, latent_size],
        "batch_size": args.batch_size,
        "autoencoder_train_images_per_s": round(args.batch_size / ae_seconds, 2),
        "ldm_train_images_per_s": round(args.batch_size / ldm_seconds, 2),
        f"ldm_ddim{args.ddim_steps}_cfg2_s_per_tile": round(sample_seconds / args.batch_size, 4),
    }))


if __name__ == "__main__":
    main()

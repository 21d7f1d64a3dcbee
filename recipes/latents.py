"""Tiles per class or cluster (pixel or latent diffusion), tiles paired with real ones; autoencoder
reconstructions with PSNR/SSIM, and latent features of the training tiles for clustering."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.latent import LatentDiffusion
from diffusion.sampling import SamplingSpec, sample
from common.errors import ConfigError
from common.figures import labelled_grid, to_uint8
from common.files import staged_folder
from common.options import number
from recipes.base import InferenceFlag, RenderContext
from recipes.render import make_recorder, one_guidance_scale, sampling_choice, save_trajectory, single_checkpoint
from recipes.tasks import psnr, ssim_batch

FEATURE_GRID = 4
# Real | generated pairs shown in the grid.png of --paired.
PAIRED_GRID = 8


@torch.no_grad()
def sample_tiles(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    labels: torch.Tensor | None,
    count: int,
    spec: SamplingSpec,
    generator: torch.Generator,
    device: torch.device,
    callback: Callable | None = None,
) -> torch.Tensor:
    """`count` tiles in [-1, 1] (labels: one class or cluster id per tile, or None for an unconditional model,
    which is sampled without guidance).

    Works for pixel-space models and for latent diffusion, whose samples are decoded by its autoencoder; latents
    are sampled without clipping the predicted x0 (scaled latents have unit variance, not the range [-1, 1]).
    x_T and then the per-step noise come from `generator`.
    """
    latent = isinstance(model, LatentDiffusion)
    if latent:
        spec = replace(spec, clip_x0=False)
    unet = model.config
    shape = (count, unet["in_channels"], unet["image_size"], unet["image_size"])
    z_T = torch.randn(shape, generator=generator, device=generator.device).to(device)
    cond = {"label": labels.to(device)} if labels is not None else {}
    if labels is None:
        spec = replace(spec, cfg_scale=1.0)
    z = sample(model, diffusion, z_T, cond, spec, generator=generator, callback=callback, progress=True)
    decoded = model.decode(z) if latent else z
    return decoded.float().clamp(-1, 1).cpu()


def tile_bar_label(model: torch.nn.Module, conditioned: bool, label_name: str) -> str:
    """Progress-bar label of what is rendered: ldm tiles (latent diffusion), class / cluster tiles or tiles (pixel)."""
    if isinstance(model, LatentDiffusion):
        return "ldm tiles"
    return f"{label_name} tiles" if conditioned else "tiles"


def save_png(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(to_uint8(image)).save(path)


def generate_per_cluster(
    model: LatentDiffusion,
    diffusion: GaussianDiffusion,
    cluster_ids: Sequence[int] | None,
    per_cluster: int,
    spec: SamplingSpec,
    batch_size: int,
    seed: int,
    device: torch.device,
    folder: Path,
    callback: Callable | None = None,
    label_name: str = "cluster",
) -> int:
    """per_cluster tiles for each cluster (or class) id, or per_cluster unconditional tiles, + grid.png + samples.csv."""
    generator = torch.Generator(device=device).manual_seed(seed)
    groups = list(cluster_ids) if cluster_ids is not None else [None]
    rows, grid = [], []
    bar = tqdm(total=len(groups) * per_cluster, desc=tile_bar_label(model, cluster_ids is not None, label_name))
    for cluster in groups:
        sub = folder / ("samples" if cluster is None else f"{label_name}_{cluster:02d}")
        sub.mkdir(parents=True)
        tiles = []
        for first in range(0, per_cluster, batch_size):
            count = min(batch_size, per_cluster - first)
            labels = None if cluster is None else torch.full((count,), cluster, dtype=torch.long)
            images = sample_tiles(model, diffusion, labels, count, spec, generator, device, callback if not rows else None)
            for k, image in enumerate(images):
                name = f"{sub.name}_{first + k:05d}.png"
                save_png(image, sub / name)
                rows.append({"file": f"{sub.name}/{name}", label_name: "" if cluster is None else cluster, "seed": seed})
            tiles.extend(images)
            bar.update(count)
        grid.append(tiles[:8])
    bar.close()
    write_rows(folder / "samples.csv", rows)
    captions = [[("unconditional" if c is None else f"{label_name} {c}")] * len(r) for c, r in zip(groups, grid)]
    labelled_grid(grid, captions, scale=1 if grid[0][0].shape[-1] >= 96 else 2, caption_lines=1).save(folder / "grid.png")
    return len(rows)


def generate_paired(
    model: LatentDiffusion,
    diffusion: GaussianDiffusion,
    tiles: Dataset,
    spec: SamplingSpec,
    batch_size: int,
    seed: int,
    device: torch.device,
    folder: Path,
) -> int:
    """For every tile, one generated from that tile's cluster, under the same file name in generated/ and real/,
    and grid.png of the first pairs (real | generated)."""
    (folder / "generated").mkdir(parents=True)
    (folder / "real").mkdir(parents=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    rows, pairs = [], []
    desc = "paired " + tile_bar_label(model, False, "")
    for batch in tqdm(DataLoader(tiles, batch_size=batch_size, shuffle=False), desc=desc):
        labels = batch.get("label")
        images = sample_tiles(model, diffusion, labels, len(batch["image"]), spec, generator, device)
        for k, image in enumerate(images):
            name = f"{batch['meta']['name'][k]}.png"
            save_png(image, folder / "generated" / name)
            save_png(batch["image"][k], folder / "real" / name)
            rows.append({"file": name, "cluster": "" if labels is None else int(labels[k]), "seed": seed})
            if len(pairs) < PAIRED_GRID:
                pairs.append((name, batch["image"][k], image))
    write_rows(folder / "samples.csv", rows)
    paired_grid(pairs).save(folder / "grid.png")
    return len(rows)


def paired_grid(pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> Image.Image:
    """One row per (name, real, generated) pair: the real tile captioned with its file name, then the generated one."""
    images = [[real, generated] for _, real, generated in pairs]
    captions = [[f"real {name}", "generated"] for name, _, _ in pairs]
    scale = 1 if pairs[0][1].shape[-1] >= 96 else 2
    return labelled_grid(images, captions, scale=scale, caption_lines=1)


def write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, tiles: Dataset, batch_size: int, device: torch.device, folder: Path) -> dict[str, float]:
    """Reconstructions of every tile (reconstructions/), per-tile PSNR and SSIM (metrics.csv) and a grid."""
    (folder / "reconstructions").mkdir(parents=True)
    rows, first = [], None
    for batch in tqdm(DataLoader(tiles, batch_size=batch_size, shuffle=False), desc="reconstructions"):
        x = batch["image"].to(device)
        recon = autoencoder.decode(autoencoder.encode(x)).float().clamp(-1, 1)
        for k, (p, s) in enumerate(zip(psnr(recon, x).tolist(), ssim_batch(recon, x))):
            name = batch["meta"]["name"][k]
            save_png(recon[k].cpu(), folder / "reconstructions" / f"{name}.png")
            rows.append({"tile": name, "psnr": round(p, 4), "ssim": round(s, 5)})
        if first is None:
            first = (x[:8].cpu(), recon[:8].cpu())
    write_rows(folder / "metrics.csv", rows)
    real, recon = first
    labelled_grid([list(real), list(recon)], [["real"] * len(real), ["reconstruction"] * len(real)],
                  scale=1 if real.shape[-1] >= 96 else 2, caption_lines=1).save(folder / "grid.png")
    return {"psnr": sum(r["psnr"] for r in rows) / len(rows), "ssim": sum(r["ssim"] for r in rows) / len(rows)}


@torch.no_grad()
def export_features(autoencoder: torch.nn.Module, tiles: Dataset, batch_size: int, device: torch.device, path: Path) -> int:
    """Latent features of every tile: the latent average-pooled to a 4 x 4 grid, flattened (tile, f0, f1, ...)."""
    rows = []
    for batch in tqdm(DataLoader(tiles, batch_size=batch_size, shuffle=False), desc="latent features"):
        z = autoencoder.encode(batch["image"].to(device)).float()
        pooled = F.adaptive_avg_pool2d(z, FEATURE_GRID).flatten(1).cpu()
        for name, vector in zip(batch["meta"]["name"], pooled):
            rows.append({"tile": name, **{f"f{i}": round(float(v), 6) for i, v in enumerate(vector)}})
    write_rows(path, rows)
    return len(rows)


TILE_FLAGS = (
    InferenceFlag(("--cluster_ids", "--class_ids"), dict(dest="cluster_ids", type=number(int, 0), nargs="+", help="clusters / classes to generate (default: all the model knows)")),
    InferenceFlag(("--num_per_cluster", "--num_per_class"), dict(dest="num_per_cluster", type=number(int, 1), help="tiles per cluster or class, or in all for an unconditional model (default 8)")),
)
PAIRED_FLAG = InferenceFlag(("--paired",), dict(action="store_true", help="one tile per training tile, from its cluster, under its file name (generated/ and real/)"))


def render_tiles(ctx: RenderContext, label_name: str, pixel_space: bool) -> None:
    """Tiles per class or cluster id (latent diffusion, or a label-conditioned / unconditional pixel model)."""
    single_checkpoint(ctx)
    args, loaded, device = ctx.args, ctx.first, ctx.device
    spec = sampling_choice(args, cfg_scale=one_guidance_scale(args, "tiles per cluster or class"), checkpoints=ctx.checkpoints)
    unet = loaded.model_config["unet"]
    num_labels = unet.get("num_labels", 0)
    conditioned = "label" in unet["conditions"]
    out = Path(args.out_dir)
    count: dict[str, int] = {}
    if getattr(args, "paired", False):
        if args.cluster_ids or args.num_per_cluster:
            raise ConfigError("--paired makes one tile per training tile: it takes no --cluster_ids or --num_per_cluster")
        tiles = ctx.data.tiles(loaded.config, "train", labels=conditioned)
        staged_folder(out, lambda folder: count.update(n=generate_paired(loaded.model, loaded.diffusion, tiles, spec, args.batch_size, args.seed, device, folder)))
        print(f"{count['n']} generated tiles paired by file name with the real ones: {out / 'generated'}, {out / 'real'}; "
              f"pictures: {out / 'grid.png'} (real | generated, first {PAIRED_GRID} pairs)")
        return
    if args.cluster_ids and not conditioned:
        raise ConfigError(f"--cluster_ids: {loaded.path} is an unconditional model (trained without --conditions label)")
    ids = args.cluster_ids if args.cluster_ids else (list(range(num_labels)) if conditioned else None)
    bad = [c for c in ids or [] if not 0 <= c < num_labels]
    if bad:
        raise ConfigError(f"--cluster_ids {bad}: the model knows clusters 0..{num_labels - 1}")
    per_cluster = args.num_per_cluster if args.num_per_cluster is not None else 8
    recorder = make_recorder(args, pixel_space)

    def write(folder: Path) -> None:
        count.update(n=generate_per_cluster(loaded.model, loaded.diffusion, ids, per_cluster, spec, args.batch_size, args.seed,
                                            device, folder, callback=recorder, label_name=label_name))
        save_trajectory(recorder, folder)

    staged_folder(out, write)
    print(f"{count['n']} tiles into {out}; pictures: {out / 'grid.png'}; list: {out / 'samples.csv'}")

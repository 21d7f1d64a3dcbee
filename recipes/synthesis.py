"""Semantic (SDM) synthesis: H&E tiles generated from nuclei layouts, saved as a segmentation training set."""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from data.condition_maps import maps_to_picture
from data.monuseg import LayoutPatches
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion import sampling
from diffusion.sampling import SamplingSpec
from common.figures import labelled_grid, to_uint8

MASK_ORDERS = ("random", "shuffle", "in_order")
# Samples (rows) shown in grid.png, each with its layout, every checkpoint x guidance scale, and the real tile.
GRID_SAMPLES = 16
# Tiles are enlarged in grid.png to about this many pixels (32 px x4, 64 px x2, 128 px and larger x1).
GRID_TILE_PX = 128


def mask_order(count: int, num_samples: int, order: str, seed: int) -> list[int]:
    """Which layout each sample uses: random draws, a shuffled pass over all layouts, or the layouts in order."""
    rng = np.random.default_rng(seed)
    if order == "in_order":
        return [i % count for i in range(num_samples)]
    if order == "shuffle":
        passes = -(-num_samples // count)
        return np.concatenate([rng.permutation(count) for _ in range(passes)])[:num_samples].tolist()
    return rng.integers(count, size=num_samples).tolist()


def save_sample(folder: Path, name: str, image: torch.Tensor, inst_mask: np.ndarray, maps_picture: np.ndarray) -> None:
    Image.fromarray(to_uint8(image)).save(folder / "images" / f"{name}.png")
    Image.fromarray(((inst_mask > 0) * 255).astype(np.uint8)).save(folder / "labels" / f"{name}.png")
    tifffile.imwrite(folder / "inst_masks" / f"{name}.tif", inst_mask.astype(np.uint16))
    Image.fromarray(maps_picture).save(folder / "cond" / f"{name}.png")


@dataclass
class SynthesisJob:
    model: nn.Module
    diffusion: GaussianDiffusion
    label: str


def synthesise(
    jobs: list[SynthesisJob],
    layouts: LayoutPatches,
    scales: list[float],
    num_samples: int,
    batch_size: int,
    order: str,
    spec: SamplingSpec,
    seed: int,
    device: torch.device,
    folder: Path,
    grid_samples: int = GRID_SAMPLES,
    callback: Callable | None = None,
) -> int:
    """Generate num_samples tiles per (checkpoint, guidance scale) into folder; returns the number written.

    Each of `scales` replaces spec.cfg_scale; guidance combines the predicted mean only (learned variance).
    """
    for sub in ("images", "labels", "inst_masks", "cond"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    picks = mask_order(len(layouts), num_samples, order, seed)
    rows: list[dict] = []
    shown: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    generated: dict[tuple[int, int], list[torch.Tensor]] = {}
    total = len(jobs) * len(scales) * num_samples
    bar = tqdm(total=total, desc="synthesis")
    for j, job in enumerate(jobs):
        for s, scale in enumerate(scales):
            generator = torch.Generator(device=device).manual_seed(seed)
            for first in range(0, num_samples, batch_size):
                batch = [layouts[i] for i in picks[first : first + batch_size]]
                semantic = torch.stack([b["semantic"] for b in batch]).to(device)
                first_batch = j == 0 and scale == scales[0] and first == 0
                size = semantic.shape[-1]
                x_T = torch.randn((len(batch), 3, size, size), generator=generator, device=generator.device).to(device)
                images = sampling.sample(job.model, job.diffusion, x_T, {"semantic": semantic}, replace(spec, cfg_scale=scale),
                                         generator=generator, callback=callback if first_batch else None, progress=True)
                for k, (sample, image) in enumerate(zip(batch, images.cpu())):
                    index = first + k
                    name = f"{job.label}_s{scale:g}_{index:05d}_{sample['meta']['name']}"
                    inst = sample["inst_mask"].numpy()
                    picture = maps_to_picture(sample["semantic"].numpy(), layouts.maps)
                    save_sample(folder, name, image, inst, picture)
                    rows.append({"file": f"{name}.png", "layout": sample["meta"]["name"], "checkpoint": job.label, "s": scale, "seed": seed})
                    if index < grid_samples:
                        shown.setdefault(index, (torch.from_numpy(picture).permute(2, 0, 1).float() / 127.5 - 1, sample["image"]))
                        generated.setdefault((j, s), []).append(image)
                bar.update(len(batch))
    bar.close()
    with (folder / "samples.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "layout", "checkpoint", "s", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    synthesis_grid(shown, generated, [job.label for job in jobs], scales).save(folder / "grid.png")
    return len(rows)


def synthesis_grid(shown: dict[int, tuple[torch.Tensor, torch.Tensor]], generated: dict[tuple[int, int], list[torch.Tensor]],
                   labels: list[str], scales: list[float]) -> Image.Image:
    """One row per sample: layout | generated at each (checkpoint, guidance scale) | real, columns captioned."""
    columns = sorted(generated)
    names = [f"generated s={scales[s]:g}" if len(labels) == 1 else f"{labels[j]} s={scales[s]:g}" for j, s in columns]
    images, captions = [], []
    for index in sorted(shown):
        layout, real = shown[index]
        images.append([layout] + [generated[column][index] for column in columns] + [real])
        captions.append(["layout"] + names + ["real"])
    scale = max(1, GRID_TILE_PX // images[0][0].shape[-1])
    return labelled_grid(images, captions, scale=scale, caption_lines=1)

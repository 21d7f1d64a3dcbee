"""Semantic (SDM) synthesis: H&E tiles generated from nuclei layouts, saved as a segmentation training set."""
from __future__ import annotations

import csv
from dataclasses import dataclass
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
from diffusion.guidance import classifier_free_guidance
from diffusion.respace import respace, space_timesteps
from diffusion.samplers import ddim_sample, ddpm_sample
from common.figures import labelled_grid, to_uint8

MASK_ORDERS = ("random", "shuffle", "in_order")


@dataclass(frozen=True)
class Respacing:
    """How sampling walks the timesteps: DDIM over N strided steps, or DDPM over respaced sections."""

    sampler: str
    spec: str

    @classmethod
    def parse(cls, text: str) -> "Respacing":
        """'ddim50' -> DDIM with 50 steps; '250' or '10,15,20' -> ancestral DDPM over respaced timesteps."""
        text = text.strip()
        if text.startswith("ddim"):
            if not text[4:].isdigit() or int(text[4:]) < 1:
                raise ValueError(f"--timestep_respacing: expected ddimN, e.g. ddim50, got {text!r}")
            return cls("ddim", text[4:])
        try:
            [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"--timestep_respacing: expected ddimN or section counts like 250 or 10,15,20, got {text!r}") from None
        return cls("ddpm", text)


def mask_order(count: int, num_samples: int, order: str, seed: int) -> list[int]:
    """Which layout each sample uses: random draws, a shuffled pass over all layouts, or the layouts in order."""
    rng = np.random.default_rng(seed)
    if order == "in_order":
        return [i % count for i in range(num_samples)]
    if order == "shuffle":
        passes = -(-num_samples // count)
        return np.concatenate([rng.permutation(count) for _ in range(passes)])[:num_samples].tolist()
    return rng.integers(count, size=num_samples).tolist()


@torch.no_grad()
def sample_layouts(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    semantic: torch.Tensor,
    scale: float,
    respacing: Respacing,
    generator: torch.Generator,
    learn_sigma: bool,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] for a batch of condition maps, with guidance on the predicted mean only."""
    cond = {"semantic": semantic}
    model_fn = classifier_free_guidance(model, cond, scale, guided_channels=3 if learn_sigma else None)
    size = semantic.shape[-1]
    x_T = torch.randn((semantic.shape[0], 3, size, size), generator=generator, device=generator.device).to(semantic.device)
    if respacing.sampler == "ddim":
        return ddim_sample(diffusion, model_fn, x_T, steps=int(respacing.spec), generator=generator, callback=callback)
    process = respace(diffusion, space_timesteps(diffusion.num_timesteps, respacing.spec))
    return ddpm_sample(process, model_fn, x_T, generator=generator, callback=callback)


def save_sample(folder: Path, name: str, image: torch.Tensor, inst_mask: np.ndarray, maps_picture: np.ndarray) -> None:
    Image.fromarray(to_uint8(image)).save(folder / "images" / f"{name}.png")
    Image.fromarray(((inst_mask > 0) * 255).astype(np.uint8)).save(folder / "labels" / f"{name}.png")
    tifffile.imwrite(folder / "inst_masks" / f"{name}.tif", inst_mask.astype(np.uint16))
    Image.fromarray(maps_picture).save(folder / "cond" / f"{name}.png")


@dataclass
class SynthesisJob:
    model: nn.Module
    diffusion: GaussianDiffusion
    learn_sigma: bool
    label: str


def synthesise(
    jobs: list[SynthesisJob],
    layouts: LayoutPatches,
    scales: list[float],
    num_samples: int,
    batch_size: int,
    order: str,
    respacing: Respacing,
    seed: int,
    device: torch.device,
    folder: Path,
    grid_rows: int = 8,
    callback: Callable | None = None,
) -> int:
    """Generate num_samples tiles per (checkpoint, guidance scale) into folder; returns the number written."""
    for sub in ("images", "labels", "inst_masks", "cond"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    picks = mask_order(len(layouts), num_samples, order, seed)
    rows, grid = [], []
    total = len(jobs) * len(scales) * num_samples
    bar = tqdm(total=total, desc="synthesis")
    for j, job in enumerate(jobs):
        for scale in scales:
            generator = torch.Generator(device=device).manual_seed(seed)
            for first in range(0, num_samples, batch_size):
                batch = [layouts[i] for i in picks[first : first + batch_size]]
                semantic = torch.stack([b["semantic"] for b in batch]).to(device)
                first_batch = j == 0 and scale == scales[0] and first == 0
                images = sample_layouts(job.model, job.diffusion, semantic, scale, respacing, generator, job.learn_sigma,
                                        callback if first_batch else None)
                for k, (sample, image) in enumerate(zip(batch, images.cpu())):
                    index = first + k
                    name = f"{job.label}_s{scale:g}_{index:05d}_{sample['meta']['name']}"
                    inst = sample["inst_mask"].numpy()
                    picture = maps_to_picture(sample["semantic"].numpy(), layouts.maps)
                    save_sample(folder, name, image, inst, picture)
                    rows.append({"file": f"{name}.png", "layout": sample["meta"]["name"], "checkpoint": job.label, "s": scale, "seed": seed})
                    if len(grid) < grid_rows:
                        grid.append((torch.from_numpy(picture).permute(2, 0, 1).float() / 127.5 - 1, image, sample["image"]))
                bar.update(len(batch))
    bar.close()
    with (folder / "samples.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "layout", "checkpoint", "s", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    captions = [["layout", "generated", "real"]] * len(grid)
    labelled_grid([list(r) for r in grid], captions, scale=2 if grid[0][1].shape[-1] <= 64 else 1, caption_lines=1).save(folder / "grid.png")
    return len(rows)

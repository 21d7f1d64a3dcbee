"""Mitosis transition sequences: one nucleus (shared x_T and per-step noise) rendered at a sweep of conditions."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.sampling import SamplingSpec, sample
from common.figures import labelled_grid, score_plot, to_uint8
from common.files import write_csv_atomic


def parse_conditions(text: str) -> list[float]:
    """'0,0.5,1' or 'start:stop:count' (count values from start to stop inclusive) -> list of floats."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            n = int(count)
            if n < 1:
                raise ValueError("count must be at least 1")
            ends = [float(start), float(stop)]
            values = np.linspace(*ends, n).tolist() if np.all(np.isfinite(ends)) else ends
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--condition_values: expected '0,0.5,1' or 'start:stop:count', got {text!r} ({err})") from None
    if not values:
        raise ValueError("--condition_values: no values given")
    if not all(np.isfinite(values)):
        raise ValueError(f"--condition_values: expected finite numbers, got {text!r}")
    return [round(v, 6) for v in values]


@torch.no_grad()
def render_sequences(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    conditions: list[float],
    num_sequences: int,
    image_size: int,
    seed: int,
    spec: SamplingSpec,
    device: torch.device,
    sequences_per_batch: int = 8,
    start_images: torch.Tensor | None = None,
    progress: bool = True,
    callback: Callable | None = None,
) -> torch.Tensor:
    """(S, K, 3, H, W) images in [-1, 1]; within sequence s every condition shares x_T and the per-step noise.

    x_T of every sequence comes from one generator seeded with `seed`; each batch of sequences draws its
    per-step noise from a generator seeded with (seed, first sequence of the batch), so the same seed and
    sequences_per_batch reproduce the images exactly. start_images (S, 3, H, W) switches to SDEdit at
    spec.strength.
    """
    k = len(conditions)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x_T_all = torch.randn((num_sequences, 3, image_size, image_size), generator=gen)
    values = torch.tensor(conditions, dtype=torch.float32)
    out = []
    chunks = range(0, num_sequences, sequences_per_batch)
    for first in tqdm(chunks, desc="sequences", disable=not progress):
        count = min(sequences_per_batch, num_sequences - first)
        noise_index = torch.arange(count).repeat_interleave(k).to(device)
        x_T = x_T_all[first : first + count].repeat_interleave(k, dim=0).to(device)
        scores = values.repeat(count).to(device)
        step_gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first)
        starts = None
        if start_images is not None:
            starts = start_images[first : first + count].repeat_interleave(k, dim=0).to(device)
        cond = {"score": scores} if "score" in model.config.get("conditions", ()) else {}
        images = sample(model, diffusion, x_T, cond, spec, generator=step_gen, noise_index=noise_index, start_images=starts,
                        callback=callback if first == 0 else None, progress=progress)
        out.append(images.float().clamp(-1, 1).cpu().view(count, k, *images.shape[1:]))
    return torch.cat(out)


@torch.no_grad()
def score_images(ensemble: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """(M, N) member probabilities for N images in [-1, 1]."""
    parts = [ensemble.member_probs(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts, dim=1)


def spearman(conditions: np.ndarray, scores: np.ndarray) -> float:
    """Spearman correlation of the target condition and the ensemble score (nan when either is constant)."""
    if np.ptp(conditions) == 0 or np.ptp(scores) == 0:
        return float("nan")
    return float(spearmanr(conditions, scores).statistic)


RISE_TOLERANCE = 0.02


def rising_share(scores: np.ndarray, tolerance: float = RISE_TOLERANCE) -> float:
    """Share of sequences (rows of (S, K) scores, columns in order of rising condition) whose score never falls
    by more than `tolerance` from one condition value to the next."""
    steps = np.diff(np.asarray(scores, dtype=np.float64), axis=1)
    return float((steps >= -tolerance).all(axis=1).mean())


def sequence_spearman(conditions: np.ndarray, scores: np.ndarray) -> float:
    """Mean over sequences of each sequence's own Spearman correlation of score and condition (nan rows skipped)."""
    values = [spearman(conditions, row) for row in np.asarray(scores)]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def load_start_images(from_image: Sequence[str] | None, from_patch: Sequence[int] | None,
                      validation_set: Callable[[], Dataset | None], size: int) -> tuple[torch.Tensor | None, list[str]]:
    """(N, 3, size, size) real images in [-1, 1] and their names, from files or the validation patches
    of the checkpoint's data set (validation_set() builds them)."""
    if from_image:
        images = []
        for name in from_image:
            path = Path(name)
            if not path.is_file():
                raise ValueError(f"--from_image: file {path} does not exist")
            try:
                img = Image.open(path).convert("RGB")
            except OSError as err:
                raise ValueError(f"--from_image: {path} is not a readable image ({err})") from None
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            array = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            images.append(array)
        return torch.stack(images), [Path(n).name for n in from_image]
    if from_patch:
        val_set = validation_set()
        if val_set is None:
            raise ValueError("--from_patch: the checkpoint's data set has no validation patches")
        bad = [i for i in from_patch if not 0 <= i < len(val_set)]
        if bad:
            raise ValueError(f"--from_patch: indices {bad} out of range; the validation set has {len(val_set)} patches")
        samples = [val_set[i] for i in from_patch]
        names = [f"{s['meta']['slide']}@{s['meta']['x']:.0f},{s['meta']['y']:.0f}" for s in samples]
        return torch.stack([s["image"] for s in samples]), names
    return None, []


def image_name(sequence: int, index: int) -> str:
    return f"sequence_{sequence:03d}_{index:02d}.png"


def write_outputs(folder: Path, images: torch.Tensor, conditions: list[float], probs: torch.Tensor,
                  starts: list[str]) -> dict[str, float]:
    """Strips, grid, scores.csv, summary.csv and the score plot; returns the summary's numbers."""
    s, k = images.shape[:2]
    members = probs.shape[0]
    probs = probs.view(members, s, k)
    mean, std = probs.mean(0), probs.std(0, unbiased=False)
    (folder / "sequences").mkdir(parents=True)
    (folder / "images").mkdir()
    captions_all, rows_all = [], []
    for i in range(s):
        row = [images[i, j] for j in range(k)]
        for j in range(k):
            Image.fromarray(to_uint8(images[i, j])).save(folder / "images" / image_name(i, j))
        caps = [f"c={c:.2f}\np={float(mean[i, j]):.2f}" for j, c in enumerate(conditions)]
        labelled_grid([row], [caps], scale=2).save(folder / "sequences" / f"sequence_{i:03d}.png")
        rows_all.append(row)
        captions_all.append(caps)
    labelled_grid(rows_all, captions_all, scale=1 if images.shape[-1] >= 96 else 2).save(folder / "grid.png")
    with (folder / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "sequence", "condition", *[f"member_{m}" for m in range(members)], "mean", "std", "start"])
        for i in range(s):
            for j, c in enumerate(conditions):
                member_scores = [f"{float(probs[m, i, j]):.6f}" for m in range(members)]
                start = starts[i % len(starts)] if starts else "noise"
                writer.writerow([f"images/{image_name(i, j)}", i, c, *member_scores, f"{float(mean[i, j]):.6f}", f"{float(std[i, j]):.6f}", start])
    cond = np.asarray(conditions)
    summary = {
        "sequences": s,
        "spearman": spearman(np.tile(cond, s), mean.numpy().reshape(-1)),
        "sequence_spearman_mean": sequence_spearman(cond, mean.numpy()),
        "rising_share": rising_share(mean.numpy()),
        "rise_tolerance": RISE_TOLERANCE,
    }
    write_csv_atomic(folder / "summary.csv", list(summary), [list(summary.values())])
    title = f"{s} sequences, Spearman rho = {summary['spearman']:.3f}, rising {summary['rising_share']:.0%}"
    score_plot(cond, mean.numpy(), folder / "score_vs_condition.png", title)
    return summary

"""Render mitosis transition sequences and score them with the classifier ensemble.

`python inference.py --diffusion_ckpt RUN/best.pt --classifier_ckpts model_weights/resnet/ --conditions 0:1:6`
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from checkpoint import CheckpointError
from config import ConfigError
from data.annotations import DataError
from figures import labelled_grid, score_plot
from model import load_checkpoint, load_ensemble
from runtime import pick_device
from transitions import SAMPLERS, SamplingOptions, parse_conditions, render_sequences, score_images, spearman


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Mitosis transition sequences scored by a classifier ensemble.")
    p.add_argument("--diffusion_ckpt", required=True, help="checkpoint of a diffusion run (best.pt or last.pt)")
    p.add_argument("--classifier_ckpts", required=True, nargs="+", help="classifier checkpoints or folders of runs (e.g. model_weights/resnet/)")
    p.add_argument("--conditions", default="0:1:6", help="condition values: '0,0.5,1' or 'start:stop:count' (default 0:1:6)")
    p.add_argument("--num_sequences", type=int, default=8, help="number of sequences (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and of the per-step noise (default 0)")
    p.add_argument("--cfg_scale", type=float, default=1.0, help="classifier-free guidance scale; 1 = conditional only (default 1)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddpm (ancestral) or ddim (default ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50; ddpm respaces when fewer than T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta; 0 is deterministic (default 0)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences sampled together in one batch (default 8)")
    p.add_argument("--from_image", nargs="+", help="start from real image(s) noised to --strength (SDEdit); cycled over sequences")
    p.add_argument("--from_patch", nargs="+", type=int, help="start from these validation patches of the checkpoint's data set")
    p.add_argument("--strength", type=float, default=0.6, help="noise level for --from_image/--from_patch in (0, 1] (default 0.6)")
    p.add_argument("--out_dir", default="outputs/transitions", help="output folder (default outputs/transitions)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def load_start_images(args: argparse.Namespace, config: dict, size: int) -> tuple[torch.Tensor | None, list[str]]:
    """(N, 3, size, size) real images in [-1, 1] and their names, from files or validation patches."""
    if args.from_image and args.from_patch:
        raise ConfigError("--from_image and --from_patch contradict each other: give one")
    if args.from_image:
        images = []
        for name in args.from_image:
            path = Path(name)
            if not path.is_file():
                raise DataError(f"--from_image: file {path} does not exist")
            try:
                img = Image.open(path).convert("RGB")
            except OSError as err:
                raise DataError(f"--from_image: {path} is not a readable image ({err})") from None
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            array = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            images.append(array)
        return torch.stack(images), [Path(n).name for n in args.from_image]
    if args.from_patch:
        from dataloader import build_datasets

        _, val_set = build_datasets(config)
        if val_set is None:
            raise DataError("--from_patch: the checkpoint's data set has no validation patches")
        bad = [i for i in args.from_patch if not 0 <= i < len(val_set)]
        if bad:
            raise DataError(f"--from_patch: indices {bad} out of range; the validation set has {len(val_set)} patches")
        samples = [val_set[i] for i in args.from_patch]
        names = [f"{s['meta']['slide']}@{s['meta']['x']:.0f},{s['meta']['y']:.0f}" for s in samples]
        return torch.stack([s["image"] for s in samples]), names
    return None, []


def check_args(args: argparse.Namespace) -> None:
    for name, ok, expected in [
        ("num_sequences", args.num_sequences >= 1, "at least 1"),
        ("batch_size", args.batch_size >= 1, "at least 1"),
        ("steps", args.steps >= 1, "at least 1"),
        ("eta", args.eta >= 0, "non-negative"),
        ("strength", 0 < args.strength <= 1, "in (0, 1]"),
    ]:
        if not ok:
            raise ConfigError(f"--{name} must be {expected}, got {getattr(args, name)}")
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"output folder {out} already exists; pass --overwrite to replace it")


def write_outputs(folder: Path, images: torch.Tensor, conditions: list[float], probs: torch.Tensor, starts: list[str]) -> float:
    """Strips, grid, scores.csv and the score plot; returns the Spearman correlation."""
    s, k = images.shape[:2]
    members = probs.shape[0]
    probs = probs.view(members, s, k)
    mean, std = probs.mean(0), probs.std(0, unbiased=False)
    (folder / "sequences").mkdir(parents=True)
    captions_all, rows_all = [], []
    for i in range(s):
        row = [images[i, j] for j in range(k)]
        caps = [f"c={c:.2f}\np={float(mean[i, j]):.2f}" for j, c in enumerate(conditions)]
        labelled_grid([row], [caps], scale=2).save(folder / "sequences" / f"sequence_{i:03d}.png")
        rows_all.append(row)
        captions_all.append(caps)
    labelled_grid(rows_all, captions_all, scale=1 if images.shape[-1] >= 96 else 2).save(folder / "grid.png")
    with (folder / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sequence", "condition", *[f"member_{m}" for m in range(members)], "mean", "std", "start"])
        for i in range(s):
            for j, c in enumerate(conditions):
                member_scores = [f"{float(probs[m, i, j]):.6f}" for m in range(members)]
                start = starts[i % len(starts)] if starts else "noise"
                writer.writerow([i, c, *member_scores, f"{float(mean[i, j]):.6f}", f"{float(std[i, j]):.6f}", start])
    cond = np.asarray(conditions)
    rho = spearman(np.tile(cond, s), mean.numpy().reshape(-1))
    score_plot(cond, mean.numpy(), folder / "score_vs_condition.png", f"{s} sequences, Spearman rho = {rho:.3f}")
    return rho


def run(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    check_args(args)
    try:
        conditions = parse_conditions(args.conditions)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = pick_device(args.device)
    loaded = load_checkpoint(args.diffusion_ckpt, device)
    if loaded.model_type != "diffusion":
        raise ConfigError(f"--diffusion_ckpt {args.diffusion_ckpt} holds a {loaded.model_type} model, not a diffusion model")
    ensemble, member_files = load_ensemble(args.classifier_ckpts, device)
    size = loaded.model_config["unet"]["image_size"]
    starts, start_names = load_start_images(args, loaded.config, size)
    if starts is not None:
        starts = starts[torch.arange(args.num_sequences) % len(starts)]
    options = SamplingOptions(args.sampler, args.steps, args.eta, args.cfg_scale, args.strength)
    images = render_sequences(
        loaded.model, loaded.diffusion, conditions, args.num_sequences, size, args.seed, options, device, args.batch_size, starts
    )
    probs = score_images(ensemble, images.flatten(0, 1), device)
    out = Path(args.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rho = write_outputs(staging, images, conditions, probs, start_names)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"ensemble of {len(member_files)}: " + ", ".join(str(f) for f in member_files))
    print(f"Spearman correlation of ensemble score and condition: {rho:.3f}")
    print(f"pictures: {out / 'grid.png'}, {out / 'score_vs_condition.png'}, {out / 'sequences'}/; numbers: {out / 'scores.csv'}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sampling from a trained checkpoint; what is rendered depends on the checkpoint's model type.

diffusion: mitosis transition sequences scored by the classifier ensemble
    python inference.py --ckpt RUN/last.pt --classifier_ckpts model_weights/resnet/ --conditions 0:1:6
sdm: H&E tiles from nuclei layouts, written as a segmentation training set
    python inference.py --ckpt RUN/last.pt --num_samples 64 --s 1.5 2 --timestep_respacing ddim50
ldm: tiles per cluster, or one tile per training tile from its cluster (--paired)
    python inference.py --ckpt RUN/last.pt --cluster_ids 0 1 2 --num_per_cluster 16 --cfg_scale 2
vqvae / autoencoder_kl: reconstructions of the held-out tiles and latent features of the training tiles
    python inference.py --ckpt RUN/best.pt --out_dir outputs/autoencoder
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from checkpoint import CheckpointError
from config import ConfigError
from data.annotations import DataError
from dataloader import layout_dataset, stack_split
from latents import export_features, generate_paired, generate_per_cluster, reconstruct
from model import LoadedModel, load_checkpoint, load_ensemble
from runtime import pick_device
from synthesis import Respacing, SynthesisJob, synthesise
from trajectory import TrajectoryRecorder
from transitions import (
    SAMPLERS,
    SamplingOptions,
    load_start_images,
    parse_conditions,
    render_sequences,
    score_images,
    write_outputs,
)

TYPE_FLAGS = {
    "diffusion": ("classifier_ckpts", "conditions", "num_sequences", "cfg_scale", "from_image", "from_patch", "strength"),
    "sdm": ("num_samples", "s", "shuffle_masks", "match_struct", "masks"),
    "ldm": ("cluster_ids", "num_per_cluster", "paired", "cfg_scale"),
    "vqvae": (),
    "autoencoder_kl": (),
}
SAMPLING_FLAGS = ("sampler", "steps", "timestep_respacing", "eta", "save_trajectory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    common = p.add_argument_group("all checkpoints")
    common.add_argument("--ckpt", "--diffusion_ckpt", dest="ckpt", nargs="+", required=True, help="checkpoint(s) (best.pt, last.pt, step_N.pt); sdm takes several")
    common.add_argument("--seed", type=int, default=0, help="seed of the starting noise and of the per-step noise (default 0)")
    common.add_argument("--sampler", choices=SAMPLERS, help="ddpm (ancestral) or ddim (default ddim)")
    common.add_argument("--steps", type=int, help="sampling steps (default 50; ddpm respaces when fewer than T)")
    common.add_argument("--timestep_respacing", help="instead of --sampler/--steps: ddimN, or section counts such as 250 or 10,15,20 (ddpm)")
    common.add_argument("--eta", type=float, default=0.0, help="DDIM eta; 0 is deterministic (default 0)")
    common.add_argument("--batch_size", type=int, default=8, help="diffusion: sequences per batch; sdm: tiles per batch (default 8)")
    common.add_argument("--out_dir", default="outputs/samples", help="output folder (default outputs/samples)")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    common.add_argument("--save_trajectory", action="store_true", help="also write trajectory.gif: x_t and predicted x_0 of the first samples during the reverse process (pixel-space models)")
    common.add_argument("--trajectory_every", type=int, default=10, help="record every k-th sampling step for --save_trajectory (default 10)")
    trans = p.add_argument_group("diffusion checkpoints: transition sequences")
    trans.add_argument("--classifier_ckpts", nargs="+", help="classifier checkpoints or folders of runs (e.g. model_weights/resnet/); required")
    trans.add_argument("--conditions", help="condition values: '0,0.5,1' or 'start:stop:count' (default 0:1:6)")
    trans.add_argument("--num_sequences", type=int, help="number of sequences (default 8)")
    trans.add_argument("--cfg_scale", type=float, help="classifier-free guidance scale; 1 = conditional only (default 1)")
    trans.add_argument("--from_image", nargs="+", help="start from real image(s) noised to --strength (SDEdit); cycled over sequences")
    trans.add_argument("--from_patch", nargs="+", type=int, help="start from these validation patches of the checkpoint's data set")
    trans.add_argument("--strength", type=float, help="noise level for --from_image/--from_patch in (0, 1] (default 0.6)")
    sdm = p.add_argument_group("sdm checkpoints: layout-to-image synthesis")
    sdm.add_argument("--num_samples", type=int, help="tiles per checkpoint and guidance scale (default 16)")
    sdm.add_argument("--s", type=float, nargs="+", help="guidance scale(s) on the layout; 1 = conditional only (default 1.5)")
    sdm.add_argument("--masks", help="tiled layout folder (images/, inst_masks/) to take layouts from (default: the checkpoint's training tiles)")
    sdm.add_argument("--shuffle_masks", action="store_true", help="use every layout once in a seeded random order before repeating")
    sdm.add_argument("--match_struct", action="store_true", help="use the layouts in order, so the set mirrors the real one")
    ldm = p.add_argument_group("ldm and label-conditioned diffusion checkpoints: tiles per cluster or class (guidance: --cfg_scale)")
    ldm.add_argument("--cluster_ids", "--class_ids", dest="cluster_ids", type=int, nargs="+", help="clusters / classes to generate (default: all the model knows)")
    ldm.add_argument("--num_per_cluster", "--num_per_class", dest="num_per_cluster", type=int, help="tiles per cluster or class, or in all for an unconditional model (default 8)")
    ldm.add_argument("--paired", action="store_true", help="one tile per training tile, from its cluster, under its file name (generated/ and real/)")
    return p


def check_flags(args: argparse.Namespace, model_type: str, path: Path) -> None:
    """Reject flags meant for other model types, naming them and what the checkpoint is."""
    allowed = set(TYPE_FLAGS[model_type]) | (set() if model_type in ("vqvae", "autoencoder_kl") else set(SAMPLING_FLAGS))
    other = {f for flags in TYPE_FLAGS.values() for f in flags} | set(SAMPLING_FLAGS)
    wrong = given(args, sorted(other - allowed))
    if wrong:
        raise ConfigError(f"--{', --'.join(wrong)}: not for {model_type} checkpoints ({path})")


def given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return [n for n in names if getattr(args, n) not in (None, False)]


def sampling_choice(args: argparse.Namespace) -> Respacing:
    """--timestep_respacing, or --sampler/--steps, as one Respacing."""
    if args.timestep_respacing and (args.sampler or args.steps):
        raise ConfigError("--timestep_respacing replaces --sampler/--steps: give one or the other")
    if args.timestep_respacing:
        try:
            return Respacing.parse(args.timestep_respacing)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    sampler, steps = args.sampler or "ddim", args.steps if args.steps is not None else 50
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    return Respacing.parse(f"ddim{steps}") if sampler == "ddim" else Respacing("ddpm", str(steps))


def check_common(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.eta < 0:
        raise ConfigError(f"--eta must be non-negative, got {args.eta}")
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"output folder {out} already exists; pass --overwrite to replace it")


def staged(out: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary folder beside out, then move it into place: nothing half-written is left."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def make_recorder(args: argparse.Namespace, model_type: str) -> TrajectoryRecorder | None:
    if not args.save_trajectory:
        return None
    if model_type == "ldm":
        raise ConfigError("--save_trajectory shows pixels: it is for pixel-space models (diffusion, sdm), not ldm latents")
    if args.trajectory_every < 1:
        raise ConfigError(f"--trajectory_every must be at least 1, got {args.trajectory_every}")
    return TrajectoryRecorder(every=args.trajectory_every)


def save_trajectory(recorder: TrajectoryRecorder | None, folder: Path) -> None:
    if recorder is not None:
        recorder.save_gif(folder / "trajectory.gif")
        recorder.save_strip(folder / "trajectory.png")


def run_transitions(args: argparse.Namespace, loaded: LoadedModel, device: torch.device) -> None:
    if len(args.ckpt) != 1:
        raise ConfigError("--ckpt: transition sequences take one diffusion checkpoint")
    if not args.classifier_ckpts:
        raise ConfigError("--classifier_ckpts is required to score transition sequences")
    if args.from_image and args.from_patch:
        raise ConfigError("--from_image and --from_patch contradict each other: give one")
    num_sequences = args.num_sequences if args.num_sequences is not None else 8
    strength = args.strength if args.strength is not None else 0.6
    if num_sequences < 1 or not 0 < strength <= 1:
        raise ConfigError(f"--num_sequences must be at least 1 and --strength in (0, 1]; got {num_sequences}, {strength}")
    respacing = sampling_choice(args)
    try:
        conditions = parse_conditions(args.conditions or "0:1:6")
        size = loaded.model_config["unet"]["image_size"]
        starts, start_names = load_start_images(args.from_image, args.from_patch, loaded.config, size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ensemble, member_files = load_ensemble(args.classifier_ckpts, device)
    if starts is not None:
        starts = starts[torch.arange(num_sequences) % len(starts)]
    steps = int(respacing.spec) if respacing.spec.isdigit() else respacing.spec
    options = SamplingOptions(respacing.sampler, steps, args.eta, args.cfg_scale if args.cfg_scale is not None else 1.0, strength)
    recorder = make_recorder(args, loaded.model_type)
    images = render_sequences(loaded.model, loaded.diffusion, conditions, num_sequences, size, args.seed, options, device,
                              args.batch_size, starts, callback=recorder)
    probs = score_images(ensemble, images.flatten(0, 1), device)
    out = Path(args.out_dir)
    result: dict[str, float] = {}

    def write(folder: Path) -> None:
        result.update(rho=write_outputs(folder, images, conditions, probs, start_names))
        save_trajectory(recorder, folder)

    staged(out, write)
    print(f"ensemble of {len(member_files)}: " + ", ".join(str(f) for f in member_files))
    print(f"Spearman correlation of ensemble score and condition: {result['rho']:.3f}")
    print(f"pictures: {out / 'grid.png'}, {out / 'score_vs_condition.png'}, {out / 'sequences'}/; numbers: {out / 'scores.csv'}")


def run_synthesis(args: argparse.Namespace, first: LoadedModel, device: torch.device) -> None:
    if args.shuffle_masks and args.match_struct:
        raise ConfigError("--shuffle_masks and --match_struct contradict each other: give one")
    num_samples = args.num_samples if args.num_samples is not None else 16
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    respacing = sampling_choice(args)
    loaded = [first] + [load_checkpoint(p, device) for p in args.ckpt[1:]]
    for other in loaded[1:]:
        if other.model_type != "sdm" or other.model_config["maps"] != first.model_config["maps"]:
            raise ConfigError(f"--ckpt {other.path}: not an sdm checkpoint with the same condition maps as {first.path}")
    layouts = layout_dataset(first.config, first.model_config, args.masks)
    jobs = [SynthesisJob(m.model, m.diffusion, m.model_config["diffusion"].get("learn_sigma", False), f"m{i}") for i, m in enumerate(loaded)]
    order = "shuffle" if args.shuffle_masks else "in_order" if args.match_struct else "random"
    scales = args.s or [1.5]
    out = Path(args.out_dir)
    count: dict[str, int] = {}
    recorder = make_recorder(args, "sdm")

    def write(folder: Path) -> None:
        count.update(n=synthesise(jobs, layouts, scales, num_samples, args.batch_size, order, respacing, args.seed, device, folder,
                                  callback=recorder))
        save_trajectory(recorder, folder)

    staged(out, write)
    print(f"{count['n']} tiles from {len(loaded)} checkpoint(s) x guidance {scales} into {out}: images/, labels/, inst_masks/, cond/")
    print(f"pictures: {out / 'grid.png'} (layout | generated | real); list: {out / 'samples.csv'}")


def single_checkpoint(args: argparse.Namespace, model_type: str) -> None:
    if len(args.ckpt) != 1:
        raise ConfigError(f"--ckpt: {model_type} checkpoints are sampled one at a time")


def run_tiles(args: argparse.Namespace, loaded: LoadedModel, device: torch.device) -> None:
    """Tiles per class or cluster id (latent diffusion, or a label-conditioned / unconditional pixel model)."""
    single_checkpoint(args, loaded.model_type)
    respacing = sampling_choice(args)
    scale = args.cfg_scale if args.cfg_scale is not None else 1.0
    num_labels = loaded.model_config["unet"].get("num_labels", 0)
    conditioned = "label" in loaded.model_config["unet"]["conditions"]
    out = Path(args.out_dir)
    if args.paired:
        if loaded.model_type != "ldm":
            raise ConfigError("--paired pairs generated with real tiles of a tile stack: it is for ldm checkpoints")
        if args.cluster_ids or args.num_per_cluster:
            raise ConfigError("--paired makes one tile per training tile: it takes no --cluster_ids or --num_per_cluster")
        tiles = stack_split(loaded.config, "train", labels=conditioned)
        count: dict[str, int] = {}
        staged(out, lambda folder: count.update(n=generate_paired(loaded.model, loaded.diffusion, tiles, scale, respacing, args.batch_size, args.seed, device, folder)))
        print(f"{count['n']} generated tiles paired by file name with the real ones: {out / 'generated'}, {out / 'real'}")
        return
    if args.cluster_ids and not conditioned:
        raise ConfigError(f"--cluster_ids: {loaded.path} is an unconditional model (trained without --conditions label)")
    ids = args.cluster_ids if args.cluster_ids else (list(range(num_labels)) if conditioned else None)
    bad = [c for c in ids or [] if not 0 <= c < num_labels]
    if bad:
        raise ConfigError(f"--cluster_ids {bad}: the model knows clusters 0..{num_labels - 1}")
    per_cluster = args.num_per_cluster if args.num_per_cluster is not None else 8
    if per_cluster < 1:
        raise ConfigError(f"--num_per_cluster must be at least 1, got {per_cluster}")
    count = {}
    recorder = make_recorder(args, loaded.model_type)

    def write(folder: Path) -> None:
        count.update(n=generate_per_cluster(loaded.model, loaded.diffusion, ids, per_cluster, scale, respacing, args.batch_size,
                                            args.seed, device, folder, callback=recorder,
                                            label_name="cluster" if loaded.model_type == "ldm" else "class"))
        save_trajectory(recorder, folder)

    staged(out, write)
    print(f"{count['n']} tiles into {out}; pictures: {out / 'grid.png'}; list: {out / 'samples.csv'}")


def run_autoencoder(args: argparse.Namespace, loaded: LoadedModel, device: torch.device) -> None:
    single_checkpoint(args, loaded.model_type)
    train_tiles = stack_split(loaded.config, "train")
    test_tiles = stack_split(loaded.config, "test")
    out = Path(args.out_dir)
    result: dict[str, Any] = {}

    def write(folder: Path) -> None:
        result.update(reconstruct(loaded.model, test_tiles, args.batch_size, device, folder))
        result["features"] = export_features(loaded.model, train_tiles, args.batch_size, device, folder / "features.csv")

    staged(out, write)
    print(f"held-out tiles: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} ({out / 'metrics.csv'}, {out / 'grid.png'})")
    print(f"latent features of {result['features']} training tiles: {out / 'features.csv'} (input of cluster_validation.py)")


RUNNERS = {"diffusion": run_transitions, "sdm": run_synthesis, "ldm": run_tiles, "vqvae": run_autoencoder, "autoencoder_kl": run_autoencoder}


def runner_for(loaded: LoadedModel) -> tuple[str, Callable]:
    """Score-conditioned pixel models render transition sequences; label-conditioned or unconditional ones
    generate tiles per class, like latent diffusion."""
    kind = loaded.model_type
    if kind == "diffusion" and "score" not in loaded.model_config["unet"]["conditions"]:
        return "ldm", run_tiles
    return kind, RUNNERS[kind]


def run(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    check_common(args)
    device = pick_device(args.device)
    first = load_checkpoint(args.ckpt[0], device)
    if first.model_type not in RUNNERS:
        raise ConfigError(f"--ckpt {args.ckpt[0]} holds a {first.model_type} classifier; sampling needs a diffusion, sdm, ldm or autoencoder checkpoint")
    kind, runner = runner_for(first)
    check_flags(args, kind, first.path)
    runner(args, first, device)
    return Path(args.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

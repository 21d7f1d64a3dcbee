"""Metrics over real vs generated images: SSIM, MS-SSIM, LPIPS, FID/KID, precision/recall, NLL, controllability, style distance.

python -m tools.evaluate --real data/real_tiles --fake outputs/generated --metrics ssim,ms_ssim,fid,kid,pr --out results/eval.json
python -m tools.evaluate --fake runs/demo/stedm_samples --metrics style_distance --out runs/demo/stedm_samples/style.json
python -m tools.evaluate --real data/kpc/test --fake outputs/ldm --metrics ssim,ms_ssim --metric_preset kpc --out results/kpc.json

--metric_preset picks the SSIM/MS-SSIM convention (default: Wang et al.; kpc: the KPC latent work's choices, see
tools/evaluation.py METRIC_PRESETS); --ssim_window, --ssim_gaussian and --ssim_sample_covariance given explicitly
replace the preset's value of that one setting. The results record the convention used.

style_distance needs only --fake, a STEDM output folder with samples.csv (see metrics/style_distance.py); it also
writes style_distance.csv (per tile) and style_distance.png (scatter) beside --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from common.cli import Parser, run_main
from common.errors import ConfigError
from common.files import check_writable_output, write_csv_atomic, write_text_atomic
from common.options import number, str_list
from tools.evaluation import (
    METRIC_PRESETS,
    METRICS,
    NLL_CONDITIONS,
    controllability,
    layout_adherence,
    distribution_metrics,
    feature_network,
    load_images,
    lpips_network,
    match_sizes,
    nll_bits_per_dim,
    read_targets,
    ssim_convention,
    structural_metrics,
    style_distance,
    style_outputs,
    write_style_outputs,
)
from common.runtime import pick_device, set_threads

NO_IMAGE_SET_METRICS = {"nll", "controllability", "style_distance", "layout_dice"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--real", help="folder of real images (recursive) or a .npy tile stack")
    p.add_argument("--fake", help="folder of generated images (recursive) or a .npy tile stack; for style_distance a STEDM output folder with samples.csv")
    p.add_argument("--metrics", default="ssim,ms_ssim,fid,kid,pr", help=f"comma-separated, from {', '.join(METRICS)} (default ssim,ms_ssim,fid,kid,pr)")
    p.add_argument("--out", required=True, help="results JSON; a CSV with the same numbers is written beside it")
    p.add_argument("--paired", choices=("auto", "yes", "no"), default="auto", help="pair SSIM/MS-SSIM/LPIPS by file name (auto: when every fake name has a real twin)")
    p.add_argument("--pairs", type=number(int, 1), default=1000, help="random real/fake pairs for unpaired SSIM/MS-SSIM/LPIPS (default 1000)")
    p.add_argument("--image_size", type=number(int, 1), help="resize every image to this size first")
    p.add_argument("--limit", type=number(int, 1), help="use at most this many images of each set")
    p.add_argument("--lpips_backbone", choices=("vgg16", "alexnet"), default="vgg16", help="LPIPS backbone (default vgg16)")
    p.add_argument("--lpips_weights", help="local torchvision state dict of the LPIPS backbone (required for lpips)")
    p.add_argument("--lpips_linear", help="optional LPIPS calibration (lin layers) weights")
    p.add_argument("--inception_weights", help="local torchvision Inception-v3 state dict for FID/KID/PR (default: EfficientNet-Lite0)")
    p.add_argument("--features", help="classifier checkpoint whose penultimate layer gives the FID/KID/PR features")
    p.add_argument("--nll_ckpt", help="diffusion checkpoint whose variational bound (bits/dim) is computed on --real")
    p.add_argument("--nll_images", type=number(int, 1), default=64, help="real images used for the NLL (default 64; each costs T network passes)")
    p.add_argument("--nll_condition", choices=NLL_CONDITIONS, default="null", help="bound of a conditional model with the null condition (unconditional) or each real image's true condition from --nll_condition_csv (default null)")
    p.add_argument("--nll_condition_csv", help="--nll_condition true: CSV with file,condition per --real image (file relative to --real, suffix optional, or a tile name of a .npy stack; condition: class id or score)")
    p.add_argument("--segmenter", help="layout_dice: a segmentation checkpoint trained on real tiles that segments the --fake tiles")
    p.add_argument("--targets", help="controllability: CSV with file,condition of generated images (inference.py's scores.csv)")
    p.add_argument("--classifier_ckpts", nargs="+", help="controllability: the classifier ensemble (files or folders)")
    p.add_argument("--metric_preset", choices=tuple(METRIC_PRESETS), default="default", help="SSIM/MS-SSIM convention: default (Wang et al.) or kpc (the KPC latent work: scikit-image SSIM win 3 uniform sample-covariance, torchmetrics MS-SSIM, generated images resized bilinearly to the real size)")
    p.add_argument("--ssim_window", type=number(int, 3), help="SSIM window in px, odd >= 3 (default: the preset's, 11 or 3); with the Gaussian it sets only the border strip left out, (N-1)/2 px")
    p.add_argument("--ssim_gaussian", action=argparse.BooleanOptionalAction, help="Gaussian-weighted (sigma 1.5, 11 taps) or uniform N x N SSIM window (default: the preset's)")
    p.add_argument("--ssim_sample_covariance", action=argparse.BooleanOptionalAction, help="sample (N^2/(N^2-1)) instead of population variances and covariance in SSIM (default: the preset's)")
    p.add_argument("--batch_size", type=number(int, 1), default=32, help="images per network pass (default 32)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of random pairs and KID subsets (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=number(int, 1), help="CPU threads of PyTorch's operators (default: "
                   "OMP_NUM_THREADS, else one per physical core)")
    return p


def check(args: argparse.Namespace, metrics: list[str]) -> None:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ConfigError(f"--metrics: unknown {unknown}; choose from {', '.join(METRICS)}")
    image_metrics = set(metrics) - NO_IMAGE_SET_METRICS
    if image_metrics and not (args.real and args.fake):
        raise ConfigError(f"--metrics {','.join(sorted(image_metrics))} need --real and --fake")
    if "lpips" in metrics and not args.lpips_weights:
        raise ConfigError("--metrics lpips needs --lpips_weights PATH (a local VGG16 or AlexNet state dict)")
    if "nll" in metrics and not (args.nll_ckpt and args.real):
        raise ConfigError("--metrics nll needs --nll_ckpt and --real")
    check_nll_condition(args, metrics)
    ssim_flags = {"--ssim_window": args.ssim_window, "--ssim_gaussian": args.ssim_gaussian,
                  "--ssim_sample_covariance": args.ssim_sample_covariance}
    given = [flag for flag, value in ssim_flags.items() if value is not None]
    if given and "ssim" not in metrics:
        raise ConfigError(f"{', '.join(given)} set(s) the SSIM of --metrics ssim, which is not asked for")
    if "layout_dice" in metrics and not (args.fake and args.segmenter):
        raise ConfigError("--metrics layout_dice needs --fake (generated tiles with their layouts) and --segmenter CKPT")
    if args.segmenter and "layout_dice" not in metrics:
        raise ConfigError("--segmenter is read only with --metrics layout_dice")
    if "controllability" in metrics and not (args.targets and args.classifier_ckpts):
        raise ConfigError("--metrics controllability needs --targets CSV and --classifier_ckpts")
    if "style_distance" in metrics:
        check_style(args)
    check_outputs(args, metrics)


def check_outputs(args: argparse.Namespace, metrics: list[str]) -> None:
    """--out (and the CSV and style files beside it) can be written, and replace nothing without --overwrite."""
    out = Path(args.out)
    check_writable_output(out, "--out", folder=False)
    check_writable_output(out.with_suffix(".csv"), "--out", folder=False)
    if "style_distance" in metrics:
        for path in style_outputs(out):
            check_writable_output(path, "--out", folder=False)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")


def check_nll_condition(args: argparse.Namespace, metrics: list[str]) -> None:
    """--nll_condition true needs the true conditions, and a condition file is only read for it."""
    if (args.nll_condition != "null" or args.nll_condition_csv) and "nll" not in metrics:
        raise ConfigError("--nll_condition and --nll_condition_csv set the bound of --metrics nll, which is not asked for")
    if args.nll_condition == "true" and not args.nll_condition_csv:
        raise ConfigError("--nll_condition true needs --nll_condition_csv CSV with file,condition of every --real image")
    if args.nll_condition_csv and args.nll_condition != "true":
        raise ConfigError("--nll_condition_csv is read only with --nll_condition true")


def check_style(args: argparse.Namespace) -> None:
    """style_distance needs --fake, and its per-tile CSV and plot must not collide with or silently replace files."""
    if not args.fake:
        raise ConfigError("--metrics style_distance needs --fake (a STEDM output folder with samples.csv)")
    out = Path(args.out)
    if out.with_suffix(".csv") in style_outputs(out):
        raise ConfigError(f"--out {out}: its results CSV would overwrite the per-tile {out.with_suffix('.csv').name}; choose another name")
    existing = [str(p) for p in style_outputs(out) if p.exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    metrics = str_list(args.metrics)
    check(args, metrics)
    convention = ssim_convention(args.metric_preset, args.ssim_window, args.ssim_gaussian, args.ssim_sample_covariance)
    device = pick_device(args.device)
    set_threads(args.threads)
    targets = read_targets(args.targets) if "controllability" in metrics else None
    distribution = [m for m in ("fid", "kid", "pr") if m in metrics]
    network = feature_network(args.inception_weights, args.features, device) if distribution else None
    lpips = lpips_network(args.lpips_backbone, args.lpips_weights, args.lpips_linear) if "lpips" in metrics else None
    results: dict[str, Any] = {"metrics": metrics}
    real = load_images(args.real, args.image_size, args.limit, "--real") if args.real else None
    needs_fake = bool(args.fake and set(metrics) - NO_IMAGE_SET_METRICS)
    fake = load_images(args.fake, args.image_size, args.limit, "--fake") if needs_fake else None
    if real is not None and fake is not None:
        results.update(real=real.source, fake=fake.source, n_real=len(real.names), n_fake=len(fake.names))
        fake, resized = match_sizes(real, fake, args.metric_preset)
        results.update(resized)
        structural = [m for m in ("ssim", "ms_ssim", "lpips") if m in metrics]
        if structural:
            values, paired = structural_metrics(real, fake, structural, args.paired, args.pairs, args.seed, args.batch_size,
                                                device, lpips, convention)
            results.update(values, paired=paired)
            if {"ssim", "ms_ssim"} & set(structural):
                results.update(convention.record())
        if distribution:
            results.update(distribution_metrics(real, fake, distribution, network, args.batch_size, device, args.seed))
    if "nll" in metrics:
        results.update(nll_bits_per_dim(args.nll_ckpt, real, args.nll_images, args.batch_size, device,
                                        args.nll_condition, args.nll_condition_csv))
    if "controllability" in metrics:
        results.update(controllability(targets, args.classifier_ckpts, args.batch_size, device))
    if "layout_dice" in metrics:
        results.setdefault("fake", args.fake)
        results.update(layout_adherence(args.fake, args.segmenter, device))
    style_rows = None
    if "style_distance" in metrics:
        values, style_rows = style_distance(args.fake, args.limit)
        results.setdefault("fake", args.fake)
        results.update(values)
    out = Path(args.out)
    if style_rows is not None:
        write_style_outputs(style_rows, out)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    flat = {k: (",".join(v) if isinstance(v, list) else v) for k, v in results.items()}
    write_csv_atomic(out.with_suffix(".csv"), list(flat), [flat])
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    extra = "".join(f", {p}" for p in style_outputs(out)) if style_rows is not None else ""
    print(f"results: {out}, {out.with_suffix('.csv')}{extra}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

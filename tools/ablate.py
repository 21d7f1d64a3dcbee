"""Ablations: train a grid of variants of one recipe for a fixed budget, evaluate each, tabulate and plot.

python -m tools.ablate --grid configs/ablations/demo.yaml --out runs/ablation
Run it again after an interruption: finished variants are kept, a half-trained one resumes where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import train  # noqa: E402
from common.checkpoint import read_checkpoint  # noqa: E402
from common.cli import run_main  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from common.files import save_figure_atomic, write_csv_atomic  # noqa: E402
from common.runtime import pick_device  # noqa: E402
from dataloader import validation_set  # noqa: E402
from diffusion.sampling import SamplingSpec  # noqa: E402
from metrics.structural import ssim, unpaired_scores  # noqa: E402
from model import load_checkpoint, resolve_config, run_dir_for  # noqa: E402
from recipes.latents import sample_tiles  # noqa: E402

FIELDS = ["variant", "step", "ssim", "nll_bpd", "samples", "nll_images"]


def load_grid(path: str | Path) -> dict[str, Any]:
    """The grid file: base (a train.py YAML), budget (overrides for every run), evaluate, axes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--grid {path} does not exist")
    grid = yaml.safe_load(path.read_text()) or {}
    if not isinstance(grid.get("axes"), dict) or not grid["axes"]:
        raise ConfigError(f"--grid {path}: expected an 'axes' mapping (flag: [values] or flag: {{name: {{flags}}}})")
    unknown = sorted(set(grid) - {"base", "budget", "evaluate", "axes"})
    if unknown:
        raise ConfigError(f"--grid {path}: unknown keys {unknown}; expected base, budget, evaluate, axes")
    return grid


def variants(axes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination: a name like 'schedule-linear_attention-mid' and the flags it sets."""
    choices = []
    for axis, values in axes.items():
        if isinstance(values, dict):
            choices.append([(f"{axis}-{name}", dict(flags or {})) for name, flags in values.items()])
        else:
            choices.append([(f"{axis}-{value}", {axis: value}) for value in values])
    out = []
    for combo in itertools.product(*choices):
        name = "_".join(part for part, _ in combo)
        flags: dict[str, Any] = {}
        for _, f in combo:
            flags.update(f)
        out.append((name, flags))
    return out


def as_argv(flags: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in flags.items():
        if isinstance(value, bool):
            argv += [f"--{key}"] if value else ([f"--no-{key}"] if key in ("mid_attention", "augment") else [])
        else:
            value = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else ("none" if value is None else value)
            argv += [f"--{key}", str(value)]
    return argv


def train_variant(grid: dict[str, Any], flags: dict[str, Any], out: Path) -> Path:
    """Train (or resume, or keep) one variant; returns its run folder."""
    argv = (["--config", str(grid["base"])] if grid.get("base") else []) + as_argv({**grid.get("budget", {}), **flags})
    argv += ["--out_dir", str(out)]
    run_dir = run_dir_for(resolve_config(argv))
    last = run_dir / "last.pt"
    budget = resolve_config(argv)["max_steps"]
    if last.is_file():
        step = read_checkpoint(last)["step"]
        if step < budget:
            train.run(["--resume", str(run_dir), "--max_steps", str(budget)])
        return run_dir
    return train.run(argv + ["--overwrite"])


@torch.no_grad()
def evaluate_variant(run_dir: Path, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """SSIM of samples against validation images (random pairs) and the NLL of validation images in bits/dim."""
    loaded = load_checkpoint(run_dir / "last.pt", device)
    val = validation_set(loaded.config)
    if val is None:
        raise DataError(f"{run_dir}: the data set has no validation images to evaluate against")
    count = min(int(settings.get("samples", 64)), len(val))
    real = torch.stack([val[i]["image"] for i in range(count)])
    labels = None
    if "label" in loaded.model_config["unet"].get("conditions", ()):
        labels = torch.tensor([int(val[i]["label"]) for i in range(count)])
    generator = torch.Generator(device=device).manual_seed(int(settings.get("seed", 0)))
    try:
        spec = SamplingSpec.parse_respacing(str(settings.get("sampling", "ddim50")), cfg_scale=float(settings.get("cfg_scale", 1.0)))
    except ValueError as err:
        raise ConfigError(f"evaluate: sampling / cfg_scale of the grid: {err}") from None
    fake = torch.cat([
        sample_tiles(loaded.model, loaded.diffusion, None if labels is None else labels[i : i + 32], min(32, count - i),
                     spec, generator, device)
        for i in range(0, count, 32)
    ])
    ssim_value = float(torch.as_tensor(unpaired_scores(real, fake, lambda x, y: ssim(x, y), pairs=count, seed=0)).mean())
    n_nll = min(int(settings.get("nll_images", 16)), len(val))
    x0 = torch.stack([val[i]["image"] for i in range(n_nll)]).to(device)
    conditions = loaded.model_config["unet"].get("conditions", ())
    drop = torch.ones(len(x0), dtype=torch.bool, device=device)
    model_fn = (lambda x, t: loaded.model(x, t, None, drop)) if conditions else (lambda x, t: loaded.model(x, t))
    nll = float(loaded.diffusion.variational_bound(model_fn, x0)["total_bpd"].mean())
    return {"step": loaded.step, "ssim": round(ssim_value, 5), "nll_bpd": round(nll, 5), "samples": count, "nll_images": n_nll}


def read_results(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["variant"]: row for row in csv.DictReader(fh)}


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv_atomic(path, FIELDS, rows)


def plot_results(path: Path, rows: list[dict[str, Any]]) -> None:
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(rows) + 2), 4), dpi=110)
    for ax, key, label in ((axes[0], "ssim", "SSIM to validation images (higher is better)"),
                           (axes[1], "nll_bpd", "NLL, bits/dim (lower is better)")):
        ax.bar(np.arange(len(rows)), [float(r[key]) for r in rows], color="C0" if key == "ssim" else "C1")
        ax.set_xticks(np.arange(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="YAML with base, budget, evaluate and axes")
    p.add_argument("--out", required=True, help="folder for the runs, results.csv and results.png")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (evaluation; training follows the base config)")
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    done = read_results(out / "results.csv")
    rows: list[dict[str, Any]] = []
    todo = variants(grid["axes"])
    for i, (name, flags) in enumerate(todo, start=1):
        if name in done:
            rows.append(done[name])
            print(f"[{i}/{len(todo)}] {name}: done before")
            continue
        print(f"[{i}/{len(todo)}] {name}: {flags}")
        run_dir = train_variant(grid, flags, out / "runs" / name)
        rows.append({"variant": name, **evaluate_variant(run_dir, grid.get("evaluate", {}), device)})
        write_results(out / "results.csv", rows + [done[n] for n, _ in todo[i:] if n in done])
    plot_results(out / "results.png", rows)
    width = max(len(r["variant"]) for r in rows)
    print(f"{'variant':<{width}}  {'ssim':>8}  {'nll_bpd':>8}")
    for r in rows:
        print(f"{r['variant']:<{width}}  {float(r['ssim']):8.4f}  {float(r['nll_bpd']):8.4f}")
    print(f"results: {out / 'results.csv'}, {out / 'results.png'}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

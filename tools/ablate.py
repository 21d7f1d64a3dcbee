"""Ablations: train a grid of variants of one recipe for a fixed budget, evaluate each, tabulate and plot.

python -m tools.ablate --grid configs/ablations/demo.yaml --out runs/ablation
Run it again after an interruption: finished variants are kept, a half-trained one resumes where it stopped.
"""
from __future__ import annotations

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
from common.cli import Parser, run_main  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from common.files import check_writable_output, mark_as_ours, save_figure_atomic, write_csv_atomic  # noqa: E402
from common.options import number  # noqa: E402
from common.runtime import pick_device  # noqa: E402
from dataloader import validation_set  # noqa: E402
from diffusion.sampling import SamplingSpec  # noqa: E402
from metrics.structural import ssim, unpaired_scores  # noqa: E402
from model import OPTIONS, load_checkpoint, resolve_config, run_dir_for  # noqa: E402
from recipes.latents import sample_tiles  # noqa: E402

FIELDS = ["variant", "step", "ssim", "nll_bpd", "samples", "nll_images"]
GRID_KEYS = ("base", "budget", "evaluate", "axes")
# The settings of a grid's `evaluate` mapping and the values each takes.
EVALUATE_SETTINGS = {
    "samples": number(int, 1),
    "nll_images": number(int, 1),
    "seed": number(int, 0),
    "cfg_scale": number(float, 0),
    "sampling": str,
}


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document of a text file; DataError for a binary or non-UTF-8 file, ConfigError for bad YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{what} {path}: not a text file (expected UTF-8 YAML)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path}: not valid YAML ({err})") from None


def load_grid(path: str | Path) -> dict[str, Any]:
    """The grid file: base (a train.py YAML), budget (overrides for every run), evaluate, axes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--grid {path} does not exist")
    grid = read_yaml(path, "--grid")
    if not isinstance(grid, dict):
        raise ConfigError(f"--grid {path}: expected a mapping with the keys {', '.join(GRID_KEYS)}, "
                          f"got a {type(grid).__name__}")
    unknown = sorted(set(grid) - set(GRID_KEYS), key=str)
    if unknown:
        raise ConfigError(f"--grid {path}: unknown keys {unknown}; expected {', '.join(GRID_KEYS)}")
    check_base(grid.get("base"), path)
    budget = grid.get("budget") or {}
    if not isinstance(budget, dict):
        raise ConfigError(f"--grid {path}: budget must be a mapping of train.py options to values")
    check_options(budget, path, "budget")
    grid["budget"] = budget
    grid["evaluate"] = check_evaluate(grid.get("evaluate") or {}, path)
    check_axes(grid.get("axes"), path)
    return grid


def check_base(base: Any, path: Path) -> None:
    """The grid's base, when given, is a readable train.py YAML mapping."""
    if base is None:
        return
    if not isinstance(base, str) or not Path(base).is_file():
        raise ConfigError(f"--grid {path}: base {base!r} is not a file (expected a train.py YAML config)")
    if not isinstance(read_yaml(Path(base), f"--grid {path}: base"), (dict, type(None))):
        raise ConfigError(f"--grid {path}: base {base} is not a mapping of train.py options")


def check_options(flags: dict[str, Any], path: Path, where: str) -> None:
    """Every key of `flags` is a train.py option; ConfigError naming the grid file, the key and the known options."""
    known = set(OPTIONS.by_name) | set(OPTIONS.aliases)
    unknown = sorted((str(k) for k in flags if k not in known))
    if unknown:
        raise ConfigError(f"--grid {path}: unknown train.py option(s) {unknown} under {where}; "
                          f"known options: {', '.join(sorted(OPTIONS.by_name))}")


def check_evaluate(settings: Any, path: Path) -> dict[str, Any]:
    """The evaluate mapping with its values checked (samples, nll_images, seed, cfg_scale, sampling)."""
    if not isinstance(settings, dict):
        raise ConfigError(f"--grid {path}: evaluate must be a mapping of {', '.join(EVALUATE_SETTINGS)}")
    out = {}
    for key, value in settings.items():
        if key not in EVALUATE_SETTINGS:
            raise ConfigError(f"--grid {path}: unknown evaluate setting {key!r}; known: {', '.join(EVALUATE_SETTINGS)}")
        convert = EVALUATE_SETTINGS[key]
        try:
            out[key] = convert(value)
        except ValueError as err:
            raise ConfigError(f"--grid {path}: evaluate {key}: {err}") from None
    return out


def check_axes(axes: Any, path: Path) -> None:
    """axes maps a train.py option to a list of values, or an axis name to {variant name: {option: value}}."""
    shape = "an 'axes' mapping (option: [values] or axis: {name: {options}})"
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"--grid {path}: expected {shape}")
    for axis, values in axes.items():
        if isinstance(values, dict):
            if not values:
                raise ConfigError(f"--grid {path}: axis {axis!r} has no variants; expected {{name: {{options}}}}")
            for name, flags in values.items():
                if flags is not None and not isinstance(flags, dict):
                    raise ConfigError(f"--grid {path}: axes {axis}.{name} must be a mapping of train.py options, "
                                      f"got {flags!r}")
                check_options(flags or {}, path, f"axes {axis}.{name}")
        elif isinstance(values, list) and values:
            check_options({axis: values}, path, "axes")
            names = [str(v) for v in values]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"--grid {path}: axes {axis} lists {twice} more than once; expected distinct values")
        else:
            raise ConfigError(f"--grid {path}: axes {axis}: expected a non-empty list of values (e.g. {axis}: "
                              f"[{values!r}]) or a mapping of named variants, got {values!r}")


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


def variant_argv(grid: dict[str, Any], flags: dict[str, Any], out: Path) -> list[str]:
    """train.py flags of one variant: the base config, the budget, the variant's flags and its run folder."""
    argv = (["--config", str(grid["base"])] if grid.get("base") else []) + as_argv({**grid.get("budget", {}), **flags})
    return argv + ["--out_dir", str(out)]


def train_variant(grid: dict[str, Any], flags: dict[str, Any], out: Path) -> Path:
    """Train (or resume, or keep) one variant; returns its run folder."""
    argv = variant_argv(grid, flags, out)
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
    """The rows of an earlier run's results.csv by variant; DataError naming the file when it cannot be read."""
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} cannot be read as the results CSV of an earlier run ({err}); remove it or choose another --out") from None
    if missing:
        raise DataError(f"{path}: missing columns {missing} of an earlier run's results; remove it or choose another --out")
    return {row["variant"]: row for row in rows}


def check_variants(grid: dict[str, Any], todo: Sequence[tuple[str, dict[str, Any]]], grid_path: str, out: Path) -> None:
    """Resolve every variant's train.py config before the first training starts; ConfigError naming the variant."""
    for name, flags in todo:
        try:
            resolve_config(variant_argv(grid, flags, out / "runs" / name))
        except ConfigError as err:
            raise ConfigError(f"--grid {grid_path}, variant {name}: {err}") from None


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


def make_output_folder(out: Path) -> None:
    """Create --out with its runs/ folder, marked as written by this tool when it is new."""
    new = not out.exists()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if new:
        mark_as_ours(out, "tools/ablate.py")


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="YAML with base, budget, evaluate and axes")
    p.add_argument("--out", required=True, help="folder for the runs, results.csv and results.png")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (evaluation; training follows the base config)")
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    out = Path(args.out)
    check_writable_output(out, "--out", folder=True)
    done = read_results(out / "results.csv")
    todo = variants(grid["axes"])
    check_variants(grid, todo, args.grid, out)
    device = pick_device(args.device)
    make_output_folder(out)
    rows: list[dict[str, Any]] = []
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

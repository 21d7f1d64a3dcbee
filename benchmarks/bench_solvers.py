"""Few-step samplers against 1000-step references for the tile-rendering model types (sdm, ldm, stedm, and class /
unconditional diffusion), through inference.py itself.

python benchmarks/bench_solvers.py --ckpt runs/demo/sdm_synthetic_monuseg/last.pt --out runs/bench_solvers/sdm \
    -- --num_samples 16 --cfg_scale 1.5
python benchmarks/bench_solvers.py --ckpt runs/demo/ldm_synthetic_tiles/last.pt --out runs/bench_solvers/ldm \
    -- --cluster_ids 0 1 --num_per_cluster 8 --cfg_scale 2

Everything after `--` goes to every inference.py run (the same seed, so the same starting noise). Each method
renders the same tiles; against two references (T is the checkpoint's --timesteps, 1000 in every preset):
- ode_rmse: the root-mean-square pixel difference (images in [0, 1]) to DDIM with T steps (the probability-flow
  ODE solved finely) from the same starting noise, for the deterministic samplers: how far the few-step solve
  is from the exact one;
- colour_difference: the largest difference over RGB channels of the mean and of the standard deviation of the
  pixels (in [0, 1]) to T-step ancestral sampling; for the ancestral reference itself, between its two
  halves (its own sampling error);
- layout_dice (with --segmenter, for sdm and stedm outputs): a segmentation checkpoint segments the tiles and its
  nucleus mask is compared with the layout (the mean Dice over tiles).
Where the tiles come in one subfolder per cluster or class (ldm, label diffusion), both distances are also taken
within each cluster (results_per_cluster.csv) and results.csv adds the worst cluster's.
Writes results.csv and a grid of the first tiles of every method (methods.png) into --out; prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: E402
from common.cli import Parser, flag_type  # noqa: E402
from common.files import check_writable_output, save_image_atomic, write_csv_atomic  # noqa: E402
from diffusion.sampling import parse_methods  # noqa: E402
from model import load_checkpoint  # noqa: E402

DEFAULT_METHODS = "ddim:50,dpmpp_2m:10,dpmpp_2m:15,dpmpp_2m:20,dpmpp_2m:25"
# Where each model type's inference.py writes the generated tiles, and their layouts (for layout_dice).
TILES = {"sdm": ("images/*.png", "labels"), "stedm": ("img_*.png", "seg"), "ldm": ("*/*_*.png", None),
         "diffusion": ("*/*_*.png", None)}
DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m")


def read_tiles(folder: Path, pattern: str) -> tuple[list[Path], np.ndarray]:
    files = sorted(p for p in folder.glob(pattern) if p.name != "grid.png")
    if not files:
        raise SystemExit(f"error: no tiles matching {pattern} in {folder}")
    return files, np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in files])


def colour_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference over RGB channels of the pixel mean and standard deviation of two tile sets."""
    mean = np.abs(a.mean(axis=(0, 1, 2)) - b.mean(axis=(0, 1, 2)))
    std = np.abs(a.std(axis=(0, 1, 2)) - b.std(axis=(0, 1, 2)))
    return float(max(mean.max(), std.max()))


def distances(tiles: np.ndarray, reference: np.ndarray, ode: np.ndarray, is_reference: bool, deterministic: bool) -> dict:
    """ode_rmse (deterministic samplers) and colour_difference of one tile set; for the ancestral reference itself,
    the colour difference between its two halves."""
    if is_reference:
        half = len(reference) // 2
        colour = colour_difference(reference[:half], reference[half:])
    else:
        colour = colour_difference(tiles, reference)
    rmse = round(float(np.sqrt(((tiles - ode) ** 2).mean())), 4) if deterministic else ""
    return {"ode_rmse": rmse, "colour_difference": round(colour, 4)}


def cluster_groups(names: list[Path]) -> dict[str, list[int]]:
    """Indices of the tiles in each subfolder, from their paths relative to the render folder (one subfolder per
    cluster or class for ldm and label diffusion)."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(str(name.parent), []).append(index)
    return dict(sorted(groups.items()))


def layout_dice(segmenter: str, files: list[Path], layout_kind: str) -> float:
    """Mean Dice between the segmenter's nucleus mask of each tile and the tile's layout (non-zero = nucleus)."""
    from tools.segmentation import dice_score, predict_mask

    model = load_checkpoint(segmenter).model
    scores = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        if layout_kind == "labels":
            mask = np.asarray(Image.open(path.parent.parent / "labels" / path.name))
        else:
            mask = np.asarray(Image.open(path.with_name(path.name.replace("img_", "seg_"))))
        scores.append(dice_score(predict_mask(model, image), mask))
    return float(np.mean(scores))


def render(ckpt: str, sampler: str, steps: int, folder: Path, extra: list[str]) -> float:
    """Run inference.py into `folder`; seconds it took."""
    tic = time.perf_counter()
    code = inference.main(["--ckpt", ckpt, "--sampler", sampler, "--steps", str(steps), "--out_dir", str(folder),
                           "--overwrite", *extra])
    if code != 0:
        raise SystemExit(f"error: inference.py failed for {sampler}-{steps} (exit code {code})")
    return time.perf_counter() - tic


def picture(sets: dict[str, np.ndarray], path: Path, count: int = 6) -> None:
    """One row per method, its first `count` tiles."""
    rows = [np.concatenate(list(tiles[:count]), axis=1) for tiles in sets.values()]
    save_image_atomic(Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)), path)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="an sdm, ldm, stedm or (class / unconditional) diffusion checkpoint")
    p.add_argument("--methods", type=flag_type(parse_methods), default=DEFAULT_METHODS, help=f"sampler:steps list (default {DEFAULT_METHODS})")
    p.add_argument("--segmenter", help="segmentation checkpoint for layout_dice (sdm, stedm)")
    p.add_argument("--out", required=True, help="folder for the renders, results.csv and methods.png")
    args = p.parse_args(argv)
    out = Path(args.out)
    check_writable_output(out, "--out")
    loaded = load_checkpoint(args.ckpt)
    model_type, timesteps = loaded.model_type, loaded.diffusion.num_timesteps
    if model_type not in TILES:
        raise SystemExit(f"error: --ckpt {args.ckpt} holds a {model_type} model; expected one of {', '.join(TILES)}")
    pattern, layout_kind = TILES[model_type]
    methods = [("ddpm", timesteps), ("ddim", timesteps), *args.methods]
    sets, rows, files = {}, [], {}
    for sampler, steps in methods:
        key = f"{sampler}-{steps}"
        seconds = render(args.ckpt, sampler, steps, out / key, extra)
        files[key], sets[key] = read_tiles(out / key, pattern)
        rows.append({"method": key, "steps": steps, "s_per_tile": round(seconds / len(sets[key]), 4)})
    reference_key = f"ddpm-{timesteps}"
    names = {key: [path.relative_to(out / key) for path in paths] for key, paths in files.items()}
    if any(listed != names[reference_key] for listed in names.values()):
        raise SystemExit("error: the methods rendered different tiles; pass the same options to every run after --")
    reference, ode = sets[reference_key], sets[f"ddim-{timesteps}"]
    groups = cluster_groups(names[reference_key])
    per_cluster = []
    for row in rows:
        tiles, key = sets[row["method"]], row["method"]
        deterministic = key.split("-")[0] in DETERMINISTIC
        row.update(distances(tiles, reference, ode, key == reference_key, deterministic))
        row["note"] = "colour_difference between its two halves: the reference's own sampling error" if key == reference_key else ""
        if len(groups) > 1:
            cluster_rows = [{"method": key, "cluster": name, "tiles": len(index),
                             **distances(tiles[index], reference[index], ode[index], key == reference_key, deterministic)}
                            for name, index in groups.items()]
            per_cluster += cluster_rows
            for metric in ("ode_rmse", "colour_difference"):
                values = [r[metric] for r in cluster_rows if r[metric] != ""]
                row[f"worst_cluster_{metric}"] = max(values) if values else ""
        if args.segmenter and layout_kind:
            row["layout_dice"] = round(layout_dice(args.segmenter, files[key], layout_kind), 4)
    columns = ["method", "steps", "s_per_tile", "ode_rmse", "colour_difference"]
    columns += ["worst_cluster_ode_rmse", "worst_cluster_colour_difference"] if len(groups) > 1 else []
    columns += (["layout_dice"] if args.segmenter and layout_kind else []) + ["note"]
    if per_cluster:
        write_csv_atomic(out / "results_per_cluster.csv", ["method", "cluster", "tiles", "ode_rmse", "colour_difference"], per_cluster)
    write_csv_atomic(out / "results.csv", columns, rows)
    picture(sets, out / "methods.png")
    print(json.dumps({"benchmark": "solvers", "model_type": model_type, "ckpt": args.ckpt, "tiles": len(reference),
                      "results": rows}))


if __name__ == "__main__":
    main()

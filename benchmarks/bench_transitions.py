"""Transition sequences: the original procedure against our samplers, on one checkpoint and one ensemble.

python benchmarks/bench_transitions.py --ckpt runs/demo/diffusion_synthetic/last.pt --classifier_ckpts runs/demo/resnet/ \
    --sequences 32 --conditions 0:1:8 --cfg_scale 2 --out runs/bench_transitions

(a) the original procedure, re-created: every condition value of a sequence sampled on its own (batch of one),
    1000 ancestral steps, the conditional and the unconditional pass as two forward calls per step;
(b) ours, DDIM-50; (c) ours, DPM-Solver++ (2M) at 10, 15 and 20 steps (and whatever --methods adds): every
    condition value of a batch of sequences in one batch, guidance in one batched pass.
The reference is 1000-step ancestral sampling (ours, batched: the same sampler as (a)) on --sequences sequences,
or with --reference ddim the probability-flow ODE solved with 1000 DDIM steps from the same starting noise as the
ODE methods (so their differences to it carry no sampling noise).
Each method is scored by the ensemble; its error is the largest difference over condition values between its
mean score and the reference's. The reference's own sampling error is the same difference between its two
halves. Writes results.csv, curves.csv and curves.png into --out and prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser, flag_type  # noqa: E402
from common.files import check_writable_output, save_figure_atomic, write_csv_atomic  # noqa: E402
from common.options import number  # noqa: E402
from diffusion.samplers import ddpm_sample  # noqa: E402
from diffusion.sampling import SamplingSpec, parse_methods  # noqa: E402
from model import load_checkpoint, load_ensemble  # noqa: E402
from recipes.transitions import parse_conditions, render_sequences, score_images  # noqa: E402

DEFAULT_METHODS = "ddim:50,dpmpp_2m:10,dpmpp_2m:15,dpmpp_2m:20"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def original_procedure(model, diffusion, conditions: list[float], sequences: int, size: int, seed: int,
                       cfg_scale: float, device: torch.device) -> torch.Tensor:
    """(S, K, 3, H, W): each condition value alone, 1000 ancestral steps, two forward calls per guided step.

    Every condition of sequence s starts from the same x_T and draws the same per-step noise (its generator is
    re-seeded), so the images are comparable with ours; only the batching and the separate passes differ.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    starts = torch.randn((sequences, 3, size, size), generator=gen)
    out = torch.empty((sequences, len(conditions), 3, size, size))
    for s in tqdm(range(sequences), desc="original procedure: sequences"):
        for k, value in enumerate(conditions):
            cond = {"score": torch.tensor([value], device=device)}
            keep, drop = torch.zeros(1, dtype=torch.bool, device=device), torch.ones(1, dtype=torch.bool, device=device)

            def guided(x, t, cond=cond, keep=keep, drop=drop):
                conditional = model(x, t, cond, keep)
                if cfg_scale == 1.0:
                    return conditional
                unconditional = model(x, t, cond, drop)
                return unconditional + cfg_scale * (conditional - unconditional)

            step_gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + s)
            x = ddpm_sample(diffusion, guided, starts[s : s + 1].to(device), generator=step_gen, progress=True)
            out[s, k] = x[0].float().clamp(-1, 1).cpu()
    return out


def mean_scores(ensemble, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """(S, K) ensemble-mean probability of every image of (S, K, 3, H, W)."""
    probs = score_images(ensemble, images.flatten(0, 1), device).mean(0)
    return probs.view(images.shape[0], images.shape[1]).numpy()


def plot(curves: dict[str, np.ndarray], conditions: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(conditions, values, marker="o", lw=2.5 if name.startswith("reference") else 1.2, label=name)
    ax.set_xlabel("target condition (mitosis score)")
    ax.set_ylabel("mean ensemble score")
    ax.legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a score-conditioned diffusion checkpoint")
    p.add_argument("--classifier_ckpts", nargs="+", required=True, help="the scoring ensemble (files or run folders)")
    p.add_argument("--sequences", type=number(int, 2), default=32, help="sequences of every method (default 32)")
    p.add_argument("--original_sequences", type=number(int, 0), default=2,
                   help="sequences run with the original procedure for its time per sequence (default 2; 0 skips it)")
    p.add_argument("--conditions", default="0:1:8", help="condition values, '0,0.5,1' or start:stop:count (default 0:1:8)")
    p.add_argument("--cfg_scale", type=number(float, 0), default=2.0, help="guidance scale (default 2)")
    p.add_argument("--reference", choices=("ddpm", "ddim"), default="ddpm",
                   help="reference sampler over all T steps: ddpm (ancestral, the original's; default) or ddim (the "
                        "probability-flow ODE solved finely: from the same noise, so differences to it are paired)")
    p.add_argument("--methods", type=flag_type(parse_methods), default=DEFAULT_METHODS, help=f"sampler:steps list (default {DEFAULT_METHODS})")
    p.add_argument("--batch_size", type=number(int, 1), default=8, help="sequences per batch of our samplers (default 8)")
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--out", required=True, help="folder for results.csv, curves.csv and curves.png")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    out = Path(args.out)
    check_writable_output(out, "--out")
    device = torch.device(args.device)
    conditions = parse_conditions(args.conditions)
    methods = args.methods
    loaded = load_checkpoint(args.ckpt, device)
    ensemble, _ = load_ensemble(args.classifier_ckpts, device, reference=loaded.config)
    size = loaded.model_config["unet"]["image_size"]
    model, diffusion = loaded.model, loaded.diffusion

    def timed(spec: SamplingSpec) -> tuple[np.ndarray, float]:
        synchronize(device)
        tic = time.perf_counter()
        images = render_sequences(model, diffusion, conditions, args.sequences, size, args.seed, spec, device,
                                  args.batch_size)
        synchronize(device)
        return mean_scores(ensemble, images, device), (time.perf_counter() - tic) / args.sequences

    reference, reference_time = timed(SamplingSpec(args.reference, diffusion.num_timesteps, cfg_scale=args.cfg_scale))
    half = args.sequences // 2
    reference_curve = reference.mean(0)
    rows = [{"method": f"reference: {args.reference}-{diffusion.num_timesteps}, ours (batched)", "steps": diffusion.num_timesteps,
             "s_per_sequence": reference_time, "max_score_difference": float(np.abs(reference[:half].mean(0) - reference[half:].mean(0)).max()),
             "note": "its difference is between its two halves: the reference's own sampling error"}]
    curves = {f"reference {args.reference}-{diffusion.num_timesteps}": reference_curve}
    original_time = None
    if args.original_sequences:
        synchronize(device)
        tic = time.perf_counter()
        images = original_procedure(model, diffusion, conditions, args.original_sequences, size, args.seed, args.cfg_scale, device)
        synchronize(device)
        original_time = (time.perf_counter() - tic) / args.original_sequences
        scores = mean_scores(ensemble, images, device)
        rows.append({"method": "original procedure (one condition at a time, two passes)", "steps": diffusion.num_timesteps,
                     "s_per_sequence": original_time,
                     "max_score_difference": float(np.abs(scores.mean(0) - reference[: args.original_sequences].mean(0)).max()),
                     "note": f"{args.original_sequences} sequences, against the reference's same sequences (same x_T, "
                             "other noise draws)"})
    for name, steps in methods:
        scores, seconds = timed(SamplingSpec(name, steps, cfg_scale=args.cfg_scale))
        curves[f"{name}-{steps}"] = scores.mean(0)
        rows.append({"method": f"{name}-{steps}", "steps": steps, "s_per_sequence": seconds,
                     "max_score_difference": float(np.abs(scores.mean(0) - reference_curve).max()), "note": ""})
    for row in rows:
        row["speedup_vs_original"] = round(original_time / row["s_per_sequence"], 1) if original_time else ""
        row["s_per_sequence"] = round(row["s_per_sequence"], 3)
        row["max_score_difference"] = round(row["max_score_difference"], 4)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "results.csv", ["method", "steps", "s_per_sequence", "speedup_vs_original", "max_score_difference", "note"], rows)
    write_csv_atomic(out / "curves.csv", ["condition", *curves], [[c, *(round(float(v[i]), 4) for v in curves.values())]
                                                                  for i, c in enumerate(conditions)])
    plot(curves, conditions, out / "curves.png")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(json.dumps({"benchmark": "transitions", "device": device_name, "sequences": args.sequences,
                      "conditions": len(conditions), "cfg_scale": args.cfg_scale, "results": rows}))


if __name__ == "__main__":
    main()

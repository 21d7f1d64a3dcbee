"""GPU benchmark suite: every part in its own process under a time budget, all results in OUT_DIR/gpu_suite.json.

benchmarks/gpu_suite.sh OUT_DIR [--slide PATH]   (one CUDA GPU, under 8 minutes)
benchmarks/gpu_suite.sh OUT_DIR --smoke          (tiny sizes, no torch.compile: checks on a CPU that every part runs)

Parts: environment (GPU name, torch / CUDA versions, bf16 and fp32 matmul peaks), training throughput and MFU of
the canine UNet (batch 256), the SDM at 128 px and the KPC LDM (on cached 32 x 32 x 4 latents, batch 64), transition-sequence sampling with DPM-Solver++ and
guidance, WSI patch reading with 16 workers, and a bf16-vs-fp32 loss check. A part that fails or runs past its
budget is recorded with its error and the suite goes on; the JSON is rewritten after every part.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import matmul_peak  # noqa: E402
from common.cli import Parser, run_main  # noqa: E402
from common.files import check_writable_output, write_text_atomic  # noqa: E402

RESULT_FILE = "gpu_suite.json"
MFU_GOAL = 0.40  # of the bf16 dense peak, canine UNet training
TOTAL_BUDGET_S = 465
SAMPLER = "dpmpp_2m"

FAST = ["--precision", "bf16", "--channels_last"]
CANINE = ["--dim", "64", "--dim_mults", "1,2,4"]
SDM = ["--model", "sdm", "--image_size", "128", "--dim", "128", "--dim_mults", "1,1,2,2,4",
       "--attention_resolutions", "32,16,8", "--num_head_channels", "64"]
LDM = ["--model", "ldm", "--image_size", "32", "--latent_channels", "4", "--dim", "192", "--dim_mults", "1,2,4",
       "--attention_resolutions", "16,8", "--num_head_channels", "32"]
TINY_UNET = ["--image_size", "16", "--dim", "8", "--dim_mults", "1,2", "--num_res_blocks", "1",
             "--attention_resolutions", "8", "--num_head_channels", "8", "--steps", "1", "--warmup", "0",
             "--peak_size", "256"]


@dataclass(frozen=True)
class Settings:
    """How the suite runs: tiny sizes on a CPU (smoke) or full sizes, and the real slide the WSI part reads."""

    smoke: bool = False
    slide: Path | None = None


@dataclass(frozen=True)
class Part:
    """One benchmark process: its name, time budget (seconds, on a GPU) and command line for the settings."""

    name: str
    budget_s: int
    argv: Callable[[Settings], list[str]]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / name), *args]


def internal(name: str, smoke: bool) -> list[str]:
    return script("gpu_suite.py", "--part", name, *(["--smoke"] if smoke else []))


def wsi_argv(settings: Settings) -> list[str]:
    sizes = ["--patches", "32", "--batch_size", "16", "--workers", "0"] if settings.smoke else \
        ["--patches", "8000", "--batch_size", "64", "--workers", "16"]
    slide = ["--slide", str(settings.slide)] if settings.slide is not None else []
    return script("bench_wsi.py", "--threads", "none", *sizes, *slide)


PARTS: tuple[Part, ...] = (
    Part("environment", 15, lambda s: internal("environment", s.smoke)),
    Part("train_canine", 120, lambda s: script(
        "bench_train.py", *FAST, *(TINY_UNET + ["--batch_size", "2"] if s.smoke else
                                   CANINE + ["--batch_size", "256", "--steps", "20", "--warmup", "3", "--compile"]))),
    Part("train_sdm_128", 125, lambda s: script(
        "bench_train.py", *FAST, *(TINY_UNET + ["--model", "sdm", "--spade_hidden", "8", "--batch_size", "2"] if s.smoke else
                                   SDM + ["--batch_size", "16", "--steps", "10", "--warmup", "3", "--compile"]))),
    Part("train_ldm", 80, lambda s: script(
        "bench_train.py", *FAST, *(TINY_UNET + ["--model", "ldm", "--batch_size", "2"] if s.smoke else
                                   LDM + ["--batch_size", "64", "--steps", "20", "--warmup", "3", "--compile"]))),
    Part("sample_transitions", 35, lambda s: internal("sample_transitions", s.smoke)),
    Part("wsi_patches", 40, wsi_argv),
    Part("loss_bf16_vs_fp32", 50, lambda s: internal("loss_bf16_vs_fp32", s.smoke)),
)


# --- parts run inside this file (python gpu_suite.py --part NAME) -------------------------------------------------
def device_in_use() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(smoke: bool) -> dict[str, Any]:
    """GPU name, torch / CUDA / cuDNN versions and the bf16 and fp32 matmul peaks measured here."""
    device = device_in_use()
    size = 256 if smoke else 8192
    return {
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "matmul_size": size,
        "bf16_dense_peak_tflop_per_s": round(matmul_peak(device, torch.bfloat16, size) / 1e12, 3),
        "fp32_peak_tflop_per_s": round(matmul_peak(device, torch.float32, size) / 1e12, 3),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def sample_transitions(smoke: bool) -> dict[str, Any]:
    """Transition sequences/s of the canine-size UNet (random weights), DPM-Solver++ 15 steps, guidance 2, bf16."""
    from diffusion.gaussian_diffusion import GaussianDiffusion
    from diffusion.sampling import SamplingSpec
    from diffusion.unet import UNet
    from recipes.transitions import render_sequences

    device = device_in_use()
    size, sequences, conditions = (16, 2, 3) if smoke else (64, 32, 6)
    unet = dict(dim=8, dim_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8], num_head_channels=8) if smoke else \
        dict(dim=64, dim_mults=[1, 2, 4])
    torch.manual_seed(0)
    model = UNet(image_size=size, **unet).to(device, memory_format=torch.channels_last).eval()
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    spec = SamplingSpec(sampler=SAMPLER, steps=15, cfg_scale=2.0)
    values = torch.linspace(0, 1, conditions).tolist()

    def run(count: int) -> float:
        sync(device)
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            render_sequences(model, diffusion, values, count, size, 0, spec, device, count, progress=False)
        sync(device)
        return time.perf_counter() - tic

    run(1)
    seconds = run(sequences)
    return {
        "sampler": SAMPLER,
        "steps": 15, "cfg_scale": 2.0, "precision": "bf16", "image_size": size, "conditions_per_sequence": conditions,
        "sequences_per_batch": sequences, "sequences_per_s": round(sequences / seconds, 3),
        "images_per_s": round(sequences * conditions / seconds, 2),
    }


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Fixed smooth random RGB images in [-1, 1] (bilinearly upsampled 4 x 4 noise): data a UNet can learn."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=gen) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def train_losses(precision: str, data: torch.Tensor, steps: int, batch: int, unet: dict[str, Any]) -> list[float]:
    """Per-step training losses of a freshly seeded UNet on `data` (same seed, batches and noise every call)."""
    from diffusion.gaussian_diffusion import GaussianDiffusion
    from diffusion.unet import UNet

    device = device_in_use()
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(0)
    model = UNet(image_size=data.shape[-1], **unet).to(device, memory_format=torch.channels_last)
    diffusion = GaussianDiffusion.from_config("cosine", 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    order = torch.Generator().manual_seed(1)
    dtype = torch.bfloat16 if precision == "bf16" else None
    cond = {"score": torch.full((batch,), 0.5, device=device)}
    losses = []
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (batch,), generator=order)].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = diffusion.training_losses(lambda x, t: model(x, t, cond), x0).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def loss_bf16_vs_fp32(smoke: bool) -> dict[str, Any]:
    """Final training loss (mean of the last steps) with bf16 autocast and with fp32, same seed and data."""
    steps, batch, size, window = (6, 2, 16, 3) if smoke else (300, 32, 64, 50)
    unet = dict(dim=8, dim_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8], num_head_channels=8) if smoke else \
        dict(dim=64, dim_mults=[1, 2, 4])
    data = smooth_images(64 if smoke else 1024, size, seed=0)
    final = {p: sum(train_losses(p, data, steps, batch, unet)[-window:]) / window for p in ("fp32", "bf16")}
    return {
        "steps": steps, "batch_size": batch, "image_size": size, "final_loss_window": window,
        "final_loss_fp32": round(final["fp32"], 6), "final_loss_bf16": round(final["bf16"], 6),
        "relative_difference": float(f"{abs(final['bf16'] - final['fp32']) / final['fp32']:.3g}"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


INTERNAL: dict[str, Callable[[bool], dict[str, Any]]] = {
    "environment": environment, "sample_transitions": sample_transitions, "loss_bf16_vs_fp32": loss_bf16_vs_fp32,
}


# --- the suite ------------------------------------------------------------------------------------------------------
def last_json_line(text: str) -> dict[str, Any] | None:
    """The last line of `text` that is a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_part(part: Part, settings: Settings, timeout: float) -> dict[str, Any]:
    """Run one part in its own process group (killed whole at the timeout); its JSON line, or its error."""
    argv = part.argv(settings)
    record: dict[str, Any] = {"budget_s": part.budget_s, "command": " ".join(argv[1:])}
    tic = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=HERE.parent)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {**record, "status": "timeout", "seconds": round(time.perf_counter() - tic, 1),
                "error": f"did not finish within {timeout:.0f} s"}
    record["seconds"] = round(time.perf_counter() - tic, 1)
    result = last_json_line(out) if proc.returncode == 0 else None
    if result is None:
        tail = (err.strip() or out.strip()).splitlines()[-3:]
        return {**record, "status": "error", "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
    return {**record, "status": "ok", "result": result}


def result_of(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    part = report["parts"].get(name, {})
    return part.get("result") if part.get("status") == "ok" else None


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The suite's goals, judged from its parts (None where a part they need did not finish): the canine UNet's
    training MFU against the bf16 dense peak, and the WSI loader against the canine training it would feed (the
    slowest worker-process reading of the real slide (of the synthetic slides where none was read), in patches/s,
    over the training images/s)."""
    canine, wsi = result_of(report, "train_canine"), result_of(report, "wsi_patches")
    mfu = canine["mfu"] if canine else None
    reads = [row["patches_per_s"] for row in (wsi or {}).get("results", [])
             if row.get("slides") == "real_slide" and "workers" in row] or \
        [row["patches_per_s"] for row in (wsi or {}).get("results", []) if "workers" in row]
    ratio = min(reads) / canine["images_per_s"] if canine and reads else None
    return {
        "canine_mfu": mfu, "canine_mfu_goal": MFU_GOAL, "canine_mfu_met": None if mfu is None else mfu >= MFU_GOAL,
        "wsi_patches_per_training_image": None if ratio is None else round(ratio, 2),
        "wsi_not_the_bottleneck": None if ratio is None else ratio >= 1.0,
    }


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    write_text_atomic(out_dir / RESULT_FILE, json.dumps(report, indent=2) + "\n")


def run_suite(out_dir: Path, settings: Settings) -> dict[str, Any]:
    """Every part in turn, each within its budget and the suite's total; the report is written after each part."""
    started = time.perf_counter()
    report: dict[str, Any] = {"suite": "gpu_suite", "smoke": settings.smoke, "cuda_available": torch.cuda.is_available(),
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "total_budget_s": TOTAL_BUDGET_S, "parts": {}}
    for part in PARTS:
        left = TOTAL_BUDGET_S - (time.perf_counter() - started)
        if left < 5:
            report["parts"][part.name] = {"budget_s": part.budget_s, "status": "skipped", "error": "the suite's time was spent"}
            continue
        report["parts"][part.name] = run_part(part, settings, min(part.budget_s * (3 if settings.smoke else 1), left))
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        write_report(out_dir, report)
    report["failed_parts"] = [name for name, rec in report["parts"].items() if rec["status"] != "ok"]
    report["goals"] = goals(report)
    write_report(out_dir, report)
    return report


def run(argv: Sequence[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", nargs="?", help="folder for gpu_suite.json (created if missing)")
    p.add_argument("--smoke", action="store_true", default=os.environ.get("GPU_SUITE_SMOKE") == "1",
                   help="tiny sizes and no torch.compile (runs on a CPU in about a minute); also GPU_SUITE_SMOKE=1")
    p.add_argument("--slide", type=Path, help="the real whole-slide image the WSI part reads (default: "
                   "../shared/data/slides/CMU-1-Small-Region.svs where it exists)")
    p.add_argument("--part", choices=sorted(INTERNAL), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        print(json.dumps(INTERNAL[args.part](args.smoke)))
        return
    if not args.out_dir:
        p.error("the following arguments are required: OUT_DIR")
    out_dir = Path(args.out_dir)
    if args.slide is not None and not args.slide.is_file():
        p.error(f"argument --slide: {args.slide} is not a file (expected a whole-slide image)")
    check_writable_output(out_dir, "OUT_DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = run_suite(out_dir, Settings(args.smoke, args.slide.resolve() if args.slide is not None else None))
    print(f"wrote {out_dir / RESULT_FILE} ({len(report['failed_parts'])} of {len(PARTS)} parts failed)")


def main() -> None:
    sys.exit(run_main(run))


if __name__ == "__main__":
    main()

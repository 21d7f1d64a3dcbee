#!/usr/bin/env bash
# Semantic diffusion end to end on the CPU, on the embedded synthetic MoNuSeg-format set: train the SDM model,
# generate tiles from layouts, train the downstream segmenter with 8, 32 and all real training tiles, each with and
# without synthetic tiles, over three seeds, and measure how closely the generated tiles follow their layouts
# (layout_dice: the real-only segmenter that saw every real training tile segments them).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup_env.sh")
cd "$root"
out=runs/demo
real=data/synthetic_monuseg/tiles_32_32
"$py" train.py --config configs/demo_sdm.yaml --overwrite
"$py" inference.py --ckpt "$out/sdm_synthetic_monuseg/last.pt" --num_samples 64 --cfg_scale 1 2 \
  --timestep_respacing ddim50 --layout_order shuffle --out_dir "$out/sdm_samples" --overwrite
"$py" -m tools.segmentation --real "$real" --synthetic "$out/sdm_samples" --ratios 0,0.5 \
  --real_counts 8,32,all --seeds 0,1,2 --steps 300 --seg_encoder resnet18 --out "$out/downstream.csv" --overwrite
# Layout adherence, judged by the real-only segmenter of the run above that saw every real training tile (seed 0).
segmenter=$(ls -d "$out"/downstream_runs/real_*_seed_0/ratio_0/segmentation_seg_tiles \
  | awk -F'real_' '{split($2, n, "_"); print n[1], $0}' | sort -n | tail -1 | cut -d' ' -f2)
"$py" -m tools.evaluate --metrics layout_dice --fake "$out/sdm_samples" --segmenter "$segmenter/last.pt" \
  --out "$out/layout_dice.json" --overwrite
echo "pictures: $out/sdm_samples/grid.png, $out/downstream.png; numbers: $out/downstream_summary.csv, $out/layout_dice.json"
"$py" scripts/verdict.py "$out/layout_dice.json" layout_dice --at_least 0.8 \
  --what "layout Dice of the generated tiles" || true
echo "to run the README's python commands in this environment: source scripts/env.sh"

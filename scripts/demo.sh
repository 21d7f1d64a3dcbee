#!/usr/bin/env bash
# Quick start on the embedded demo data, on the CPU: synthetic slides -> a small conditional diffusion model
# and a 3-member ResNet ensemble -> mitosis transition sequences scored by the ensemble.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup_env.sh")
cd "$root"
"$py" train.py --config configs/demo.yaml --overwrite
for member in 0 1 2; do
  "$py" train.py --config configs/demo_resnet.yaml --ensemble "$member" --overwrite
done
"$py" inference.py --diffusion_ckpt runs/demo/diffusion_synthetic/last.pt \
  --classifier_ckpts runs/demo/resnet/ --condition_values 0:1:6 --num_sequences 8 \
  --sampler ddim --steps 50 --cfg_scale 2 --out_dir runs/demo/transitions --overwrite
"$py" scripts/verdict.py runs/demo/transitions/summary.csv spearman --at_least 0.9 \
  --what "Spearman correlation of ensemble score and condition" || true
echo "to run the README's python commands in this environment: source scripts/env.sh"

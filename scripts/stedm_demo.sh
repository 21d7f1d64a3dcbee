#!/usr/bin/env bash
# Style-extracting diffusion end to end on the CPU, on the embedded synthetic region slides: train the style model
# on the training slides, generate tiles with the training slides' layouts in the stain of the held-out slides
# (zero-shot styles), then train one segmentation network on real tiles, one on real + synthetic tiles and one on
# real tiles with HED stain augmentation, score all three on the held-out slides and print the table.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup_env.sh")
cd "$root"
out=runs/demo/stedm
"$py" train.py --config configs/demo_stedm.yaml --out_dir "$out" --overwrite
"$py" -m tools.region_tiles --data_root data/synthetic_regions --split train --tile_size 32 --per_slide 48 \
  --out "$out/real_train" --overwrite
"$py" -m tools.region_tiles --data_root data/synthetic_regions --split heldout --tile_size 32 --per_slide 48 \
  --out "$out/test" --overwrite
"$py" inference.py --ckpt "$out/stedm_synthetic_regions/last.pt" --layouts "$out/real_train" --styles heldout \
  --pairing random --num_samples 96 --batch_size 32 --steps 50 --cfg_scale 1.5 --cfg_rescale 0.7 \
  --out_dir "$out/synthetic" --overwrite
"$py" -m tools.evaluate --fake "$out/synthetic" --metrics style_distance --out "$out/synthetic/style.json" --overwrite
seg=(--config configs/demo_segmentation.yaml --seg_classes 3 --overwrite)
"$py" train.py "${seg[@]}" --datasets "$out/real_train" --no-stain_augment --out_dir "$out/real"
"$py" train.py "${seg[@]}" --datasets "$out/real_train,$out/synthetic" --ratios 0.5,0.5 --no-stain_augment \
  --out_dir "$out/real_syn"
"$py" train.py "${seg[@]}" --datasets "$out/real_train" --stain_augment --out_dir "$out/stain"
for run in real real_syn stain; do
  "$py" inference.py --ckpt "$out/$run/segmentation_seg_tiles/best.pt" --test_dir "$out/test" \
    --out_dir "$out/scores_$run" --overwrite
done
"$py" inference.py --ckpt "$out/real/segmentation_seg_tiles/best.pt" --test_dir "$out/synthetic" \
  --out_dir "$out/layout_adherence" --overwrite
"$py" -m tools.compare_segmentation --runs real="$out/scores_real" real+synthetic="$out/scores_real_syn" \
  stain_augmentation="$out/scores_stain" --out "$out/downstream.csv" --overwrite
echo "pictures: $out/synthetic/grid.png, $out/downstream.png, $out/synthetic/style_distance.png"
"$py" scripts/verdict.py "$out/layout_adherence/test_metrics.json" dice --at_least 0.8 \
  --what "layout Dice of the generated tiles (real-only segmenter)" || true
echo "to run the README's python commands in this environment: source scripts/env.sh"

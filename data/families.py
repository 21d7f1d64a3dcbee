"""The data set names, by the family of readers that serves them."""
from __future__ import annotations

WSI_DATASETS = ("canine", "meningioma", "midog", "synthetic")
LAYOUT_DATASETS = ("monuseg", "synthetic_monuseg")
TILE_DATASETS = ("npy", "synthetic_tiles")
PCAM_DATASETS = ("pcam", "synthetic_pcam")
SEGMENTATION_DATASETS = ("seg_tiles",)
REGION_DATASETS = ("synthetic_regions", "regions")
# Layouts with style references (style-extracting diffusion): region slides, tile-pair folders, Oxford-102 flowers.
STYLE_DATASETS = REGION_DATASETS + ("tile_pairs", "flowers102")
DATASETS = WSI_DATASETS + LAYOUT_DATASETS + TILE_DATASETS + PCAM_DATASETS + SEGMENTATION_DATASETS + STYLE_DATASETS
# Datasets whose samples carry each vector condition.
CONDITION_DATASETS = {"score": WSI_DATASETS, "label": PCAM_DATASETS + TILE_DATASETS}

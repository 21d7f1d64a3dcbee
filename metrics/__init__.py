"""Image-quality metrics of generated images against real ones: structural (SSIM, MS-SSIM), feature networks,
and distances between feature distributions (FID, KID, precision/recall)."""
from __future__ import annotations

from metrics.distribution import fid, frechet_distance, gaussian_statistics, kid, kid_subset_size, precision_recall
from metrics.features import (
    ClassifierFeatures,
    EfficientNetLite0Features,
    FeatureExtractor,
    InceptionFeatures,
    extract,
)
from metrics.structural import fitting_scales, ms_ssim, paired_scores, ssim, unpaired_scores

__all__ = [
    "ClassifierFeatures",
    "EfficientNetLite0Features",
    "FeatureExtractor",
    "InceptionFeatures",
    "extract",
    "fid",
    "fitting_scales",
    "frechet_distance",
    "gaussian_statistics",
    "kid",
    "kid_subset_size",
    "ms_ssim",
    "paired_scores",
    "precision_recall",
    "ssim",
    "unpaired_scores",
]

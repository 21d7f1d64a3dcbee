"""Patches around annotations, read from whole-slide images through openslide."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import openslide
import torch
from torchvision.transforms import functional as TF

from common.files import read_csv_rows
from data.annotations import Annotation, DataError
from data.base import SeededDataset, dihedral
from data.mixing import mixed_slots
from data.splits import split_by_quantile, split_by_reference_quantile
from data.style_sampling import read_rgba

SCALINGS = ("minmax", "percentile", "percentile_unclipped")
SPLITS = ("slides", "y_percentile", "y_percentile_positive")
SOFT_SAMPLINGS = ("hard_label", "uniform_bins")
SCORE_BINS = (0.0, 0.5, 1.0)


def read_patch(slide: openslide.OpenSlide, cx: float, cy: float, size: int) -> np.ndarray:
    """Read a size x size RGB patch centred on level-0 (cx, cy); pixels outside the slide are white."""
    x0 = int(round(cx)) - size // 2
    y0 = int(round(cy)) - size // 2
    rgba = read_rgba(slide, (x0, y0), 0, (size, size)).astype(np.float32)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def to_model_range(patch: np.ndarray, scaling: str = "minmax") -> np.ndarray:
    """uint8 (or float in [0, 255]) HxWx3 -> float32 3xHxW in [-1, 1]; 'percentile' divides by the image's 99th percentile first and clips
    at 1; 'percentile_unclipped' does not clip, as the mitotic-figure transition work did (the brightest 1 % of
    values then lie above 1)."""
    x = patch.astype(np.float32)
    if scaling in ("percentile", "percentile_unclipped"):
        top = max(float(np.percentile(x, 99)), 1.0)
        x = x / top if scaling == "percentile_unclipped" else np.clip(x / top, 0.0, 1.0)
    elif scaling == "minmax":
        x = x / 255.0
    else:
        raise DataError(f"--scaling: expected one of {SCALINGS}, got {scaling!r}")
    return np.ascontiguousarray((x * 2.0 - 1.0).transpose(2, 0, 1))


def resolve_slides(annotations: Sequence[Annotation], slides_dir: str | Path) -> dict[str, Path]:
    """Map every slide named by the annotations to its file; a missing file is an error naming it."""
    folder = Path(slides_dir)
    if not folder.is_dir():
        raise DataError(f"slides folder {folder} does not exist (expected the whole-slide images there)")
    paths: dict[str, Path] = {}
    for name in sorted({a.slide for a in annotations}):
        path = folder / name
        if not path.is_file():
            candidates = sorted(folder.glob(Path(name).stem + ".*"))
            if len(candidates) != 1:
                raise DataError(f"slide file {path} is missing (named by the annotations)")
            path = candidates[0]
        paths[name] = path
    return paths


def slide_dimensions(paths: Mapping[str, Path]) -> dict[str, tuple[int, int]]:
    """Open each slide once to check it is readable and return its level-0 size."""
    dims: dict[str, tuple[int, int]] = {}
    for name, path in paths.items():
        try:
            with openslide.OpenSlide(str(path)) as slide:
                dims[name] = slide.dimensions
        except (openslide.OpenSlideError, OSError) as err:
            raise DataError(f"slide file {path} cannot be read by openslide: {err}") from None
    return dims


def check_tile_fits(dims: Mapping[str, tuple[int, int]], tile_size: int) -> None:
    for name, (w, h) in dims.items():
        if tile_size > min(w, h):
            raise DataError(f"--tile_size {tile_size} is larger than slide {name} ({w} x {h} px)")


def split_annotations(
    annotations: Sequence[Annotation],
    mode: str = "slides",
    split_file: str | Path | None = None,
    val_fraction: float = 0.2,
) -> tuple[list[Annotation], list[Annotation]]:
    """Train / validation split: by slide lists in a CSV (`slide,split`), or per slide by y percentile.

    - y_percentile: on every slide, the annotations below the (1 - val_fraction) quantile of the y of all its
      annotations train, the rest validate, so each slide contributes to both sets;
    - y_percentile_positive (the mitotic-figure transition work): the cut is the (1 - val_fraction) quantile of
      the y of the slide's mitotic (hard label 1) annotations only; y below the cut trains, y at or above it
      validates; a slide without mitotic annotations trains whole.
    With a y-percentile rule, a split file limits the split to the slides it assigns to train (the others, e.g.
    held-out test slides, are left out).
    """
    if mode == "slides":
        if split_file is None:
            raise DataError("--split slides needs --split_file CSV with columns slide,split")
        assignment = read_split_file(split_file)
        train = [a for a in annotations if assignment.get(a.slide) == "train"]
        val = [a for a in annotations if assignment.get(a.slide) in ("val", "valid", "validation")]
        if not train:
            raise DataError(f"{split_file}: no annotated slide is assigned to 'train'")
        return train, val
    if mode not in SPLITS:
        raise DataError(f"--split: expected one of {SPLITS}, got {mode!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    if split_file is not None:
        annotations = on_training_slides(annotations, split_file)
    if mode == "y_percentile":
        return split_by_quantile(annotations, lambda a: a.y, lambda a: a.slide, val_fraction)
    return split_by_reference_quantile(annotations, lambda a: a.y, lambda a: a.slide, lambda a: a.label == 1, val_fraction)


def on_training_slides(annotations: Sequence[Annotation], split_file: str | Path) -> list[Annotation]:
    """The annotations on the slides that the split file assigns to train (DataError when there are none)."""
    assignment = read_split_file(split_file)
    kept = [a for a in annotations if assignment.get(a.slide) == "train"]
    if not kept:
        raise DataError(f"{split_file}: no annotated slide is assigned to 'train'")
    return kept


def read_split_file(path: str | Path) -> dict[str, str]:
    """Slide name -> split from a CSV with columns slide,split."""
    rows = read_csv_rows(path, ("slide", "split"), "split file")
    return {(row["slide"] or "").strip(): (row["split"] or "").strip().lower() for row in rows}


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ColorJitter: factor ranges of brightness, contrast and saturation, a hue shift range, applied
    in a random order with probability `p` (to training patches only, before the pixel scaling)."""

    p: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    hue: tuple[float, float] = (0.0, 0.0)


def color_jitter(patch: np.ndarray, jitter: ColorJitter, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 -> float32 HxWx3 in [0, 255]: torchvision's colour adjustments in an order and with factors drawn
    from `rng` (uniformly in each range), as ColorJitter does with torch's global generator."""
    image = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float() / 255.0
    adjustments = (
        (TF.adjust_brightness, jitter.brightness),
        (TF.adjust_contrast, jitter.contrast),
        (TF.adjust_saturation, jitter.saturation),
        (TF.adjust_hue, jitter.hue),
    )
    for which in rng.permutation(len(adjustments)):
        adjust, (low, high) = adjustments[which]
        image = adjust(image, float(rng.uniform(low, high)))
    return (image * 255.0).permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class PatchOptions:
    tile_size: int = 64
    scaling: str = "minmax"
    score: str = "soft"
    max_offset: int = 0
    augment: bool = True
    jitter: ColorJitter = ColorJitter()


class _SlidePatches(SeededDataset):
    """Shared reading logic: lazily opened openslide handles, one set per worker process.

    `augment` is the `augment` of the patch options.
    """

    def __init__(self, slide_paths: Mapping[str, Path], options: PatchOptions):
        self.slide_paths = dict(slide_paths)
        self.options = options

    @property
    def augment(self) -> bool:
        return self.options.augment

    @augment.setter
    def augment(self, value: bool) -> None:
        self.options = replace(self.options, augment=value)

    def score_of(self, ann: Annotation) -> float:
        """The condition / target of an annotation: its soft label, or its hard label."""
        return ann.soft if self.options.score == "soft" else float(ann.label)

    def _slide(self, name: str) -> openslide.OpenSlide:
        return self.handle(name, lambda: openslide.OpenSlide(str(self.slide_paths[name])))

    def _sample(self, ann: Annotation, dx: int = 0, dy: int = 0, k: int = 0,
                jitter_rng: np.random.Generator | None = None) -> dict:
        """The patch around `ann` (shifted, turned); colour-jittered when a `jitter_rng` is given and draws it."""
        opts = self.options
        patch = read_patch(self._slide(ann.slide), ann.x + dx, ann.y + dy, opts.tile_size)
        if k:
            patch = dihedral(patch, k)
        if jitter_rng is not None and opts.jitter.p > 0 and jitter_rng.random() < opts.jitter.p:
            patch = color_jitter(patch, opts.jitter, jitter_rng)
        return {
            "image": torch.from_numpy(to_model_range(patch, opts.scaling)),
            "score": torch.tensor(self.score_of(ann), dtype=torch.float32),
            "label": ann.label,
            "meta": {"slide": ann.slide, "x": float(ann.x), "y": float(ann.y), "uid": ann.uid},
        }


class WSITrainPatches(_SlidePatches):
    """Training patches: sample i is fully determined by (seed, i), so any position in the stream can be resumed.

    `sampling` "hard_label": with `mite_ratio` r, every batch of `batch_size` consecutive indices holds
    floor(r * B) or ceil(r * B) mitotic patches (the expected share is exactly r). A class is drawn first, then an
    annotation uniformly among that class, which draws each slide in proportion to its count of that class.
    Without `mite_ratio`, annotations are drawn uniformly (the data's own ratio).
    `sampling` "uniform_bins" (the mitotic-figure transition work): each sample draws one of the score bins
    0 / 0.5 / 1 that hold training annotations with equal probability, then an annotation uniformly within it;
    `mite_ratio` is not used.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        slide_paths: Mapping[str, Path],
        options: PatchOptions,
        batch_size: int,
        mite_ratio: float | None = 0.5,
        seed: int = 0,
        sampling: str = "hard_label",
    ):
        super().__init__(slide_paths, options)
        self.annotations = list(annotations)
        if not self.annotations:
            raise DataError("the training set has no annotations")
        if sampling not in SOFT_SAMPLINGS:
            raise DataError(f"--soft_sampling: expected one of {SOFT_SAMPLINGS}, got {sampling!r}")
        self.mitotic = [a for a in self.annotations if a.label == 1]
        self.negative = [a for a in self.annotations if a.label == 0]
        self.bins = self.score_bins() if sampling == "uniform_bins" else []
        if mite_ratio is not None and sampling == "hard_label":
            if not 0.0 <= mite_ratio <= 1.0:
                raise DataError(f"--mite_ratio must be in [0, 1], got {mite_ratio}")
            if mite_ratio > 0 and not self.mitotic:
                raise DataError("--mite_ratio > 0 but the training set has no mitotic annotations")
            if mite_ratio < 1 and not self.negative:
                raise DataError("--mite_ratio < 1 but the training set has no negative annotations")
        self.batch_size = batch_size
        self.mite_ratio = mite_ratio
        self.seed = seed
        self.sampling = sampling

    def __len__(self) -> int:
        return len(self.annotations)

    def score_bins(self) -> list[list[Annotation]]:
        """The training annotations by score (0, 0.5, 1), empty bins left out (DataError for other scores)."""
        bins: dict[float, list[Annotation]] = {b: [] for b in SCORE_BINS}
        for ann in self.annotations:
            score = self.score_of(ann)
            if score not in bins:
                raise DataError(f"--soft_sampling uniform_bins needs scores 0, 0.5 or 1 (--soft_mode binned or "
                                f"thresholds), got {score:g} for annotation {ann.uid} of {ann.slide}")
            bins[score].append(ann)
        return [members for members in bins.values() if members]

    def is_mitotic_slot(self, index: int) -> bool:
        """Whether stream position `index` holds a mitotic patch (decided per batch)."""
        batch, pos = divmod(index, self.batch_size)
        return bool(mixed_slots(self.mite_ratio, self.batch_size, np.random.default_rng([self.seed, batch, 0]))[pos])

    def pool(self, index: int, rng: np.random.Generator) -> list[Annotation]:
        """The annotations that stream position `index` draws from."""
        if self.sampling == "uniform_bins":
            return self.bins[int(rng.integers(len(self.bins)))]
        if self.mite_ratio is None:
            return self.annotations
        return self.mitotic if self.is_mitotic_slot(index) else self.negative

    def __getitem__(self, index: int) -> dict:
        rng = self.sample_rng(index, 1)
        pool = self.pool(index, rng)
        ann = pool[int(rng.integers(len(pool)))]
        off = self.options.max_offset
        dx, dy = (rng.integers(-off, off + 1, size=2) if off > 0 else (0, 0))
        return self._sample(ann, int(dx), int(dy), self.draw_dihedral(rng), self.sample_rng(index, 2))


class WSIEvalPatches(_SlidePatches):
    """Every annotation once, centred, without augmentation (validation and test)."""

    def __init__(self, annotations: Sequence[Annotation], slide_paths: Mapping[str, Path], options: PatchOptions):
        super().__init__(slide_paths, options)
        self.annotations = list(annotations)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> dict:
        return self._sample(self.annotations[index])


class StreamSampler(torch.utils.data.Sampler[int]):
    """Endless stream of dataset indices for one rank, starting at a given batch (the resume position).

    Local batch k of rank r covers global batch g = k * world_size + r, i.e. indices g*B .. g*B + B - 1.
    """

    def __init__(self, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        k = self.start_batch
        while True:
            g = k * self.world_size + self.rank
            yield from range(g * self.batch_size, (g + 1) * self.batch_size)
            k += 1

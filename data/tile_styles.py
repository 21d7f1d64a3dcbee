"""A tile-pair folder (`data.tile_pairs`: images/*.png, masks/*.png) as a source for style-extracting diffusion.

A unit is a slide: the prefix of the tile names (`TilePair.slide`, from `tile_pairs.slide_names`); each tile is
its own slide when the names have no common `<slide>_<rest>` form. Each sample is one tile:

- `image`: float32 3 x S x S in [-1, 1] (S: the common tile size);
- `semantic`: float32 K x S x S, the one-hot mask (K = `num_classes`);
- `style`: float32 n x 3 x S x S in [-1, 1], reference tiles of a style mode:
  `multi_patch`: n other tiles of the same slide (the tile itself when its slide has no other tile);
  `augmented`: `data.style_sampling.augmented_crops` of the content tile;
  `nearby` is refused, as tiles have no slide positions;
- `meta`: the slide, and x = y = 0.

`labelled_per_class` reads units = slides and one class for all of them: N seeded slides keep their tiles as
items; the tiles of the other slides only serve as style references. `style_pairs` adds tiles that serve only as
style references (e.g. the training tiles, for a validation set); `heldout` names the slides never trained on.
"""
from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np
from PIL import Image

from data.annotations import DataError
from data.base import SeededDataset
from data.splits import pick_labelled
from data.style_sampling import STYLE_MODES, augmented_crops, to_style_array
from data.tile_pairs import TilePair, read_pair, tile_size_of

NEARBY_REFUSED = "tile folders have no slide positions; use --style_sampling multi_patch or augmented"
ONE_CLASS = "all"


def check_style_mode(mode: str) -> None:
    """DataError for an unknown mode and for `nearby`, which tiles cannot serve."""
    if mode not in STYLE_MODES:
        raise DataError(f"--style_sampling: expected one of {list(STYLE_MODES)}, got {mode!r}")
    if mode == "nearby":
        raise DataError(NEARBY_REFUSED)


def mask_classes(pairs: Sequence[TilePair]) -> int:
    """K = the largest class index in the masks + 1 (at least 2: background and one class)."""
    largest = 0
    for pair in pairs:
        try:
            with Image.open(pair.mask) as handle:
                largest = max(largest, int(np.asarray(handle).max(initial=0)))
        except (OSError, ValueError) as err:
            raise DataError(f"{pair.mask}: cannot read the mask ({err})") from None
    return max(largest + 1, 2)


class TileStyles(SeededDataset):
    """The tiles of the labelled slides with their one-hot masks and reference tiles of their slide."""

    def __init__(
        self,
        pairs: Sequence[TilePair],
        num_classes: int,
        num_style: int = 4,
        style_mode: str = "multi_patch",
        labelled_per_class: int | None = None,
        augment: bool = False,
        seed: int = 0,
        style_pairs: Sequence[TilePair] = (),
        heldout: Collection[str] = (),
    ) -> None:
        if not pairs:
            raise DataError("no tile pairs")
        check_style_mode(style_mode)
        if labelled_per_class is not None and labelled_per_class < 1:
            raise DataError(f"--labelled_per_class: expected at least 1, got {labelled_per_class}")
        self.pairs = list(pairs)
        self.tile_size = tile_size_of(self.pairs)
        self.by_slide: dict[str, list[TilePair]] = {}
        for pair in self.pairs + [p for p in style_pairs if p not in self.pairs]:
            self.by_slide.setdefault(pair.slide, []).append(pair)
        self.heldout = frozenset(heldout)
        own = {pair.slide for pair in self.pairs}
        kept = pick_labelled({slide: ONE_CLASS for slide in self.by_slide if slide in own}, labelled_per_class, seed)
        self.items = [pair for pair in self.pairs if pair.slide in kept]
        self.num_classes = num_classes
        self.num_style = num_style
        self.style_mode = style_mode
        super().__init__(augment, seed)

    def __len__(self) -> int:
        return len(self.items)

    def unit_of(self, index: int) -> str:
        """The slide of item `index`."""
        return self.items[self.wrap(index)].slide

    def style_units(self, split: str = "all") -> list[str]:
        """The slides (labelled or not, and those of `style_pairs`) of a split: "heldout" (the `heldout` slides),
        "train" (the others) or "all", in order of appearance."""
        if split not in ("all", "train", "heldout"):
            raise DataError(f"style units: expected the split all, train or heldout, got {split!r}")
        return [s for s in self.by_slide if split == "all" or (s in self.heldout) == (split == "heldout")]

    def tiles_of(self, slide: str) -> list[TilePair]:
        """The tiles of `slide` (DataError when there is no such slide)."""
        if slide not in self.by_slide:
            raise DataError(f"no tiles of slide {slide!r}; the slides are {sorted(self.by_slide)[:10]}")
        return self.by_slide[slide]

    def read_image(self, pair: TilePair) -> np.ndarray:
        """uint8 S x S x 3 image of a tile."""
        return read_pair(pair, self.num_classes)[0]

    def style_sources(self, slide: str, count: int, rng: np.random.Generator, exclude: str | None = None) -> list[TilePair]:
        """`count` tiles of `slide` other than tile `exclude` (it only when the slide has no other), no repeats
        while there are enough."""
        tiles = self.tiles_of(slide)
        pool = [pair for pair in tiles if pair.name != exclude] or tiles
        picks = rng.choice(len(pool), size=count, replace=len(pool) < count)
        return [pool[int(i)] for i in picks]

    def crops(self, slide: str, mode: str, count: int, rng: np.random.Generator, content: np.ndarray | None,
              tile: str | None) -> np.ndarray:
        """uint8 count x S x S x 3 reference tiles of style mode `mode` for slide `slide`."""
        check_style_mode(mode)
        size = self.tile_size
        tiles = self.tiles_of(slide)
        if mode == "none" or count == 0:
            return np.zeros((0, size, size, 3), np.uint8)
        if mode == "multi_patch":
            return np.stack([self.read_image(pair) for pair in self.style_sources(slide, count, rng, tile)])
        if content is None:
            named = [pair for pair in tiles if pair.name == tile]
            content = self.read_image(named[0] if named else tiles[int(rng.integers(len(tiles)))])
        return augmented_crops(content, count, rng).images

    def style_crops(self, unit: str, rng: np.random.Generator, count: int | None = None, mode: str | None = None,
                    content: np.ndarray | None = None, tile: str | None = None) -> np.ndarray:
        """float32 n x 3 x S x S reference tiles of slide `unit` in [-1, 1] (default: this set's mode and n).

        `tile` names the content tile (left out of multi_patch; augmented when `content` is not given); without
        either, augmented transforms a random tile of the slide.
        """
        count = self.num_style if count is None else count
        return to_style_array(self.crops(unit, mode or self.style_mode, count, rng, content, tile))

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The unaugmented tile (uint8 S x S x 3) and mask (uint8 S x S) of item `index`."""
        image, mask = read_pair(self.items[self.wrap(index)], self.num_classes)
        return image, mask.astype(np.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.items[self.wrap(index)]
        patch, labels = self.layout(index)
        style = self.style_crops(pair.slide, self.sample_rng(index, 1), content=patch, tile=pair.name)
        return self.styled_sample(index, patch, labels, style, {"slide": pair.slide, "x": 0, "y": 0})

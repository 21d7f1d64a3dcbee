"""Train / validation split rules shared by the data sets.

- a seeded hold-out of whole groups (tiles of one source image, or single ids) by fraction;
- per group, the items above a quantile of a value (annotations in the bottom part of each slide for training);
- per group, the items at or above a quantile of the values of the group's reference items (the original
  transition work's split: the y quantile of each slide's mitotic figures);
- a contiguous tail (the last tiles of a stack);
- a seeded pick of N labelled units per class (`--labelled_per_class`; the rest stay unlabelled).

Every rule is deterministic: the same inputs and seed give the same split, and the returned lists keep the
order of the input.
"""
from __future__ import annotations

import zlib
from typing import Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def share_of(count: int, fraction: float) -> int:
    """round(fraction * count): how many of `count` items a share `fraction` is."""
    return int(round(fraction * count))


def held_out_count(count: int, fraction: float) -> int:
    """round(fraction * count), at least one and never all when `fraction` > 0 and `count` >= 2; 0 otherwise."""
    if fraction > 0 and count >= 2:
        return min(max(share_of(count, fraction), 1), count - 1)
    return 0


def draw_held_out(keys: Sequence[K], count: int, seed: int) -> set[K]:
    """`count` of the distinct `keys`, drawn by a seeded permutation of their positions."""
    order = np.random.default_rng(seed).permutation(len(keys))
    return {keys[i] for i in order[:count]}


def held_out_groups(groups: Iterable[K], fraction: float, seed: int) -> set[K]:
    """round(fraction * n) of the n distinct `groups` (sorted, then drawn by `seed`); at least one and never
    all when `fraction` > 0 and n >= 2, none otherwise."""
    distinct = sorted(set(groups))
    return draw_held_out(distinct, held_out_count(len(distinct), fraction), seed)


def partition(items: Iterable[T], is_held: Callable[[T], bool]) -> tuple[list[T], list[T]]:
    """(kept, held) items, both in the order of `items`."""
    kept: list[T] = []
    held: list[T] = []
    for item in items:
        (held if is_held(item) else kept).append(item)
    return kept, held


def split_each_group(
    items: Iterable[T], group: Callable[[T], K], split: Callable[[list[T]], tuple[list[T], list[T]]]
) -> tuple[list[T], list[T]]:
    """(kept, held): `split` applied to the items of each group, the groups one after another in the order each
    first appears, the items of a group in their order."""
    by_group: dict[K, list[T]] = {}
    for item in items:
        by_group.setdefault(group(item), []).append(item)
    kept: list[T] = []
    held: list[T] = []
    for members in by_group.values():
        group_kept, group_held = split(members)
        kept += group_kept
        held += group_held
    return kept, held


def split_by_group(
    items: Sequence[T], fraction: float, seed: int, group: Callable[[T], K] = lambda item: item
) -> tuple[list[T], list[T]]:
    """(train, held-out) items: `held_out_groups` of the items' groups are held out whole; order kept."""
    held = held_out_groups([group(item) for item in items], fraction, seed)
    return partition(items, lambda item: group(item) in held)


def split_by_quantile(
    items: Iterable[T], value: Callable[[T], float], group: Callable[[T], K], fraction: float
) -> tuple[list[T], list[T]]:
    """(kept, held) per group: the items whose value exceeds the group's (1 - fraction) quantile are held.

    Both lists hold the groups one after another, in the order each group first appears, and keep the order
    of `items` within a group.
    """
    def split(members: list[T]) -> tuple[list[T], list[T]]:
        cut = np.quantile([value(m) for m in members], 1.0 - fraction)
        return partition(members, lambda m: value(m) > cut)

    return split_each_group(items, group, split)


def split_by_reference_quantile(
    items: Iterable[T], value: Callable[[T], float], group: Callable[[T], K], is_reference: Callable[[T], bool],
    fraction: float,
) -> tuple[list[T], list[T]]:
    """(kept, held) per group: the cut is the (1 - fraction) quantile (linear interpolation, as np.percentile) of
    the values of the group's reference items; items below the cut are kept, items at or above it held.

    A group without reference items has no cut and is kept whole. Order as in `split_by_quantile`.
    """
    def split(members: list[T]) -> tuple[list[T], list[T]]:
        reference = [value(m) for m in members if is_reference(m)]
        if not reference:
            return members, []
        cut = np.quantile(reference, 1.0 - fraction)
        return partition(members, lambda m: value(m) >= cut)

    return split_each_group(items, group, split)


def tail_split(count: int, tail: int) -> tuple[range, range]:
    """(head, tail) of range(count): the last `tail` positions and all before them."""
    return range(0, count - tail), range(count - tail, count)


def pick_labelled(classes: Mapping[str, str], per_class: int | None, seed: int) -> set[str]:
    """The units (keys of `classes`, unit -> class) kept as labelled: `per_class` of each class, all when None.

    Each class draws from its sorted units with a seeded permutation of its own (seed and the class name), so
    adding a class leaves the picks of the others as they are; a class with fewer units keeps all of them.
    """
    if per_class is None:
        return set(classes)
    by_class: dict[str, list[str]] = {}
    for unit in sorted(classes):
        by_class.setdefault(classes[unit], []).append(unit)
    kept: set[str] = set()
    for name, units in by_class.items():
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(units))
        kept.update(units[i] for i in order[:max(per_class, 0)])
    return kept

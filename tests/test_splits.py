"""Train / validation split rules and the mixed-batch ratio rule: every call site keeps its exact output."""
from __future__ import annotations

import numpy as np
import pytest

from data.annotations import Annotation
from data.monuseg import split_names
from data.npy_stack import TileStack, split_tiles, write_stack
from data.pcam import kaggle_split
from data.wsi import PatchOptions, WSITrainPatches, split_annotations
from tools.segmentation import split_by_name

NAMES = [f"img{s}_{y}_{x}" for s in "ABCDEFG" for y in (0, 48) for x in (0, 48)]


def of(sources: str, names: list[str]) -> list[str]:
    """The names of these source images (imgA..imgG), in the order of `names`."""
    return [n for n in names if n[3] in sources]


@pytest.mark.parametrize(
    "fraction, seed, held",
    [(0.0, 0, ""), (0.0, 3, ""), (0.2, 0, "C"), (0.2, 3, "F"), (0.5, 0, "CDEG"), (0.5, 3, "BCFG"),
     (0.9, 0, "ACDEFG"), (0.9, 3, "BCDEFG")],
)
def test_layout_split_by_source_image(fraction, seed, held):
    names = NAMES[::-1]
    kept = "".join(s for s in "ABCDEFG" if s not in held)
    assert split_names(names, fraction, seed) == (of(kept, names), of(held, names))


@pytest.mark.parametrize(
    "fraction, seed, held",
    [(0.1, 0, ["id05"]), (0.1, 5, ["id11"]), (0.3, 0, ["id01", "id02", "id10", "id05"]),
     (0.3, 5, ["id07", "id08", "id11", "id06"]),
     (0.6, 0, ["id00", "id01", "id08", "id02", "id09", "id10", "id05", "id06"]),
     (0.6, 5, ["id07", "id01", "id08", "id02", "id10", "id11", "id05", "id06"])],
)
def test_kaggle_split_of_ids_in_their_order(fraction, seed, held):
    ids = [f"id{(i * 7) % 13:02d}" for i in range(13)]
    assert kaggle_split(ids, fraction, seed) == ([i for i in ids if i not in held], held)


@pytest.mark.parametrize(
    "fraction, held, expected",
    [
        (0.3, 0, "CE"), (0.3, 4, "BC"), (0.5, 0, "CDEG"), (0.5, 4, "ABCF"),
    ],
)
def test_downstream_split_by_source_image(fraction, held, expected):
    seed = held
    names = sorted(NAMES)
    kept = "".join(s for s in "ABCDEFG" if s not in expected)
    assert split_by_name(NAMES[::-1], fraction, seed) == (of(kept, names), of(expected, names))


@pytest.mark.parametrize(
    "fraction, seed, held", [(0.3, 0, [2, 4, 5]), (0.3, 4, [0, 1, 2]), (0.5, 0, [2, 4, 5, 6]), (0.5, 4, [0, 1, 2, 8])]
)
def test_downstream_split_of_one_source_splits_its_tiles(fraction, seed, held):
    for name in ("x_{}_0", "t{}"):
        names = [name.format(i) for i in range(9)]
        expected = ([n for i, n in enumerate(names) if i not in held], [names[i] for i in held])
        assert split_by_name(names, fraction, seed) == expected


def test_y_percentile_split_per_slide():
    anns = [
        Annotation(slide=s, x=0, y=float((i * 5) % 11), class_name="m", label=i % 2, soft=0.0, uid=f"{s}{i}")
        for i in range(11) for s in ("b", "a", "c") if not (s == "c" and i > 3)
    ]
    uids = lambda items: [a.uid for a in items]  # noqa: E731
    train, val = split_annotations(anns, "y_percentile", val_fraction=0.2)
    assert uids(val) == ["b2", "b4", "a2", "a4", "c2"]
    assert uids(train) == ["b0", "b1", "b3", "b5", "b6", "b7", "b8", "b9", "b10", "a0", "a1", "a3", "a5", "a6", "a7",
                           "a8", "a9", "a10", "c0", "c1", "c3"]
    train, val = split_annotations(anns, "y_percentile", val_fraction=0.5)
    assert uids(val) == ["b2", "b4", "b6", "b8", "b10", "a2", "a4", "a6", "a8", "a10", "c1", "c2"]
    assert uids(train) == ["b0", "b1", "b3", "b5", "b7", "b9", "a0", "a1", "a3", "a5", "a7", "a9", "c0", "c3"]


def test_stack_splits_are_a_contiguous_tail():
    assert list(split_tiles(10, "train", 3)) == list(range(7))
    assert list(split_tiles(10, "test", 3)) == [7, 8, 9]
    assert list(split_tiles(10, "all", 3)) == list(range(10))
    assert list(split_tiles(10, "test", 0)) == []


@pytest.mark.parametrize(
    "test_size, fraction, train, val",
    [(3, 0.2, range(7), range(7, 9)), (0, 0.25, range(9), range(9, 12)), (5, 0.0, range(7), None)],
)
def test_tile_validation_is_the_tail_before_the_test_tail(tmp_path, test_size, fraction, train, val):
    from dataloader import build_tile_datasets

    stack = write_stack(tmp_path / "s.npy", np.zeros((12, 8, 8, 3), np.uint8))
    config = {"data_root": str(stack), "dataset": "tiles", "tile_size": 8, "cluster_file": None, "test_size": test_size,
              "val_fraction": fraction, "stack_slice": 0, "augment": True, "seed": 1, "explicit": ()}
    data = build_tile_datasets(config)
    assert isinstance(data.train, TileStack) and data.train.tiles == tuple(train)
    assert (data.val is None) if val is None else data.val.tiles == tuple(val)


def bits(flags) -> str:
    return "".join("1" if f else "0" for f in flags)


def test_mitotic_slots_per_batch():
    anns = [Annotation(slide="s", x=i, y=i, class_name="m", label=int(i % 3 == 0), soft=0.0, uid=str(i)) for i in range(30)]
    expected = {
        0.1: "0100000000000000000000000000010000000010000000000000000000000100",
        0.3: "1100100000010100000011000000111000000110000100010100001000100110",
        0.5: "1100101010110100011011000000111101100110100100110111001010100110",
        0.0: "0" * 64,
        1.0: "1" * 64,
    }
    for ratio, slots in expected.items():
        data = WSITrainPatches(anns, {"s": "unused"}, PatchOptions(), batch_size=8, mite_ratio=ratio, seed=2)
        assert bits(data.is_mitotic_slot(i) for i in range(64)) == slots


def test_shared_rules():
    from data.mixing import mixed_count, mixed_slots
    from data.splits import held_out_count, split_by_group, split_by_quantile, tail_split

    assert [held_out_count(n, 0.5) for n in (0, 1, 2, 5)] == [0, 0, 1, 2]
    assert held_out_count(10, 0.01) == 1 and held_out_count(10, 0.99) == 9 and held_out_count(10, 0.0) == 0
    assert tail_split(10, 3) == (range(7), range(7, 10)) and tail_split(4, 0) == (range(4), range(4, 4))
    items = ["b1", "a1", "b2", "a2", "b3"]
    train, held = split_by_group(items, 0.5, 0, group=lambda s: s[0])
    assert sorted(train + held) == sorted(items) and len({s[0] for s in held}) == 1
    assert [s for s in items if s in train] == train and [s for s in items if s in held] == held
    kept, top = split_by_quantile(items, lambda s: int(s[1]), lambda s: s[0], 0.4)
    assert (kept, top) == (["b1", "b2", "a1"], ["b3", "a2"])
    rng = np.random.default_rng(0)
    counts = [mixed_count(0.3, 8, rng) for _ in range(4000)]
    assert set(counts) == {2, 3} and np.mean(counts) == pytest.approx(2.4, abs=0.03)
    slots = mixed_slots(0.5, 8, np.random.default_rng(1))
    assert slots.dtype == bool and slots.sum() == 4

"""Soft labels from annotator votes: binned, thresholds (the mitotic-figure transition work's), continuous; which
voters count (--annotators by SlideRunner person name or id, MIDOG vote position)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import model
from common.errors import ConfigError
from data.annotations import ClassMap, DataError, soft_from_votes, threshold_soft
from data.midog import read_midog_json
from data.sliderunner import read_sliderunner
from test_annotation_readers import write_sliderunner_db

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "annotations"
MIT, LOOK, GRAN = 1, 2, 3
CLASSES = {MIT: "Mitotic figure", LOOK: "Mitotic figure lookalike", GRAN: "Granulocyte"}
PERSONS = {1: "Alice", 2: "Bob", 3: "Carol", 4: "Dan"}
CANINE = ClassMap(mitotic=("Mitotic figure",), negative=None)


def _real(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"real reference data {path} is absent (expected in ../shared/data next to the project)")
    return path


def votes(mitotic: int, total: int) -> list[int]:
    """Vote labels: `mitotic` ones, the rest zeros."""
    return [1] * mitotic + [0] * (total - mitotic)


@pytest.mark.parametrize("mitotic, total, expected", [
    (0, 2, 0.0), (1, 4, 0.0), (29, 100, 0.0),  # below the low threshold
    (3, 10, 0.5),                             # exactly 0.3: the middle bin (low <= share)
    (1, 2, 0.5), (1, 3, 0.5),
    (33, 50, 0.5),                            # exactly 0.66: the middle bin (share <= high)
    (67, 100, 1.0), (2, 3, 1.0),              # 2/3 = 0.667 > 0.66
    (2, 2, 1.0),
])
def test_threshold_bins_and_their_inclusive_boundaries(mitotic, total, expected):
    assert soft_from_votes(votes(mitotic, total), 0, "thresholds") == expected


def test_thresholds_differ_from_binned_with_more_than_two_voters():
    # binned: any disagreement is 0.5; thresholds: 2 of 3 is mitotic (1), 1 of 4 is not (0)
    assert (soft_from_votes(votes(2, 3), 0, "binned"), soft_from_votes(votes(2, 3), 0, "thresholds")) == (0.5, 1.0)
    assert (soft_from_votes(votes(1, 4), 1, "binned"), soft_from_votes(votes(1, 4), 1, "thresholds")) == (0.5, 0.0)
    assert soft_from_votes([], 1, "thresholds") == 1.0  # no votes: the hard label
    assert threshold_soft(0.5, (0.6, 0.8)) == 0.0 and threshold_soft(0.85, (0.6, 0.8)) == 1.0


@pytest.fixture()
def voted_db(tmp_path: Path) -> Path:
    return write_sliderunner_db(tmp_path / "votes.sqlite", [
        {"type": 1, "cls": MIT, "coords": [(10, 10)], "votes": [(1, MIT), (2, MIT), (3, LOOK)]},
        {"type": 1, "cls": LOOK, "coords": [(20, 20)], "votes": [(1, MIT), (2, LOOK), (3, LOOK), (4, GRAN)]},
        {"type": 1, "cls": MIT, "coords": [(30, 30)], "votes": [(1, MIT), (3, LOOK), (4, MIT)]},
    ], classes=CLASSES, persons=PERSONS)


def test_sliderunner_thresholds_with_three_and_four_voters(voted_db):
    binned = [a.soft for a in read_sliderunner(voted_db, CANINE, soft="binned")]
    thresholds = [a.soft for a in read_sliderunner(voted_db, CANINE, soft="thresholds")]
    assert binned == [0.5, 0.5, 0.5]
    assert thresholds == [1.0, 0.0, 1.0]  # 2/3, 1/4 (a granulocyte vote counts as not mitotic), 2/3
    assert [a.soft for a in read_sliderunner(voted_db, CANINE, soft="thresholds", thresholds=(0.2, 0.7))] == [0.5, 0.5, 0.5]


def test_annotators_by_person_id_or_name(voted_db):
    by_id = read_sliderunner(voted_db, CANINE, soft="thresholds", annotators=["1", "2"])
    by_name = read_sliderunner(voted_db, CANINE, soft="thresholds", annotators=["alice", "BOB"])
    assert [a.votes for a in by_id] == [a.votes for a in by_name]
    assert [a.soft for a in by_id] == [1.0, 0.5, 1.0]  # both mitotic; split; only Alice voted
    assert by_id[0].votes == (("Alice", "Mitotic figure"), ("Bob", "Mitotic figure"))
    with pytest.raises(DataError, match=r"unknown annotator\(s\) \['9'\].*1 Alice"):
        read_sliderunner(voted_db, CANINE, annotators=["1", "9"])


def test_annotator_ids_without_a_persons_row(tmp_path):
    db = write_sliderunner_db(tmp_path / "anon.sqlite", [
        {"type": 1, "cls": MIT, "coords": [(10, 10)], "votes": [(1, MIT), (7, LOOK)]},
    ], classes=CLASSES, persons={1: "Alice"})
    [only_seven] = read_sliderunner(db, CANINE, soft="continuous", annotators=["7"])
    assert only_seven.soft == 0.0 and only_seven.votes == (("person 7", "Mitotic figure lookalike"),)


@pytest.mark.parametrize("argv, message", [
    (["--soft_mode", "thresholds", "--soft_thresholds", "0.66,0.3"], "two increasing numbers"),
    (["--soft_mode", "thresholds", "--soft_thresholds", "0,0.5"], "two increasing numbers"),
    (["--soft_mode", "thresholds", "--soft_thresholds", "0.3,1"], "two increasing numbers"),
    (["--soft_mode", "thresholds", "--soft_thresholds", "0.3"], "two increasing numbers"),
    (["--soft_thresholds", "0.3,0.66"], "--soft_thresholds is for --soft_mode thresholds"),
])
def test_soft_thresholds_flag_is_checked(argv, message):
    with pytest.raises(ConfigError, match=message):
        model.resolve_config(["--dataset", "synthetic", "--model_type", "diffusion", *argv])


def test_soft_thresholds_flag_reaches_the_reader(tmp_path, voted_db):
    import dataloader
    config = model.resolve_config(["--dataset", "canine", "--model_type", "diffusion", "--soft_mode", "thresholds",
                                   "--soft_thresholds", "0.2,0.7", "--annotation_file", str(voted_db),
                                   "--negative_classes", "all"])
    assert config["soft_thresholds"] == [0.2, 0.7]
    assert [a.soft for a in dataloader.read_annotations(voted_db, config)] == [0.5, 0.5, 0.5]
    default = model.resolve_config(["--dataset", "canine", "--model_type", "diffusion", "--soft_mode", "thresholds",
                                    "--negative_classes", "all"])
    assert [a.soft for a in dataloader.read_annotations(voted_db, default)] == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------- MIDOG: experts and a detector

def test_midog_sqlite_expert_ids_equal_names_and_leave_out_the_detector():
    db = _real("MIDOG.sqlite")
    midog = ClassMap(mitotic=("mitotic figure",), negative=None)
    names = read_sliderunner(db, midog, soft="thresholds", annotators=["expert 1", "expert 2", "expert 3"])
    ids = read_sliderunner(db, midog, soft="thresholds", annotators=["1", "3", "4"])  # 2 is the RetinaNet detector
    assert [a.soft for a in names] == [a.soft for a in ids]
    assert all(voter != "RetinaNet" for a in names for voter, _ in a.votes)
    binned = read_sliderunner(db, midog, soft="binned", annotators=["1", "3", "4"])
    differ = [(b.soft, t.soft, len(t.votes)) for b, t in zip(binned, names) if b.soft != t.soft]
    assert differ and all(n == 3 for _, _, n in differ)  # only three voters can split 2 : 1
    assert {(b, t) for b, t, _ in differ} <= {(0.5, 1.0)}  # 2 of 3 mitotic: 0.667 > 0.66; 1 of 3 stays 0.5


def test_midogpp_json_thresholds_against_binned():
    path = _real("MIDOGpp.json")
    mitotic = ClassMap(mitotic=("mitotic figure",), negative=None)
    # vote tuples (1 mitotic, 2 not): (1,1) 8917, (2,2) 8810, (2,2,2) 3044, (1,2,1) 1623, (2,1,2) 1560, (2,1,1) 1397,
    # (1,2,2) 935; a third expert voted where the first two disagreed
    thresholds = Counter(a.soft for a in read_midog_json(path, mitotic, soft="thresholds"))
    binned = Counter(a.soft for a in read_midog_json(path, mitotic, soft="binned"))
    assert thresholds == {1.0: 8917 + 1623 + 1397, 0.5: 1560 + 935, 0.0: 8810 + 3044}
    assert binned == {1.0: 8917, 0.5: 1623 + 1560 + 1397 + 935, 0.0: 8810 + 3044}
    first_two = Counter(a.soft for a in read_midog_json(path, mitotic, soft="thresholds", annotators=["1", "annotator 2"]))
    assert first_two == binned
    with pytest.raises(DataError, match="1 to 3"):
        read_midog_json(path, mitotic, annotators=["4"])


def test_meningioma_points_take_no_annotators(tmp_path):
    import dataloader
    folder = tmp_path / "points"
    folder.mkdir()
    (folder / "slide.txt").write_text("10\t20\n")
    config = model.resolve_config(["--dataset", "meningioma", "--model_type", "diffusion", "--annotators", "1,2"])
    with pytest.raises(DataError, match="--annotators: the meningioma point files"):
        dataloader.read_annotations(folder, config)

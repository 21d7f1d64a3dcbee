"""The annotation record every reader returns, and class-name matching shared by the readers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from common.errors import DataError



@dataclass(frozen=True)
class Annotation:
    """One annotated object on a slide, in level-0 pixel coordinates.

    `label` is the hard label (1 mitotic, 0 negative); `soft` is the share of annotators who
    voted mitotic (equal to `label` when the source has no per-annotator votes).
    """

    slide: str
    x: float
    y: float
    class_name: str
    label: int
    soft: float
    uid: str
    kind: str = "spot"
    bounds: tuple[float, float, float, float] | None = None
    votes: tuple[tuple[str, str], ...] = field(default=())


def normalise(name: str) -> str:
    return " ".join(name.strip().lower().split())


@dataclass(frozen=True)
class ClassMap:
    """Which class names count as mitotic and which as negatives (case-insensitive).

    `negative=None` means every class that is not mitotic is a negative.
    """

    mitotic: tuple[str, ...] = ("mitotic figure",)
    negative: tuple[str, ...] | None = None

    def check(self, available: Iterable[str], source: str) -> None:
        """Raise DataError naming `source` if a configured name is not among `available`."""
        known = {normalise(n) for n in available}
        wanted = list(self.mitotic) + list(self.negative or ())
        missing = [n for n in wanted if normalise(n) not in known]
        if missing:
            raise DataError(
                f"{source}: unknown class name(s) {missing}; the classes there are {sorted(set(available))}"
            )

    def label_of(self, name: str) -> int | None:
        """1 for mitotic, 0 for negative, None for a class that is neither."""
        n = normalise(name)
        if n in {normalise(m) for m in self.mitotic}:
            return 1
        if self.negative is None or n in {normalise(m) for m in self.negative}:
            return 0
        return None


def bin_soft(value: float) -> float:
    """Bin a share of mitotic votes to 0, 0.5 or 1 (all, some, none of the annotators agree)."""
    if value <= 0.0:
        return 0.0
    if value >= 1.0:
        return 1.0
    return 0.5


DEFAULT_SOFT_THRESHOLDS = (0.3, 0.66)


def threshold_soft(value: float, thresholds: Sequence[float] = DEFAULT_SOFT_THRESHOLDS) -> float:
    """Bin a share of mitotic votes by two thresholds (low, high), as the mitotic-figure transition work did:
    share < low -> 0, low <= share <= high -> 0.5, share > high -> 1 (both thresholds belong to the middle bin)."""
    low, high = thresholds
    if value < low:
        return 0.0
    if value > high:
        return 1.0
    return 0.5


def check_soft_thresholds(thresholds: Sequence[float]) -> tuple[float, float]:
    """(low, high) when `thresholds` are two increasing numbers in (0, 1); DataError otherwise."""
    values = tuple(float(t) for t in thresholds)
    if len(values) != 2 or not 0.0 < values[0] < values[1] < 1.0:
        raise DataError(f"--soft_thresholds: expected two increasing numbers in (0, 1) such as 0.3,0.66, got {list(thresholds)}")
    return values[0], values[1]


def parse_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Accept a comma-separated string or a list of names."""
    if text is None:
        return None
    if isinstance(text, str):
        items = [t for t in (s.strip() for s in text.split(",")) if t]
    else:
        items = [str(t).strip() for t in text if str(t).strip()]
    return tuple(items)


SOFT_MODES = ("binned", "thresholds", "continuous")


def check_soft_mode(soft: str) -> None:
    """Raise DataError unless `soft` is one of SOFT_MODES."""
    if soft not in SOFT_MODES:
        raise DataError(f"soft: expected one of {list(SOFT_MODES)}, got {soft!r}")


def soft_from_votes(
    vote_labels: Sequence[int | None], hard: int, soft: str, thresholds: Sequence[float] = DEFAULT_SOFT_THRESHOLDS
) -> float:
    """Share of votes for a mitotic class: continuous, binned (0 / some / 1), or binned by `thresholds`
    (soft "thresholds"); the hard label when there are no votes.

    `vote_labels` holds ClassMap.label_of for each vote: 1 mitotic, 0 negative, None neither (a vote for a
    class that is neither still counts as a vote, and not for mitotic).
    """
    if not vote_labels:
        return float(hard)
    share = sum(1 for v in vote_labels if v == 1) / len(vote_labels)
    if soft == "binned":
        return bin_soft(share)
    if soft == "thresholds":
        return threshold_soft(share, thresholds)
    return share

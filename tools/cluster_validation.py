"""Choose the number of k-means clusters of tile features by a majority vote of internal validation indices.

Each index is a function of the points X (n x d) and their cluster labels (n,). The pairwise-distance indices
(silhouette, Dunn, C-index, McClain-Rao) use every pair of points unless a subsample is asked for. Their
distances are computed in blocks of rows (scipy cdist), never as an n x n matrix, so 20,000 points fit in a few
hundred MiB; the C-index's sums of the N_w smallest of all pairwise distances are selected exactly over further
passes (see _SmallestSums). `subsample` (`--subsample N`) uses a seeded random subset of N points instead, which
biases Dunn upwards.

`python -m tools.cluster_validation --features features.csv --k 10:16 --out DIR [--indices a,b,c] [--subsample N]
[--seed 0] [--k_final K] [--overwrite]`
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import softmax
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from common.cli import Parser, run_main
from common.errors import ConfigError, DataError
from common.files import check_writable_output, mark_as_ours, save_figure_atomic, write_csv_atomic
from common.options import number

ALL_INDICES = ("calinski_harabasz", "silhouette", "dunn", "c_index", "mcclain_rao", "hartigan_h", "log_ss_ratio")
DEFAULT_INDICES = ("calinski_harabasz", "silhouette", "dunn", "c_index", "mcclain_rao", "hartigan_h")
PAIRWISE_INDICES = ("silhouette", "dunn", "c_index", "mcclain_rao")
RULES = {
    "calinski_harabasz": "larger is better",
    "silhouette": "larger is better",
    "dunn": "larger is better",
    "c_index": "smaller is better",
    "mcclain_rao": "smaller is better",
    "hartigan_h": "largest drop H(k-1) - H(k)",
    "log_ss_ratio": "larger is better",
}
VOTE_COLUMNS = {"hartigan_h": "hartigan_h_drop"}
BLOCK_DISTANCES = 2**22  # pairwise distances held at once: 32 MiB of float64
CANDIDATE_LIMIT = 2**20  # distances a C-index bracket collects at most (8 MiB of float64)
HISTOGRAM_BINS = 2**16  # bins of each narrowing pass of a C-index selection
OUTPUT_FILES = ("indices.csv", "indices.png", "clusters.csv")
ID_COLUMNS = ("tile", "name")


def _as_points(X: np.ndarray) -> np.ndarray:
    """X as a float64 (n, d) array of finite numbers; ValueError otherwise."""
    points = np.asarray(X, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 1:
        raise ValueError(f"X must be a non-empty (n, d) array, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("X must hold finite numbers only")
    return points


def _points_and_labels(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """X as float64 (n, d), labels renumbered 0..k-1, and k; ValueError on malformed input."""
    points = _as_points(X)
    ids = np.asarray(labels)
    if ids.shape != (points.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape ({points.shape[0]},), got {ids.dtype} {ids.shape}")
    uniques, renumbered = np.unique(ids, return_inverse=True)
    return points, renumbered, len(uniques)


def _require_partition(k: int, n: int) -> None:
    if not 2 <= k <= n - 1:
        raise ValueError(f"labels must form between 2 and n - 1 = {n - 1} clusters, got {k}")


def _sums_of_squares(X: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """BGSS and WGSS (between- and within-cluster sums of squares about the means), n and k."""
    points, ids, k = _points_and_labels(X, labels)
    counts = np.bincount(ids, minlength=k)
    means = np.stack([np.bincount(ids, weights=points[:, j], minlength=k) for j in range(points.shape[1])], 1)
    means /= counts[:, None]
    within = float(((points - means[ids]) ** 2).sum())
    between = float((counts * ((means - points.mean(axis=0)) ** 2).sum(axis=1)).sum())
    return between, within, len(points), k


def within_sum_of_squares(X: np.ndarray, labels: np.ndarray) -> float:
    """WGSS: the sum over clusters of the squared distances of the points to their cluster mean."""
    return _sums_of_squares(X, labels)[1]


def calinski_harabasz(X: np.ndarray, labels: np.ndarray) -> float:
    """BGSS / WGSS scaled by (n - k) / (k - 1); larger is better.

    Equals sklearn.metrics.calinski_harabasz_score, including its value 1.0 when WGSS is 0.
    """
    between, within, n, k = _sums_of_squares(X, labels)
    _require_partition(k, n)
    if within == 0.0:
        return 1.0
    return between * (n - k) / (within * (k - 1))


def log_ss_ratio(X: np.ndarray, labels: np.ndarray) -> float:
    """log(BGSS / WGSS); larger is better. The KPC cluster work's table calls this column "Hartigan".

    It is not Hartigan's H(k) (see hartigan_h). BGSS = total sum of squares - WGSS, so the value rises as WGSS
    falls, and over k-means fits it grows with k. inf when WGSS is 0.
    """
    between, within, n, k = _sums_of_squares(X, labels)
    _require_partition(k, n)
    if within == 0.0:
        return math.inf
    if between == 0.0:
        return -math.inf
    return math.log(between / within)


def hartigan_h(X: np.ndarray, labels_k: np.ndarray, labels_k_plus_1: np.ndarray) -> float:
    """Hartigan's H(k) = (WGSS(k) / WGSS(k+1) - 1) * (n - k - 1), from the clusterings with k and k + 1 clusters.

    k is the number of clusters in labels_k. H(k) is large while the (k+1)-th cluster still splits a real
    group, and falls once the groups are found; the preferred k is the knee, the k with the largest drop
    H(k-1) - H(k) (see evaluate_k_range). inf when WGSS(k+1) is 0 and WGSS(k) is not.
    """
    points, ids, k = _points_and_labels(X, labels_k)
    _, ids_next, _ = _points_and_labels(points, labels_k_plus_1)
    w_k, w_next = within_sum_of_squares(points, ids), within_sum_of_squares(points, ids_next)
    if w_next == 0.0:
        return math.nan if w_k == 0.0 else math.inf
    return (w_k / w_next - 1.0) * (len(points) - k - 1)


def subsample_indices(n: int, subsample: int | None = None, seed: int = 0) -> np.ndarray:
    """All n indices when subsample is None or at least n, else `subsample` of them drawn without replacement."""
    if subsample is None or n <= subsample:
        return np.arange(n)
    if subsample < 2:
        raise ValueError(f"subsample must be at least 2, got {subsample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=subsample, replace=False))


@dataclass
class _Block:
    """Distances of points a..b-1 to points a..n-1: `distances` as computed (the leading square is symmetric with
    a zero diagonal), `pair` marking the pairs i < j, and `masked`, the distances with every other entry 0."""

    a: int
    distances: np.ndarray
    pair: np.ndarray
    masked: np.ndarray


def _distance_blocks(points: np.ndarray, block_distances: int, description: str, progress: bool) -> Iterator[_Block]:
    """Row blocks covering every pair i < j once, each of about block_distances distances (scipy cdist, float64)."""
    n = len(points)
    with tqdm(total=n * (n - 1) // 2, desc=description, unit="pairs", disable=not progress, leave=False) as bar:
        a = 0
        while a < n - 1:
            b = min(a + max(1, block_distances // (n - a)), n)
            distances = cdist(points[a:b], points[a:])
            pair = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
            masked = distances.copy()
            masked[:, : b - a][~pair[:, : b - a]] = 0.0
            yield _Block(a, distances, pair, masked)
            bar.update(int(pair.sum()))
            a = b


class _PairStatistics:
    """Within- and between-cluster distance sums and extremes of one labelling, summed over blocks, and every
    point's sum of distances to each cluster (n x k, for the silhouette)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.counts = np.bincount(labels)
        self.k = len(self.counts)
        self.onehot = np.eye(self.k)[labels]
        self.to_cluster = np.zeros((len(labels), self.k))
        self.within_count = int((self.counts * (self.counts - 1) // 2).sum())
        self.between_count = len(labels) * (len(labels) - 1) // 2 - self.within_count
        self.within_sum = self.between_sum = 0.0
        self.within_max, self.between_min = 0.0, math.inf

    def add(self, block: _Block) -> None:
        a, b = block.a, block.a + len(block.distances)
        rows = self.labels[a:b]
        same = rows[:, None] == self.labels[None, a:]
        # the sums count each pair i < j once; the extremes may also read the leading square's lower triangle
        # (the same distances as its upper one) and its diagonal (0, within a cluster)
        row_sums = block.masked @ self.onehot[a:]
        own = float(row_sums[np.arange(b - a), rows].sum())
        self.within_sum += own
        self.between_sum += float(row_sums.sum()) - own
        within, between = block.masked[same], block.distances[~same]
        if within.size:
            self.within_max = max(self.within_max, float(within.max()))
        if between.size:
            self.between_min = min(self.between_min, float(between.min()))
        self.to_cluster[a:b] += row_sums
        self.to_cluster[a:] += block.masked.T @ self.onehot[a:b]

    def dunn(self) -> float:
        if self.between_count == 0:
            return math.nan
        return math.inf if self.within_max == 0.0 else self.between_min / self.within_max

    def mcclain_rao(self) -> float:
        if self.within_count == 0 or self.between_count == 0 or self.between_sum == 0.0:
            return math.nan
        return (self.within_sum / self.within_count) / (self.between_sum / self.between_count)

    def c_index(self, smallest: dict[int, float]) -> float:
        """From the sums of the N smallest distances for N = N_w and N = pairs - N_w (the rest are the largest)."""
        n_w, pairs = self.within_count, self.within_count + self.between_count
        if n_w == 0:
            return math.nan
        s_min = smallest[n_w]
        s_max = self.within_sum + self.between_sum - smallest[pairs - n_w]
        if s_max - s_min <= 1e-12 * abs(s_max):
            return math.nan
        return (self.within_sum - s_min) / (s_max - s_min)

    def silhouette(self) -> float:
        """Mean silhouette width as sklearn.metrics.silhouette_score defines it (0 for points alone in a cluster)."""
        n = len(self.labels)
        if not 2 <= self.k <= n - 1:
            return math.nan
        rows = np.arange(n)
        own_count = self.counts[self.labels]
        own = self.to_cluster[rows, self.labels] / np.maximum(own_count - 1, 1)
        means = self.to_cluster / self.counts
        means[rows, self.labels] = np.inf
        other = means.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            widths = (other - own) / np.maximum(own, other)
        return float(np.where(own_count > 1, np.nan_to_num(widths), 0.0).mean())


@dataclass
class _Bracket:
    """The distances v with lo <= v < hi (`count` of them), and the count and sum of the distances below lo."""

    lo: float
    hi: float
    count: int
    count_below: int = 0
    sum_below: float = 0.0


def _bin_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    edges = np.linspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi
    return np.maximum.accumulate(edges)


def _bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For values in [edges[0], edges[-1]): the bin b with edges[b] <= v < edges[b + 1], by comparisons."""
    bins = len(edges) - 1
    with np.errstate(invalid="ignore", over="ignore"):
        guess = ((values - edges[0]) * (bins / (edges[-1] - edges[0]))).astype(np.int64)
    np.clip(guess, 0, bins - 1, out=guess)
    guess -= values < edges[guess]
    guess += values >= edges[guess + 1]
    if np.all((guess >= 0) & (guess < bins)) and np.all((edges[guess] <= values) & (values < edges[guess + 1])):
        return guess
    return np.searchsorted(edges, values, side="right") - 1


class _BracketScan:
    """One pass's look at the distances inside a bracket [lo, hi): all of them, or their histogram."""

    def __init__(self, lo: float, hi: float, collect: bool, bins: int):
        self.lo, self.hi, self.collect = lo, hi, collect
        self.chunks: list[np.ndarray] = []
        self.edges = None if collect else _bin_edges(lo, hi, bins)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.sums = np.zeros(bins)
        self.seen, self.minimum, self.maximum = 0, math.inf, -math.inf
        self.ordered: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        inside = values[(values >= self.lo) & (values < self.hi)]
        if inside.size == 0:
            return
        self.seen += inside.size
        self.minimum, self.maximum = min(self.minimum, float(inside.min())), max(self.maximum, float(inside.max()))
        if self.collect:
            self.chunks.append(inside)
            return
        where = _bin_of(inside, self.edges)
        self.counts += np.bincount(where, minlength=len(self.counts))
        self.sums += np.bincount(where, weights=inside, minlength=len(self.sums))

    def narrow(self, rank: int, bracket: _Bracket) -> float | _Bracket:
        """The sum of the `rank` smallest distances of all, or a narrower bracket holding the rank-th smallest."""
        if self.seen != bracket.count:
            raise RuntimeError(
                f"a distance pass found {self.seen} distances in [{self.lo}, {self.hi}), not {bracket.count}"
            )
        need = rank - bracket.count_below
        if self.collect:
            if self.ordered is None:
                self.ordered = np.sort(np.concatenate(self.chunks))
            return bracket.sum_below + float(self.ordered[:need].sum())
        if self.minimum == self.maximum:
            return bracket.sum_below + need * self.minimum
        cumulative = np.cumsum(self.counts)
        b = int(np.searchsorted(cumulative, need))
        return _Bracket(
            lo=float(self.edges[b]),
            hi=float(self.edges[b + 1]),
            count=int(self.counts[b]),
            count_below=bracket.count_below + int(cumulative[b] - self.counts[b]),
            sum_below=bracket.sum_below + float(self.sums[:b].sum()),
        )


class _SmallestSums:
    """Exact sums of the N smallest of all pairwise distances, for several N, over passes of distance blocks.

    Every N keeps a bracket [lo, hi) known to hold the N-th smallest distance, at first [0, a bound above every
    distance). A pass either histograms the distances inside a bracket (afterwards the bracket shrinks to the bin
    holding the N-th, the bins below adding their counts and sums), or, once the bracket holds at most
    candidate_limit distances, collects them: the sum is then the sum below the bracket plus the smallest
    N - count_below collected values, with ties counted as often as they occur. A bracket whose distances are all
    equal ends at once. Memory is O(bins + candidate_limit) whatever the number of pairs. The result is the
    sum of exactly the N smallest distances, up to the rounding of float64 addition.
    """

    def __init__(self, ranks: set[int], pairs: int, upper: float, candidate_limit: int, bins: int):
        self.sums = {rank: 0.0 for rank in ranks if rank == 0}
        self.brackets = {rank: _Bracket(0.0, upper, pairs) for rank in ranks if rank > 0}
        self.candidate_limit, self.bins = candidate_limit, bins
        self._start_pass()

    @property
    def done(self) -> bool:
        return not self.brackets

    def _start_pass(self) -> None:
        self.scans: dict[tuple[float, float], _BracketScan] = {}
        for bracket in self.brackets.values():
            key = (bracket.lo, bracket.hi)
            if key not in self.scans:
                self.scans[key] = _BracketScan(bracket.lo, bracket.hi, bracket.count <= self.candidate_limit, self.bins)

    def add(self, block: _Block) -> None:
        values = block.distances[block.pair]
        for scan in self.scans.values():
            scan.add(values)

    def finish_pass(self) -> None:
        for rank, bracket in list(self.brackets.items()):
            result = self.scans[(bracket.lo, bracket.hi)].narrow(rank, bracket)
            if isinstance(result, _Bracket):
                self.brackets[rank] = result
            else:
                self.sums[rank] = result
                del self.brackets[rank]
        self._start_pass()


def _distance_bound(points: np.ndarray) -> float:
    """A number above every pairwise distance: twice the largest distance to the mean, with room for rounding."""
    radius = float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1)).max())
    return float(np.nextafter(2.0 * radius * (1.0 + 1e-6), math.inf))


def pairwise_indices(
    X: np.ndarray,
    labelings: Sequence[np.ndarray],
    names: Sequence[str] = PAIRWISE_INDICES,
    block_distances: int = BLOCK_DISTANCES,
    candidate_limit: int = CANDIDATE_LIMIT,
    bins: int = HISTOGRAM_BINS,
    progress: bool = False,
) -> list[dict[str, float]]:
    """The pairwise-distance indices `names` of every labelling of the same points, over all pairs.

    One pass over the pairs serves every labelling; distances come in blocks of about block_distances (scipy
    cdist, float64), never as an n x n matrix. The C-index needs a few more passes to select its sums exactly
    (see _SmallestSums). A labelling with fewer than 2 clusters (or n clusters) gives NaN where an index is
    undefined.
    """
    points = _as_points(X)
    n = len(points)
    if n < 2:
        raise ValueError(f"pairwise indices need at least 2 points, got {n}")
    unknown = sorted(set(names) - set(PAIRWISE_INDICES))
    if unknown:
        raise ValueError(f"unknown pairwise indices {unknown}; expected names among {', '.join(PAIRWISE_INDICES)}")
    statistics = [_PairStatistics(_points_and_labels(points, labels)[1]) for labels in labelings]
    consumers: list[_PairStatistics | _SmallestSums] = list(statistics)
    selection = None
    if "c_index" in names:
        pairs = n * (n - 1) // 2
        ranks = {rank for s in statistics for rank in (s.within_count, pairs - s.within_count)}
        selection = _SmallestSums(ranks, pairs, _distance_bound(points), candidate_limit, bins)
        consumers.append(selection)
    for block in _distance_blocks(points, block_distances, "pairwise distances", progress):
        for consumer in consumers:
            consumer.add(block)
    if selection is not None:
        selection.finish_pass()
        while not selection.done:
            for block in _distance_blocks(points, block_distances, "C-index selection", progress):
                selection.add(block)
            selection.finish_pass()
    compute = {
        "silhouette": lambda s: s.silhouette(),
        "dunn": lambda s: s.dunn(),
        "c_index": lambda s: s.c_index(selection.sums),
        "mcclain_rao": lambda s: s.mcclain_rao(),
    }
    return [{name: compute[name](s) for name in names} for s in statistics]


def _pairwise_index(name: str, X: np.ndarray, labels: np.ndarray, subsample: int | None, seed: int) -> float:
    points, ids, k = _points_and_labels(X, labels)
    _require_partition(k, len(points))
    keep = subsample_indices(len(points), subsample, seed)
    return pairwise_indices(points[keep], [ids[keep]], (name,))[0][name]


def silhouette(X: np.ndarray, labels: np.ndarray, subsample: int | None = None, seed: int = 0) -> float:
    """Mean silhouette width (as sklearn.metrics.silhouette_score); larger is better."""
    return _pairwise_index("silhouette", X, labels, subsample, seed)


def dunn(X: np.ndarray, labels: np.ndarray, subsample: int | None = None, seed: int = 0) -> float:
    """Smallest distance between points of different clusters over the largest cluster diameter; larger is better.

    inf when every cluster has diameter 0. On a subsample it can only be larger than on all points.
    """
    return _pairwise_index("dunn", X, labels, subsample, seed)


def c_index(X: np.ndarray, labels: np.ndarray, subsample: int | None = None, seed: int = 0) -> float:
    """(S_w - S_min) / (S_max - S_min), in [0, 1]; smaller is better.

    S_w is the sum of the N_w within-cluster pairwise distances, S_min / S_max the sums of the N_w smallest /
    largest of all pairwise distances.
    """
    return _pairwise_index("c_index", X, labels, subsample, seed)


def mcclain_rao(X: np.ndarray, labels: np.ndarray, subsample: int | None = None, seed: int = 0) -> float:
    """Mean within-cluster over mean between-cluster pairwise distance; smaller is better."""
    return _pairwise_index("mcclain_rao", X, labels, subsample, seed)


def kmeans_labels(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Labels of KMeans(k, n_init=10, random_state=seed); k = 1 and k = n are the trivial partitions."""
    n = len(X)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X).labels_.astype(np.int64)


def preferred_k(ks: Sequence[int], values: Sequence[float], larger: bool) -> int | None:
    """The k of the largest (or smallest) value, NaN ignored, ties to the smaller k; None if all are NaN."""
    candidates = [(v if larger else -v, -k) for k, v in zip(ks, values) if not math.isnan(v)]
    return -max(candidates)[1] if candidates else None


def majority_vote(votes: dict[str, int | None]) -> int:
    """The k preferred by most indices; ties go to the smaller k."""
    counts = Counter(k for k in votes.values() if k is not None)
    if not counts:
        raise ValueError("no validation index could be computed for any k")
    return min(counts, key=lambda k: (-counts[k], k))


def check_indices(names: Sequence[str]) -> tuple[str, ...]:
    """The known index names among `names`, in ALL_INDICES order; ValueError naming an unknown one."""
    for name in names:
        if name == "hartigan":
            raise ValueError(
                "'hartigan' is ambiguous: use hartigan_h (Hartigan's H(k), voted by its largest drop) or "
                "log_ss_ratio (log(BGSS / WGSS), the column the KPC cluster table calls Hartigan)"
            )
        if name not in ALL_INDICES:
            raise ValueError(f"unknown index {name!r}; expected names among {', '.join(ALL_INDICES)}")
    if not names:
        raise ValueError(f"expected at least one index among {', '.join(ALL_INDICES)}")
    return tuple(name for name in ALL_INDICES if name in names)


def evaluate_k_range(
    X: np.ndarray,
    ks: Sequence[int],
    seed: int = 0,
    subsample: int | None = None,
    indices: Sequence[str] = DEFAULT_INDICES,
    progress: bool = False,
) -> tuple[list[dict], int, dict[str, int | None]]:
    """KMeans for every k, the chosen indices per k, each index's preferred k and the majority choice.

    Rows hold k, every chosen index, hartigan_h_drop (H(k-1) - H(k), what the hartigan_h vote maximises) when
    hartigan_h is chosen, points (n) and, with a pairwise index, pairwise_points (how many points those used:
    n unless subsample < n). hartigan_h needs the clusterings of k - 1 and k + 1 as well, which are computed too.
    """
    points = _as_points(X)
    n = len(points)
    names = check_indices(indices)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 2 or ks[-1] > n - 1:
        raise ValueError(f"every k must be between 2 and n - 1 = {n - 1}, got {ks}")
    needed = sorted({j for k in ks for j in ((k - 1, k, k + 1) if "hartigan_h" in names else (k,))})
    fits = tqdm(needed, desc="k-means", disable=not progress, leave=False)
    labels = {j: kmeans_labels(points, j, seed) for j in fits}
    rows: list[dict] = [{"k": k, "points": n} for k in ks]
    for row in rows:
        if "calinski_harabasz" in names:
            row["calinski_harabasz"] = calinski_harabasz(points, labels[row["k"]])
        if "log_ss_ratio" in names:
            row["log_ss_ratio"] = log_ss_ratio(points, labels[row["k"]])
    if "hartigan_h" in names:
        h_value = {j: hartigan_h(points, labels[j], labels[j + 1]) for j in needed if j + 1 in labels}
        for row in rows:
            row["hartigan_h"] = h_value[row["k"]]
            row["hartigan_h_drop"] = _difference(h_value[row["k"] - 1], h_value[row["k"]])
    pairwise = [name for name in names if name in PAIRWISE_INDICES]
    if pairwise:
        keep = subsample_indices(n, subsample, seed)
        values = pairwise_indices(points[keep], [labels[k][keep] for k in ks], pairwise, progress=progress)
        for row, row_values in zip(rows, values):
            row.update(row_values, pairwise_points=len(keep))
    votes: dict[str, int | None] = {}
    for name in names:
        column = VOTE_COLUMNS.get(name, name)
        votes[name] = preferred_k(ks, [r[column] for r in rows], RULES[name] != "smaller is better")
    return rows, majority_vote(votes), votes


def _difference(a: float, b: float) -> float:
    """a - b, NaN where it is undefined (inf - inf)."""
    with np.errstate(invalid="ignore"):
        return float(np.float64(a) - np.float64(b))


def cluster_with_confidence(X: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """KMeans(k) labels and, per point, the softmax probability of its own cluster.

    The softmax is over the negative squared distances to the centres divided by a temperature, the mean
    squared distance of the points to their nearest centre. A point much closer to its own centre than to any
    other gets confidence near 1; a point equidistant from two centres (and far from the rest) gets about 1/2.
    """
    points = _as_points(X)
    if not 1 <= k <= len(points):
        raise ValueError(f"k must be between 1 and the number of points ({len(points)}), got {k}")
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points)
    squared = kmeans.transform(points) ** 2
    labels = kmeans.labels_.astype(np.int64)
    temperature = float(squared.min(axis=1).mean())
    if temperature == 0.0:
        temperature = 1.0
    probabilities = softmax(-squared / temperature, axis=1)
    return labels, probabilities[np.arange(len(points)), labels]


def parse_k(text: str) -> list[int]:
    """'12' -> [12]; '10:16' -> [10, 11, ..., 16] (both ends included)."""
    try:
        if ":" in text:
            low, high = (int(part) for part in text.split(":"))
            if low > high:
                raise ValueError
            return list(range(low, high + 1))
        return [int(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or LOW:HIGH with LOW <= HIGH, got {text!r}") from None


def parse_indices(text: str) -> tuple[str, ...]:
    """'dunn, silhouette' -> ('silhouette', 'dunn'); ConfigError naming --indices for an unknown name."""
    try:
        return check_indices([part.strip() for part in text.split(",") if part.strip()])
    except ValueError as err:
        raise ConfigError(f"--indices {text!r}: {err}") from None


def read_features(path: Path) -> tuple[str, list[str], list[str], list[list[str]], np.ndarray]:
    """Identifier column name, identifiers, feature names, the raw feature strings and the float matrix."""
    if not path.is_file():
        raise DataError(f"--features {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            id_column, ids, feature_names, raw, values = _read_feature_rows(csv.reader(handle), path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"--features {path} cannot be read as a CSV text file ({err})") from None
    if len(ids) < 3:
        raise DataError(f"--features {path}: expected at least 3 rows of features, got {len(ids)}")
    return id_column, ids, feature_names, raw, np.array(values, dtype=np.float64)


def _read_feature_rows(reader: Iterator[list[str]], path: Path) -> tuple[str, list[str], list[str], list[list[str]], list]:
    """The rows of a features CSV, each identifier once (DataError naming the line otherwise)."""
    header = [c.strip() for c in next(reader, [])]
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        raise DataError(f"--features {path}: expected a 'tile' or 'name' column, found columns {header}")
    feature_names = [c for c in header if c not in ID_COLUMNS]
    if not feature_names:
        raise DataError(f"--features {path}: no feature columns besides {id_column!r}")
    where = [header.index(c) for c in feature_names]
    ids, raw, values, lines = [], [], [], {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"--features {path}, line {line}: expected {len(header)} fields, got {len(row)}")
        identifier = row[header.index(id_column)].strip()
        if identifier in lines:
            raise DataError(f"--features {path}, line {line}: {id_column} {identifier!r} is also on line "
                            f"{lines[identifier]}; expected each {id_column} once")
        lines[identifier] = line
        ids.append(identifier)
        raw.append([row[i].strip() for i in where])
        values.append([_number(row[i], path, line, header[i]) for i in where])
    return id_column, ids, feature_names, raw, values


def check_distinct_points(values: np.ndarray, ks: Sequence[int], path: Path) -> None:
    """DataError when the features cannot be split into the largest asked-for k clusters: every row the same, or
    fewer distinct rows than that k."""
    distinct = len(np.unique(values, axis=0))
    if distinct == 1:
        raise DataError(f"--features {path}: every row has the same features; there is nothing to cluster")
    if distinct < max(ks):
        raise DataError(f"--features {path}: only {distinct} distinct feature rows, fewer than k = {max(ks)} "
                        f"clusters; choose a smaller --k (and --k_final)")


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"--features {path}, line {line}: column {column!r} is not numeric ({text!r})") from None
    if not math.isfinite(value):
        raise DataError(f"--features {path}, line {line}: column {column!r} is not a finite number ({text!r})")
    return value


def index_columns(names: Sequence[str], rows: Sequence[dict]) -> tuple[str, ...]:
    """The columns of indices.csv: k, the indices, hartigan_h_drop, points and pairwise_points where present."""
    extra = [c for c in ("hartigan_h_drop", "points", "pairwise_points") if c in rows[0]]
    return ("k", *names, *extra)


def subsample_note(rows: Sequence[dict], subsample: int | None, seed: int) -> str | None:
    """A sentence saying that the pairwise indices used a random subsample, or None when they used every point."""
    if subsample is None or "pairwise_points" not in rows[0]:
        return None
    used, n = rows[0]["pairwise_points"], rows[0]["points"]
    names = ", ".join(name for name in PAIRWISE_INDICES if name in rows[0])
    if used == n:
        return f"--subsample {subsample} is not below the {n} points: {names} used every point"
    return (
        f"{names} computed on a random subsample of {used} of the {n} points (--subsample {subsample}, seed {seed}); "
        "subsampling biases Dunn upwards"
    )


def plot_indices(rows: Sequence[dict], votes: dict[str, int | None], path: Path, note: str | None = None) -> None:
    """One small panel per index against k, the preferred k marked in red, the note on top; written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ks = [r["k"] for r in rows]
    columns = min(3, len(votes))
    lines = math.ceil(len(votes) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.75 * lines + (0.4 if note else 0.0)), layout="constrained")
    if note:
        figure.suptitle(note, fontsize=8, wrap=True)
    for position, (name, choice) in enumerate(votes.items()):
        axes = figure.add_subplot(lines, columns, position + 1)
        values = [r[name] for r in rows]
        axes.plot(ks, values, "o-", color="0.3")
        if choice is not None:
            axes.axvline(choice, color="tab:red", linestyle="--", linewidth=1)
            axes.plot([choice], [values[ks.index(choice)]], "o", color="tab:red")
        axes.set_title(f"{name}\n({RULES[name]}; k = {choice})", fontsize=9)
        axes.set_xlabel("k", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
    save_figure_atomic(figure, path, format="png", dpi=100)


def format_table(rows: Sequence[dict], names: Sequence[str]) -> str:
    columns = ("k", *names, *(["hartigan_h_drop"] if "hartigan_h" in names else []))
    lines = ["  ".join(f"{c:>17}" for c in columns)]
    for row in rows:
        lines.append("  ".join(f"{row[c]:>17d}" if c == "k" else f"{row[c]:>17.6g}" for c in columns))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        description="Pick the number of k-means clusters of tile features by a majority of validation indices."
    )
    p.add_argument("--features", required=True, help="CSV with a tile (or name) column and numeric feature columns")
    p.add_argument(
        "--k", type=parse_k, required=True, help="cluster counts: LOW:HIGH (both included), or one K to skip the selection"
    )
    p.add_argument("--out", required=True, help="folder for indices.csv, indices.png and clusters.csv")
    p.add_argument(
        "--indices",
        default=",".join(DEFAULT_INDICES),
        help=f"comma-separated indices to compute and vote with, among {', '.join(ALL_INDICES)} "
        f"(default {','.join(DEFAULT_INDICES)})",
    )
    p.add_argument(
        "--subsample",
        type=number(int, 2),
        default=None,
        help="compute silhouette, dunn, c_index and mcclain_rao on a seeded random subsample of N points "
        "(default: every point; a subsample biases Dunn upwards)",
    )
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of KMeans and of the --subsample draw (default 0)")
    p.add_argument("--k_final", type=number(int, 2), default=None, help="cluster count for clusters.csv (default: the chosen k)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    return p


def run(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_writable_output(out, "--out", folder=True)
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"--out {out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    names = parse_indices(args.indices)
    if args.subsample is not None and not set(names) & set(PAIRWISE_INDICES):
        raise ConfigError(
            f"--subsample applies to {', '.join(PAIRWISE_INDICES)}, and --indices {args.indices!r} holds none of them"
        )
    features = Path(args.features)
    id_column, ids, feature_names, raw, values = read_features(features)
    n = len(ids)
    for flag, k in [("--k", k) for k in args.k] + ([("--k_final", args.k_final)] if args.k_final is not None else []):
        if not 2 <= k <= n - 1:
            raise ConfigError(f"{flag} {k}: expected 2 <= k <= {n - 1} (one less than the {n} rows of {features})")
    check_distinct_points(values, [*args.k, *([args.k_final] if args.k_final is not None else [])], features)
    scaled = StandardScaler().fit_transform(values)
    rows, chosen, votes = evaluate_k_range(scaled, args.k, args.seed, args.subsample, names, progress=True)
    final_k = args.k_final if args.k_final is not None else chosen
    labels, confidence = cluster_with_confidence(scaled, final_k, args.seed)
    note = subsample_note(rows, args.subsample, args.seed)
    if not out.exists():
        out.mkdir(parents=True)
        mark_as_ours(out, "tools/cluster_validation.py")
    columns = index_columns(names, rows)
    write_csv_atomic(out / "indices.csv", columns, [[r[c] for c in columns] for r in rows])
    plot_indices(rows, votes, out / "indices.png", note)
    write_csv_atomic(
        out / "clusters.csv",
        (id_column, *feature_names, "cluster", "confidence"),
        [[ids[i], *raw[i], int(labels[i]), f"{confidence[i]:.6f}"] for i in range(n)],
    )
    print(format_table(rows, names))
    if note:
        print(note)
    if len(args.k) > 1:
        print("votes: " + ", ".join(f"{name} -> {k}" for name, k in votes.items()))
        count = sum(1 for k in votes.values() if k == chosen)
        print(f"chosen k = {chosen} ({count} of {len(votes)} votes)")
    print(f"clusters with k = {final_k}: {out / 'clusters.csv'}; indices: {out / 'indices.csv'}, {out / 'indices.png'}")
    return {"rows": rows, "chosen_k": chosen, "votes": votes, "final_k": final_k, "note": note}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Choose the number of k-means clusters of tile features by a majority vote of internal validation indices.

Each index is a function of the points X (n x d) and their cluster labels (n,). The pairwise-distance indices
(silhouette, Dunn, C-index, McClain-Rao) are computed on a seeded random subsample of at most `max_points`
points when n is larger, which keeps their cost at O(max_points^2).

`python -m tools.cluster_validation --features features.csv --k 10:16 --out DIR [--seed 0] [--k_final K] [--overwrite]`
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial.distance import pdist
from scipy.special import softmax
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from common.cli import run_main
from common.errors import ConfigError, DataError
from common.files import save_figure_atomic, write_csv_atomic

MAX_POINTS = 2000
INDEX_NAMES = ("calinski_harabasz", "silhouette", "dunn", "c_index", "mcclain_rao", "hartigan")
PAIRWISE_INDICES = ("silhouette", "dunn", "c_index", "mcclain_rao")
RULES = {
    "calinski_harabasz": "larger is better",
    "silhouette": "larger is better",
    "dunn": "larger is better",
    "c_index": "smaller is better",
    "mcclain_rao": "smaller is better",
    "hartigan": "largest drop H(k-1) - H(k)",
}
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


def within_sum_of_squares(X: np.ndarray, labels: np.ndarray) -> float:
    """W: the sum over clusters of the squared distances of the points to their cluster mean."""
    points, ids, k = _points_and_labels(X, labels)
    counts = np.bincount(ids, minlength=k)
    means = np.stack([np.bincount(ids, weights=points[:, j], minlength=k) for j in range(points.shape[1])], 1)
    means /= counts[:, None]
    return float(((points - means[ids]) ** 2).sum())


def calinski_harabasz(X: np.ndarray, labels: np.ndarray) -> float:
    """Between- over within-cluster dispersion, scaled by (n - k) / (k - 1); larger is better.

    Equals sklearn.metrics.calinski_harabasz_score, including its value 1.0 when W is 0.
    """
    points, ids, k = _points_and_labels(X, labels)
    n = len(points)
    _require_partition(k, n)
    within = within_sum_of_squares(points, ids)
    counts = np.bincount(ids, minlength=k)
    means = np.stack([points[ids == c].mean(axis=0) for c in range(k)])
    between = float((counts * ((means - points.mean(axis=0)) ** 2).sum(axis=1)).sum())
    if within == 0.0:
        return 1.0
    return between * (n - k) / (within * (k - 1))


def subsample_indices(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """All n indices when n <= max_points, else max_points of them drawn without replacement (sorted)."""
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _pairs(X: np.ndarray, labels: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Condensed pairwise distances of the (subsampled) points and whether each pair shares a cluster."""
    points, ids, k = _points_and_labels(X, labels)
    _require_partition(k, len(points))
    keep = subsample_indices(len(points), max_points, seed)
    return pdist(points[keep]), _same_cluster(ids[keep])


def _same_cluster(ids: np.ndarray) -> np.ndarray:
    """For every pair i < j in pdist order: whether points i and j share a cluster."""
    first, second = np.triu_indices(len(ids), 1)
    return ids[first] == ids[second]


def _dunn(distances: np.ndarray, same: np.ndarray) -> float:
    between, within = distances[~same], distances[same]
    if between.size == 0:
        return math.nan
    diameter = float(within.max()) if within.size else 0.0
    return math.inf if diameter == 0.0 else float(between.min()) / diameter


def _c_index(distances: np.ndarray, same: np.ndarray) -> float:
    count = int(same.sum())
    if count == 0:
        return math.nan
    ordered = np.sort(distances)
    s_min, s_max = float(ordered[:count].sum()), float(ordered[-count:].sum())
    if s_max == s_min:
        return math.nan
    return (float(distances[same].sum()) - s_min) / (s_max - s_min)


def _mcclain_rao(distances: np.ndarray, same: np.ndarray) -> float:
    between, within = distances[~same], distances[same]
    if between.size == 0 or within.size == 0 or between.mean() == 0.0:
        return math.nan
    return float(within.mean() / between.mean())


def silhouette(X: np.ndarray, labels: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> float:
    """Mean silhouette width (sklearn), on a subsample of at most max_points points; larger is better."""
    points, ids, k = _points_and_labels(X, labels)
    _require_partition(k, len(points))
    keep = subsample_indices(len(points), max_points, seed)
    if not 2 <= len(np.unique(ids[keep])) <= len(keep) - 1:
        return math.nan
    return float(silhouette_score(points[keep], ids[keep]))


def dunn(X: np.ndarray, labels: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> float:
    """Smallest distance between points of different clusters over the largest cluster diameter; larger is better.

    Computed on a subsample of at most max_points points; inf when every cluster has diameter 0.
    """
    return _dunn(*_pairs(X, labels, max_points, seed))


def c_index(X: np.ndarray, labels: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> float:
    """(S_w - S_min) / (S_max - S_min), in [0, 1]; smaller is better.

    S_w is the sum of the N_w within-cluster pairwise distances, S_min / S_max the sums of the N_w smallest /
    largest of all pairwise distances. Computed on a subsample of at most max_points points.
    """
    return _c_index(*_pairs(X, labels, max_points, seed))


def mcclain_rao(X: np.ndarray, labels: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> float:
    """Mean within-cluster over mean between-cluster pairwise distance; smaller is better.

    Computed on a subsample of at most max_points points.
    """
    return _mcclain_rao(*_pairs(X, labels, max_points, seed))


def hartigan(X: np.ndarray, labels_k: np.ndarray, labels_k_plus_1: np.ndarray) -> float:
    """H(k) = (W(k) / W(k+1) - 1) * (n - k - 1), with W the within-cluster sum of squares of each clustering.

    k is the number of clusters in labels_k. H(k) is large while the (k+1)-th cluster still splits a real
    group, and falls once the groups are found; the preferred k is the knee, the k with the largest drop
    H(k-1) - H(k) (see preferred_k). inf when W(k+1) is 0 and W(k) is not.
    """
    points, ids, k = _points_and_labels(X, labels_k)
    _, ids_next, _ = _points_and_labels(points, labels_k_plus_1)
    w_k, w_next = within_sum_of_squares(points, ids), within_sum_of_squares(points, ids_next)
    if w_next == 0.0:
        return math.nan if w_k == 0.0 else math.inf
    return (w_k / w_next - 1.0) * (len(points) - k - 1)


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


def evaluate_k_range(
    X: np.ndarray, ks: Sequence[int], seed: int = 0, max_points: int = MAX_POINTS
) -> tuple[list[dict], int, dict[str, int | None]]:
    """KMeans for every k, all indices per k, each index's preferred k and the majority choice.

    Rows hold k, every index, hartigan_drop (H(k-1) - H(k), what the Hartigan vote maximises) and
    pairwise_points (how many points the pairwise-distance indices used). Hartigan needs the clusterings
    of k - 1 and k + 1 as well, which are computed too.
    """
    points = _as_points(X)
    n = len(points)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 2 or ks[-1] > n - 1:
        raise ValueError(f"every k must be between 2 and n - 1 = {n - 1}, got {ks}")
    needed = sorted({j for k in ks for j in (k - 1, k, k + 1)})
    labels = {j: kmeans_labels(points, j, seed) for j in needed}
    keep = subsample_indices(n, max_points, seed)
    distances = pdist(points[keep])
    h_value = {j: hartigan(points, labels[j], labels[j + 1]) for j in needed if j + 1 in labels}
    rows = []
    for k in ks:
        same = _same_cluster(labels[k][keep])
        rows.append(
            {
                "k": k,
                "calinski_harabasz": calinski_harabasz(points, labels[k]),
                "silhouette": silhouette(points, labels[k], max_points, seed),
                "dunn": _dunn(distances, same),
                "c_index": _c_index(distances, same),
                "mcclain_rao": _mcclain_rao(distances, same),
                "hartigan": h_value[k],
                "hartigan_drop": _difference(h_value[k - 1], h_value[k]),
                "pairwise_points": len(keep),
            }
        )
    votes: dict[str, int | None] = {}
    for name in INDEX_NAMES:
        column = "hartigan_drop" if name == "hartigan" else name
        larger = RULES[name] != "smaller is better"
        votes[name] = preferred_k(ks, [r[column] for r in rows], larger)
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


def read_features(path: Path) -> tuple[str, list[str], list[str], list[list[str]], np.ndarray]:
    """Identifier column name, identifiers, feature names, the raw feature strings and the float matrix."""
    if not path.is_file():
        raise DataError(f"--features {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        if id_column is None:
            raise DataError(f"--features {path}: expected a 'tile' or 'name' column, found columns {header}")
        feature_names = [c for c in header if c not in ID_COLUMNS]
        if not feature_names:
            raise DataError(f"--features {path}: no feature columns besides {id_column!r}")
        where = [header.index(c) for c in feature_names]
        ids, raw, values = [], [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"--features {path}, line {line}: expected {len(header)} fields, got {len(row)}")
            ids.append(row[header.index(id_column)].strip())
            raw.append([row[i].strip() for i in where])
            values.append([_number(row[i], path, line, header[i]) for i in where])
    if len(ids) < 3:
        raise DataError(f"--features {path}: expected at least 3 rows of features, got {len(ids)}")
    return id_column, ids, feature_names, raw, np.array(values, dtype=np.float64)


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"--features {path}, line {line}: column {column!r} is not numeric ({text!r})") from None
    if not math.isfinite(value):
        raise DataError(f"--features {path}, line {line}: column {column!r} is not a finite number ({text!r})")
    return value


def plot_indices(rows: Sequence[dict], votes: dict[str, int | None], path: Path) -> None:
    """One small panel per index against k, the preferred k marked in red; written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ks = [r["k"] for r in rows]
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    for position, name in enumerate(INDEX_NAMES):
        axes = figure.add_subplot(2, 3, position + 1)
        values = [r[name] for r in rows]
        axes.plot(ks, values, "o-", color="0.3")
        choice = votes.get(name)
        if choice is not None:
            axes.axvline(choice, color="tab:red", linestyle="--", linewidth=1)
            axes.plot([choice], [values[ks.index(choice)]], "o", color="tab:red")
        axes.set_title(f"{name}\n({RULES[name]}; k = {choice})", fontsize=9)
        axes.set_xlabel("k", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
    save_figure_atomic(figure, path, format="png", dpi=100)


def format_table(rows: Sequence[dict]) -> str:
    columns = ("k", *INDEX_NAMES, "hartigan_drop")
    lines = ["  ".join(f"{c:>17}" for c in columns)]
    for row in rows:
        lines.append("  ".join(f"{row[c]:>17d}" if c == "k" else f"{row[c]:>17.6g}" for c in columns))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Pick the number of k-means clusters of tile features by a majority of validation indices."
    )
    p.add_argument("--features", required=True, help="CSV with a tile (or name) column and numeric feature columns")
    p.add_argument(
        "--k", type=parse_k, required=True, help="cluster counts: LOW:HIGH (both included), or one K to skip the selection"
    )
    p.add_argument("--out", required=True, help="folder for indices.csv, indices.png and clusters.csv")
    p.add_argument("--seed", type=int, default=0, help="KMeans and subsampling seed (default 0)")
    p.add_argument("--k_final", type=int, default=None, help="cluster count for clusters.csv (default: the chosen k)")
    p.add_argument(
        "--max_points", type=int, default=MAX_POINTS, help=f"subsample for the pairwise indices (default {MAX_POINTS})"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    return p


def run(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise ConfigError(f"--out {out} already holds {', '.join(existing)}; pass --overwrite to replace them")
    if args.max_points < 2:
        raise ConfigError(f"--max_points must be at least 2, got {args.max_points}")
    features = Path(args.features)
    id_column, ids, feature_names, raw, values = read_features(features)
    n = len(ids)
    for flag, k in [("--k", k) for k in args.k] + ([("--k_final", args.k_final)] if args.k_final is not None else []):
        if not 2 <= k <= n - 1:
            raise ConfigError(f"{flag} {k}: expected 2 <= k <= {n - 1} (one less than the {n} rows of {features})")
    scaled = StandardScaler().fit_transform(values)
    rows, chosen, votes = evaluate_k_range(scaled, args.k, args.seed, args.max_points)
    single = len(args.k) == 1
    final_k = args.k_final if args.k_final is not None else chosen
    labels, confidence = cluster_with_confidence(scaled, final_k, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    index_columns = ("k", *INDEX_NAMES, "hartigan_drop", "pairwise_points")
    write_csv_atomic(out / "indices.csv", index_columns, [[r[c] for c in index_columns] for r in rows])
    plot_indices(rows, votes, out / "indices.png")
    write_csv_atomic(
        out / "clusters.csv",
        (id_column, *feature_names, "cluster", "confidence"),
        [[ids[i], *raw[i], int(labels[i]), f"{confidence[i]:.6f}"] for i in range(n)],
    )
    print(format_table(rows))
    if rows[0]["pairwise_points"] < n:
        print(
            f"{', '.join(PAIRWISE_INDICES)} computed on a random subsample of {rows[0]['pairwise_points']} of {n} "
            f"points (seed {args.seed})"
        )
    if not single:
        print("votes: " + ", ".join(f"{name} -> {k}" for name, k in votes.items()))
        count = sum(1 for k in votes.values() if k == chosen)
        print(f"chosen k = {chosen} ({count} of {len(votes)} votes)")
    print(f"clusters with k = {final_k}: {out / 'clusters.csv'}; indices: {out / 'indices.csv'}, {out / 'indices.png'}")
    return {"rows": rows, "chosen_k": chosen, "votes": votes, "final_k": final_k}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Cluster validation indices against hand-computed and brute-force values, blockwise distances, the CLI."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import calinski_harabasz_score, silhouette_score

from common.files import MARKER

import tools.cluster_validation as cv

# Two clusters of three points, both 3-4-5 right triangles; some between-cluster distances (3, 5) are as
# short as within-cluster ones, so no index sits at its ideal value.
A1, A2, A3 = (0.0, 0.0), (3.0, 0.0), (0.0, 4.0)
B1, B2, B3 = (6.0, 0.0), (6.0, 4.0), (9.0, 4.0)
POINTS = np.array([A1, A2, A3, B1, B2, B3])
LABELS = np.array([0, 0, 0, 1, 1, 1])
WITHIN = [3.0, 4.0, 5.0, 4.0, 5.0, 3.0]  # a1a2 a1a3 a2a3, b1b2 b1b3 b2b3
R52, R97 = math.sqrt(52.0), math.sqrt(97.0)
BETWEEN = [6.0, R52, R97, 3.0, 5.0, R52, R52, 6.0, 9.0]  # a1b1 a1b2 a1b3, a2b1 a2b2 a2b3, a3b1 a3b2 a3b3


def brute_force(X: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dunn, C-index and McClain-Rao from the full condensed distance vector (pdist) and a full sort."""
    distances = pdist(X)
    first, second = np.triu_indices(len(X), 1)
    same = labels[first] == labels[second]
    within, between = distances[same], distances[~same]
    ordered = np.sort(distances)
    s_min, s_max = ordered[: within.size].sum(), ordered[ordered.size - within.size :].sum()
    return {
        "dunn": between.min() / within.max(),
        "c_index": (within.sum() - s_min) / (s_max - s_min),
        "mcclain_rao": within.mean() / between.mean(),
        "silhouette": silhouette_score(X, labels),
    }


def random_labelled(n: int, k: int, seed: int, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, size=n)


def test_calinski_harabasz_by_hand():
    # cluster means (1, 4/3) and (7, 8/3), overall mean (4, 2)
    between = 3 * ((1 - 4) ** 2 + (4 / 3 - 2) ** 2) + 3 * ((7 - 4) ** 2 + (8 / 3 - 2) ** 2)
    within_a = (1 + 16 / 9) + (4 + 16 / 9) + (1 + 64 / 9)
    within_b = (1 + 64 / 9) + (1 + 16 / 9) + (4 + 16 / 9)
    expected = between / (within_a + within_b) * (6 - 2) / (2 - 1)
    assert expected == pytest.approx(6.8)
    assert cv.calinski_harabasz(POINTS, LABELS) == pytest.approx(expected)
    assert cv.within_sum_of_squares(POINTS, LABELS) == pytest.approx(100 / 3)


def test_calinski_harabasz_equals_scikit_learn_on_random_data():
    rng = np.random.default_rng(0)
    for k in (2, 3, 7):
        X = rng.normal(size=(60, 4)) * rng.uniform(0.5, 3.0, size=4)
        labels = rng.integers(0, k, size=60) + 10  # label values need not start at 0
        assert cv.calinski_harabasz(X, labels) == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-10)


def test_log_ss_ratio_is_the_log_of_between_over_within_sum_of_squares():
    # by hand: total sum of squares 90, WGSS 100/3, so BGSS = 90 - 100/3 = 170/3
    assert cv.log_ss_ratio(POINTS, LABELS) == pytest.approx(math.log((170 / 3) / (100 / 3)))
    for k in (2, 5):
        X, labels = random_labelled(80, k, seed=k)
        total = ((X - X.mean(axis=0)) ** 2).sum()
        within = sum(((X[labels == c] - X[labels == c].mean(axis=0)) ** 2).sum() for c in range(k))
        assert cv.log_ss_ratio(X, labels) == pytest.approx(math.log((total - within) / within), rel=1e-10)
        # Calinski-Harabasz is the same ratio scaled by (n - k) / (k - 1)
        scaled = math.exp(cv.log_ss_ratio(X, labels)) * (80 - k) / (k - 1)
        assert scaled == pytest.approx(calinski_harabasz_score(X, labels), rel=1e-10)


def test_dunn_c_index_mcclain_rao_by_hand():
    assert cv.dunn(POINTS, LABELS) == pytest.approx(3.0 / 5.0)
    within_mean = sum(WITHIN) / 6
    between_mean = sum(BETWEEN) / 9
    assert within_mean == 4.0
    assert cv.mcclain_rao(POINTS, LABELS) == pytest.approx(within_mean / between_mean)
    # all 15 distances ascending: 3 3 3 4 4 5 5 5 6 6 R52 R52 R52 9 R97; N_w = 6
    s_w = sum(WITHIN)
    s_min = 3 + 3 + 3 + 4 + 4 + 5
    s_max = R97 + 9 + 3 * R52 + 6
    expected = (s_w - s_min) / (s_max - s_min)
    assert 0.05 < expected < 0.1
    assert cv.c_index(POINTS, LABELS) == pytest.approx(expected)


def test_silhouette_by_hand():
    own = [(3 + 4) / 2, (3 + 5) / 2, (4 + 5) / 2, (4 + 5) / 2, (4 + 3) / 2, (5 + 3) / 2]
    other = [
        (6 + R52 + R97) / 3,
        (3 + 5 + R52) / 3,
        (R52 + 6 + 9) / 3,
        (6 + 3 + R52) / 3,
        (R52 + 5 + 6) / 3,
        (R97 + R52 + 9) / 3,
    ]
    expected = sum((b - a) / max(a, b) for a, b in zip(own, other)) / 6
    assert cv.silhouette(POINTS, LABELS) == pytest.approx(expected)


@pytest.mark.parametrize("n, k, seed", [(40, 2, 0), (75, 4, 1), (120, 9, 2)])
def test_pairwise_indices_equal_brute_force_and_scikit_learn(n, k, seed):
    X, labels = random_labelled(n, k, seed)
    labels[:k] = np.arange(k)  # every cluster present; singletons may occur for large k
    expected = brute_force(X, labels)
    got = cv.pairwise_indices(X, [labels])[0]
    assert got["dunn"] == expected["dunn"]  # min / max of the same cdist values: exact
    for name in ("c_index", "mcclain_rao", "silhouette"):
        assert got[name] == pytest.approx(expected[name], rel=1e-12)


def test_silhouette_with_a_singleton_cluster_equals_scikit_learn():
    X, labels = random_labelled(30, 3, seed=4)
    labels[:] = np.where(labels == 2, 1, labels)
    labels[7] = 2  # a cluster of one point: its silhouette width is 0
    assert cv.silhouette(X, labels) == pytest.approx(silhouette_score(X, labels), rel=1e-12)


def test_blockwise_equals_one_block_and_narrowing_passes_select_exactly():
    # integer coordinates: many tied distances, so the selection has to count ties across bins and blocks
    rng = np.random.default_rng(5)
    X = rng.integers(0, 4, size=(90, 2)).astype(float)
    labelings = [rng.integers(0, k, size=90) for k in (2, 3, 6)]
    one_block = cv.pairwise_indices(X, labelings, block_distances=10**9, candidate_limit=10**9)
    for block, limit, bins in [(1, 5, 2), (100, 40, 3), (500, 1, 16)]:
        blocked = cv.pairwise_indices(X, labelings, block_distances=block, candidate_limit=limit, bins=bins)
        for got, expected in zip(blocked, one_block):
            assert got["dunn"] == expected["dunn"]
            for name in ("c_index", "mcclain_rao", "silhouette"):
                assert got[name] == pytest.approx(expected[name], rel=1e-12)
    for got, labels in zip(one_block, labelings):
        assert got["c_index"] == pytest.approx(brute_force(X, labels)["c_index"], rel=1e-12)


def test_smallest_sums_select_exactly_with_narrowing_histograms():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(70, 3))
    distances = np.sort(pdist(X))
    pairs = len(distances)
    ranks = {0, 1, 17, pairs // 2, pairs - 1, pairs}
    selection = cv._SmallestSums(ranks, pairs, cv._distance_bound(X), candidate_limit=8, bins=4)
    passes = 0
    while not selection.done:
        for block in cv._distance_blocks(X, 200, "", progress=False):
            selection.add(block)
        selection.finish_pass()
        passes += 1
    assert passes > 3  # the histograms had to narrow several times before collecting
    for rank in ranks:
        assert selection.sums[rank] == pytest.approx(distances[:rank].sum(), rel=1e-12, abs=0.0)


def test_distances_are_computed_in_blocks_never_as_a_full_matrix(monkeypatch):
    shapes = []
    real_cdist = cv.cdist

    def recording_cdist(a, b):
        shapes.append((len(a), len(b)))
        return real_cdist(a, b)

    monkeypatch.setattr(cv, "cdist", recording_cdist)
    X, labels = random_labelled(60, 3, seed=7)
    blocked = cv.pairwise_indices(X, [labels], block_distances=130, candidate_limit=50, bins=8)[0]
    assert shapes and max(rows * columns for rows, columns in shapes) <= 130
    assert blocked["c_index"] == pytest.approx(brute_force(X, labels)["c_index"], rel=1e-12)


def test_hartigan_h_by_hand():
    w2 = 100 / 3
    w1 = 90.0  # total sum of squares: between (170/3) + within (100/3)
    assert cv.hartigan_h(POINTS, np.zeros(6, int), LABELS) == pytest.approx((w1 / w2 - 1) * (6 - 1 - 1))
    assert cv.hartigan_h(POINTS, np.zeros(6, int), LABELS) == pytest.approx(6.8)  # (90 / (100/3) - 1) * 4
    split_b = np.array([0, 0, 0, 1, 2, 2])  # b1 alone, b2 b3 together: W = 50/3 + 2 * 1.5**2
    w3 = 50 / 3 + 4.5
    assert cv.hartigan_h(POINTS, LABELS, split_b) == pytest.approx((w2 / w3 - 1) * (6 - 2 - 1))


def test_index_arguments_are_checked():
    with pytest.raises(ValueError, match="labels"):
        cv.dunn(POINTS, LABELS[:5])
    with pytest.raises(ValueError, match="between 2 and n - 1"):
        cv.calinski_harabasz(POINTS, np.zeros(6, int))
    with pytest.raises(ValueError, match="finite"):
        cv.c_index(np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="ambiguous"):
        cv.check_indices(["calinski_harabasz", "hartigan"])
    with pytest.raises(ValueError, match="unknown index 'gap'"):
        cv.check_indices(["gap"])


def test_subsample_is_seeded_and_biases_dunn_upwards():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2))
    labels = (X[:, 0] > 0).astype(int)
    keep = cv.subsample_indices(50, 20, seed=3)
    assert len(keep) == 20 and len(set(keep.tolist())) == 20
    np.testing.assert_array_equal(cv.subsample_indices(50), np.arange(50))
    for index in (cv.dunn, cv.c_index, cv.mcclain_rao, cv.silhouette):
        assert index(X, labels, subsample=20, seed=3) == pytest.approx(index(X[keep], labels[keep]))
    assert cv.mcclain_rao(X, labels, subsample=20, seed=3) != pytest.approx(cv.mcclain_rao(X, labels))
    for seed in range(5):
        assert cv.dunn(X, labels, subsample=20, seed=seed) >= cv.dunn(X, labels)
    rows, _, _ = cv.evaluate_k_range(X, [2, 3], subsample=20)
    assert [(r["points"], r["pairwise_points"]) for r in rows] == [(50, 20), (50, 20)]


def test_every_point_is_used_by_default_beyond_the_old_limit_of_2000():
    rng = np.random.default_rng(8)
    X = np.concatenate([rng.normal(size=(1050, 2)), 6.0 + rng.normal(size=(1050, 2))])
    rows, _, _ = cv.evaluate_k_range(X, [2], indices=["dunn", "mcclain_rao"])
    assert rows[0]["pairwise_points"] == 2100
    labels = cv.kmeans_labels(X, 2)
    expected = brute_force_dunn(X, labels)
    assert rows[0]["dunn"] == expected


def brute_force_dunn(X: np.ndarray, labels: np.ndarray) -> float:
    square = squareform(pdist(X))
    same = labels[:, None] == labels[None, :]
    return square[~same].min() / square[same].max()


def three_blobs(per_blob: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 8.66]])
    return np.concatenate([c + rng.normal(scale=0.6, size=(per_blob, 2)) for c in centres])


def test_three_separated_blobs_choose_three():
    rows, best, votes = cv.evaluate_k_range(three_blobs(), range(2, 6), seed=0)
    assert best == 3
    assert [r["k"] for r in rows] == [2, 3, 4, 5]
    assert list(votes) == list(cv.DEFAULT_INDICES)
    assert votes["calinski_harabasz"] == votes["silhouette"] == votes["hartigan_h"] == 3
    assert sum(k == 3 for k in votes.values()) >= 4
    by_k = {r["k"]: r for r in rows}
    assert by_k[3]["hartigan_h_drop"] == pytest.approx(by_k[2]["hartigan_h"] - by_k[3]["hartigan_h"])
    assert "log_ss_ratio" not in by_k[3] and "hartigan" not in by_k[3]
    with pytest.raises(ValueError, match="between 2 and n - 1"):
        cv.evaluate_k_range(three_blobs(), [1, 2])


def test_log_ss_ratio_grows_with_k_and_votes_for_the_largest():
    rows, _, votes = cv.evaluate_k_range(three_blobs(), range(2, 6), indices=["log_ss_ratio", "calinski_harabasz"])
    values = [r["log_ss_ratio"] for r in rows]
    assert values == sorted(values) and votes == {"calinski_harabasz": 3, "log_ss_ratio": 5}
    assert "silhouette" not in rows[0] and "pairwise_points" not in rows[0]


def test_votes_prefer_the_smaller_k_on_ties():
    assert cv.majority_vote({"a": 4, "b": 3, "c": 4, "d": 3, "e": None}) == 3
    assert cv.majority_vote({"a": 5, "b": 4, "c": 5}) == 5
    assert cv.preferred_k([2, 3, 4], [1.0, 2.0, 2.0], larger=True) == 3
    assert cv.preferred_k([2, 3, 4], [0.5, float("nan"), 0.5], larger=False) == 2
    assert cv.preferred_k([2, 3], [float("nan")] * 2, larger=True) is None


def test_confidence_is_the_softmax_of_negative_squared_distances():
    # centres (-1, 1) and (3, 1); squared distances to the own centre 2, 2, 4, so the temperature is 8/3
    X = np.array([[0.0, 0.0], [0.0, 2.0], [-3.0, 1.0], [2.0, 0.0], [2.0, 2.0], [5.0, 1.0]])
    labels, confidence = cv.cluster_with_confidence(X, 2, seed=0)
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] == labels[5]
    temperature = 8 / 3
    inner = 1 / (1 + math.exp(-(10 - 2) / temperature))  # (0, 0): 2 to its centre, 10 to the other
    outer = 1 / (1 + math.exp(-(36 - 4) / temperature))  # (-3, 1): 4 to its centre, 36 to the other
    np.testing.assert_allclose(confidence, [inner, inner, outer, inner, inner, outer], rtol=1e-9)


def test_confidence_is_high_near_centres_and_low_between():
    rng = np.random.default_rng(2)
    left, right = rng.normal(scale=0.5, size=(40, 2)), [10.0, 0.0] + rng.normal(scale=0.5, size=(40, 2))
    X = np.concatenate([left, right, [[5.0, 0.0]]])
    labels, confidence = cv.cluster_with_confidence(X, 2, seed=0)
    assert len(set(labels[:40].tolist())) == 1 and labels[0] != labels[40]
    assert np.all((confidence > 0) & (confidence <= 1))
    assert int(np.argmin(confidence)) == 80 and confidence[80] < 0.99 < confidence[:80].min()
    again_labels, again = cv.cluster_with_confidence(X, 2, seed=0)
    np.testing.assert_array_equal(again_labels, labels)
    np.testing.assert_allclose(again, confidence)


def write_features(path: Path, X: np.ndarray) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tile", "f_a", "f_b"])
        for i, (a, b) in enumerate(X):
            writer.writerow([i, f"{a:.6f}", f"{b * 100:.6f}"])  # features on different scales
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_the_three_files_and_refuses_to_overwrite(tmp_path, capsys):
    features = write_features(tmp_path / "features.csv", three_blobs(20))
    out = tmp_path / "validation"
    assert cv.main(["--features", str(features), "--k", "2:5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chosen k = 3" in printed and "votes:" in printed and "subsample" not in printed
    indices = read_rows(out / "indices.csv")
    assert [int(r["k"]) for r in indices] == [2, 3, 4, 5]
    assert list(indices[0]) == ["k", *cv.DEFAULT_INDICES, "hartigan_h_drop", "points", "pairwise_points"]
    assert {(r["points"], r["pairwise_points"]) for r in indices} == {("60", "60")}
    assert (out / "indices.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clusters = read_rows(out / "clusters.csv")
    assert list(clusters[0]) == ["tile", "f_a", "f_b", "cluster", "confidence"]
    assert len(clusters) == 60 and {r["cluster"] for r in clusters} == {"0", "1", "2"}
    assert len({r["cluster"] for r in clusters[:20]}) == 1
    assert all(0 < float(r["confidence"]) <= 1 for r in clusters)

    before = (out / "clusters.csv").read_bytes()
    assert cv.main(["--features", str(features), "--k", "2:5", "--out", str(out), "--k_final", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "clusters.csv").read_bytes() == before
    assert cv.main(["--features", str(features), "--k", "2:5", "--out", str(out), "--k_final", "2", "--overwrite"]) == 0
    assert {r["cluster"] for r in read_rows(out / "clusters.csv")} == {"0", "1"}
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER]


def test_cli_subsample_is_recorded_in_the_csv_and_the_printout(tmp_path, capsys):
    features = write_features(tmp_path / "features.csv", three_blobs(20))
    out = tmp_path / "sub"
    flags = ["--features", str(features), "--k", "2:4", "--out", str(out), "--subsample", "25", "--seed", "1"]
    assert cv.main(flags) == 0
    printed = capsys.readouterr().out
    assert "random subsample of 25 of the 60 points (--subsample 25, seed 1)" in printed
    assert "biases Dunn upwards" in printed
    indices = read_rows(out / "indices.csv")
    assert {(r["points"], r["pairwise_points"]) for r in indices} == {("60", "25")}
    scaled = cv.StandardScaler().fit_transform(cv.read_features(features)[4])
    keep = cv.subsample_indices(60, 25, seed=1)
    labels = cv.kmeans_labels(scaled, 3, seed=1)
    assert float(indices[1]["dunn"]) == pytest.approx(cv.dunn(scaled[keep], labels[keep]), rel=1e-9)


def test_cli_indices_choose_what_is_computed_and_voted(tmp_path, capsys):
    features = write_features(tmp_path / "features.csv", three_blobs(15))
    out = tmp_path / "chosen"
    flags = ["--features", str(features), "--k", "2:4", "--out", str(out), "--indices", "log_ss_ratio, silhouette"]
    assert cv.main(flags) == 0
    printed = capsys.readouterr().out
    assert "votes: silhouette -> 3, log_ss_ratio -> 4" in printed
    assert list(read_rows(out / "indices.csv")[0]) == ["k", "silhouette", "log_ss_ratio", "points", "pairwise_points"]


def test_cli_single_k_skips_the_selection(tmp_path, capsys):
    features = write_features(tmp_path / "features.csv", three_blobs(10))
    out = tmp_path / "single"
    assert cv.main(["--features", str(features), "--k", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "votes" not in printed and "k = 4" in printed
    assert len(read_rows(out / "indices.csv")) == 1
    assert {r["cluster"] for r in read_rows(out / "clusters.csv")} == {"0", "1", "2", "3"}


GOOD = "tile,f\n1,0.5\n2,0.7\n3,0.1\n4,0.3\n"


@pytest.mark.parametrize(
    "content, flags, message",
    [
        ("id,f\n1,0.5\n2,0.7\n3,0.1\n4,0.3\n", ["--k", "2"], "'tile' or 'name' column"),
        ("tile,f\n1,0.5\n2,high\n3,0.1\n4,0.3\n", ["--k", "2"], "column 'f' is not numeric"),
        ("name,f\na,0.5\nb,0.7\nc,0.1\nd,0.3\n", ["--k", "2:4"], "--k 4"),
        (GOOD, ["--k", "2", "--k_final", "9"], "--k_final 9"),
        (GOOD, ["--k", "2", "--indices", "dunn,hartigan"], "--indices 'dunn,hartigan': 'hartigan' is ambiguous"),
        (GOOD, ["--k", "2", "--indices", "dunn,gap"], "unknown index 'gap'"),
        (GOOD, ["--k", "2", "--indices", " , "], "at least one index"),
        (GOOD, ["--k", "2", "--subsample", "1"], "argument --subsample: expected an integer >= 2"),
        (GOOD, ["--k", "2", "--subsample", "3", "--indices", "hartigan_h"], "--indices 'hartigan_h' holds none"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_problem(tmp_path, capsys, content, flags, message):
    features = tmp_path / "features.csv"
    features.write_text(content)
    out = tmp_path / "out"
    assert cv.main(["--features", str(features), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not out.exists()


def test_cli_bad_k_and_missing_file(tmp_path, capsys):
    assert cv.main(["--features", "x.csv", "--k", "5:2", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: argument --k: expected K or LOW:HIGH")
    assert cv.main(["--features", str(tmp_path / "none.csv"), "--k", "2", "--out", str(tmp_path / "o")]) == 2
    assert "none.csv does not exist" in capsys.readouterr().err

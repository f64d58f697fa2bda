"""Clustering metrics (gmvc/core/metrics.py)."""
import numpy as np
import pytest
from sklearn import metrics as skm

from gmvc.core import metrics


def test_contingency_counts():
    pred = np.array([2, 2, 0, 0, 0, 5])
    labels = np.array([1, 0, 1, 1, 0, 0])
    # Rows: clusters 0, 2, 5; columns: classes 0, 1.
    np.testing.assert_array_equal(metrics.contingency(pred, labels), [[1, 2], [1, 1], [1, 0]])


def test_hungarian_accuracy_permuted_labels_is_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    perm = np.array([3, 0, 4, 1, 2])
    assert metrics.hungarian_accuracy(perm[labels], labels) == 1.0
    assert metrics.hungarian_accuracy(perm[labels] + 10, labels) == 1.0      # arbitrary cluster ids
    assert metrics.hungarian_accuracy(labels, labels.astype(str)) == 1.0     # arbitrary class ids


def test_hungarian_accuracy_hand_made():
    labels = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, 0, 0])
    # cluster 0: (class 0: 1, class 1: 3); cluster 1: (class 0: 2, class 1: 0)
    # best one-to-one matching: 0 -> 1 (3) and 1 -> 0 (2): 5 / 6.
    assert metrics.hungarian_accuracy(pred, labels) == pytest.approx(5 / 6)
    # String classes, a class left unmatched: cluster 0: (a 2, b 3); cluster 1: (a 1, c 1)
    # -> 0 -> b (3) + 1 -> a or c (1) = 4 / 7.
    labels = np.array(["a", "a", "b", "b", "b", "a", "c"])
    pred = np.array([0, 0, 0, 0, 0, 1, 1])
    assert metrics.hungarian_accuracy(pred, labels) == pytest.approx(4 / 7)


def test_hungarian_beats_greedy():
    # cluster 0: (class a 3, class b 2), cluster 1: (a 2, b 0).
    # Greedy takes 0 -> a (3), leaving 1 -> b (0): 3 / 7. Optimal: 0 -> b (2) + 1 -> a (2) = 4 / 7.
    labels = np.array([0, 0, 0, 1, 1, 0, 0])
    pred = np.array([0, 0, 0, 0, 0, 1, 1])
    assert metrics.hungarian_accuracy(pred, labels) == pytest.approx(4 / 7)


def test_majority_accuracy_more_clusters_than_classes():
    labels = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])
    assert metrics.majority_accuracy(pred, labels) == 1.0           # every cluster is pure
    assert metrics.hungarian_accuracy(pred, labels) == pytest.approx(4 / 6)   # one-to-one leaves a cluster out
    pred = np.array([0, 1, 2, 3, 3, 3])
    labels = np.array([0, 0, 1, 0, 0, 1])
    # clusters 0, 1, 2 are pure (1 each); cluster 3 holds classes (0, 0, 1) -> majority 2: total 5 / 6.
    # Two clusters may take the same class (clusters 0, 1 and 3 all take class 0).
    assert metrics.majority_accuracy(pred, labels) == pytest.approx(5 / 6)


def test_single_cluster():
    labels = np.array([0, 1, 1, 2, 2, 2])
    pred = np.zeros(6, int)
    assert metrics.majority_accuracy(pred, labels) == pytest.approx(0.5)
    assert metrics.hungarian_accuracy(pred, labels) == pytest.approx(0.5)


def test_clustering_report_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 6, 300))    # noisy, 6 clusters
    report = metrics.clustering_report(list(pred), list(labels))
    assert set(report) == {"acc", "majority_acc", "nmi", "ari"}
    assert report["nmi"] == pytest.approx(skm.normalized_mutual_info_score(labels, pred), rel=1e-12)
    assert report["ari"] == pytest.approx(skm.adjusted_rand_score(labels, pred), rel=1e-12)
    assert 0.3 < report["nmi"] < 0.9 and 0.2 < report["ari"] < 0.9
    counts = np.array([[np.sum((pred == i) & (labels == j)) for j in range(4)] for i in range(6)])
    assert report["majority_acc"] == pytest.approx(counts.max(1).sum() / 300)
    assert report["majority_acc"] >= report["acc"] > 0.7
    assert all(isinstance(v, float) for v in report.values())
    perfect = metrics.clustering_report(labels + 7, labels)
    assert perfect == {"acc": 1.0, "majority_acc": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}

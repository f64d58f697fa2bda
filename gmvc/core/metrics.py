"""Clustering metrics. Labels are used here only to report; never to train or to pick a run.
scipy and scikit-learn are imported when a score is computed (gmvc.trainer preloads them while
training runs): importing them takes about 2 s."""
import numpy as np


def contingency(pred, labels):
    """counts[i, j] = number of samples in cluster i with class j."""
    pred_ids, pred = np.unique(pred, return_inverse=True)
    label_ids, labels = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(pred_ids), len(label_ids)), np.int64)
    np.add.at(counts, (pred, labels), 1)
    return counts


def hungarian_accuracy(pred, labels):
    """Best one-to-one matching of clusters to classes, as a fraction of samples."""
    from scipy.optimize import linear_sum_assignment
    counts = contingency(pred, labels)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(pred))


def majority_accuracy(pred, labels):
    """Each cluster takes its majority class (works for more clusters than classes)."""
    return float(contingency(pred, labels).max(axis=1).sum() / len(pred))


def clustering_report(pred, labels):
    from sklearn import metrics as skm
    pred, labels = np.asarray(pred), np.asarray(labels)
    return {
        "acc": hungarian_accuracy(pred, labels),
        "majority_acc": majority_accuracy(pred, labels),
        "nmi": float(skm.normalized_mutual_info_score(labels, pred)),
        "ari": float(skm.adjusted_rand_score(labels, pred)),
    }

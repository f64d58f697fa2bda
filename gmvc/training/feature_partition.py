"""A partition of the data from their features alone, the candidate a user would try first: a
full-covariance Gaussian mixture on the scaled features (reduced to their first principal
components), and the share of a neighbour graph's links a partition cuts, by which it is
compared with the partition the embedding gives. Host code (numpy, scikit-learn), made once a
run, at its first init_prior phase that asks for it."""
import numpy as np

from gmvc.core.inputs import host_values

FEATURE_DIMS = 10          # the features are reduced to at most this many principal components
FEATURE_ROWS = 100_000     # above this many samples no feature partition is made
FEATURE_NEIGHBOURS = 3     # the graph the partitions are compared on: each sample's 3 nearest neighbours
FEATURE_MARGIN = 0.8       # the features' partition replaces another only if it cuts below 0.8 of its share


def reduce_features(x, dims=FEATURE_DIMS):
    """x [N, ...] as float64 rows [N, min(D, dims)]: centred, and projected on their first `dims`
    principal components where D > dims (no whitening: the components keep their spread)."""
    rows = np.asarray(host_values(np.asarray(x))).reshape(len(x), -1).astype(np.float64)
    rows = rows - rows.mean(axis=0)
    if rows.shape[1] <= dims:
        return rows
    _, _, vt = np.linalg.svd(rows if len(rows) <= 20_000 else rows[:: len(rows) // 20_000], full_matrices=False)
    return rows @ vt[:dims].T


def full_gmm_partition(features, k, n_init, seed):
    """Each row's component [N] in a k-component full-covariance GMM of `features` (n_init
    k-means-started fits, the most likely kept; scikit-learn's GaussianMixture)."""
    from sklearn.mixture import GaussianMixture
    gmm = GaussianMixture(k, covariance_type="full", n_init=n_init, random_state=seed, reg_covar=1e-6)
    return gmm.fit(features).predict(features).astype(np.int32)


def cut_share(groups, table):
    """The share of the graph's links (table [N, n]: each row's neighbours) whose two ends lie in
    different groups of the partition `groups` [N]: 0 when no link crosses a group's border."""
    groups, table = np.asarray(groups), np.asarray(table)
    return float(np.mean(groups[table] != groups[:, None]))

"""gmvc.core.k_moves: the NIW marginal likelihood against the chain rule of its predictive
Student-t densities, the split and merge tests on blobs that should and should not split, the
valley ratio, and rounds of moves on mixtures with slots."""
import numpy as np
import pytest
from scipy.stats import multivariate_t

from sklearn.cluster import KMeans

from gmvc.core.k_moves import (DEAD, NIW, Settings, active_slots, log_marginal, log_merge_ratio, log_split_ratio,
                               niw_prior, propose_moves, valley_ratio)
from gmvc.core.metrics import hungarian_accuracy


def _predictive(x, prior):
    """log p(x) as the sum of each point's posterior predictive density given the points before it."""
    d, total = x.shape[1], 0.0
    m, k, nu, psi = prior.mean, prior.kappa, prior.nu, prior.psi
    for i in range(len(x)):
        dof = nu - d + 1
        total += multivariate_t(loc=m, shape=psi * (k + 1) / (k * dof), df=dof).logpdf(x[i])
        k_new = k + 1
        diff = x[i] - m
        psi = psi + (k / k_new) * np.outer(diff, diff)
        m = (k * m + x[i]) / k_new
        k, nu = k_new, nu + 1
    return total


def test_the_marginal_likelihood_is_the_chain_of_its_predictives():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.7]]) + 4.0
    prior = NIW(np.array([1.0, -2.0, 0.5]), 0.5, 5.5, np.diag([2.0, 1.0, 3.0]))
    assert log_marginal(x, prior) == pytest.approx(_predictive(x, prior), rel=1e-10, abs=1e-8)
    assert log_marginal(x[:0], prior) == 0.0


def test_two_blobs_split_and_one_blob_does_not():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + np.array([8.0, 0.0, 0.0, 0.0])
    two = np.concatenate([a, b])
    prior = niw_prior(two, scale=0.1)
    apart = np.arange(400) >= 200
    assert log_split_ratio(two, apart, 1.0, prior) > 50
    assert log_merge_ratio(a, b, 1.0, prior) == pytest.approx(-log_split_ratio(two, apart, 1.0, prior))
    one = rng.normal(size=(400, 4))
    prior = niw_prior(one, scale=0.1)
    halves = one[:, 0] > np.median(one[:, 0])                  # the best a split of one Gaussian can do
    assert log_split_ratio(one, halves, 1.0, prior) < 0
    assert log_split_ratio(one, rng.random(400) < 0.5, 1.0, prior) < -10
    assert log_merge_ratio(one[halves], one[~halves], 1.0, prior) > 0
    assert log_split_ratio(one, np.zeros(400, bool), 1.0, prior) == -np.inf


def _slots(k_max, means, log_vars=None):
    """A prior of k_max slots whose first len(means) are live."""
    d = means.shape[1]
    prior = {"logits": np.full(k_max, DEAD), "means": np.zeros((k_max, d)), "log_vars": np.zeros((k_max, d))}
    prior["logits"][:len(means)] = 0.0
    prior["means"][:len(means)] = means
    if log_vars is not None:
        prior["log_vars"][:len(means)] = log_vars
    return prior


def _three_blobs(rng, n=300, apart=8.0):
    return np.concatenate([rng.normal(size=(n, 3)), rng.normal(size=(n, 3)) + [apart, 0, 0],
                           rng.normal(size=(n, 3)) + [0, apart, 0]])


def test_the_valley_ratio_tells_two_modes_from_one():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + [6.0, 0.0]
    assert valley_ratio(np.concatenate([a, b]), [0, 0], [6, 0]) < 0.2           # a deep valley
    close = np.concatenate([a, rng.normal(size=(300, 2)) + [2.0, 0.0]])          # a Gaussian mixture with one mode
    assert valley_ratio(close, [0, 0], [2, 0]) > 0.9
    strip = rng.uniform(size=(600, 2)) * [4.0, 1.0]                              # one arm cut in two: no valley
    assert valley_ratio(strip, [1.0, 0.5], [3.0, 0.5]) > 0.9
    assert valley_ratio(a[:3], [0, 0], [1, 0]) == 1.0                            # too few points to tell


def test_an_over_clustered_mixture_merges_down_to_the_blobs():
    rng = np.random.default_rng(0)
    x = _three_blobs(rng)
    km = KMeans(8, n_init=3, random_state=0).fit(x)
    prior = _slots(12, km.cluster_centers_)
    prior, groups, tests = propose_moves(x, prior, km.labels_, Settings(), step=5)
    live = active_slots(prior["logits"])
    assert live.sum() == 3 and prior["logits"].shape == (12,)                     # no shape changes
    assert all(t["step"] == 5 for t in tests) and sum(t["move"] == "merge" and t["accepted"] for t in tests) == 5
    assert set(np.unique(groups)) <= set(np.flatnonzero(live))                    # no sample pinned to a retired slot
    assert hungarian_accuracy(groups, np.repeat([0, 1, 2], 300)) == 1.0
    again = propose_moves(x, prior, groups, Settings(), step=6)[2]
    assert not any(t["accepted"] for t in again)                                  # nothing more to do


def test_one_component_splits_into_the_blobs_and_one_gaussian_does_not():
    rng = np.random.default_rng(0)
    x = _three_blobs(rng)
    prior = _slots(6, x.mean(0, keepdims=True), np.log(x.var(0, keepdims=True)))
    for step in range(3):
        prior, _, tests = propose_moves(x, prior, None, Settings(), step)
    assert active_slots(prior["logits"]).sum() == 3
    splits = [t for t in tests if t["move"] == "split"]
    assert splits and all(t["score"] < 0 and not t["accepted"] for t in splits)   # the blobs stay whole
    one = rng.normal(size=(900, 3))
    prior, _, tests = propose_moves(one, _slots(6, np.zeros((1, 3))), None, Settings(), 0)
    assert active_slots(prior["logits"]).sum() == 1 and tests[0]["move"] == "split" and not tests[0]["accepted"]


def test_a_component_with_too_few_samples_retires_and_its_samples_move():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + [10.0, 0.0]])
    means = np.array([[0.0, 0.0], [10.0, 0.0], [4.0, 0.0]])       # the third, narrow, holds a few stragglers
    log_vars = np.array([[0.0, 0.0], [0.0, 0.0], [-3.0, -3.0]])
    groups = (np.arange(1000) >= 500).astype(int)
    groups[np.argsort(np.abs(x[:, 0] - 4.0))[:4]] = 2
    prior, groups, tests = propose_moves(x, _slots(4, means, log_vars), groups, Settings(min_share=0.01), 0)
    assert tests[0]["move"] == "retire" and tests[0]["slots"] == [2] and tests[0]["accepted"]
    assert active_slots(prior["logits"]).tolist() == [True, True, False, False] and 2 not in groups


def test_a_retire_only_round_neither_merges_nor_splits():
    rng = np.random.default_rng(0)
    x = _three_blobs(rng)
    km = KMeans(8, n_init=3, random_state=0).fit(x)
    prior, _, tests = propose_moves(x, _slots(12, km.cluster_centers_), km.labels_, Settings(), 0, moves=("retire",))
    assert active_slots(prior["logits"]).sum() == 8 and tests == []

"""gmvc.core.k_moves: the NIW marginal likelihood against the chain rule of its predictive
Student-t densities, and the split and merge tests on blobs that should and should not split."""
import numpy as np
import pytest
from scipy.stats import multivariate_t

from gmvc.core.k_moves import NIW, log_marginal, log_merge_ratio, log_split_ratio, niw_prior


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

"""The evidence for changing a mixture's number of components (DeepDPM, Ronen et al. CVPR 2022):
the marginal likelihood of points under a Normal-Inverse-Wishart prior, in closed form, and the
Hastings ratios of splitting one cluster in two and of merging two into one.

A split of the points X of a cluster into X1 and X2 (sizes N1 + N2 = N) is accepted when

    log H = log alpha + lgamma(N1) + log L(X1) + lgamma(N2) + log L(X2) - lgamma(N) - log L(X) > 0,

alpha the Dirichlet process's concentration and L the NIW marginal likelihood; a merge of two
clusters into one is the inverse move, accepted when -log H > 0 for the pair. Numpy and scipy on
the host: the moves run between training chunks, on the encoder means.
"""
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln, multigammaln


class NIW(NamedTuple):
    mean: np.ndarray       # [D] m0
    kappa: float           # k0: how many points the prior mean counts as
    nu: float              # degrees of freedom, > D - 1
    psi: np.ndarray        # [D, D] scale matrix


def niw_prior(z, kappa=1.0, scale=1.0):
    """A NIW prior scaled to the spread of the points z [N, D]: mean z's mean, nu = D + 2 (the
    least that gives the covariance a mean), psi = scale * diag(var z), so that the prior's mean
    covariance psi / (nu - D - 1) is `scale` times z's per-dimension variance."""
    z = np.asarray(z, np.float64)
    d = z.shape[1]
    return NIW(z.mean(0), float(kappa), d + 2.0, scale * np.diag(z.var(0) + 1e-12))


def log_marginal(x, prior):
    """log p(x) of the points x [N, D] with the Gaussian's mean and covariance integrated out
    under `prior` (NIW); 0 for no points."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if n == 0:
        return 0.0
    xbar = x.mean(0)
    centred = x - xbar
    k_n, nu_n = prior.kappa + n, prior.nu + n
    diff = xbar - prior.mean
    psi_n = prior.psi + centred.T @ centred + (prior.kappa * n / k_n) * np.outer(diff, diff)
    return float(-0.5 * n * d * np.log(np.pi) + multigammaln(0.5 * nu_n, d) - multigammaln(0.5 * prior.nu, d)
                 + 0.5 * prior.nu * _logdet(prior.psi) - 0.5 * nu_n * _logdet(psi_n)
                 + 0.5 * d * (np.log(prior.kappa) - np.log(k_n)))


def log_split_ratio(x, sub, alpha, prior):
    """log H of splitting the points x [N, D] by `sub` [N] (bools: the second part) under
    concentration `alpha`; -inf when a part is empty."""
    sub = np.asarray(sub, bool)
    n1, n2 = int((~sub).sum()), int(sub.sum())
    if n1 == 0 or n2 == 0:
        return -np.inf
    x = np.asarray(x, np.float64)
    return float(np.log(alpha) + gammaln(n1) + log_marginal(x[~sub], prior) + gammaln(n2)
                 + log_marginal(x[sub], prior) - gammaln(n1 + n2) - log_marginal(x, prior))


def log_merge_ratio(x1, x2, alpha, prior):
    """log H of merging the points x1 [N1, D] and x2 [N2, D] into one cluster: the inverse of
    their split."""
    x = np.concatenate([np.asarray(x1, np.float64), np.asarray(x2, np.float64)])
    sub = np.arange(len(x)) >= len(x1)
    return -log_split_ratio(x, sub, alpha, prior)


def _logdet(a):
    sign, value = np.linalg.slogdet(a)
    if sign <= 0:
        raise ValueError("the NIW scale matrix is not positive definite")
    return value

"""Helpers shared by the VaDE tests (test_vade_model, test_mixture_init, test_embedding_phases,
test_phases, test_steps): a tiny VaDE config (a 16-unit MLP, Dz = 2, K = 3, so that XLA compile
time stays small) and its data, pytree comparisons, and four known Gaussian blobs."""
import jax
import numpy as np
from scipy import optimize

from gmvc.config import base_config
from test_train import assert_trees_equal as _assert_trees_equal  # noqa: F401 (re-exported)

K, DZ, DX = 3, 2, 16


def _vade_config(gamma_transform="none"):
    c = base_config()
    c.model.name = "vade"
    c.model.hidden_sizes = (16,)
    c.model.z_dim = DZ
    c.model.num_clusters = K
    c.model.likelihood = "bernoulli"
    c.model.gamma_transform = gamma_transform
    c.objective = {"recon": 1.0, "vade_kl": 1.0}
    return c


def _uniform_data(n=200, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, DX)).astype(np.float32)


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


BLOB_MEANS = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 6.0, -2.0], [3.0, 3.0, 6.0]])
BLOB_STDS = np.array([[0.3, 0.5, 0.4], [0.6, 0.3, 0.5], [0.4, 0.4, 0.2], [0.5, 0.6, 0.3]])
BLOB_WEIGHTS = np.array([0.2, 0.25, 0.25, 0.3])


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(len(BLOB_WEIGHTS), n, p=BLOB_WEIGHTS)
    return (BLOB_MEANS[y] + BLOB_STDS[y] * rng.standard_normal((n, 3))).astype(np.float32), y


def _matched(prior):
    """The fitted (weights, means, variances) reordered to the true components (Hungarian on distances)."""
    means = np.asarray(prior["means"], np.float64)
    _, cols = optimize.linear_sum_assignment(np.linalg.norm(BLOB_MEANS[:, None] - means[None], axis=-1))
    weights = np.exp(np.asarray(prior["logits"], np.float64))
    return weights[cols] / weights.sum(), means[cols], np.exp(np.asarray(prior["log_vars"], np.float64))[cols]


# One k-means++ seeding puts two seeds in one blob ~13% of the time here: see test_n_init_... in
# test_mixture_init.py.
N_INIT = 6

"""VaDE pieces: the mixture KL against Monte Carlo, the responsibilities against the exact posterior
(and S3VDC's inverse min-max transform), the mixture initialisation on known blobs (full data and
the mini-batch subsample), S3VDC's periodic beta schedule, and the phases that freeze parameter
groups (directly through the optimizer, and through the training loop's checkpoints).

Models here are tiny (a 16-unit MLP, Dz = 2, K = 3) so that XLA compile time stays small.
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

from gmvc.core import mixture, neighbours
from gmvc.training import steps
from gmvc.config import base_config
from gmvc.errors import ConfigError
from gmvc.core.mixture_init import fit_diag_gmm, mean_log_likelihood
from gmvc.models import make_model
from gmvc.objectives import make_batch, make_objective
from gmvc.objectives.terms import TERMS, _expected_component_kl, _kl_gamma_prior
from gmvc.training.phases import INIT_DEFAULTS, Phase, build_phases
from gmvc.core.schedules import make_schedule
from gmvc.training.state import make_optimizer

K, DZ, DX = 3, 2, 16


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """XLA's backend optimisations off while this module runs: the programs here are tiny and each
    runs a few times, so compile time is the whole cost (same semantics, as in test_terms.py)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


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


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


# ---------------------------------------------------------------- 1. the mixture KL against Monte Carlo

def _kl_setup():
    """A random prior (K=3, Dz=2), q(z|x) for 4 samples, and a fixed gamma per sample (float64)."""
    rng = np.random.default_rng(0)
    b = 4
    return {"z_mean": rng.normal(0.0, 1.5, (b, DZ)), "z_log_var": rng.uniform(-1.5, 0.5, (b, DZ)),
            "prior_means": rng.normal(0.0, 2.0, (K, DZ)), "prior_log_vars": rng.uniform(-0.5, 0.8, (K, DZ)),
            "logits": rng.normal(0.0, 1.0, K), "gamma": rng.dirichlet(np.ones(K), size=b)}


def _out_dict(s, rows=slice(None)):
    """The `out` dict the vade_kl term reads, built by hand (float32 as in training)."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return {"z_mean": f32(s["z_mean"][rows]), "z_log_var": f32(s["z_log_var"][rows]),
            "prior_means": f32(s["prior_means"]), "prior_log_vars": f32(s["prior_log_vars"]),
            "log_pi": f32(s["logits"] - special.logsumexp(s["logits"])), "log_gamma": f32(np.log(s["gamma"][rows]))}


def _mc_vade_kl(rng, s, b, n=100_000):
    """E_q(z|x)[sum_c gamma_c (log q(z|x) + log gamma_c - log p(z|c) - log p(c))] by sampling z ~ q(z|x),
    with scipy densities in float64; returns (estimate, standard error)."""
    mean, var = s["z_mean"][b], np.exp(s["z_log_var"][b])
    z = mean + np.sqrt(var) * rng.standard_normal((n, DZ))
    log_q = stats.multivariate_normal(mean, np.diag(var)).logpdf(z)                              # [n]
    log_p = np.stack([stats.multivariate_normal(s["prior_means"][c], np.diag(np.exp(s["prior_log_vars"][c])))
                      .logpdf(z) for c in range(K)], axis=1)                                        # [n, K]
    log_pi = s["logits"] - special.logsumexp(s["logits"])
    gamma = s["gamma"][b]
    f = np.sum(gamma * (log_q[:, None] + np.log(gamma) - log_p - log_pi), axis=1)
    return f.mean(), f.std() / np.sqrt(n)


@functools.lru_cache(maxsize=None)
def _vade_kl_fn():
    term = TERMS["vade_kl"]({})
    return jax.jit(lambda out: term(None, None, out, None)[0])


def _vade_kl(s, rows=slice(None)):
    return float(_vade_kl_fn()(_out_dict(s, rows)))


def test_vade_kl_matches_monte_carlo():
    s = _kl_setup()
    per_sample = np.asarray(jax.jit(lambda o: _expected_component_kl(o) + _kl_gamma_prior(o))(_out_dict(s)))
    assert per_sample.shape == (4,)
    rng = np.random.default_rng(1)
    for b in range(4):
        got = _vade_kl(s, slice(b, b + 1))                                       # a batch of one: that sample
        assert got == pytest.approx(float(per_sample[b]), rel=1e-6)
        mc, se = _mc_vade_kl(rng, s, b)
        # 1e5 seeded samples: within 1% and within 5 standard errors of the estimate.
        assert se < 2e-3 * abs(mc), (b, mc, se)
        assert got == pytest.approx(mc, rel=1e-2), (b, got, mc, se)
        assert abs(got - mc) < 5 * se + 1e-4, (b, got, mc, se)
    # The term is the batch mean of the per-sample values.
    assert _vade_kl(s) == pytest.approx(float(per_sample.mean()), rel=1e-6)


def test_vade_kl_monte_carlo_sees_wrong_gamma_and_pi():
    """The tolerance above is tight enough to tell the responsibilities or the weights apart."""
    s = _kl_setup()
    rng = np.random.default_rng(2)
    mc, se = _mc_vade_kl(rng, s, 0)
    got = _vade_kl(s, slice(0, 1))
    assert got == pytest.approx(mc, rel=1e-2)
    wrong_gamma = dict(s, gamma=np.full_like(s["gamma"], 1.0 / K))
    wrong_pi = dict(s, logits=np.zeros(K))
    for wrong in (wrong_gamma, wrong_pi):
        value = _vade_kl(wrong, slice(0, 1))
        assert abs(value - mc) > 2e-2 * abs(mc) and abs(value - mc) > 20 * se, (value, mc, got)


# ---------------------------------------------------------------- 2. responsibilities = exact posterior

@functools.lru_cache(maxsize=None)
def _model_and_predictions():
    """One tiny VaDE net, a random prior placed among its embeddings; predictions of both gamma
    transforms (the transform changes no parameters, only the responsibilities)."""
    x = _uniform_data(24, seed=3)
    model = make_model(_vade_config().model, x.shape[1:])
    model_mm = make_model(_vade_config("inverse_minmax").model, x.shape[1:])
    params = jax.jit(model.init)(jax.random.key(0))
    z_mean = np.asarray(jax.jit(model.embed)(params, x), np.float64)
    rng = np.random.default_rng(4)
    spread = z_mean.std(0)
    prior = {"logits": rng.normal(0.0, 1.0, K),
             "means": z_mean[rng.choice(len(x), K, replace=False)] + 0.3 * spread * rng.normal(size=(K, DZ)),
             "log_vars": np.log(spread**2) + rng.uniform(-1.5, 0.0, (K, DZ))}
    params = {"net": params["net"], "prior": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), prior)}
    predict = jax.jit(lambda p, x: (model.predict(p, x), model_mm.predict(p, x)))
    out, out_mm = jax.device_get(predict(params, x))
    return {"x": x, "z_mean": z_mean, "prior": prior, "out": out, "out_mm": out_mm}


def _scipy_log_joint(z, prior):
    """log pi_c + log N(z | mu_c, diag sigma2_c) with pi = softmax(logits): [B, K], float64."""
    log_pi = prior["logits"] - special.logsumexp(prior["logits"])
    dens = np.stack([stats.multivariate_normal(prior["means"][c], np.diag(np.exp(prior["log_vars"][c]))).logpdf(z)
                     for c in range(K)], axis=1)
    return log_pi + dens


def test_predict_log_gamma_is_exact_posterior():
    m = _model_and_predictions()
    out = m["out"]
    np.testing.assert_allclose(out["z_mean"], m["z_mean"], rtol=1e-6, atol=1e-6)    # predict uses z = z_mean
    log_joint = _scipy_log_joint(m["z_mean"], m["prior"])
    want = log_joint - special.logsumexp(log_joint, axis=1, keepdims=True)            # log p(c | z)
    assert out["log_gamma"].shape == (24, K)
    np.testing.assert_allclose(out["log_gamma"], want, rtol=1e-4, atol=1e-4)
    gamma = np.exp(want)
    # Not a degenerate case: the responsibilities are soft, the weights matter, all clusters are used.
    assert 0.05 < gamma.max(1).min() and gamma.max(1).min() < 0.9
    assert len(np.unique(gamma.argmax(1))) == K
    log_pi = m["prior"]["logits"] - special.logsumexp(m["prior"]["logits"])
    without_pi = (log_joint - log_pi) - special.logsumexp(log_joint - log_pi, axis=1, keepdims=True)
    assert np.abs(without_pi - want).max() > 1e-2


def test_input_dropout_masks_the_encoder_input_only():
    """model.input_dropout: the training pass encodes x with a fraction p of its values zeroed (the
    rest scaled by 1 / (1 - p)), drawn per sample; the reconstruction target and prediction read
    x itself; p = 0 is the plain model; a bad p is named."""
    from gmvc.models import base
    c = _vade_config()
    c.model.input_dropout = 0.25
    x = jnp.asarray(np.random.default_rng(3).uniform(0.2, 1.0, (64, DX)).astype(np.float32))
    keys = jax.random.split(jax.random.key(7), 64)
    seen = np.asarray(base.corrupt(c.model, x, keys))
    zero = seen == 0.0
    assert 0.2 < zero.mean() < 0.3
    np.testing.assert_allclose(seen[~zero], np.asarray(x)[~zero] / 0.75, rtol=1e-6)
    # Per-sample draws: a row's mask does not depend on the batch it is in.
    np.testing.assert_array_equal(np.asarray(base.corrupt(c.model, x[5:9], keys[5:9])), seen[5:9])

    plain = _vade_config()
    noisy, clean = make_model(c.model, (DX,)), make_model(plain.model, (DX,))
    params = clean.init(jax.random.key(0))
    out_noisy, out_clean = noisy.apply(params, x, keys), clean.apply(params, x, keys)
    np.testing.assert_array_equal(out_noisy["x_flat"], np.asarray(x))
    assert np.abs(np.asarray(out_noisy["z_mean"]) - np.asarray(out_clean["z_mean"])).max() > 1e-3
    _assert_trees_equal(noisy.predict(params, x), clean.predict(params, x))
    np.testing.assert_array_equal(base.corrupt(plain.model, x, keys), x)
    for bad in (1.0, -0.1, float("nan")):
        c.model.input_dropout = bad
        with pytest.raises(ConfigError, match="model.input_dropout"):
            make_model(c.model, (DX,))


def test_inverse_minmax_responsibilities():
    m = _model_and_predictions()
    log_gamma = m["out_mm"]["log_gamma"].astype(np.float64)
    log_joint = _scipy_log_joint(m["z_mean"], m["prior"])
    exact = log_joint - special.logsumexp(log_joint, axis=1, keepdims=True)
    # Rows are distributions.
    np.testing.assert_allclose(np.exp(log_gamma).sum(1), 1.0, atol=1e-5)
    # The logits: s = -log_joint rescaled over the whole [B, K] batch to [-20, 0].
    s = -log_joint
    logits = (s - s.min()) / (s.max() - s.min()) * -20.0
    assert logits.min() == -20.0 and logits.max() == 0.0
    np.testing.assert_allclose(log_gamma, logits - special.logsumexp(logits, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-4)
    # Order-preserving: same argmax, same ranking of the clusters in every row, as the exact posterior.
    np.testing.assert_array_equal(log_gamma.argmax(1), exact.argmax(1))
    np.testing.assert_array_equal(np.argsort(log_gamma, 1), np.argsort(exact, 1))
    # ... but a different (softer or harder) distribution: the transform did something.
    assert np.abs(log_gamma - exact).max() > 1e-2


# ---------------------------------------------------------------- 3. mixture initialisation on known blobs

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


def _empirical(z, y):
    """Per-label weights, means and (biased) variances of a sample: what hard assignments give."""
    z = z.astype(np.float64)
    return (np.bincount(y, minlength=4) / len(y), np.stack([z[y == k].mean(0) for k in range(4)]),
            np.stack([z[y == k].var(0) for k in range(4)]))


N_INIT = 6   # one k-means++ seeding puts two seeds in one blob ~13% of the time here: see test_n_init_...
N_KEYS = {1: 24, N_INIT: 8}   # seeds per n_init: enough single fits to see a bad seeding


@functools.lru_cache(maxsize=None)
def _all_blob_fits():
    """fit_diag_gmm (20 k-means steps, 20 EM steps) on 2000 blob points, vmapped over the first
    N_KEYS[n] of the same seeds, for n_init = 1 and N_INIT (one compiled program)."""
    z = jnp.asarray(_blobs(2000)[0])
    keys = jax.random.split(jax.random.key(0), 24)

    def fits(keys):
        return {n: jax.vmap(lambda r: fit_diag_gmm(r, z, 4, 20, 20, n))(keys[:N_KEYS[n]]) for n in N_KEYS}
    return jax.device_get(jax.jit(fits)(keys))


def _blob_fits(n_init):
    """Leaves [N_KEYS[n_init], ...]."""
    return _all_blob_fits()[n_init]


def _fit_i(fits, i):
    return jax.tree.map(lambda a: a[i], fits)


def _mean_errors(prior):
    return np.abs(_matched(prior)[1] - BLOB_MEANS).max()


def test_fit_diag_gmm_recovers_blobs():
    z, y = _blobs(2000)
    emp_w, emp_m, emp_v = _empirical(z, y)
    fits = _blob_fits(N_INIT)
    for i in range(N_KEYS[N_INIT]):
        weights, means, variances = _matched(_fit_i(fits, i))
        np.testing.assert_allclose(means, BLOB_MEANS, atol=0.1)
        np.testing.assert_allclose(weights, BLOB_WEIGHTS, atol=0.05)
        np.testing.assert_allclose(variances, BLOB_STDS**2, rtol=0.2)
        # Well separated: EM ends on the hard per-blob statistics of the sample itself.
        np.testing.assert_allclose(weights, emp_w, atol=1e-4)
        np.testing.assert_allclose(means, emp_m, atol=1e-3)
        np.testing.assert_allclose(variances, emp_v, rtol=1e-2)


def test_n_init_keeps_the_most_likely_fit():
    """A single k-means++ seeding sometimes splits one blob and merges two (Lloyd and EM cannot undo
    that); n_init fits from different seeds, keeping the most likely, recover the blobs every time."""
    single, best = _blob_fits(1), _blob_fits(N_INIT)
    errors = np.array([_mean_errors(_fit_i(single, i)) for i in range(N_KEYS[1])])
    assert np.sum(errors > 1.0) >= 1 and np.sum(errors < 0.1) >= N_KEYS[1] // 2, errors
    errors_best = np.array([_mean_errors(_fit_i(best, i)) for i in range(N_KEYS[N_INIT])])
    assert np.all(errors_best < 0.1), errors_best
    # Kept by likelihood: every right fit reaches the same moments, a wrong one is less likely.
    z = jnp.asarray(_blobs(2000)[0])
    ll = jax.jit(jax.vmap(mean_log_likelihood, in_axes=(0, None)))
    ll_single, ll_best = np.asarray(ll(single, z)), np.asarray(ll(best, z))
    np.testing.assert_allclose(ll_best, ll_best.max(), rtol=1e-5)
    assert np.all(ll_best >= ll_single[:N_KEYS[N_INIT]] - 1e-4 * np.abs(ll_best))
    assert np.all(ll_single[errors > 1.0] < ll_best.max() - 0.1)


def test_smooth_embeddings_is_the_mean_with_the_neighbours():
    from gmvc.core.mixture_init import smooth_embeddings
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3)).astype(np.float32)
    table = rng.integers(0, 50, (50, 4)).astype(np.int32)
    expected = z.astype(np.float64)
    for _ in range(2):
        expected = (expected + expected[table].sum(1)) / 5
    np.testing.assert_allclose(smooth_embeddings(jnp.asarray(z), jnp.asarray(table), 2), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(smooth_embeddings(jnp.asarray(z), jnp.asarray(table), 0), z)


def test_smoothed_fit_recovers_overlapping_blobs_a_plain_fit_blurs():
    """Four blobs 2 apart with standard deviation 0.8 overlap; with neighbours from each point's
    own blob (a graph whose edges all agree with the labels), the smoothed fit partitions the
    smoothed points exactly and its M-step on the points themselves returns each blob's own mean
    and variance. A plain fit on the points mixes the blobs' tails."""
    from gmvc.core.mixture_init import fit_diag_gmm_smoothed
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    y = np.repeat(np.arange(4), 250)
    z = (centres[y] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32)
    table = np.stack([rng.choice(np.flatnonzero((y == y[i]) & (np.arange(1000) != i)), 8, replace=False)
                      for i in range(1000)]).astype(np.int32)
    own_means = np.stack([z[y == c].mean(0) for c in range(4)])
    own_vars = np.stack([z[y == c].var(0) for c in range(4)])

    def errors(prior):
        means = np.asarray(prior["means"])
        _, cols = optimize.linear_sum_assignment(np.linalg.norm(own_means[:, None] - means[None], axis=-1))
        variances = np.exp(np.asarray(prior["log_vars"]))[cols]
        return np.abs(means[cols] - own_means).max(), np.abs(variances / own_vars - 1).max()

    smoothed = fit_diag_gmm_smoothed(jax.random.key(0), jnp.asarray(z), jnp.asarray(table), 4, 1,
                                     kmeans_iters=50, em_iters=20, n_init=5)
    plain = fit_diag_gmm(jax.random.key(0), jnp.asarray(z), 4, 50, 20, 5)
    mean_err, var_err = errors(smoothed)
    assert mean_err < 0.01 and var_err < 0.01                    # measured: 1e-4 and 2e-4
    np.testing.assert_allclose(np.exp(np.asarray(smoothed["logits"])), 0.25, atol=0.005)
    plain_mean_err, plain_var_err = errors(plain)
    assert plain_mean_err > 0.05 and plain_var_err > 0.1        # measured: 0.097 and 0.12


def test_merge_by_neighbours_joins_the_groups_the_graph_links():
    """Five labels, one of them (3) empty, merged into three groups, then two: the empty label
    goes first (into label 0), then 0 with 1 (4 links over 2 x 2 members), then 2 with 4 (1 link
    over 2 x 1); the groups are numbered by their lowest label."""
    from gmvc.core.mixture_init import merge_by_neighbours
    assign = jnp.array([0, 0, 1, 1, 2, 2, 4])
    table = jnp.array([[2], [3], [0], [1], [5], [4], [4]])       # 0-1 linked four times, 2-4 once, 1-2 never
    np.testing.assert_array_equal(merge_by_neighbours(assign, table, 5, 3), [0, 0, 1, 0, 2])
    np.testing.assert_array_equal(merge_by_neighbours(assign, table, 5, 2), [0, 0, 1, 0, 1])


def test_overclustered_fit_follows_the_graph_where_a_plain_fit_cuts_across():
    """Two long strips (x uniform over 12, y 2.5 apart with standard deviation 0.25): a 2-component
    fit cuts both across the middle (measured: 0.52 of the points with their strip), while 16
    components merged along the 10-nearest-neighbour graph give one component per strip."""
    from gmvc.core.mixture_init import fit_diag_gmm_merged
    rng = np.random.default_rng(0)
    n = 400
    y = np.repeat([0, 1], n)
    z = np.c_[rng.uniform(-6, 6, 2 * n), 2.5 * y + 0.25 * rng.standard_normal(2 * n)].astype(np.float32)
    table = neighbours.knn_table(z, 10)

    def agreement(prior):
        a = np.asarray(jnp.argmax(mixture.log_joint(jnp.asarray(z), jax.nn.log_softmax(prior["logits"]),
                                                    prior["means"], prior["log_vars"]), -1))
        return max(np.mean(a == y), np.mean(a != y))

    merged = fit_diag_gmm_merged(jax.random.key(0), jnp.asarray(z), jnp.asarray(table), 2, 16, n_init=3,
                                 select="balance")
    assert agreement(merged) == 1.0
    np.testing.assert_allclose(np.asarray(merged["means"])[:, 1], [0.0, 2.5] if merged["means"][0, 1] < 1 else
                               [2.5, 0.0], atol=0.05)
    assert agreement(fit_diag_gmm(jax.random.key(0), jnp.asarray(z), 2, em_iters=20, n_init=3, select="balance")) < 0.6


def test_balanced_fit_uses_its_components_equally():
    """Four equal blobs 2 apart (standard deviation 0.8) overlap: plain EM lets one component take
    more than its share (measured: 283-292 of 1,000 points, weight 0.28-0.29); with
    `balanced` each E-step's weights make the mean responsibilities equal, so every fit ends with
    weights of 0.25 and hard counts within a few points of 250. balanced_logits itself makes the
    usage of any prior uniform."""
    from gmvc.core.mixture_init import balanced_logits, cluster_counts, mean_usage
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    z = jnp.asarray((centres[np.repeat(np.arange(4), 250)] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32))
    keys = jax.random.split(jax.random.key(1), 6)
    fits = jax.jit(lambda keys: {b: jax.vmap(lambda r: fit_diag_gmm(r, z, 4, 50, 20, 1, balanced=b))(keys)
                                 for b in (False, True)})(keys)
    counts = {b: np.stack([np.asarray(cluster_counts(_fit_i(fits[b], i), z)) for i in range(6)]) for b in fits}
    assert counts[False].max(1).min() > 270
    assert np.abs(counts[True] - 250).max() <= 10                                        # measured: 4
    np.testing.assert_allclose(np.exp(np.asarray(fits[True]["logits"])), 0.25, atol=0.002)
    uneven = {**_fit_i(fits[False], 0), "logits": jnp.log(jnp.array([0.55, 0.25, 0.15, 0.05]))}
    assert np.abs(np.asarray(mean_usage(uneven["logits"], uneven, z)) - 0.25).max() > 0.1
    np.testing.assert_allclose(mean_usage(balanced_logits(uneven, z), uneven, z), 0.25, atol=1e-3)


@pytest.mark.parametrize("phases, gmm_init, message", [
    (("pretrain", "gmm_init", "main"), {"smooth": 1}, "'gmm_init': smooth=1 needs a neighbours phase before it"),
    (("knn", "pretrain", "gmm_init", "main"), {"smooth": 1}, "with no train phase in between"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": -1}, "smooth must be a whole number >= 0, got -1"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": True}, "smooth must be a whole number >= 0, got True"),
    (("pretrain", "knn", "gmm_init", "main"), {"smooth": 1, "method": "minibatch"}, "smooth needs method 'em'"),
    (("pretrain", "gmm_init", "main"), {"keep_current": "yes"}, "keep_current must be true or false, got 'yes'"),
    (("pretrain", "gmm_init", "main"), {"balanced": 1}, "balanced must be true or false, got 1"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": True}, "balanced_above must be a number >= 0"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": -0.1}, "balanced_above must be a number >= 0"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": 0.03, "balanced": True}, "set one of them"),
    (("pretrain", "gmm_init", "main"), {"balanced_above": 0.03}, "'gmm_init': balanced_above needs a prior fitted"),
    (("pretrain", "gmm_init", "main"), {"overcluster": 30}, "'gmm_init': overcluster=30 needs a neighbours phase"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": 10}, "above model.num_clusters=10, got 10"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": True}, "overcluster must be 0 .off. or a whole"),
    (("pretrain", "knn", "gmm_init", "main"), {"overcluster": 30, "method": "minibatch"},
     "overcluster needs method 'em'"),
])
def test_bad_init_prior_settings_are_named(phases, gmm_init, message):
    c = base_config()
    c.data.source = "digits"
    c.model.name = "vade"
    c.train.phases = phases
    c.phases = {"pretrain": {"kind": "train", "steps": 10, "objective": {"recon": 1.0}, "trainable": ("net",)},
                "knn": {"kind": "neighbours", "k": 5},
                "gmm_init": {"kind": "init_prior", **gmm_init},
                "main": {"kind": "train", "steps": -1}}
    with pytest.raises(ConfigError, match=message):
        build_phases(c)


def test_minibatch_init_prior_uses_a_subsample():
    """The init_prior phase with method "minibatch" (batches * batch_size = 500 of 2000 points; k-means
    then moments, em_iters ignored) through train.init_prior_phase, with an identity embedding."""
    from gmvc.training.embedding_phases import EmbeddingPhases
    z, y = _blobs(2000, seed=1)
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "method": "minibatch", "kmeans_iters": 50, "em_iters": 20,
            "n_init": N_INIT, "select": "likelihood", "batches": 5, "batch_size": 100}
    params = {"net": {"w": jnp.ones((1, 2))},
              "prior": {"logits": jnp.zeros((1, 4)), "means": jnp.zeros((1, 4, 3)), "log_vars": jnp.zeros((1, 4, 3))}}
    new = EmbeddingPhases(model, 1, 128).init_prior(Phase("gmm_init", "init_prior", 0, 0, spec), params, z,
                                                    jax.random.key(5))
    _assert_trees_equal(new["net"], params["net"])
    assert jax.tree.map(np.shape, new["prior"]) == jax.tree.map(np.shape, params["prior"])
    prior = jax.tree.map(lambda a: a[0], new["prior"])
    weights, means, variances = _matched(prior)
    # Hard assignments of exactly 500 points: every weight is a whole number of points out of 500.
    counts = weights * 500
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)
    assert counts.sum() == pytest.approx(500, abs=1e-2)
    np.testing.assert_allclose(means, BLOB_MEANS, atol=0.1)
    np.testing.assert_allclose(weights, BLOB_WEIGHTS, atol=0.05)
    # ~100 points per blob: a sample variance's standard error is ~14% of the truth; allow 3 of them.
    np.testing.assert_allclose(variances, BLOB_STDS**2, rtol=0.4)


@pytest.mark.parametrize("phases, optim, ok", [
    (("pretrain", "refit", "main"), {}, False),                    # pretrain trains the net only
    (("pretrain", "gmm_init", "refit", "main"), {}, True),          # a fitted prior
    (("main", "refit", "pretrain"), {}, True),                      # a trained prior
    (("main", "refit", "pretrain"), {"prior_lr": 0.0}, False),      # the prior frozen
    (("main", "refit", "pretrain"), {"lr": 0.0}, False),            # prior_lr -1 follows the net's rate of 0
    (("main", "refit", "pretrain"), {"lr": 0.0, "prior_lr": 1e-3}, True),
])
def test_keep_current_needs_a_prior_fitted_or_trained_before_it(phases, optim, ok):
    c = base_config()
    c.data.source = "digits"
    c.model.name = "vade"
    c.train.steps = 20
    c.train.phases = phases
    c.optim.update(optim)
    c.phases = {"pretrain": {"kind": "train", "steps": 10, "objective": {"recon": 1.0}, "trainable": ("net",)},
                "gmm_init": {"kind": "init_prior"},
                "refit": {"kind": "init_prior", "keep_current": True},
                "main": {"kind": "train", "steps": 10}}
    if ok:
        assert [p.name for p in build_phases(c)] == list(phases)
    else:
        with pytest.raises(ConfigError, match="phase 'refit': keep_current needs a prior fitted or trained before it"):
            build_phases(c)


def test_keep_current_keeps_the_better_partition():
    """init_prior with keep_current: a restart keeps its prior unless the new fit partitions the
    embeddings more evenly (select balance, by each point's most likely component). Restart 0's
    prior is the blobs' own and the fit merges two blobs: kept. Restart 1's prior has four equal
    components, whose soft usage is perfectly even (imbalance 0) but whose partition puts every
    point in one: the fit replaces it."""
    from gmvc.core.mixture_init import cluster_counts, imbalance, kl_to_uniform

    def hard_imbalance(prior, zz):                    # what keep_or_replace scores by balance
        return kl_to_uniform(cluster_counts(prior, zz) / len(zz))
    from gmvc.training.embedding_phases import EmbeddingPhases
    z, y = _blobs(2000, seed=3)
    truth = {"logits": jnp.log(jnp.asarray(BLOB_WEIGHTS, jnp.float32)), "means": jnp.asarray(BLOB_MEANS, jnp.float32),
             "log_vars": jnp.asarray(np.log(BLOB_STDS**2), jnp.float32)}
    same = {"logits": jnp.zeros(4), "means": jnp.tile(jnp.asarray(z.mean(0)), (4, 1)), "log_vars": jnp.zeros((4, 3))}
    merged = {**truth, "means": truth["means"].at[1].set(truth["means"][0])}     # blob 1's points go to 0 or 3
    permuted = jax.tree.map(lambda a: a[jnp.array([2, 0, 3, 1])], truth)        # the same partition, relabelled
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "select": "balance", "keep_current": True}
    params = {"net": {}, "prior": jax.tree.map(lambda a, b: jnp.stack([a, b]), truth, same)}
    said = []
    phases = EmbeddingPhases(model, 2, 512)
    phases.fits["refit"] = lambda rng, restart, zz, table: (merged, permuted)[restart]
    new = phases.init_prior(Phase("refit", "init_prior", 0, 0, spec), params, z, jax.random.key(0),
                            echo=lambda m, **k: said.append(m))
    for r, want in ((0, truth), (1, permuted)):
        _assert_trees_equal(jax.tree.map(lambda a: a[r], new["prior"]), want)
    true_kl = float(hard_imbalance(truth, jnp.asarray(z)))
    merged_kl = float(hard_imbalance(merged, jnp.asarray(z)))
    assert true_kl < 0.02 < merged_kl            # measured: 0.010 and 0.036
    assert said[0].startswith(f"phase 'refit' restart 0: kept the current prior (partition's imbalance: current "
                              f"{true_kl:.4f}, new fit {merged_kl:.4f}; cluster sizes of the 2000 embeddings")
    assert said[1].startswith(f"phase 'refit' restart 1: the new fit replaces the prior (partition's imbalance: "
                              f"current {np.log(4):.4f}, new fit {true_kl:.4f}")
    np.testing.assert_array_equal(cluster_counts(same, jnp.asarray(z)), [2000, 0, 0, 0])
    assert f"current [2000, 0, 0, 0], new fit {sorted(np.bincount(y).tolist(), reverse=True)}" in said[1]
    # Why the partition, not the soft usage: by soft usage the four equal components look perfect.
    assert float(imbalance(same, jnp.asarray(z))) < 1e-6 < float(imbalance(truth, jnp.asarray(z)))
    assert float(hard_imbalance(same, jnp.asarray(z))) == pytest.approx(np.log(4), rel=1e-5)
    counts = np.bincount(y, minlength=4) / len(y)
    assert float(hard_imbalance(truth, jnp.asarray(z))) == pytest.approx(np.log(4) + np.sum(counts * np.log(counts)),
                                                                         rel=1e-3)


def test_balanced_above_fits_balanced_only_where_the_partition_is_uneven():
    """balanced_above on four equal overlapping blobs (those of the test above): restart 0's prior
    is the blobs' own (partition imbalance about 0.001), restart 1's has blob 1's mean moved onto
    blob 0's (about 0.1). At 0.02 restart 0 is fitted by the plain fit as it is, restart 1 by the
    balanced fit, compiled from the spec where none is given: its components take 250 points
    each within a few, where plain EM's largest takes more than 270."""
    from gmvc.core.mixture_init import cluster_counts, kl_to_uniform
    from gmvc.training.embedding_phases import EmbeddingPhases
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], np.float32)
    z = (centres[np.repeat(np.arange(4), 250)] + 0.8 * rng.standard_normal((1000, 2))).astype(np.float32)
    truth = {"logits": jnp.full(4, -np.log(4.0)), "means": jnp.asarray(centres), "log_vars": jnp.full((4, 2), np.log(0.64))}
    merged = {**truth, "means": truth["means"].at[1].set(truth["means"][0])}
    model = types.SimpleNamespace(embed=lambda params, x: x, num_clusters=4)
    spec = {**INIT_DEFAULTS, "kind": "init_prior", "select": "balance", "balanced_above": 0.02}
    params = {"net": {}, "prior": jax.tree.map(lambda a, b: jnp.stack([a, b]), truth, merged)}
    plain_calls, said = [], []

    def plain(rng, restart, zz, table):
        plain_calls.append(restart)
        return merged
    phases = EmbeddingPhases(model, 2, 512)
    phases.fits["refit"] = plain
    new = phases.init_prior(Phase("refit", "init_prior", 0, 0, spec), params, z, jax.random.key(0),
                            echo=lambda m, **k: said.append(m))
    assert plain_calls == [0]
    _assert_trees_equal(jax.tree.map(lambda a: a[0], new["prior"]), merged)
    true_kl, merged_kl = (float(kl_to_uniform(cluster_counts(p, jnp.asarray(z)) / len(z))) for p in (truth, merged))
    assert true_kl < 0.005 and merged_kl > 0.05
    assert said == [f"phase 'refit' restart 0: the current partition's imbalance {true_kl:.4f} is within "
                    f"balanced_above=0.02: a plain fit",
                    f"phase 'refit' restart 1: the current partition's imbalance {merged_kl:.4f} is above "
                    f"balanced_above=0.02: a balanced fit"]
    balanced = jax.tree.map(lambda a: a[1], new["prior"])
    np.testing.assert_allclose(np.exp(balanced["logits"]), 0.25, atol=0.002)
    assert np.abs(np.asarray(cluster_counts(balanced, jnp.asarray(z))) - 250).max() <= 10


def test_keep_current_by_likelihood_and_with_nan():
    """select likelihood: the more likely prior wins (one restart: no restart in the message); a
    current prior that is NaN gives way to a finite fit, and a NaN fit never replaces."""
    from gmvc.training.embedding_phases import keep_or_replace
    z, _ = _blobs(1000, seed=5)
    z = jnp.asarray(z)
    truth = {"logits": jnp.log(jnp.asarray(BLOB_WEIGHTS, jnp.float32)), "means": jnp.asarray(BLOB_MEANS, jnp.float32),
             "log_vars": jnp.asarray(np.log(BLOB_STDS**2), jnp.float32)}
    wide = {**truth, "log_vars": truth["log_vars"] + 2.0}                    # the same means, 7 times the variance
    nan = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), truth)
    phase = Phase("refit", "init_prior", 0, 0, {"select": "likelihood"})
    said = []
    echo = lambda m, **k: said.append(m)
    assert keep_or_replace(phase, wide, truth, z, echo=echo) is truth
    assert keep_or_replace(phase, truth, wide, z, echo=echo) is truth
    ll_true, ll_wide = float(mean_log_likelihood(truth, z)), float(mean_log_likelihood(wide, z))
    assert ll_true > ll_wide + 0.5
    assert said[0].startswith(f"phase 'refit': the new fit replaces the prior (mean log-likelihood: current "
                              f"{ll_wide:.4f}, new fit {ll_true:.4f}; cluster sizes of the 1000 embeddings fitted: ")
    assert said[1].startswith("phase 'refit': kept the current prior")
    assert keep_or_replace(phase, nan, truth, z) is truth
    assert keep_or_replace(phase, truth, nan, z) is truth
    balance = Phase("refit", "init_prior", 0, 0, {"select": "balance"})
    assert keep_or_replace(balance, truth, nan, z) is truth          # a NaN prior partitions into one cluster


def test_init_prior_phases_with_one_fit_share_its_program():
    from gmvc.recipes import vade_mnist5k
    from gmvc.training.embedding_phases import make_fits
    c = vade_mnist5k()
    fits = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))
    assert set(fits) == {"gmm_init", "gmm_init2", "gmm_init3"}
    # the refits share one program; the first fit (80 components, not 30) has its own
    assert fits["gmm_init2"] is fits["gmm_init3"] and fits["gmm_init"] is not fits["gmm_init2"]
    # the balanced fits of refits with balanced_above: one program for the run, not the plain one
    c.unlock()
    c.phases.gmm_init2.balanced_above = c.phases.gmm_init3.balanced_above = 0.03
    balanced = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10), balanced=True)
    assert set(balanced) == {"gmm_init2", "gmm_init3"} and balanced["gmm_init2"] is balanced["gmm_init3"]
    assert balanced["gmm_init2"] is not make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))["gmm_init2"]
    c.phases.gmm_init2.n_init = 5
    fits = make_fits(build_phases(c), types.SimpleNamespace(num_clusters=10))
    assert fits["gmm_init3"] is not fits["gmm_init2"]


def test_cluster_counts_do_not_depend_on_the_chunking():
    from gmvc.core.mixture_init import cluster_counts
    z, _ = _blobs(1000, seed=4)
    prior = fit_diag_gmm(jax.random.key(1), jnp.asarray(z), 4, em_iters=5)
    whole = np.asarray(cluster_counts(prior, jnp.asarray(z)))
    np.testing.assert_array_equal(np.asarray(cluster_counts(prior, jnp.asarray(z), chunk_size=300)), whole)
    assert whole.sum() == 1000 and whole.min() > 150


# ---------------------------------------------------------------- 4. S3VDC's periodic beta schedule

def _periodic_cubic_by_hand(step, value=1.0, ramp=100, hold=50, start=5e-4):
    frac = min((step % (ramp + hold)) / ramp, 1.0)
    return start + (value - start) * frac**3


def test_periodic_cubic_values():
    spec = {"kind": "periodic_cubic", "value": 1.0, "ramp_steps": 100, "hold_steps": 50, "start": 5e-4}
    expected = {0: 5e-4, 50: 5e-4 + (1 - 5e-4) / 8, 100: 1.0, 120: 1.0, 149: 1.0, 150: 5e-4,
                200: 5e-4 + (1 - 5e-4) / 8, 275: 1.0, 310: 5e-4 + (1 - 5e-4) * 0.1**3}
    for step, want in expected.items():
        assert want == pytest.approx(_periodic_cubic_by_hand(step), rel=1e-12)
    schedule = make_schedule(spec)
    for step, want in expected.items():
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(sorted(expected), jnp.int32))     # traced int32 steps
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), [expected[s] for s in sorted(expected)], rtol=1e-6)


def test_s3vdc_reference_beta_schedule():
    """S3VDC's reference beta: gamma = 5e-4 -> 1 along a cubic over 2500 steps, 2500 at 1, repeat."""
    ramp, hold, start = 2500, 2500, 5e-4
    schedule = make_schedule({"kind": "periodic_cubic", "value": 1.0, "start": start, "ramp_steps": ramp,
                              "hold_steps": hold})
    expected = {0: start, 1250: start + (1 - start) / 8, 2500: 1.0, 4999: 1.0, 5000: start,
                5625: start + (1 - start) / 64, 17500: 1.0}
    for step, want in expected.items():
        assert want == pytest.approx(_periodic_cubic_by_hand(step, 1.0, ramp, hold, start), rel=1e-12)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
    with pytest.raises(ConfigError, match="periodic_cubic"):
        make_schedule({"kind": "periodic_cubic", "value": 1.0, "ramp_steps": 0, "hold_steps": hold})


# ---------------------------------------------------------------- 5. phases switch the trainable groups

def _train_few_steps(params, tx, loss_fn, x, n=5, batch=50):
    train_step = steps.make_train_step(loss_fn, tx)

    def run(params, x):
        state = {"step": jnp.asarray(0, jnp.int32), "params": params, "opt_state": tx.init(params)}

        def body(state, i):
            batch_x = jax.lax.dynamic_slice_in_dim(x, (i % (len(x) // batch)) * batch, batch)
            return train_step(state, make_batch(batch_x), jax.random.fold_in(jax.random.key(7), i))

        state, aux = jax.lax.scan(body, state, jnp.arange(n))
        return state, aux

    state, aux = jax.jit(run)(params, jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(aux["loss"])))
    return state["params"], aux


@pytest.fixture(scope="module")
def tiny_vade():
    cfg = _vade_config()
    x = _uniform_data()
    model = make_model(cfg.model, x.shape[1:])
    params = jax.jit(model.init)(jax.random.key(0))
    # The objective reaches the prior (vade_kl), so only the optimizer can keep it fixed.
    loss_fn = make_objective(model, cfg.objective, cfg.terms)
    return cfg, model, params, loss_fn, x


@pytest.mark.parametrize("trainable", [("net",), ("net", "prior")])
def test_optimizer_freezes_untrained_groups(tiny_vade, trainable):
    cfg, model, params, loss_fn, x = tiny_vade
    new, aux = _train_few_steps(params, make_optimizer(cfg.optim, trainable=trainable), loss_fn, x)
    assert np.all(np.asarray(aux["grad_norm"]) > 0)
    for group in ("net", "prior"):
        if group in trainable:
            assert _max_abs_diff(new[group], params[group]) > 1e-4, group    # Adam moves every leaf ~ lr
            for a, b in zip(jax.tree.leaves(new[group]), jax.tree.leaves(params[group])):
                assert np.any(np.asarray(a) != np.asarray(b)), group
        else:
            _assert_trees_equal(new[group], params[group])                  # bit-identical


def test_lifted_step_trains_as_the_vmapped_step(tiny_vade):
    """steps.make_lifted_step with one restart (no vmap: the loss reads params[0], Adam updates the
    [1, ...] arrays as they are) against make_restarts_step's vmap of the plain step: the same
    parameters, moments, step counters and metrics after a few steps."""
    from gmvc.training import state as state_lib
    cfg, model, _, loss_fn, x = tiny_vade
    tx = make_optimizer(cfg.optim)
    params = state_lib.init_params(model.init, jax.random.key(3), 1)
    runs = {}
    for name, step_fn in (("vmapped", steps.make_restarts_step(steps.make_train_step(loss_fn, tx), 1)),
                          ("lifted", steps.make_lifted_step(loss_fn, tx, 1))):
        step_fn, s, auxes = jax.jit(step_fn), state_lib.create_state(params, tx), []
        for i in range(4):
            s, aux = step_fn(s, make_batch(jnp.asarray(x[i * 40:(i + 1) * 40])), steps.step_keys(jax.random.key(5), i, 40))
            auxes.append(aux)
        runs[name] = (s, auxes)
    (a, aux_a), (b, aux_b) = runs["vmapped"], runs["lifted"]
    assert int(b["step"]) == 4
    assert _max_abs_diff(b["params"], params) > 1e-4                # it trained
    for u, v in zip(jax.tree.leaves((a["params"], a["opt_state"])), jax.tree.leaves((b["params"], b["opt_state"]))):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=2e-4, atol=2e-6)
    counts = [np.asarray(c) for c in jax.tree.leaves(b["opt_state"]) if c.dtype == jnp.int32]
    assert counts and all(np.array_equal(c, [4]) for c in counts)
    for p, q in zip(aux_a, aux_b):
        assert q["loss"].shape == q["grad_norm"].shape == (1,)
        np.testing.assert_allclose(np.asarray(q["loss"]), np.asarray(p["loss"]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(q["grad_norm"]), np.asarray(p["grad_norm"]), rtol=1e-4)


def test_chunk_measures_the_gradient_norm_of_its_last_step(tiny_vade):
    """make_train_chunk averages the metrics over its active steps but takes grad_norm from the
    last active one (the others skip the norm): against the same steps one at a time
    (make_indexed_step reads the same batches and measures every step)."""
    from gmvc.training import state as state_lib
    cfg, model, _, loss_fn, x = tiny_vade
    tx = make_optimizer(cfg.optim)
    step_fn = steps.make_lifted_step(loss_fn, tx, 1)
    s0 = state_lib.create_state(state_lib.init_params(model.init, jax.random.key(3), 1), tx)
    x, rng, bounds = jnp.asarray(x), jax.random.key(11), jnp.asarray([0, 5], jnp.int32)
    one = jax.jit(steps.make_indexed_step(step_fn, num_examples=len(x), batch_size=40))
    s, auxes = s0, []
    for _ in range(5):
        s, aux = one(s, x, rng, bounds)
        auxes.append(aux)
    norms = [float(a["grad_norm"][0]) for a in auxes]
    assert len(set(norms)) == 5 and min(norms) > 0
    chunk = jax.jit(steps.make_train_chunk(step_fn, num_examples=len(x), batch_size=40, chunk_len=3))
    s, first = chunk(s0, x, rng, bounds)                # steps 0, 1, 2
    s, second = chunk(s, x, rng, bounds)                # steps 3, 4 (the third is past the end)
    assert int(s["step"]) == 5
    for metrics, active in ((first, range(0, 3)), (second, range(3, 5))):
        np.testing.assert_allclose(float(metrics["grad_norm"][0]), norms[active[-1]], rtol=1e-4)
        np.testing.assert_allclose(float(metrics["loss"][0]), np.mean([float(auxes[i]["loss"][0]) for i in active]),
                                   rtol=1e-4)


def _phase_config(tmp_path, steps_total=21):
    """Pretrain 20 steps (net only), fit the prior by EM, then the rest (1 step) with
    everything; one step per chunk so that checkpoints land at 20 (pretrain's end) and 21."""
    c = _vade_config()
    np.savez(tmp_path / "data.npz", x=_uniform_data())
    c.data.source = f"file:{tmp_path / 'data.npz'}"
    c.train.steps = steps_total
    c.train.batch_size = 50
    c.train.log_every = 1
    c.train.checkpoint_every = 20
    c.train.max_checkpoints = 5
    c.eval.batch_size = 100
    c.eval.plot_points = 60
    c.train.phases = ("pretrain", "init", "main")
    # vade_kl in the pretraining objective gives the prior gradients: with recon alone they are zero
    # and Adam would leave the prior unchanged even if it were trainable.
    c.phases = {"pretrain": {"kind": "train", "steps": 20, "objective": {"recon": 1.0, "vade_kl": 1.0},
                             "trainable": ("net",)},
                "init": {"kind": "init_prior", "method": "em", "kmeans_iters": 10, "em_iters": 5},
                "main": {"kind": "train", "steps": -1}}
    return c


def _mixture_moments(prior):
    """The mean and per-dimension variance of a diagonal mixture (float64)."""
    pi = special.softmax(np.asarray(prior["logits"], np.float64))
    means, variances = np.asarray(prior["means"], np.float64), np.exp(np.asarray(prior["log_vars"], np.float64))
    mean = pi @ means
    return mean, pi @ (variances + means**2) - mean**2


def test_phases_through_the_training_loop(tmp_path):
    from gmvc.run.checkpoint import Checkpointer
    from gmvc.core.mixture_init import MIN_VAR
    from gmvc.training.state import init_params
    from gmvc.trainer import train_and_evaluate
    from gmvc.training.embedding_phases import EmbeddingPhases
    c = _phase_config(tmp_path)
    phases = build_phases(c)
    assert [(p.name, p.kind, p.start, p.end) for p in phases] == [
        ("pretrain", "train", 0, 20), ("init", "init_prior", 20, 20), ("main", "train", 20, 21)]
    assert phases[0].spec["trainable"] == ("net",) and phases[2].spec["trainable"] == ("net", "prior")
    assert phases[2].spec["objective"] == {"recon": 1.0, "vade_kl": 1.0}

    summary = train_and_evaluate(c, tmp_path / "run", echo=lambda *a, **k: None)
    assert summary["steps"] == 21 and summary["compiles"] == 2 and summary["num_samples"] == 200

    model = make_model(c.model, (DX,))
    init_rng = jax.random.split(jax.random.key(c.seed), 4)[0]     # as train_and_evaluate draws it
    initial = init_params(model.init, init_rng, 1)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    try:
        assert ckpt._manager.all_steps() == [20, 21]
        after_pretrain, final = (ckpt._manager.restore(s)["params"] for s in (20, 21))
    finally:
        ckpt.close()
    # Pretraining: the net moved, the prior is bit-identical to its initialisation.
    _assert_trees_equal(after_pretrain["prior"], initial["prior"])
    assert _max_abs_diff(after_pretrain["net"], initial["net"]) > 1e-3
    # The init phase fitted the prior to the pretrained net's embeddings (one Adam step of ~lr = 1e-3
    # since): whatever the EM fit, its mixture has the embeddings' mean and per-dimension variance.
    z = np.asarray(jax.jit(model.embed)(jax.tree.map(lambda a: a[0], after_pretrain), _uniform_data()), np.float64)
    mean, var = _mixture_moments(jax.tree.map(lambda a: a[0], final["prior"]))
    np.testing.assert_allclose(mean, z.mean(0), atol=5e-3)
    np.testing.assert_allclose(var, z.var(0) + MIN_VAR, rtol=2e-2)
    init_mean, init_var = _mixture_moments(jax.tree.map(lambda a: a[0], initial["prior"]))
    assert np.abs(init_mean - z.mean(0)).max() > 0.05 or np.abs(init_var / (z.var(0) + MIN_VAR) - 1).max() > 0.1
    # Three clusters fitted, not one copied three times.
    assert np.ptp(np.asarray(final["prior"]["means"])[0], axis=0).max() > 0.1 * np.sqrt(z.var(0).max())
    # The main phase trains the prior too: redo the init phase as the loop does (same key), then every
    # prior leaf has taken one Adam step of size ~lr = 1e-3 from that fit.
    prior_rng = jax.random.split(jax.random.key(c.seed), 4)[3]
    fitted = EmbeddingPhases(model, 1, c.eval.batch_size).init_prior(phases[1], after_pretrain, _uniform_data(),
                                                                     jax.random.fold_in(prior_rng, 1))
    for a, b in zip(jax.tree.leaves(final["prior"]), jax.tree.leaves(fitted["prior"])):
        step = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        assert step.max() < 1.01e-3 and np.median(step) > 5e-4, step


def test_build_phases_errors(tmp_path):
    c = _phase_config(tmp_path)
    c.phases.pretrain.trainable = ("net", "encoder")
    with pytest.raises(ConfigError, match="unknown parameter group.*encoder"):
        build_phases(c)

    c = _phase_config(tmp_path)
    c.phases.pretrain.steps = -1
    with pytest.raises(ConfigError, match="only one phase.*steps=-1") as e:
        build_phases(c)
    assert "pretrain" in str(e.value) and "main" in str(e.value)

    c = _phase_config(tmp_path, steps_total=20)          # pretrain takes all 20: nothing left for main
    with pytest.raises(ConfigError, match="leaves no steps"):
        build_phases(c)

    c = _phase_config(tmp_path)
    c.phases.init.select = "accuracy"
    with pytest.raises(ConfigError, match="phase 'init': unknown select 'accuracy'"):
        build_phases(c)


def test_softplus_matches_jax_value_and_gradient():
    """The Bernoulli likelihood's softplus gives jax.nn.softplus's values and gradient, extremes
    included (no overflow at +-100, sigmoid(0) = 0.5, NaN passes through)."""
    from gmvc.models.base import softplus
    x = jnp.array([-100.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 3.0, 20.0, 100.0])
    np.testing.assert_allclose(softplus(x), jax.nn.softplus(x), rtol=1e-6, atol=1e-30)
    grad = jax.vmap(jax.grad(softplus))(x)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(x), rtol=1e-6, atol=1e-30)
    assert float(grad[4]) == 0.5 and float(softplus(100.0)) == 100.0
    assert np.isnan(float(softplus(jnp.nan)))

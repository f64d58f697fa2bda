"""gmvc/core/mixture.py against scipy (float64 numpy references) and Monte-Carlo estimates."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from gmvc.core import mixture

B, K, D = 7, 3, 4


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, (B, D))
    logits = rng.normal(0.0, 1.0, K)
    means = rng.normal(0.0, 2.0, (K, D))
    log_vars = rng.uniform(-1.5, 1.0, (K, D))
    return z, logits, means, log_vars


def _scipy_component_log_probs(z, means, log_vars):
    """[B, K] log N(z_b | mu_k, diag exp(log_var_k)) with scipy, float64."""
    return np.stack([stats.multivariate_normal(means[k], np.diag(np.exp(log_vars[k]))).logpdf(z)
                     for k in range(len(means))], axis=1)


def _f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_diag_normal_log_prob_matches_scipy(inputs):
    z, _, means, log_vars = inputs
    want = stats.multivariate_normal(means[0], np.diag(np.exp(log_vars[0]))).logpdf(z)   # [B]
    got = mixture.diag_normal_log_prob(*_f32(z, means[0], log_vars[0]))
    assert got.shape == (B,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_diag_normal_log_prob_known_value():
    # Standard normal in 1-D at 0: -0.5 log(2 pi); at x=2 with var 4 (log_var = log 4): -0.5 log(8 pi) - 0.5.
    got = mixture.diag_normal_log_prob(jnp.array([[0.0], [2.0]]), jnp.zeros(1), jnp.array([0.0, np.log(4.0)])[:, None])
    np.testing.assert_allclose(np.asarray(got), [-0.5 * np.log(2 * np.pi), -0.5 * np.log(8 * np.pi) - 0.5], rtol=1e-6)


def test_component_log_probs_shared_mixture(inputs):
    z, _, means, log_vars = inputs
    got = mixture.component_log_probs(*_f32(z, means, log_vars))
    assert got.shape == (B, K)
    np.testing.assert_allclose(np.asarray(got), _scipy_component_log_probs(z, means, log_vars), rtol=1e-5, atol=1e-4)


def test_component_log_probs_per_sample_mixture():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(B, D))
    means = rng.normal(size=(B, K, D))
    log_vars = rng.uniform(-1.0, 1.0, (B, K, D))
    got = np.asarray(mixture.component_log_probs(*_f32(z, means, log_vars)))
    want = np.array([[stats.multivariate_normal(means[b, k], np.diag(np.exp(log_vars[b, k]))).logpdf(z[b])
                      for k in range(K)] for b in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_log_joint_normalises_log_pi(inputs):
    z, logits, means, log_vars = inputs
    log_pi = logits - special.logsumexp(logits)
    want = log_pi + _scipy_component_log_probs(z, means, log_vars)
    got = mixture.log_joint(*_f32(z, logits, means, log_vars))    # unnormalised logits are accepted
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    got_shift = mixture.log_joint(*_f32(z, logits + 3.7, means, log_vars))
    np.testing.assert_allclose(np.asarray(got_shift), want, rtol=1e-5, atol=1e-4)


def test_log_responsibilities_exact_posterior(inputs):
    z, logits, means, log_vars = inputs
    pi = np.exp(logits) / np.exp(logits).sum()
    dens = np.exp(_scipy_component_log_probs(z, means, log_vars))    # [B, K]
    posterior = pi * dens / (pi * dens).sum(axis=1, keepdims=True)
    got = np.exp(np.asarray(mixture.log_responsibilities(*_f32(z, logits, means, log_vars)), np.float64))
    assert got.shape == (B, K)
    np.testing.assert_allclose(got, posterior, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), np.ones(B), atol=1e-6)


def test_log_density_matches_scipy_mixture(inputs):
    z, logits, means, log_vars = inputs
    pi = np.exp(logits) / np.exp(logits).sum()
    want = np.log((pi * np.exp(_scipy_component_log_probs(z, means, log_vars))).sum(axis=1))
    got = mixture.log_density(*_f32(z, logits, means, log_vars))
    assert got.shape == (B,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_log_responsibilities_stable_far_from_means():
    # Log-densities around -1e6: naive exp() underflows to 0/0; the log-space version must not.
    rng = np.random.default_rng(2)
    means = rng.normal(size=(K, D))
    log_vars = np.full((K, D), -1.0)
    z = np.full((5, D), 1e3)
    z[1] = -1e3
    z[2, ::2] = -1e3
    logits = np.zeros(K)
    got = np.asarray(mixture.log_responsibilities(*_f32(z, logits, means, log_vars)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(np.exp(got.astype(np.float64)).sum(axis=1), np.ones(5), atol=1e-5)
    want = _scipy_component_log_probs(z, means, log_vars)
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert np.all(np.isfinite(np.asarray(mixture.log_density(*_f32(z, logits, means, log_vars)))))


def _mc_kl(rng, mean_q, var_q, log_p, n=200_000):
    """Monte-Carlo KL(q || p) with its standard error, q diagonal Gaussian, float64."""
    x = mean_q + np.sqrt(var_q) * rng.standard_normal((n, len(mean_q)))
    log_q = stats.multivariate_normal(mean_q, np.diag(var_q)).logpdf(x)
    diff = log_q - log_p(x)
    return diff.mean(), diff.std() / np.sqrt(n)


def test_kl_diag_normals_monte_carlo():
    rng = np.random.default_rng(3)
    mean_q, mean_p = rng.normal(size=3), rng.normal(size=3)
    log_var_q, log_var_p = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
    mc, se = _mc_kl(rng, mean_q, np.exp(log_var_q),
                    stats.multivariate_normal(mean_p, np.diag(np.exp(log_var_p))).logpdf)
    got = float(mixture.kl_diag_normals(*_f32(mean_q, log_var_q, mean_p, log_var_p)))
    assert se < 0.02   # the estimate is precise enough to tell a wrong closed form (KL here ~ 10.6)
    # 200k seeded samples: the closed form must lie within 5 standard errors of the estimate.
    assert abs(got - mc) < 5 * se + 1e-5, (got, mc, se)
    # Same distribution: KL is exactly 0.
    assert float(mixture.kl_diag_normals(*_f32(mean_q, log_var_q, mean_q, log_var_q))) == pytest.approx(0.0, abs=1e-6)


def test_kl_diag_normals_batched_shape():
    q = jnp.zeros((B, 1, D)), jnp.zeros((B, 1, D))
    p = jnp.ones((B, K, D)), jnp.zeros((B, K, D))
    got = mixture.kl_diag_normals(*q, *p)
    assert got.shape == (B, K)
    np.testing.assert_allclose(np.asarray(got), np.full((B, K), 0.5 * D), rtol=1e-6)   # 0.5 * |dmu|^2


def test_kl_standard_normal_monte_carlo():
    rng = np.random.default_rng(4)
    mean, log_var = rng.normal(size=4), rng.uniform(-1, 1, 4)
    mc, se = _mc_kl(rng, mean, np.exp(log_var), stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf)
    got = float(mixture.kl_standard_normal(*_f32(mean, log_var)))
    assert se < 0.02
    assert abs(got - mc) < 5 * se + 1e-5, (got, mc, se)
    same = float(mixture.kl_diag_normals(*_f32(mean, log_var, np.zeros(4), np.zeros(4))))
    assert got == pytest.approx(same, rel=1e-6)


def test_categorical_entropy_matches_scipy():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(K), size=B)
    got = mixture.categorical_entropy(jnp.asarray(np.log(p), jnp.float32))
    np.testing.assert_allclose(np.asarray(got), stats.entropy(p, axis=-1), rtol=1e-5, atol=1e-6)
    assert float(mixture.categorical_entropy(jnp.full(K, -np.log(K)))) == pytest.approx(np.log(K), rel=1e-6)


def test_categorical_entropy_underflowed_probability_is_zero():
    # A probability that underflows to 0 with a finite log contributes 0 * log p = 0.
    log_p = jax.nn.log_softmax(jnp.array([0.0, -200.0, -300.0]))
    assert float(mixture.categorical_entropy(log_p)) == pytest.approx(0.0, abs=1e-6)


def test_categorical_entropy_exact_zero_probability():
    # 0 * log 0 counts as 0 (was NaN before 9af6ae0), and so does its gradient.
    log_p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
    assert float(mixture.categorical_entropy(log_p)) == pytest.approx(np.log(2.0), rel=1e-6)
    grad = np.asarray(jax.grad(mixture.categorical_entropy)(log_p))
    np.testing.assert_allclose(grad, [-0.5 * (1 + np.log(0.5))] * 2 + [0.0], rtol=1e-6)   # -p (1 + log p)


def test_reparameterize_moments():
    mean, log_var = jnp.array([1.0, -2.0]), jnp.array([0.0, np.log(0.25)])
    x = mixture.reparameterize(jax.random.PRNGKey(0), jnp.broadcast_to(mean, (100_000, 2)),
                               jnp.broadcast_to(log_var, (100_000, 2)))
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0], atol=0.02)   # se = 0.003 / 0.0016
    np.testing.assert_allclose(x.std(0), [1.0, 0.5], rtol=0.02)


def test_the_learned_prior_as_a_distrax_distribution_matches_gmvcs_mixture_maths():
    """distrax's log_prob of model.prior_distribution equals mixture.log_density on the same
    parameters (VaDE), and its samples fall where the components put them."""
    import jax
    import jax.numpy as jnp
    from gmvc.core import mixture
    from gmvc.recipes import vade_digits
    from gmvc.models import make_model
    c = vade_digits()
    model = make_model(c.model, (8, 8, 1))
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    prior = {"logits": jnp.asarray(rng.normal(size=10), jnp.float32),
             "means": jnp.asarray(rng.normal(size=(10, 10)) * 3, jnp.float32),
             "log_vars": jnp.asarray(rng.normal(size=(10, 10)) * 0.3, jnp.float32)}
    params = {**params, "prior": prior}
    dist = model.prior_distribution(params)
    z = jnp.asarray(rng.normal(size=(50, 10)) * 3, jnp.float32)
    np.testing.assert_allclose(dist.log_prob(z), mixture.log_density(z, jax.nn.log_softmax(prior["logits"]),
                                                                     prior["means"], prior["log_vars"]),
                               rtol=1e-5, atol=1e-4)
    samples = dist.sample(seed=jax.random.key(1), sample_shape=(20000,))
    np.testing.assert_allclose(samples.mean(0), (jax.nn.softmax(prior["logits"])[:, None] * prior["means"]).sum(0),
                               atol=0.1)

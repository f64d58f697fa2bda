"""The VaDE model (gmvc/models/vade.py): its mixture KL term (vade_kl) against Monte Carlo, its
responsibilities against the exact posterior and S3VDC's inverse min-max transform; models/base.py's
input dropout and softplus."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.objectives.terms import TERMS, _expected_component_kl, _kl_gamma_prior
from helpers_vade import DX, DZ, K, _assert_trees_equal, _uniform_data, _vade_config

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


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

"""ELBO terms (gmvc/objectives/terms.py) and make_objective on a real, small GMVAE.

The graphs here are tiny and each runs once, so XLA compile time is this file's whole cost: each
likelihood setting gets one compiled call (`_compiled`) that returns everything the tests look at,
compiled with the backend optimisation off (several times faster to compile, same semantics).
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads
from scipy import special, stats

from gmvc.config import base_config
from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.objectives import make_batch, make_objective
from gmvc.objectives.terms import GROUP_TERMS, NEIGHBOUR_TERMS, TERMS

B, K = 8, 3
SETTINGS = ("gaussian_fixed", "gaussian_learned", "bernoulli")
NAMES = sorted(set(TERMS) - NEIGHBOUR_TERMS - GROUP_TERMS)   # need a neighbour pass or groups: test_neighbours, test_pin
_O0 = {"xla_backend_optimization_level": 0}


def _data(setting):
    """(config, data shape, batch) for one likelihood setting."""
    cfg = base_config()
    m = cfg.model
    m.hidden_sizes, m.z_dim, m.w_dim, m.prior_hidden, m.num_clusters = (16,), 2, 2, 8, K
    rng = np.random.default_rng(0)
    if setting == "bernoulli":
        m.likelihood = "bernoulli"
        shape = (3, 3, 1)                       # images, flattened by the model
        x = rng.uniform(0.0, 1.0, (B, *shape))
    else:
        m.likelihood, m.sigma = "gaussian", (0.1 if setting == "gaussian_fixed" else 0.0)
        shape = (5,)
        x = rng.normal(0.0, 1.0, (B, *shape))
    return cfg, shape, jnp.asarray(x, jnp.float32)


def _terms_on(params, x, out, rng):
    """[len(NAMES)] vector of every term's value (default options) on one forward pass."""
    return jnp.stack([TERMS[n]({})(params, x, out, rng)[0] for n in NAMES])


def _all_terms_fn(model, x, rng):
    """params -> every term's value, through the model's forward pass."""
    return lambda params: _terms_on(params, x, model.apply(params, x, rng), rng)


def _recon_output_key(setting):
    return "x_logits" if setting == "bernoulli" else "x_loc"


@functools.lru_cache(maxsize=None)
def _compiled(setting):
    """Everything float32 about one setting, from one compiled call. Cached: treat as read-only.

    params: the real model's init; out: model.apply(params, x, rng); values: every term on `out`;
    jac (gaussian_learned): d(term)/d(params) per term, leaves [len(NAMES), ...];
    grad_sum (other settings, cheaper to compile): d(sum of terms)/d(params), which is finite
    exactly when every term's gradient is (NaN or inf in a summand stays NaN or inf in the sum);
    doubled: every term on `out` with the batch repeated twice;
    recon_grad: d recon / d(the decoder output that the likelihood reads).
    """
    cfg, shape, x = _data(setting)
    model = make_model(cfg.model, shape)
    rng = jax.random.PRNGKey(1)
    f = _all_terms_fn(model, x, rng)
    per_term = setting == "gaussian_learned"
    key = _recon_output_key(setting)

    def run(init_key):
        params = model.init(init_key)
        out = model.apply(params, x, rng)
        grads = jax.jacrev(f)(params) if per_term else jax.grad(lambda p: jnp.sum(f(p)))(params)
        out2 = jax.tree_util.tree_map(lambda v: jnp.concatenate([v, v]), out)
        doubled = _terms_on(params, jnp.concatenate([x, x]), out2, rng)
        recon_grad = jax.grad(lambda v: TERMS["recon"]({})(params, x, dict(out, **{key: v}), rng)[0])(out[key])
        return params, out, _terms_on(params, x, out, rng), grads, doubled, recon_grad

    params, out, values, grads, doubled, recon_grad = jax.jit(run, compiler_options=_O0)(jax.random.PRNGKey(0))
    to_np = functools.partial(jax.tree_util.tree_map, np.asarray)
    return {"setting": setting, "cfg": cfg, "model": model, "params": params, "x": x, "rng": rng, "out": out,
            "values": np.asarray(values), ("jac" if per_term else "grad_sum"): to_np(grads),
            "doubled": np.asarray(doubled), "recon_grad": np.asarray(recon_grad),
            "np": {k: np.asarray(v, np.float64) for k, v in out.items()}}


@pytest.fixture(scope="module", params=SETTINGS)
def setup(request):
    return _compiled(request.param)


def _value(setup, name):
    return float(setup["values"][NAMES.index(name)])


def _np_kl_normals(mq, lvq, mp, lvp):
    """Textbook KL(N(mq, sq^2) || N(mp, sp^2)) = log(sp/sq) + (sq^2 + (mq-mp)^2) / (2 sp^2) - 1/2, summed."""
    sq, sp = np.exp(0.5 * lvq), np.exp(0.5 * lvp)
    return np.sum(np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5, axis=-1)


# ---------------------------------------------------------------- finiteness and gradients

@pytest.mark.parametrize("setting", SETTINGS)
def test_term_values_and_grads_finite(setting):
    c = _compiled(setting)
    assert c["values"].shape == (len(NAMES),) and np.all(np.isfinite(c["values"])), dict(zip(NAMES, c["values"]))
    if setting == "gaussian_learned":
        leaves = jax.tree_util.tree_leaves(c["jac"])
        for i, name in enumerate(NAMES):
            assert all(np.all(np.isfinite(g[i])) for g in leaves), name
    else:
        leaves = jax.tree_util.tree_leaves(c["grad_sum"])
        assert all(np.all(np.isfinite(g)) for g in leaves)
    assert len(leaves) == 14                     # 7 dense layers: every parameter has a gradient


# Which parameter groups each term must reach (a term with an all-zero gradient would train nothing).
_REACHES = {"recon": ("encoder", "z_head", "decoder", "decoder_head"), "kl_z": ("encoder", "z_head"),
            "w_prior": ("encoder", "w_head"), "cond_prior": ("z_head", "w_head", "prior_hidden", "prior_head"),
            "c_prior": ("z_head", "w_head", "prior_head"), "cv": ("z_head", "w_head", "prior_head"),
            "c_marginal": ("z_head", "w_head", "prior_head"),
            "vade_kl": ("z_head", "w_head", "prior_hidden", "prior_head"), "mmd": ("encoder", "z_head")}


@pytest.mark.parametrize("name", NAMES)
def test_term_gradient_reaches_its_parameters(name):
    jac = _compiled("gaussian_learned")["jac"]
    i = NAMES.index(name)
    for module, grads in jac["net"].items():
        size = max(np.abs(g[i]).max() for g in jax.tree_util.tree_leaves(grads))
        if module in _REACHES[name]:
            assert size > 0.0, (name, module)
        elif name in ("kl_z", "w_prior", "mmd") or (name != "recon" and module.startswith("decoder")):
            assert size == 0.0, (name, module)     # e.g. only recon depends on the decoder


def _with_vjp(fwd, vjp, scale=1.0):
    """A differentiable function: value fwd(v), VJP scale * vjp(v, ct) (scale != 1: a wrong gradient)."""
    f = jax.custom_vjp(lambda v: fwd(v))
    f.defvjp(lambda v: (fwd(v), v), lambda v, ct: (scale * vjp(v, ct),))
    return f


def test_term_gradients_numerically():
    # Finite differences in float32 (eps ~ 1e-3, recon ~ 1e3 for sigma = 0.1) are too noisy to say
    # anything, so the check runs in float64: params (raveled into one vector) and data cast, the
    # same rng key. check_grads compares each term's VJP wrt all params with central differences
    # along a random direction. It runs on the learned-variance Gaussian (the likelihood with most
    # parameters); the other likelihoods differ only in recon: see test_recon_gradient_closed_form.
    # fn and its JAX VJP are compiled ahead of time with _O0 (a jit nested under differentiation
    # cannot carry compiler options) and handed to check_grads through a custom_vjp.
    c = _compiled("gaussian_learned")
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), c["params"]))
        assert flat.dtype == jnp.float64 and flat.shape[0] > 500
        fn = _all_terms_fn(c["model"], jnp.asarray(c["x"], jnp.float64), c["rng"])
        fwd = jax.jit(lambda v: fn(unravel(v)), compiler_options=_O0).lower(flat).compile()
        vjp = jax.jit(lambda v, ct: jax.vjp(lambda u: fn(unravel(u)), v)[1](ct)[0],
                      compiler_options=_O0).lower(flat, jnp.zeros(len(NAMES))).compile()
        f = _with_vjp(fwd, vjp)
        assert f(flat).dtype == jnp.float64
        # float64 normals draw other bits from the same key, so only the noise-free terms equal float32's.
        for name in ("kl_z", "w_prior"):
            assert float(f(flat)[NAMES.index(name)]) == pytest.approx(_value(c, name), rel=1e-4)
        for i in range(len(NAMES)):
            check_grads(lambda v: f(v)[i], (flat,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
        # The tolerance is tight enough to see a gradient 1% off.
        wrong = _with_vjp(fwd, vjp, scale=1.01)
        with pytest.raises(AssertionError, match="VJP"):
            check_grads(lambda v: wrong(v)[NAMES.index("cond_prior")], (flat,), order=1, modes=["rev"],
                        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("setting", SETTINGS)
def test_recon_gradient_closed_form(setting):
    """d recon / d decoder output in closed form: (sigmoid(l) - x) / B for Bernoulli logits,
    (loc - x) / (sigma^2 B) for a Gaussian."""
    c = _compiled(setting)
    o = c["np"]
    if setting == "bernoulli":
        want = (special.expit(o["x_logits"]) - o["x_flat"]) / B
    else:
        want = (o["x_loc"] - o["x_flat"]) * np.exp(-o["x_log_var"]) / B
    np.testing.assert_allclose(c["recon_grad"], want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- term values against numpy

def test_log_gamma_is_exact_posterior(setup):
    o = setup["np"]
    dens = np.array([[stats.multivariate_normal(o["prior_means"][b, k], np.diag(np.exp(o["prior_log_vars"][b, k])))
                      .logpdf(o["z"][b]) for k in range(K)] for b in range(B)])
    want = dens - special.logsumexp(dens, axis=1, keepdims=True)       # uniform p(c)
    np.testing.assert_allclose(o["log_gamma"], want, rtol=1e-4, atol=1e-4)


def test_recon_value(setup):
    o, setting = setup["np"], setup["setting"]
    x = o["x_flat"]
    assert x.shape == (B, 9 if setting == "bernoulli" else 5)
    if setting == "bernoulli":
        p = special.expit(o["x_logits"])
        want = -np.mean(np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), 1))
    else:
        if setting == "gaussian_fixed":
            np.testing.assert_allclose(o["x_log_var"], 2 * np.log(0.1), rtol=1e-6)
        else:   # learned, bounded to sigma in [0.01, 1]
            assert np.all(o["x_log_var"] >= 2 * np.log(0.01) - 1e-5) and np.all(o["x_log_var"] <= 1e-6)
            assert np.ptp(o["x_log_var"]) > 0.0
        want = -np.mean(np.sum(stats.norm.logpdf(x, o["x_loc"], np.exp(0.5 * o["x_log_var"])), 1))
    assert _value(setup, "recon") == pytest.approx(want, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("name,prefix", [("kl_z", "z"), ("w_prior", "w")])
def test_standard_normal_kl_terms(setup, name, prefix):
    o = setup["np"]
    m, lv = o[f"{prefix}_mean"], o[f"{prefix}_log_var"]
    want = np.mean(_np_kl_normals(m, lv, np.zeros_like(m), np.zeros_like(lv)))
    assert want > 0.0
    assert _value(setup, name) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_cond_prior_is_responsibility_weighted_kl(setup):
    o = setup["np"]
    kl = _np_kl_normals(o["z_mean"][:, None], o["z_log_var"][:, None], o["prior_means"], o["prior_log_vars"])  # [B, K]
    gamma = np.exp(o["log_gamma"])
    want = np.mean(np.sum(gamma * kl, axis=1))
    assert _value(setup, "cond_prior") == pytest.approx(want, rel=1e-5, abs=1e-5)
    # The weights matter: a plain average over components differs here.
    assert abs(want - np.mean(kl)) > 1e-4


def test_c_prior_free_bits(setup):
    o = setup["np"]
    kl = float(np.mean(np.log(K) - stats.entropy(np.exp(o["log_gamma"]), axis=1)))
    assert 0.0 < kl < np.log(K)
    assert _value(setup, "c_prior") == pytest.approx(kl, rel=1e-4, abs=1e-6)      # default free_bits 0
    args = (setup["params"], setup["x"], setup["out"], setup["rng"])
    for free_bits in (0.0, kl / 2):                 # below the KL: the KL itself
        value, aux = TERMS["c_prior"]({"free_bits": free_bits})(*args)
        assert float(value) == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert set(aux) == {"c_prior_kl"} and float(aux["c_prior_kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-6)
    value, aux = TERMS["c_prior"]({"free_bits": kl + 0.3})(*args)   # above: the threshold; KL still reported
    assert float(value) == pytest.approx(kl + 0.3, rel=1e-6)
    assert float(aux["c_prior_kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_c_prior_free_bits_blocks_gradient():
    out = _compiled("gaussian_learned")["out"]

    def grad_log_gamma(free_bits):
        term = TERMS["c_prior"]({"free_bits": free_bits})
        return np.asarray(jax.jit(jax.grad(lambda lg: term(None, None, dict(out, log_gamma=lg), None)[0]))(
            out["log_gamma"]))

    assert np.all(grad_log_gamma(10.0) == 0.0)           # above the KL: no pressure at all
    assert np.abs(grad_log_gamma(0.0)).max() > 1e-4


def test_cv_is_mean_entropy(setup):
    want = np.mean(stats.entropy(np.exp(setup["np"]["log_gamma"]), axis=1))
    assert want > 0.0
    assert _value(setup, "cv") == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_c_marginal_value(setup):
    p = np.exp(setup["np"]["log_gamma"]).mean(axis=0)
    want = np.sum(p * np.log(p * K))
    assert _value(setup, "c_marginal") == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_terms_are_batch_averages(setup):
    """Every term but the MMD (a two-sample statistic, see test_family.py) is a per-sample mean:
    the batch repeated twice gives the same values."""
    keep = [i for i, name in enumerate(NAMES) if name != "mmd"]
    np.testing.assert_allclose(setup["doubled"][keep], setup["values"][keep], rtol=1e-5, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _c_marginal_fn():
    return jax.jit(lambda lg: TERMS["c_marginal"]({})(None, None, {"log_gamma": lg}, None)[0])


def _c_marginal(log_gamma):
    return float(_c_marginal_fn()(jnp.asarray(log_gamma, jnp.float32)))


def test_c_marginal_zero_for_uniform_usage():
    assert _c_marginal(np.full((6, K), -np.log(K))) == pytest.approx(0.0, abs=1e-6)
    # Confident samples that use the clusters equally: also a uniform marginal.
    rows = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.01, 0.01, 0.98]])
    assert _c_marginal(np.log(np.tile(rows, (2, 1)))) == pytest.approx(0.0, abs=1e-6)
    # ... which the per-sample c-prior calls far from uniform; c_marginal does not.
    assert np.mean(np.log(K) - stats.entropy(rows, axis=1)) > 0.9


def test_c_marginal_log_k_when_one_cluster_takes_all():
    log_gamma = jax.nn.log_softmax(jnp.tile(jnp.array([0.0, -1e4, -1e4]), (6, 1)))   # p = (1, 0, 0) numerically
    assert _c_marginal(log_gamma) == pytest.approx(np.log(K), rel=1e-6)
    # Two of three clusters used equally: log 3 - log 2.
    log_gamma = jax.nn.log_softmax(jnp.array([[0.0, -1e4, -1e4], [-1e4, 0.0, -1e4]] * 3))
    assert _c_marginal(log_gamma) == pytest.approx(np.log(3) - np.log(2), rel=1e-6)


def test_exact_one_hot_responsibilities():
    # log 0 = -inf entries (NaN before 9af6ae0): c_marginal is log K, cv 0, c_prior's KL log K.
    log_gamma = np.tile(np.array([0.0, -np.inf, -np.inf]), (6, 1))      # log of (1, 0, 0)
    assert _c_marginal(log_gamma) == pytest.approx(np.log(K), rel=1e-6)
    out = {"log_gamma": jnp.asarray(log_gamma, jnp.float32)}
    assert float(TERMS["cv"]({})(None, None, out, None)[0]) == 0.0
    assert float(TERMS["c_prior"]({})(None, None, out, None)[1]["c_prior_kl"]) == pytest.approx(np.log(K), rel=1e-6)


def test_vade_kl_is_component_kl_plus_cluster_kl(setup):
    """On a GMVAE forward pass the mixture KL splits into the conditional prior (expected
    component KL) and the cluster KL (c_prior without free bits)."""
    want = _value(setup, "cond_prior") + _value(setup, "c_prior")      # default free_bits 0
    assert _value(setup, "vade_kl") == pytest.approx(want, rel=1e-5)
    assert _value(setup, "vade_kl") > _value(setup, "cond_prior")


# ---------------------------------------------------------------- make_objective

def test_make_objective_weighted_sum():
    c = _compiled("gaussian_fixed")
    params, x, rng, out = c["params"], c["x"], c["rng"], c["out"]
    # make_objective only calls model.apply: a stub returning the real forward pass avoids another
    # compile of the network (the real model's terms are checked above against this same `out`).
    calls = []
    stub = types.SimpleNamespace(apply=lambda p, batch, key: calls.append((batch, key)) or out)
    weights = {"recon": 1.0, "kl_z": 0.1, "cond_prior": 0.5, "c_prior": 2.0, "cv": 3.0, "c_marginal": 0.25,
               "vade_kl": 0.7, "mmd": 5.0, "w_prior": {"kind": "linear_warmup", "value": 2.0, "warmup_steps": 10, "start": 0.0}}
    loss_fn = jax.jit(make_objective(stub, weights, {"c_prior": {"free_bits": 0.0}}))   # the step is traced
    loss, aux = loss_fn(params, make_batch(x), rng, jnp.int32(5))
    assert len(calls) == 1                               # one forward pass for all terms
    assert set(aux) == set(weights) | {"c_prior_kl", "loss"}
    w_at_5 = dict(weights, w_prior=1.0)                  # halfway through the warmup
    want = sum(w * float(aux[name]) for name, w in w_at_5.items())
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(aux["loss"]) == float(loss)
    # aux holds the unweighted term values.
    for name in NAMES:
        assert float(aux[name]) == pytest.approx(_value(c, name), rel=1e-5, abs=1e-5), name
    assert float(aux["c_prior_kl"]) == pytest.approx(_value(c, "c_prior"), rel=1e-5)
    # Schedules follow the step: at step 0 the warmup weight is 0, at 50 it is 2.
    loss_0, _ = loss_fn(params, make_batch(x), rng, jnp.int32(0))
    assert float(loss_0) == pytest.approx(float(loss) - float(aux["w_prior"]), rel=1e-5)
    loss_50, _ = loss_fn(params, make_batch(x), rng, jnp.int32(50))
    assert float(loss_50) == pytest.approx(float(loss) + float(aux["w_prior"]), rel=1e-5)


def test_make_objective_from_base_config():
    setup = _compiled("bernoulli")
    stub = types.SimpleNamespace(apply=lambda params, batch, rng: setup["out"])
    cfg = setup["cfg"]
    loss_fn = make_objective(stub, cfg.objective, cfg.terms)        # ConfigDicts, as the trainer passes them
    loss, aux = jax.jit(loss_fn)(setup["params"], make_batch(setup["x"]), setup["rng"], 0)
    assert set(aux) == {"recon", "cond_prior", "w_prior", "c_prior", "cv", "c_prior_kl", "loss"}
    assert float(aux["c_prior"]) == pytest.approx(max(float(aux["c_prior_kl"]), 0.5), rel=1e-6)   # free_bits 0.5
    want = sum(float(aux[n]) for n in ("recon", "cond_prior", "w_prior", "c_prior", "cv"))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    for name in ("recon", "cond_prior", "w_prior", "cv"):
        assert float(aux[name]) == pytest.approx(_value(setup, name), rel=1e-5, abs=1e-5)


def test_make_objective_unknown_term():
    model = _compiled("gaussian_fixed")["model"]
    with pytest.raises(ConfigError, match="recn"):
        make_objective(model, {"recon": 1.0, "recn": 1.0}, {})
    with pytest.raises(ConfigError, match="cv_prior"):
        make_objective(model, {"recon": 1.0}, {"cv_prior": {"free_bits": 1.0}})
    with pytest.raises(ConfigError, match="objective.cv"):
        make_objective(model, {"cv": {"kind": "cosine"}}, {})


def test_c_marginal_toward_the_prior_weights():
    """target "prior": KL of the batch's usage from the mixture's own weights, which get no
    gradient from the term; usage equal to the weights scores 0, and an unused cluster adds nothing."""
    from gmvc.errors import ConfigError
    weights = np.array([0.6, 0.3, 0.1])
    params = {"prior": {"logits": jnp.log(jnp.asarray(weights, jnp.float32)) + 2.0}}     # any offset
    term = TERMS["c_marginal"]({"target": "prior"})
    value = lambda p, lg: term(p, None, {"log_gamma": lg}, None)[0]
    rows = np.log(np.repeat(np.eye(3) * 0.998 + 0.001, [6, 3, 1], axis=0))             # usage ~ the weights
    usage = np.exp(rows).mean(0)
    assert float(value(params, jnp.asarray(rows))) == pytest.approx(np.sum(usage * np.log(usage / weights)), abs=1e-5)
    assert float(value(params, jnp.asarray(rows))) < 2e-3
    even = np.log(np.tile(np.eye(3) * 0.998 + 0.001, (2, 1)))
    assert float(value(params, jnp.asarray(even))) == pytest.approx(np.sum(np.log(1 / 3 / weights)) / 3, rel=1e-2)
    grads = jax.grad(lambda p: value(p, jnp.asarray(even)))(params)
    assert np.all(np.asarray(grads["prior"]["logits"]) == 0.0)
    one = jax.nn.log_softmax(jnp.tile(jnp.array([0.0, -1e4, -1e4]), (4, 1)))
    assert float(value(params, one)) == pytest.approx(-np.log(0.6), rel=1e-5)              # finite: 0 log 0 = 0
    with pytest.raises(ConfigError, match="c_marginal: unknown target 'even'"):
        TERMS["c_marginal"]({"target": "even"})
    with pytest.raises(ConfigError, match="c_marginal: unknown option"):
        TERMS["c_marginal"]({"weights": 1})

"""The VAE family: the MMD term and InfoVAE weights, the VAE and CVAE models, convolutional
networks on images of several sizes, the six mnist5k configs, and generation from a run."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import config_flags, load_config, run_cli
from gmvc.config import base_config
from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.objectives import make_batch, infovae_weights, make_objective
from gmvc.objectives.terms import TERMS, mmd_kernel, mmd_unbiased

KERNELS = ("rbf", "imq")
D, N_SMALL, REPS, N_LARGE, SHIFT = 4, 40, 600, 4000, 0.4




# ---------------------------------------------------------------- MMD

def _biased(a, b, kernel):
    """The V-statistic (diagonals included), for contrast: biased upwards by about 2 (k(0) - E k) / n."""
    from gmvc.objectives.terms import _squared_distances as sq
    return jnp.mean(kernel(sq(a, a))) + jnp.mean(kernel(sq(b, b))) - 2 * jnp.mean(kernel(sq(a, b)))


@functools.lru_cache(maxsize=None)
def _mmd_draws(kind):
    """REPS small-sample estimates (same distribution; shifted mean), their biased versions, and a
    large-sample estimate of the shifted MMD^2."""
    kernel = mmd_kernel(kind, D)

    def one(key, shift, n):
        ka, kb = jax.random.split(key)
        a = jax.random.normal(ka, (n, D)) + shift
        b = jax.random.normal(kb, (n, D))
        return mmd_unbiased(a, b, kernel), _biased(a, b, kernel)

    keys = jax.random.split(jax.random.key(0), REPS)
    same, same_biased = jax.jit(jax.vmap(lambda k: one(k, 0.0, N_SMALL)))(keys)
    shifted, shifted_biased = jax.jit(jax.vmap(lambda k: one(k, SHIFT, N_SMALL)))(keys)
    large = jax.jit(lambda k: one(k, SHIFT, N_LARGE)[0])(jax.random.key(1))
    return {k: np.asarray(v, np.float64) for k, v in dict(same=same, same_biased=same_biased, shifted=shifted,
                                                          shifted_biased=shifted_biased, large=large).items()}


def _mean_se(v):
    return v.mean(), v.std(ddof=1) / np.sqrt(len(v))


@pytest.mark.parametrize("kind", KERNELS)
def test_mmd_zero_in_expectation_for_identical_distributions(kind):
    d = _mmd_draws(kind)
    mean, se = _mean_se(d["same"])
    assert abs(mean) < 4 * se, (mean, se)
    assert (d["same"] < 0).mean() > 0.2             # unbiased: single estimates fall either side of 0
    mean_b, se_b = _mean_se(d["same_biased"])
    assert mean_b > 10 * se_b                       # the biased estimator would not pass the first check


@pytest.mark.parametrize("kind", KERNELS)
def test_mmd_positive_for_shifted_distributions(kind):
    d = _mmd_draws(kind)
    mean, se = _mean_se(d["shifted"])
    assert mean > 10 * se and d["large"] > 0.01, (mean, se, d["large"])


@pytest.mark.parametrize("kind", KERNELS)
def test_mmd_estimator_is_unbiased(kind):
    """The mean of many 40-sample estimates equals the 4,000-sample value (itself within about
    1e-3 of the true MMD^2); the V-statistic misses it."""
    d = _mmd_draws(kind)
    mean, se = _mean_se(d["shifted"])
    assert abs(mean - d["large"]) < 4 * se + 2e-3, (mean, se, d["large"])
    assert _mean_se(d["shifted_biased"])[0] - d["large"] > 4 * se + 2e-3


def test_mmd_kernels_values():
    d2 = jnp.array([0.0, 2.0 * D])
    np.testing.assert_allclose(mmd_kernel("rbf", D)(d2), [1.0, np.exp(-1.0)], rtol=1e-6)
    np.testing.assert_allclose(mmd_kernel("imq", D)(d2), [1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(mmd_kernel("imq", D, scale=2.0)(d2), [1.0, 2 / 3], rtol=1e-6)


def test_mmd_term_with_the_mixture_prior():
    """prior="mixture": codes drawn from the model's own mixture score near 0, the standard
    normal prior scores them far apart."""
    means = jnp.array([[4.0, 0.0], [-4.0, 0.0]])
    out = {"log_pi": jnp.log(jnp.array([0.5, 0.5])), "prior_means": means, "prior_log_vars": jnp.full((2, 2), -2.0)}
    key_c, key_z = jax.random.split(jax.random.key(3))
    c = jax.random.bernoulli(key_c, 0.5, (400,)).astype(jnp.int32)
    out["z"] = means[c] + 0.3679 * jax.random.normal(key_z, (400, 2))          # std exp(-1)
    mix = float(TERMS["mmd"]({"prior": "mixture", "kernel": "rbf"})(None, None, out, jax.random.key(4))[0])
    std = float(TERMS["mmd"]({"kernel": "rbf"})(None, None, out, jax.random.key(4))[0])
    assert abs(mix) < 0.01 and std > 0.2, (mix, std)


def test_mmd_and_infovae_errors():
    with pytest.raises(ConfigError, match="unknown kernel 'gauss'"):
        TERMS["mmd"]({"kernel": "gauss"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sigma'\]"):
        TERMS["mmd"]({"sigma": 1.0})
    with pytest.raises(ConfigError, match="unknown prior"):
        TERMS["mmd"]({"prior": "laplace"})
    with pytest.raises(ConfigError, match="needs a model with a stored mixture prior"):
        TERMS["mmd"]({"prior": "mixture"})(None, None, {"z": jnp.zeros((4, 2))}, jax.random.key(0))
    assert infovae_weights(0.0, 1.0) == {"recon": 1.0, "kl_z": 1.0, "mmd": 0.0}      # the VAE
    assert infovae_weights(1.0, 1000.0) == {"recon": 1.0, "kl_z": 0.0, "mmd": 1000.0}   # MMD-VAE
    with pytest.raises(ConfigError, match="lambda must be positive"):
        infovae_weights(0.0, 0.0)
    with pytest.raises(ConfigError, match="alpha \\+ lambda - 1 must be >= 0"):
        infovae_weights(-1.0, 0.5)


# ---------------------------------------------------------------- models and networks

def _model_cfg(name, net="mlp", k=3):
    m = base_config().model
    m.name, m.net, m.num_clusters, m.z_dim, m.w_dim, m.prior_hidden = name, net, k, 3, 2, 8
    m.hidden_sizes = (16,)
    m.conv_filters, m.conv_kernels = (4, 8), (3, 3)
    return m


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1), (7, 5, 2)])
def test_conv_networks_any_image_size(shape):
    """The convolutional encoder/decoder (and a GMVAE built on them) for images of any size and
    channel count: the decoder's output has exactly the data's shape."""
    for name in ("vae", "gmvae"):
        model = make_model(_model_cfg(name, "conv"), shape)
        x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, *shape)), jnp.float32)

        @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})   # compile faster
        def run(key):
            params = model.init(key)
            return model.apply(params, x, key), model.sample(params, key, 3)

        out, samples = run(jax.random.key(0))
        assert out["x_logits"].shape == (2, int(np.prod(shape))), name
        groups = 1 if name == "vae" else 3
        assert samples.shape == (groups, 3, *shape) and np.isfinite(np.asarray(samples)).all()


@pytest.mark.parametrize("net,shape", [("mlp", (6,)), ("conv", (8, 8, 1))])
def test_cvae_conditions_encoder_and_decoder(net, shape):
    model = make_model(_model_cfg("cvae", net, k=4), shape)
    assert model.num_labels == 4 and model.num_clusters == 0
    params = model.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, *shape)), jnp.float32)
    same = jnp.zeros(4, jnp.int32)
    codes_same, codes_diff = model.embed(params, {"x": x, "y": same}), model.embed(params, {"x": x, "y": jnp.arange(4)})
    assert not np.allclose(codes_same[1:], codes_diff[1:]) and np.allclose(codes_same[0], codes_diff[0])
    z = jnp.zeros((4, 3))
    decoded = np.asarray(model.decode(params, z, jnp.arange(4)))
    assert decoded.shape == (4, *shape)
    assert all(not np.allclose(decoded[0], decoded[i]) for i in range(1, 4))   # same z, other label
    samples = model.sample(params, jax.random.key(1), 2)
    assert samples.shape == (4, 2, *shape)


def test_vae_objective_is_the_negative_elbo():
    """recon + kl_z on the VAE equals -log p(x|z) + KL in closed form, computed here by hand."""
    cfg = _model_cfg("vae")
    cfg.likelihood = "bernoulli"
    model = make_model(cfg, (5,))
    params = model.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(6, 5)), jnp.float32)
    loss, aux = make_objective(model, {"recon": 1.0, "kl_z": 1.0}, {})(params, make_batch(x), jax.random.key(2), 0)
    out = model.apply(params, x, jax.random.key(2))
    logits, xs = np.asarray(out["x_logits"], np.float64), np.asarray(x, np.float64)
    nll = -np.sum(xs * -np.logaddexp(0, -logits) + (1 - xs) * -np.logaddexp(0, logits), 1)
    m, lv = np.asarray(out["z_mean"], np.float64), np.asarray(out["z_log_var"], np.float64)
    kl = -0.5 * np.sum(1 + lv - m**2 - np.exp(lv), 1)
    assert float(loss) == pytest.approx(np.mean(nll + kl), rel=1e-5)
    assert float(aux["kl_z"]) == pytest.approx(np.mean(kl), rel=1e-5)


# ---------------------------------------------------------------- the configs

CONFIGS = ["vae_mnist5k.py", "cvae_mnist5k.py", "infovae_mnist5k.py", "mmdvae_mnist5k.py", "gmvae_paper_mnist5k.py",
           "gmvae_conv_mnist5k.py"]


def test_config_settings():
    info, mmd = load_config("infovae_mnist5k.py"), load_config("mmdvae_mnist5k.py")
    assert dict(info.objective) == {"recon": 1.0, "kl_z": 1.0, "mmd": 999.0}          # alpha 0, lambda 1000
    assert dict(mmd.objective) == {"recon": 1.0, "mmd": 1000.0} and mmd.terms.mmd.kernel == "rbf"
    assert load_config("cvae_mnist5k.py").model.name == "cvae"
    conv = load_config("gmvae_conv_mnist5k.py")
    assert conv.model.net == "conv" and conv.model.conv_filters == (32, 64, 128)
    g = load_config("gmvae_paper_mnist5k.py")
    assert g.model.num_clusters == 14 and g.model.hidden_sizes == (1000,) and g.objective.cv == 0.4
    g = load_config("gmvae_mnist5k.py")
    assert g.model.num_clusters == 10 and g.model.name == "gmvae" and g.phases.main.objective.cv == 0.4
    assert g.phases.main.objective.pin > 0 and g.phases.gmm_init.overcluster == 80
    for name in CONFIGS + ["gmvae_mnist5k.py"]:
        assert load_config(name).data.source == "mnist5k"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_without_nan_and_loss_goes_down(tmp_path, name):
    from gmvc.trainer import train_and_evaluate
    c = load_config(name)
    c.data.limit = 400
    c.train.batch_size = 40
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 60, 20, 60
    c.eval.batch_size, c.eval.samples_per_cluster = 200, 2
    summary = train_and_evaluate(c, tmp_path, echo=lambda *a, **k: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert len(records) == 3 and np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses
    assert summary["steps"] == 60 and (tmp_path / "samples.png").exists()


def test_cvae_samples_show_their_label(tmp_path):
    """After a short training on the digits, a logistic regression trained on the data assigns
    samples generated for label k to class k (measured: 1.00 at 600 steps, so 0.8 is a margin)."""
    from sklearn.linear_model import LogisticRegression
    from gmvc.trainer import load_run, train_and_evaluate
    c = load_config("cvae_mnist5k.py")
    c.data.source = "digits"
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 300, 100, 300
    train_and_evaluate(c, tmp_path, echo=lambda *a, **k: None)
    run = load_run(c, tmp_path)
    x, y = run.data.x.reshape(len(run.data.x), -1), run.data.y
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    samples = np.asarray(run.model.sample(run.params, jax.random.key(7), 50))       # [10, 50, 8, 8, 1]
    agreement = np.mean(clf.predict(samples.reshape(500, -1)) == np.repeat(np.arange(10), 50))
    assert agreement >= 0.8, agreement


# ---------------------------------------------------------------- generation

def _png(path):
    a = np.asarray(Image.open(path), np.float64)
    return a


def _grid_size(rows, cols, h, w):
    from gmvc.run.export import grid_scale
    s = grid_scale(h)
    return rows * (h + 1) * s - s, cols * (w + 1) * s - s


def test_generate_from_a_trained_run(tmp_path):
    """--mode=generate on a short VaDE digits run: sample, reconstruction and interpolation grids
    of the right shape, not constant; a user's .npy is reconstructed (image files and folders go
    through the same images.load_inputs, tested in test_image_data.py); errors are clear. The
    run trains in this process and one generation goes through the command line; the others call
    the function that command runs (gmvc.generate.generate), which saves a process start each."""
    from gmvc.errors import GmvcError
    from gmvc.generate import generate
    from gmvc.trainer import load_run, train_and_evaluate
    work = tmp_path / "run"
    small = {"train.steps": 200, "model.hidden_sizes": (64, 64), "train.restarts": 1, "phases.pretrain.steps": 100,
             "train.log_every": 50, "phases.gmm_init.n_init": 1}
    common = [*config_flags("vade_digits.py", small), f"--workdir={work}"]
    c = load_config("vade_digits.py", small)
    missing = run_cli(*common, "--mode=generate", "--interpolate=0-12")    # no run: that error comes first
    assert missing.returncode == 2 and "no run in" in missing.stderr and not work.exists()
    train_and_evaluate(c, work, echo=lambda *a, **k: None)
    gen = run_cli(*common, "--mode=generate")
    assert gen.returncode == 0, gen.stderr
    n, k = 10, 10
    samples, recon, interp = (_png(work / f"generated_{s}.png") for s in ("samples", "reconstructions", "interpolation"))
    assert samples.shape == _grid_size(k, n, 8, 8)
    assert recon.shape == _grid_size(2, n, 8, 8)
    assert interp.shape == _grid_size(k, n, 8, 8)                      # cluster c -> c + 1, n points each
    for img in (samples, recon, interp):
        assert img.std() > 20
    # each cell varies (no blank or constant generated images): look at the first cell of each row
    s = _grid_size(1, 1, 8, 8)[0]
    cells = [samples[r * (s + s // 8):r * (s + s // 8) + s, :s] for r in range(k)]
    assert all(c.std() > 5 for c in cells)
    # the first input row is the data itself
    from sklearn.datasets import load_digits
    first = load_digits().images[:n] / 16.0
    step = s + s // 8
    got = np.stack([recon[:s:s // 8, j * step:j * step + s:s // 8] for j in range(n)]) / 255.0
    np.testing.assert_allclose(got, first, atol=1 / 255 + 1e-6)

    # a user's inputs: a .npy of 3 images, then a PNG of another size (resized)
    np.save(tmp_path / "mine.npy", first[:3, ..., None].astype(np.float32))
    run = load_run(c, work, echo=lambda *a, **k: None)
    generate(run, work, str(tmp_path / "mine.npy"), pairs="0-9", echo=lambda *a, **k: None)
    assert _png(work / "generated_reconstructions.png").shape == _grid_size(2, n, 8, 8)
    assert _png(work / "generated_interpolation.png").shape == _grid_size(1, n, 8, 8)
    with pytest.raises(GmvcError, match="outside 0..9"):
        generate(run, work, pairs="0-12", echo=lambda *a, **k: None)

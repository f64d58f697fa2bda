"""The scikit-learn style estimators, save/load, and --mode=predict (csv, json lines, npz) in
bounded memory."""
import json
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils import estimator_checks

import gmvc
from conftest import run_cli
from gmvc.errors import CheckpointError


def tiny_vade(**kw):
    return gmvc.VaDE(**{"n_clusters": 3, "steps": 20, "pretrain_steps": 10, "hidden_sizes": (8,), "latent_dim": 2,
                        "batch_size": 16, "restarts": 1, **kw})


# scikit-learn's checks that run in the suite: the ones that fit at most once (pickling, feature
# counts and saving are tested below on the fitted digits model). The
# whole list (each of the others fits several times; about 5 minutes here) runs with
# `python benchmarks/sklearn_checks.py`: every check passes except check_array_api_input,
# skipped because it needs SCIPY_ARRAY_API and an array-API backend (gmvc turns inputs into
# float32 numpy arrays).
CHECKS = ("check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
          "check_estimators_unfitted", "check_do_not_raise_errors_in_init_or_set_params",
          "check_estimators_empty_data_messages", "check_complex_data", "check_parameters_default_constructible",
          "check_fit2d_1sample", "check_get_params_invariance", "check_set_params", "check_fit1d",
          "check_mixin_order", "check_estimators_fit_returns_self")


def _selected_checks():
    for est, check in estimator_checks.estimator_checks_generator(tiny_vade(), legacy=True, mark=None):
        name = getattr(check, "func", check).__name__
        if name in CHECKS:
            yield pytest.param(est, check, id=name)


@pytest.mark.parametrize("est, check", list(_selected_checks()))
def test_sklearn_check(est, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(est)


def test_every_selected_check_exists():
    names = {getattr(c, "func", c).__name__ for _, c in estimator_checks.estimator_checks_generator(
        tiny_vade(), legacy=True, mark=None)}
    assert set(CHECKS) <= names, set(CHECKS) - names


@pytest.fixture(scope="module")
def digits_fit(tmp_path_factory):
    d = load_digits()
    x = d.data / 16.0
    est = gmvc.VaDE(n_clusters=10, steps=600, pretrain_steps=300, hidden_sizes=(64, 64), restarts=1,
                    random_state=0)
    est.fit(x)
    return est, x, d.target


def test_fit_predict_transform_score_sample(digits_fit):
    est, x, y = digits_fit
    from gmvc.core.metrics import clustering_report
    assert est.n_iter_ == 600 and est.labels_.shape == (len(x),)
    assert clustering_report(est.labels_, y)["acc"] > 0.6                       # measured 0.78
    proba = est.predict_proba(x[:50])
    assert proba.shape == (50, 10) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == est.predict(x[:50])).all()
    assert (est.predict(x) == est.labels_).all()
    assert est.transform(x[:7]).shape == (7, 10)
    elbo = est.score(x)
    assert np.isfinite(elbo) and elbo > est.score(np.clip(x + 0.5, 0, 1))      # real digits beat shifted ones
    samples, clusters = est.sample(20)
    assert samples.shape == (20, 64) and clusters.shape == (20,) and samples.std() > 0.01
    only_3, c3 = est.sample(5, cluster=3)
    assert (c3 == 3).all()
    with pytest.raises(ValueError, match="cluster must be in 0..9"):
        est.sample(2, cluster=10)
    # the learned prior as a distrax distribution: the training codes are likelier under it than
    # the same codes pushed far away
    import jax
    prior = est.prior_distribution_
    z = est.transform(x)
    assert np.mean(prior.log_prob(z)) > np.mean(prior.log_prob(z + 10.0)) + 5.0
    assert prior.sample(seed=jax.random.key(0), sample_shape=(4,)).shape == (4, 10)


def test_input_checks(digits_fit):
    est, x, _ = digits_fit
    with pytest.raises(ValueError, match="NaN"):
        est.predict(np.where(np.arange(64) == 3, np.nan, x[:5]))
    with pytest.raises(ValueError, match="64 features"):
        est.predict(x[:5, :10])
    with pytest.raises(ValueError, match="n_clusters|num_clusters"):
        tiny_vade(n_clusters=30).fit(x[:20])


def test_save_load_and_pickle_predict_the_same(digits_fit, tmp_path):
    est, x, _ = digits_fit
    path = est.save(tmp_path / "model")
    with pytest.raises(FileExistsError):
        est.save(tmp_path / "model")                                  # never overwrites
    loaded = gmvc.load(path)
    assert type(loaded) is gmvc.VaDE and loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.labels_, est.labels_)        # the labels it was saved with
    np.testing.assert_array_equal(loaded.predict_proba(x), est.predict_proba(x))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).transform(x), est.transform(x))
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        gmvc.load(path)


def test_pipeline_and_clone():
    x = load_digits().data[:300] * 3.0                                # not in [0, 1]: the scaler fixes it
    pipe = make_pipeline(MinMaxScaler(), tiny_vade(random_state=1))
    labels = pipe.fit_predict(x)
    assert labels.shape == (300,) and pipe[-1].config_.model.likelihood == "bernoulli"
    twin = clone(pipe).fit(x)
    np.testing.assert_array_equal(twin.predict(x), pipe.predict(x))   # same random_state, same result


SPIRAL = ["--config=configs/gmvae_spiral.py", "--config.train.steps=200", "--config.train.restarts=2",
          "--config.train.log_every=100", "--config.data.num_points=1000"]


def test_cli_run_loads_as_estimator_and_predict_mode_agrees(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(*SPIRAL, f"--workdir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    est = gmvc.load(run)
    chosen = json.loads((run / "results.json").read_text())["chosen_restart"]
    from gmvc.data.sources import make_spiral
    x, _ = make_spiral(1000, 5, 0.05, 0)
    np.save(tmp_path / "points.npy", x)
    proba = est.predict_proba(x)
    # the CLI's own predictions.csv (the restart it chose) and predict mode agree with the estimator
    csv = np.loadtxt(run / "predictions.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(csv[:, 3:], proba, atol=2e-6)
    np.testing.assert_array_equal(est.labels_, csv[:, 1].astype(int))  # the run's clusters, from predictions.csv
    assert chosen in (0, 1)
    npz = tmp_path / "pred.npz"
    p = run_cli(*SPIRAL, f"--workdir={run}", "--mode=predict", f"--data=file:{tmp_path / 'points.npy'}",
                "--format=npz", f"--output={npz}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "wrote predictions (1000 rows, npz)" in p.stdout
    with np.load(npz) as f:
        np.testing.assert_allclose(f["probs"], proba, atol=2e-6)
        np.testing.assert_allclose(f["z_mean"], est.transform(x), atol=1e-5)
        assert (f["cluster"] == proba.argmax(1)).all()
    # the other formats, written by the same function in this process
    from gmvc.estimator import load_trained
    from gmvc.predict import predict_to_file
    trained = load_trained(run)
    cfg = trained.config.data.copy_and_resolve_references()
    cfg.source = f"file:{tmp_path / 'points.npy'}"
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"pred.{fmt}"
        assert predict_to_file(trained, cfg, out, fmt, echo=lambda *a, **k: None) == 1000
        if fmt == "csv":
            table = np.loadtxt(out, delimiter=",", skiprows=1)
            got, z = table[:, 2:7], table[:, 7:]
            assert (table[:, 1] == proba.argmax(1)).all()
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            got, z = np.array([r["probs"] for r in rows]), np.array([r["z_mean"] for r in rows])
        np.testing.assert_allclose(got, proba, atol=2e-6)
        np.testing.assert_allclose(z, est.transform(x), atol=1e-5)
    # data the run cannot take: the error predict mode prints (its exit code 2 for any such error
    # is tested in test_cli.py), and no output file
    from gmvc.errors import GmvcError
    cfg.source = "digits"
    with pytest.raises(GmvcError) as bad:
        predict_to_file(trained, cfg, tmp_path / "x.csv", "csv", echo=lambda *a, **k: None)
    assert "samples of shape [8, 8, 1]" in str(bad.value) and "[2]" in str(bad.value)
    assert not (tmp_path / "x.csv").exists()


def test_prediction_memory_is_bounded(digits_fit, tmp_path):
    """100,000 samples (25.6 MB of float32) predicted from a memory-mapped .npy to npz: the
    Python-side peak stays at the batch's size, the same as for 10,000 samples."""
    from gmvc.estimator import load_trained
    from gmvc.predict import predict_to_file
    est, x, _ = digits_fit
    trained = load_trained(est.workdir_)
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (10_000, 100_000):
        data = np.lib.format.open_memmap(tmp_path / f"x{n}.npy", mode="w+", dtype=np.float32, shape=(n, 64))
        for i in range(0, n, 10_000):
            data[i:i + 10_000] = x[rng.integers(0, len(x), 10_000)]
        data.flush()
        del data
        cfg = trained.config.data.copy_and_resolve_references()
        cfg.source = f"file:{tmp_path / f'x{n}.npy'}"
        tracemalloc.start()
        rows = predict_to_file(trained, cfg, tmp_path / f"p{n}.npz", "npz", batch_size=1000, echo=lambda *a, **k: None)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rows == n
    with np.load(tmp_path / "p100000.npz") as f:
        assert f["probs"].shape == (100_000, 10) and f["z_mean"].shape == (100_000, 10)
        np.testing.assert_array_equal(f["cluster"][:5], est.predict(np.load(tmp_path / "x100000.npy")[:5]))
    print("peak traced bytes:", peaks)
    assert peaks[100_000] < 4e6 and peaks[100_000] < 1.5 * peaks[10_000] + 1e6, peaks


def test_fit_turns_the_compilation_cache_on_before_training(monkeypatch):
    """A refit loads its compiled programs from disk: fit turns gmvc's compilation cache on
    (gmvc/run/cache.py, the command line's) before anything compiles."""
    class Called(Exception):
        pass

    def enable():
        raise Called
    monkeypatch.setattr("gmvc.estimator.enable_compilation_cache", enable)
    with pytest.raises(Called):
        gmvc.VaDE(n_clusters=2).fit(np.zeros((10, 2)))

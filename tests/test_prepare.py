"""How a run reads the data it is given: the scaling and likelihood chosen from the values
(gmvc/data/prepare.py), the recipe rules that fit sizes to the data (gmvc/recipes/rules.py), and
that predictions and samples read and give data in the user's own units."""
import json

import numpy as np
import pytest
from conftest import run_cli

import gmvc
from gmvc import recipes
from gmvc.data import Dataset, prepare
from gmvc.errors import CheckpointError, ConfigError
from gmvc.recipes.rules import fit_to_data

RNG = np.random.RandomState(0)


@pytest.mark.parametrize("x, kind, likelihood", [
    (RNG.rand(50, 6), "none", "bernoulli"),                          # values in [0, 1]
    (RNG.randint(0, 17, (50, 64)).astype(float), "max", "bernoulli"),  # digits as loaded: 0-16
    (RNG.randint(0, 256, (50, 8, 8, 1)).astype(float), "max", "bernoulli"),   # 0-255 stored as floats
    (RNG.randn(50, 5) * 3 + 100, "standardize", "gaussian"),          # arbitrary real features
    (RNG.rand(50, 4) * 2 - 0.5, "standardize", "gaussian"),           # outside [0, 1]
])
def test_auto_chooses_scaling_and_likelihood_from_the_values(x, kind, likelihood):
    x = x.astype(np.float32)
    config = recipes.cluster(3)
    resolved, data, scaling = prepare.resolve(config, Dataset(x=x, y=None, name="a"))
    assert (scaling.kind, resolved.data.scaling, resolved.model.likelihood) == (kind, kind, likelihood)
    assert (config.data.scaling, config.model.likelihood) == ("auto", "auto")     # the recipe is not changed
    assert np.all(np.isfinite(data.x))
    if likelihood == "bernoulli":
        assert data.x.min() >= 0 and data.x.max() <= 1
    if kind == "standardize":
        np.testing.assert_allclose(data.x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(data.x.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(scaling.invert(data.x), x, rtol=1e-5, atol=1e-3)


def test_constant_columns_become_zero_not_nan():
    x = np.concatenate([RNG.randn(40, 3), np.full((40, 1), 7.0), np.zeros((40, 1))], 1).astype(np.float32)
    s = prepare.fit(x, "auto")
    out = s.apply(x)
    assert s.kind == "standardize" and np.all(np.isfinite(out))
    assert np.all(out[:, 3:] == 0.0)
    assert prepare.fit(np.full((10, 2), 3.0, np.float32), "max").apply(np.full((1, 2), 3.0, np.float32)).max() == 1.0


def test_explicit_scaling_is_kept_and_unknown_is_one_line():
    x = (RNG.rand(30, 3) * 5).astype(np.float32)
    c = recipes.cluster(2)
    c.unlock()
    c.data.scaling, c.model.likelihood = "standardize", "gaussian"
    resolved, data, scaling = prepare.resolve(c, Dataset(x=x, y=None, name="a"))
    assert scaling.kind == "standardize" and abs(float(data.x.mean())) < 1e-5
    c.data.scaling = "minmax"
    with pytest.raises(ConfigError, match="unknown data.scaling 'minmax'"):
        prepare.resolve(c, Dataset(x=x, y=None, name="a"))


def test_rules_fit_sizes_to_the_data():
    c = recipes.cluster(3)
    small, notes = fit_to_data(c, 150, (4,))
    assert small.phases.gmm_init.overcluster == 7 and small.phases.gmm_init2.overcluster == 7     # N / 20
    assert small.phases.pretrain.batch_size == 150 and small.train.batch_size == 100
    assert small.phases.pretrain.augment.to_dict() == {} and small.phases.main3.augment.to_dict() == {}
    assert len(notes) == 5 and all(len(n) <= 110 for n in notes)
    # The network follows the number of values, N x the sample's size: below 1,000,000 the small one.
    assert small.model.hidden_sizes == (128, 128, 256)
    assert "hidden sizes (500, 500, 1000) -> (128, 128, 256) (N x sample size = 600 values < 1,000,000) (model)" \
        in notes
    assert fit_to_data(recipes.cluster(5), 2000, (16, 16, 1))[0].model.hidden_sizes == (128, 128, 256)
    assert fit_to_data(recipes.cluster(5), 1276, (784,))[0].model.hidden_sizes == (500, 500, 1000)   # 1,000,384
    assert fit_to_data(recipes.cluster(3, hidden_sizes=(64, 32)), 150, (4,))[0].model.hidden_sizes == (64, 32)
    assert fit_to_data(recipes.cluster_gmvae(3), 150, (4,))[0].model.hidden_sizes == (500, 500, 1000)
    images, notes = fit_to_data(recipes.cluster(10), 5000, (28, 28, 1))
    assert images.model.hidden_sizes == (500, 500, 1000) and not any("hidden sizes" in n for n in notes)
    assert images.phases.pretrain.augment.to_dict() == {"shift": 2.0}
    assert images.phases.gmm_init.overcluster == 80 and images.phases.gmm_init2.overcluster == 30
    assert fit_to_data(recipes.cluster(10), 1797, (8, 8, 1))[0].phases.main.augment.to_dict() == {"shift": 1.0}
    assert images.phases.gmm_init.n_init == 30                    # up to 100,000 samples: as the recipe says
    big, notes = fit_to_data(recipes.cluster(10), 1_000_000, (784,))
    assert [big.phases[p].n_init for p in ("gmm_init", "gmm_init2", "gmm_init3")] == [3, 3, 3]
    assert "n_init 30 cut to max(3, 30 x 100,000 / N) = 3 (gmm_init, gmm_init2, gmm_init3)" in notes
    assert fit_to_data(recipes.cluster(10), 400_000, (784,))[0].phases.gmm_init.n_init == 8
    plain = recipes.vade_mnist5k()                  # a recipe its data fits: nothing changes
    assert fit_to_data(plain, 5000, (28, 28, 1)) == (plain, [])


def test_train_epochs_make_the_steps_follow_the_data():
    """train.epochs > 0: steps = min(train.steps, max(train.min_steps, epochs x N / batch)), the
    phases (shares of train.steps) and the log and checkpoint intervals scaled with them."""
    from gmvc.training.phases import build_phases
    c = recipes.cluster(3)
    c.unlock()
    c.train.epochs, c.train.min_steps = 80, 1000
    small, notes = fit_to_data(c, 200, (5,))
    assert small.train.steps == 1000 and small.train.log_every == 62 and small.train.checkpoint_every == 1000
    assert "train.steps 4000 cut to max(1000, 80 epochs x N / 100) = 1000 (train)" in notes
    lengths = {p.name: p.end - p.start for p in build_phases(small) if p.kind == "train"}
    assert lengths == {"pretrain": 375, "main": 312, "main2": 156, "main3": 157}
    assert fit_to_data(c, 2000, (5,))[0].train.steps == 1600                  # 80 epochs of 20 batches
    assert fit_to_data(c, 5000, (5,))[0].train.steps == 4000                  # the ceiling: train.steps
    c.train.epochs = 0
    assert fit_to_data(c, 200, (5,))[0].train.steps == 4000                   # epochs 0: steps as given
    # The recipe's own: 100 epochs, at least half its steps.
    assert [fit_to_data(recipes.cluster(3), n, (5,))[0].train.steps for n in (200, 2000, 3000, 4000)] == \
        [2000, 2000, 3000, 4000]
    assert fit_to_data(recipes.cluster(3, steps=1000), 200, (5,))[0].train.steps == 1000   # given: used
    assert fit_to_data(recipes.cluster_gmvae(3), 200, (5,))[0].train.steps == 4000       # GMVAE: all its steps


def test_a_given_setting_wins_over_its_rule():
    """An override of model.hidden_sizes or train.steps turns off the rule that would choose it
    from the data (unless the rule's own switch is given too)."""
    from gmvc.config import apply_overrides
    c = recipes.cluster(3)
    c.unlock()
    apply_overrides(c, {"model.hidden_sizes": (32,), "train.steps": 300})
    assert c.model.small_below == 0 and c.train.epochs == 0
    ruled, notes = fit_to_data(c, 150, (4,))
    assert ruled.model.hidden_sizes == (32,) and ruled.train.steps == 300 and len(notes) == 3
    c = recipes.cluster(3)
    c.unlock()
    apply_overrides(c, {"model.hidden_sizes": (32,), "model.small_below": 10_000})
    assert fit_to_data(c, 150, (4,))[0].model.hidden_sizes == (128, 128, 256)          # both given: the rule
    est = gmvc.VaDE(n_clusters=3, hidden_sizes=(16,), steps=50)._make_config(np.zeros((150, 4), np.float32))
    assert est.model.small_below == 0 and est.train.epochs == 0


def test_estimator_reads_new_data_as_it_read_the_fit(tmp_path):
    # Digits as loaded (0-16): "max" scaling and a Bernoulli likelihood, then predict, score and
    # sample in the user's units; a saved and loaded model reads data the same way.
    from sklearn.datasets import load_digits
    x = load_digits().data[:400]
    est = gmvc.VaDE(n_clusters=4, steps=60, pretrain_steps=30, hidden_sizes=(32,), batch_size=50,
                    progress=False).fit(x)
    assert est.scaling_.kind == "max" and est.config_.model.likelihood == "bernoulli"
    assert est.config_.data.scaling == "max"
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    from gmvc.core.batching import make_predict
    direct = make_predict(est.model_, 100)(est.params_, (x / 16.0).astype(np.float32))      # the model on x / 16
    np.testing.assert_allclose(est.transform(x), direct["z_mean"], rtol=1e-5, atol=1e-6)
    samples, _ = est.sample(5)
    assert samples.max() > 1.5                                       # in pixel values 0-16, not [0, 1]
    est.save(tmp_path / "saved")
    loaded = gmvc.load(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.predict(x), est.labels_)
    (tmp_path / "saved" / "scaling.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="scaling.json is not a valid scaling record"):
        gmvc.load(tmp_path / "saved")


def test_cli_on_standardized_features_says_how_it_reads_them(tmp_path):
    # Real-valued features with a constant column, through file: with only the source and K set
    # (and short phases): a Gaussian likelihood, no NaN, and --mode=predict reads the same scaling.
    x = np.concatenate([RNG.randn(300, 3) + np.repeat([[0, 0, 0], [6, 6, 6]], 150, 0) * 1.0,
                        np.full((300, 1), 5.0)], 1).astype(np.float32) * 40 - 100
    y = np.repeat([0, 1], 150)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    run = tmp_path / "run"
    flags = ("--config=configs/cluster.py", f"--config.data.source=file:{tmp_path / 'data.npz'}",
             "--config.model.num_clusters=2", "--config.train.steps=120", "--config.train.checkpoint_every=120",
             "--config.model.hidden_sizes=(32,)")
    proc = run_cli(*flags, f"--workdir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input: each feature to mean 0 and std 1 (real values in" in proc.stdout
    assert "gaussian likelihood (chosen from the scaled values)" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["input"]["scaling"] == "standardize" and results["input"]["likelihood"] == "gaussian"
    assert results["acc"] == 1.0, results
    stored = json.loads((run / "config.json").read_text())
    assert stored["data"]["scaling"] == "standardize" and stored["phases"]["pretrain"]["batch_size"] == 256
    assert stored["phases"]["gmm_init"]["overcluster"] == 15          # N / 20
    pred = run_cli(*flags, f"--workdir={run}", "--mode=predict", f"--output={tmp_path / 'p.csv'}")
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert "clustering: acc=1.0000" in pred.stdout
    gen = run_cli(*flags, f"--workdir={run}", "--mode=generate", f"--inputs={tmp_path / 'data.npz'}")
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert (run / "generated_reconstructions.png").stat().st_size > 0
    again = run_cli(*flags, f"--workdir={run}")                        # same data, same choices: resumes
    assert again.returncode == 0 and "Resuming" in again.stdout, again.stderr[-2000:]

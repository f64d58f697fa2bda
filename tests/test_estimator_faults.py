"""Bad input to the estimators and to gmvc.load: one line that names the argument, or the file and
its field; nothing written earlier is lost; a saved model reads only its own folder and never
says where a refit writes. One tiny fitted-and-saved model serves every test; the argument
checks fail before any training."""
import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from sklearn.datasets import make_blobs

import gmvc
from gmvc.errors import CheckpointError


def tiny(**kw):
    return gmvc.VaDE(**{"n_clusters": 3, "steps": 40, "hidden_sizes": (16,), "latent_dim": 2, "batch_size": 50,
                        "random_state": 0, **kw})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(estimator, X, its saved folder, what its fit printed): the gmvae recipe, whose fit is the
    cheapest of a clustering model (no pretraining or mixture fits)."""
    x, _ = make_blobs(150, centers=3, n_features=2, random_state=0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):                 # not a terminal: no bar, the start and end lines
        est = gmvc.GMVCEstimator(config="gmvae", random_state=0, overrides={
            "train.steps": 20, "train.log_every": 10, "train.restarts": 1, "model.num_clusters": 3,
            "model.hidden_sizes": (16,), "model.z_dim": 2, "model.w_dim": 2, "data.scaling": "standardize"}).fit(x)
    saved = est.save(tmp_path_factory.mktemp("saved") / "model")
    return est, x, saved, out.getvalue()


@pytest.fixture
def copy(fitted, tmp_path):
    """A copy of the saved model to tamper with."""
    return shutil.copytree(fitted[2], tmp_path / "model")


class Stop(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """fit stops where training would start; returns the workdirs it was given."""
    import gmvc.trainer
    given = []

    def stop(config, workdir, **kwargs):
        given.append(workdir)
        raise Stop

    monkeypatch.setattr(gmvc.trainer, "train_and_evaluate", stop)
    return given


def edit_json(path, **changes):
    info = json.loads(path.read_text())
    for key, value in changes.items():
        *outer, last = key.split(".")
        target = info
        for k in outer:
            target = target[k]
        target[last] = value
    path.write_text(json.dumps(info))


# ------------------------------------------------------------------ item 2: where a loaded model writes


def test_a_loaded_model_never_takes_its_workdir_from_its_files(copy, tmp_path, no_training):
    elsewhere = tmp_path / "x"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("not a gmvc run")
    edit_json(copy / "estimator.json", **{"params.workdir": str(copy / ".." / ".." / "x")})
    loaded = gmvc.load(copy)
    assert loaded.workdir is None
    with pytest.raises(Stop):
        loaded.fit(np.random.default_rng(0).normal(size=(150, 2)))
    assert no_training[0].resolve() != elsewhere.resolve() and not no_training[0].exists()   # its own temporary
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.txt"]
    assert json.loads((copy / "estimator.json").read_text())["params"]["workdir"] is not None   # files untouched


def test_save_records_no_workdir_and_keeps_a_partial_folder_it_did_not_make(fitted, tmp_path):
    est, _, _, _ = fitted
    theirs = tmp_path / "model.partial"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("someone's")
    path = est.save(tmp_path / "model")
    assert (theirs / "keep.txt").read_text() == "someone's"
    assert json.loads((path / "estimator.json").read_text())["params"]["workdir"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.partial"]      # no leftovers


# ------------------------------------------------------------------ item 3: links out of the folder


@pytest.mark.parametrize("name", ["labels.npy", "estimator.json", "config.json", "results.json", "scaling.json",
                                  "checkpoint file", "checkpoints"])
def test_a_link_out_of_the_saved_folder_is_refused(copy, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    if name == "checkpoints":
        target = shutil.copytree(copy / "checkpoints", outside / "checkpoints")
        shutil.rmtree(copy / "checkpoints")
        link = copy / "checkpoints"
    elif name == "checkpoint file":
        link = next(p for p in sorted((copy / "checkpoints").rglob("*")) if p.is_file())
        target = shutil.copy(link, outside / "file")
        link.unlink()
    else:
        link = copy / name
        target = outside / name
        if name == "labels.npy":
            np.save(target, np.zeros((300, 4), np.float32))
        else:
            shutil.copy(link, target)
        link.unlink()
    os.symlink(target, link)
    refused = re.escape(link.name) + r" is a link to .*, outside .*model: a saved model reads only the files of its own"
    with pytest.raises(CheckpointError, match=refused):
        gmvc.load(copy)


@pytest.mark.parametrize("labels, message", [
    (np.zeros((300, 4), np.float32), r"the labels must be ints of shape \[N\], got dtype float32, shape \[300, 4\]"),
    (np.zeros(149, np.int64), r"149 labels for the run's 150 samples \(results.json, field 'num_samples'\)"),
    (np.full(150, 7), r"the labels must lie in 0..2, got values in \[7, 7\]"),
])
def test_saved_labels_must_be_the_runs_clusters(copy, labels, message):
    np.save(copy / "labels.npy", labels)
    with pytest.raises(CheckpointError, match=r"labels.npy: " + message):
        gmvc.load(copy)


def test_a_link_inside_the_folder_is_read(fitted, copy):
    est = fitted[0]
    (copy / "labels.npy").rename(copy / "clusters.npy")
    os.symlink("clusters.npy", copy / "labels.npy")
    loaded = gmvc.load(copy)
    np.testing.assert_array_equal(loaded.labels_, est.labels_)
    assert loaded.labels_.dtype.kind == "i" and loaded.labels_.shape == (150,)


# ------------------------------------------------------------------ item 11: arguments and saved fields


@pytest.mark.parametrize("kwargs, message", [
    ({"n_clusters": "abc"}, "n_clusters must be .*a positive int, got 'abc'"),
    ({"n_clusters": 0}, "n_clusters must be .*a positive int, got 0"),
    ({"steps": 2.5}, "steps must be .*a positive int, got 2.5"),
    ({"hidden_sizes": (16, "x")}, r"hidden_sizes must be .*a tuple of positive ints \(the layers' widths\)"),
    ({"hidden_sizes": "big"}, r"hidden_sizes must be .*a tuple of positive ints \(the layers' widths\), got 'big'"),
    ({"learning_rate": "fast"}, "learning_rate must be a number > 0, got 'fast'"),
    ({"likelihood": "poisson"}, "likelihood must be 'auto', 'bernoulli' or 'gaussian', got 'poisson'"),
    ({"random_state": "seed"}, "random_state must be None, an int"),
])
def test_a_bad_argument_is_named_at_fit_before_training(kwargs, message, no_training):
    for cls in (gmvc.VaDE, gmvc.GMVAE):
        with pytest.raises(ValueError, match=message) as e:
            cls(**kwargs).fit(np.zeros((20, 2)))
        assert isinstance(e.value, TypeError) and "\n" not in str(e.value)
    with pytest.raises(TypeError, match="w_dim must be a positive int, got -1"):
        gmvc.GMVAE(w_dim=-1).fit(np.zeros((20, 2)))
    with pytest.raises(ValueError, match=r"overrides must be None or a dict of config keys"):
        gmvc.GMVCEstimator(overrides=["train.steps=5"]).fit(np.zeros((20, 2)))
    assert no_training == []


def test_sample_names_its_arguments(fitted):
    est = fitted[0]
    with pytest.raises(ValueError, match="n_samples must be a positive int, got -3"):
        est.sample(-3)
    with pytest.raises(ValueError, match="n_samples must be a positive int, got '4'"):
        est.sample("4")
    with pytest.raises(ValueError, match=r"cluster must be in 0..2 \(or None\), got 'a'"):
        est.sample(2, cluster="a")
    x, clusters = est.sample(3, cluster=np.int64(1))
    assert x.shape == (3, 2) and (clusters == 1).all()


@pytest.mark.parametrize("field, value, what", [
    ("steps", "40", "an int >= 0"), ("data_shape", "abc", "a list of positive ints"),
    ("data_shape", [2.5], "a list of positive ints"), ("chosen_restart", 0.5, "an int >= 0"),
    ("num_samples", None, "an int >= 0"),
])
def test_results_json_fields_of_the_wrong_type_are_named(copy, field, value, what):
    edit_json(copy / "results.json", **{field: value})
    with pytest.raises(CheckpointError, match=rf"results.json: field '{field}' must be {what}, got {value!r}"
                       .replace("[", r"\[").replace("]", r"\]")):
        gmvc.load(copy)
    from gmvc.run.restore import load_trained
    with pytest.raises(CheckpointError, match=f"field '{field}'"):
        load_trained(copy)


@pytest.mark.parametrize("change, message", [
    ({"params.n_clusters": 3}, r"field 'params' holds 'n_clusters', which is not an argument of GMVCEstimator "
                               r"\(its arguments: config, overrides, progress, random_state, verbose, workdir\)"),
    ({"params.random_state": "3"}, r"field 'params': random_state must be None, an int in \[0, 2\*\*32\) or a numpy "
                                   r"RandomState, got '3'"),
    ({"class": "KMeans"}, r"field 'class' must be one of \['GMVAE', 'GMVCEstimator', 'VaDE'\], got 'KMeans'"),
    ({"params": [1, 2]}, r"field 'params' must be an object of GMVCEstimator's arguments"),
    ({"n_iter": "40"}, r"field 'n_iter' must be an int >= 0, got '40'"),
])
def test_estimator_json_fields_are_named(copy, change, message):
    edit_json(copy / "estimator.json", **change)
    with pytest.raises(CheckpointError, match=r"estimator.json: " + message):
        gmvc.load(copy)


# ------------------------------------------------------------------ items 15 and 16: what fit says


def test_fit_says_one_start_line_and_one_end_line(fitted):
    est, _, _, printed = fitted
    start, end = printed.splitlines()
    assert start.startswith("GMVCEstimator: fitting 150 samples of shape [2] into K=3 clusters, 20 steps; run folder ")
    assert str(est.workdir_) in start and "default" not in start
    sizes = np.bincount(est.labels_, minlength=3).tolist()
    assert re.fullmatch(r"GMVCEstimator: fitted in \d+\.\ds, 20 steps; cluster sizes " + re.escape(str(sizes)),
                        end), end
    assert sum(sizes) == 150


def test_the_default_k_is_said_and_progress_false_is_silent(no_training, capsys):
    x, _ = make_blobs(150, centers=6, n_features=2, random_state=0)
    with pytest.raises(Stop):
        gmvc.VaDE(steps=40).fit(x)
    line = capsys.readouterr().out.strip()
    assert line.startswith("VaDE: fitting 150 samples of shape [2] into K=10 clusters (n_clusters left at its "
                           "default: pass n_clusters=<the number of clusters you expect>), 40 steps")
    with pytest.raises(Stop):
        gmvc.GMVCEstimator(overrides={"train.steps": 40}).fit(x)
    assert "K=10 clusters (the default of gmvc.recipes.cluster(): set overrides={'model.num_clusters': K})" in \
        capsys.readouterr().out
    with pytest.raises(Stop):
        gmvc.VaDE(steps=40, progress=False).fit(x)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------ item 19: NaN and complex X


def test_nan_and_inf_name_their_rows_in_one_line(fitted, no_training):
    est, x, _, _ = fitted
    bad = x[:10].copy()
    bad[3, 1], bad[7, 0] = np.nan, -np.inf
    for call in (est.predict, est.transform, tiny().fit):
        with pytest.raises(ValueError) as e:
            call(bad)
        assert str(e.value) == ("X holds NaN or inf in 2 of its 10 samples (rows 3, 7); drop or impute them first "
                                "(e.g. sklearn.impute.SimpleImputer in a pipeline)")
    assert no_training == []


@pytest.mark.parametrize("complex_x", [np.ones((10, 2)) + 1j, (np.ones((10, 2)) + 1j).tolist(),
                                       np.ones((10, 4, 4), np.complex64)])
def test_complex_x_is_refused_in_one_line(fitted, complex_x, no_training):
    for call in (fitted[0].predict, tiny().fit):
        with pytest.raises(ValueError, match=r"^X holds complex values \(complex(128|64)\): Complex data not "
                                             r"supported; pass real features") as e:
            call(complex_x)
        assert "\n" not in str(e.value)
    assert no_training == []

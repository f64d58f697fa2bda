"""A run's record and its data: a refused start keeps the run's files, the data's own label values
reach the files, complex data and NaN labels are refused, what a run writes at its end, and what a
newcomer meets (progress bar width, the CSV hint, the notebook extra)."""
import json
import pathlib
import tomllib

import numpy as np
import pytest
from conftest import ROOT, load_config

from gmvc.errors import ConfigError, DataError

quiet = {"echo": lambda *a, **k: None}


def _tiny(source=None, **more):
    overrides = {"train.restarts": 1, "train.steps": 20, "train.log_every": 10, "train.checkpoint_every": 10,
                 "data.num_points": 300, "tensorboard.enabled": False, "model.hidden_sizes": (16,),
                 "model.prior_hidden": 16, **more}
    if source:
        overrides["data.source"] = source
    return load_config("gmvae_spiral.py", overrides)


def test_a_refused_start_writes_nothing_and_the_run_resumes(tmp_path):
    """A run whose config.json is gone, started with another config: refused by its checkpoints,
    and config.json is not written by the refused start, so the run's own config still resumes it."""
    from gmvc.trainer import train_and_evaluate
    train_and_evaluate(_tiny(**{"train.steps": 10}), tmp_path, **quiet)
    (tmp_path / "config.json").unlink()
    (tmp_path / "results.json").unlink()
    with pytest.raises(Exception) as refused:
        train_and_evaluate(_tiny(**{"model.hidden_sizes": (24,)}), tmp_path, **quiet)
    assert "Traceback" not in str(refused.value) and len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "config.json").exists()
    summary = train_and_evaluate(_tiny(), tmp_path, **quiet)       # the original command
    assert summary["steps"] == 20
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_sizes"] == [16]


def test_label_values_are_written_as_given_and_nan_labels_are_refused(tmp_path):
    from gmvc.data import load_dataset
    from gmvc.trainer import train_and_evaluate
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 0.3, (50, 2)), rng.normal(3, 0.3, (50, 2)), rng.normal((3, -6), 0.3, (50, 2))])
    values = np.repeat([0, 10, 1000], 50)
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), y=values)
    config = _tiny(f"file:{tmp_path / 'd.npz'}", **{"model.num_clusters": 3, "train.batch_size": 50})
    data = load_dataset(config.data, 0)
    assert data.y.tolist() == np.repeat([0, 1, 2], 50).tolist()       # class indices score the run
    assert data.label_values().tolist() == values.tolist()
    train_and_evaluate(config, tmp_path / "run", **quiet)
    rows = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    header = rows[0].split(",")
    written = [int(r.split(",")[header.index("label")]) for r in rows[1:]]
    assert written == values.tolist()

    floats = values.astype(np.float64)
    floats[[3, 70]] = np.nan
    np.savez(tmp_path / "nan.npz", x=x.astype(np.float32), y=floats)
    with pytest.raises(DataError, match=r"2 labels are NaN or inf \(first at samples \[3, 70\]\)"):
        load_dataset(_tiny(f"file:{tmp_path / 'nan.npz'}").data, 0)


def test_text_labels_are_written_quoted_where_needed(tmp_path):
    from gmvc.run import export
    export.write_predictions_csv(tmp_path / "p.csv", np.array([[0.9, 0.1], [0.2, 0.8]]), np.array(["a,b", "c"]))
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[1] == '0,0,"a,b",0.9,0.1' and lines[2] == "1,1,c,0.2,0.8"


def test_complex_data_is_refused(tmp_path):
    from gmvc.data import load_dataset
    np.save(tmp_path / "c.npy", (np.ones((10, 3)) + 1j).astype(np.complex64))
    with pytest.raises(DataError, match="data must be real numbers, got complex values"):
        load_dataset(_tiny(f"file:{tmp_path / 'c.npy'}").data, 0)


def test_max_checkpoints_below_one_is_refused_before_anything_runs(tmp_path):
    from gmvc.trainer import train_and_evaluate
    with pytest.raises(ConfigError, match="train.max_checkpoints must be at least 1, got 0"):
        train_and_evaluate(_tiny(**{"train.max_checkpoints": 0}), tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()


def test_a_finished_run_run_again_keeps_its_training_time(tmp_path):
    from gmvc.trainer import train_and_evaluate
    lines = []
    first = train_and_evaluate(_tiny(), tmp_path, echo=lambda line, **k: lines.append(line))
    assert "5 clusters (model.num_clusters)" in next(line for line in lines if line.startswith("Starting a new run"))
    (tmp_path / "results.json").write_text(json.dumps({**first, "train_seconds": 123.0}))
    again = train_and_evaluate(_tiny(), tmp_path, **quiet)
    assert again["steps"] == 20 and again["train_seconds"] == 123.0
    assert json.loads((tmp_path / "results.json").read_text())["train_seconds"] == 123.0


def test_the_progress_bar_follows_the_terminal_width(monkeypatch):
    from gmvc.run.progress import bar_width
    monkeypatch.setenv("COLUMNS", "80")
    assert bar_width(100) == 80
    monkeypatch.setenv("COLUMNS", "200")
    assert bar_width(100) == 100


def test_the_csv_hint_reads_a_file_with_a_header_row(tmp_path):
    from gmvc.data import load_dataset
    path = tmp_path / "table.npy"
    path.write_text("height,weight\n1.5,60\n1.8,80\n")
    with pytest.raises(DataError) as e:
        load_dataset(_tiny(f"file:{path}").data, 0)
    hint = str(e.value).split("numpy first: ")[1][:-1]       # the message closes its bracket
    scope = {"np": np}
    exec(hint.replace("'x.npy'", repr(str(tmp_path / "x.npy"))), scope)       # the one-liner works as given
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), [[1.5, 60], [1.8, 80]])


def test_notebooks_have_an_extra_and_a_command():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    needs = {r.split(">")[0].split("=")[0].split("[")[0] for r in extras["notebooks"]}
    assert {"jupyterlab", "ipykernel", "nbclient"} <= needs
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[notebooks]"' in readme and "jupyter execute" in readme
    named = [p.name for p in pathlib.Path(ROOT / "notebooks").glob("*.ipynb")]
    assert any(f"notebooks/{n}" in readme for n in named)


def test_wide_layers_take_steps_scaled_by_their_fan_in(monkeypatch):
    """Adam's step on a layer's outputs adds up over its inputs: above WIDE_FAN_IN inputs a
    layer's updates shrink by WIDE_FAN_IN / fan-in; every narrower layer steps as plain Adam."""
    import jax
    import ml_collections
    from gmvc.training import state
    from gmvc.training.state import WIDE_FAN_IN, make_optimizer
    cfg = ml_collections.ConfigDict({"lr": 1e-2, "lr_schedule": {}, "prior_lr": -1.0, "prior_lr_schedule": {},
                                     "b1": 0.9, "b2": 0.999, "eps": 1e-8, "clip_norm": 0.0})
    rng = np.random.default_rng(0)
    params = {"net": {"wide": rng.normal(size=(20000, 3)).astype(np.float32),
                      "conv": rng.normal(size=(5, 5, 32, 8)).astype(np.float32),
                      "bias": np.zeros(3, np.float32)},
              "prior": {"means": rng.normal(size=(3, 20000)).astype(np.float32)}}
    grads = jax.tree.map(lambda p: np.ones_like(p), params)
    tx = make_optimizer(cfg)
    updates, _ = tx.update(grads, tx.init(params), params)
    monkeypatch.setattr(state, "scale_wide_layers", lambda inner: inner)       # Adam alone
    plain_tx = make_optimizer(cfg)
    plain, _ = plain_tx.update(grads, plain_tx.init(params), params)
    np.testing.assert_allclose(updates["net"]["wide"], plain["net"]["wide"] * WIDE_FAN_IN / 20000, rtol=1e-6)
    for path in (("net", "conv"), ("net", "bias"), ("prior", "means")):
        np.testing.assert_array_equal(updates[path[0]][path[1]], plain[path[0]][path[1]])
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(plain_tx.init(params))   # checkpoints keep their shape

"""Watching a run: TensorBoard event files (read back with TensorBoard's own reader, no
TensorFlow), the validation split and its ELBO, early stopping with the best checkpoint."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, config_flags, load_config
from test_train import assert_trees_equal, final_params

from gmvc.errors import ConfigError
from gmvc.models import make_model
from gmvc.run.restore import restore_stacked
from gmvc.trainer import train_and_evaluate

quiet = dict(echo=lambda *a, **k: None)


def read_events(logdir):
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0,
                                                                         "histograms": 0})
    acc.Reload()
    return acc


def read_log(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# The CLI with a stand-in `tensorflow` package first on the path, which reports any import of it:
# TensorFlow must not be needed (nor imported) to write or read the events.
FAKE_TENSORFLOW = "import sys\nsys.stderr.write('TENSORFLOW IMPORTED\\n')\nraise ImportError('no tensorflow here')\n"


# One small run serves the tests below: 2 restarts, a fifth of the spiral held out, a learning
# rate that makes the validation ELBO stop improving after about 200 steps; patience 2.
RUN = {"data.num_points": 1000, "train.steps": 600, "train.log_every": 20, "train.checkpoint_every": 100,
       "train.restarts": 2, "train.validation_fraction": 0.2, "train.patience": 2, "optim.lr": 0.01,
       "tensorboard.images_every": 100, "tensorboard.projector_points": 300}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The run through the command line, with a stand-in `tensorflow` first on the path."""
    tmp = tmp_path_factory.mktemp("events")
    fake = tmp / "fake_site" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "gmvc.main", *config_flags("gmvae_spiral.py", RUN),
                           f"--workdir={tmp / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


def test_event_files_hold_every_scalar_histogram_image_and_the_projector(cli_run):
    run, proc = cli_run
    assert "TENSORFLOW IMPORTED" not in proc.stderr
    assert "200 held out for validation" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    stop = results["steps"]
    acc = read_events(run / "tensorboard")
    log = read_log(run)
    steps = list(range(20, stop + 1, 20))
    assert [r["step"] for r in log] == steps
    # Every logged number is a scalar with the same value at the same steps.
    for name in ("loss", "recon", "cond_prior", "w_prior", "c_prior", "cv", "c_marginal", "grad_norm", "elbo",
                 "steps_per_sec"):
        events = acc.Scalars(f"train/{name}")
        assert [e.step for e in events] == steps, name
        np.testing.assert_allclose([e.value for e in events], [r[name] for r in log],
                                   rtol=1e-6 if name != "steps_per_sec" else 0.01)   # the log rounds steps/s
    for name in ("elbo", "recon", "cond_prior", "w_prior", "c_prior"):
        np.testing.assert_allclose([e.value for e in acc.Scalars(f"val/{name}")], [r[f"val_{name}"] for r in log],
                                   rtol=1e-6)
    for r in log:
        # The training ELBO is minus the sum of the bound's terms (c_prior without free bits).
        assert r["elbo"] == pytest.approx(-(r["recon"] + r["cond_prior"] + r["w_prior"] + r["c_prior_kl"]), rel=1e-9)
        assert len(r["val_elbo_per_restart"]) == 2
        assert r["val_elbo"] == pytest.approx(max(r["val_elbo_per_restart"]), abs=1e-5)   # the best restart's
    assert acc.Scalars("eval/acc")[-1].value == pytest.approx(results["acc"], rel=1e-6)

    # Histograms of each restart's prior (GMVAE: the 5 component means at w = 0, 2-D).
    for r in (0, 1):
        hist = acc.Histograms(f"prior/means/restart_{r}")
        assert [h.step for h in hist] == steps
        assert hist[-1].histogram_value.num == 5 * 2
    # Images every 100 steps and at the end.
    for tag in ("samples", "reconstructions"):
        images = acc.Images(tag)
        assert [i.step for i in images] == [s for s in steps if s % 100 == 0 and s < stop] + [stop]
        assert images[-1].width == images[-1].height == 256

    # The projector: one embedding per image step; the final one's clusters are the predictions'.
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2
    config = text_format.Parse((run / "tensorboard" / "projector_config.pbtxt").read_text(),
                               projector_config_pb2.ProjectorConfig())
    assert [e.tensor_path for e in config.embeddings] == [f"projector/{s:08d}/tensors.tsv" for s in (100, 200, stop)]
    final = config.embeddings[-1]
    z = np.loadtxt(run / "tensorboard" / final.tensor_path, delimiter="\t")
    assert z.shape == (300, 2)
    meta = (run / "tensorboard" / final.metadata_path).read_text().splitlines()
    assert meta[0] == "index\tcluster\tlabel" and len(meta) == 301
    rows = [list(map(int, line.split("\t"))) for line in meta[1:]]
    predictions = [line.split(",") for line in (run / "predictions.csv").read_text().splitlines()[1:]]
    for index, cluster, label in rows:
        assert [int(predictions[index][1]), int(predictions[index][2])] == [cluster, label]


def test_early_stopping_keeps_the_best_step_and_survives_a_crash(cli_run, tmp_path):
    run, _ = cli_run
    out = json.loads((run / "results.json").read_text())
    e = out["early_stopping"]
    stop, best = e["stopped_at"], e["best_step"]
    assert stop is not None and stop < 600 and out["steps"] == stop
    log = read_log(run)
    steps = [r["step"] for r in log]
    val = {r["step"]: r["val_elbo"] for r in log}
    assert steps[-1] == stop
    assert best == max(val, key=val.get) and e["best_val_elbo"] == val[best]
    assert stop - best == 2 * 20              # patience log steps without improvement, then stop
    # The outputs come from the best step's parameters: their validation ELBO is the one logged there.
    assert out["validation"]["elbo"] == pytest.approx(val[best], rel=1e-6)
    c = load_config("gmvae_spiral.py", RUN)          # the config of the run above
    stacked, step, _ = restore_stacked(c, run, make_model(c.model, (2,)))
    assert step == best
    assert_trees_equal(stacked, final_params(run, best))          # the manager kept the best step's checkpoint
    last = final_params(run, stop)
    assert not np.array_equal(np.asarray(jax.tree.leaves(last)[0]), np.asarray(jax.tree.leaves(stacked)[0]))

    # Killed with every checkpoint after its oldest kept one gone (before the best step): resumed
    # from there, it ends as the whole run did.
    crashed = tmp_path / "crashed"
    shutil.copytree(run, crashed)
    kept = sorted(int(d.name) for d in (crashed / "checkpoints").iterdir() if d.name.isdigit())
    assert kept[0] < best < kept[-1]
    for later in kept[1:]:
        shutil.rmtree(crashed / "checkpoints" / str(later))
    messages = []
    resumed = train_and_evaluate(c, crashed, echo=lambda m, **k: messages.append(m))
    assert any("Resuming from checkpoint" in m and f"step {kept[0]} " in m for m in messages)
    assert resumed["early_stopping"] == e and resumed["acc"] == out["acc"]
    assert_trees_equal(final_params(run, stop), final_params(crashed, stop))
    assert_trees_equal(stacked, restore_stacked(c, crashed, make_model(c.model, (2,)))[0])
    assert [r["step"] for r in read_log(crashed)] == steps
    # TensorBoard shows each step once: the resumed run hid the events logged past step 100.
    events = read_events(crashed / "tensorboard").Scalars("val/elbo")
    assert [ev.step for ev in events] == steps
    np.testing.assert_allclose([ev.value for ev in events], [val[s] for s in steps], rtol=1e-6)

    # Run again: it has stopped, so it trains no further and gives the same outputs.
    again = train_and_evaluate(c, crashed, echo=lambda m, **k: messages.append(m))
    assert any("stopped early" in m for m in messages)
    assert again["steps"] == stop and again["acc"] == out["acc"]

    # The best step's checkpoint gone (the stop step's record names it): the run says so, counts
    # afresh from the stop step and ends with outputs from a checkpoint it has.
    lost = tmp_path / "lost"
    shutil.copytree(run, lost)
    shutil.rmtree(lost / "checkpoints" / str(best))
    messages.clear()
    later = train_and_evaluate(c, lost, echo=lambda m, **k: messages.append(m))
    assert any(f"the best step's checkpoint ({best}) is gone" in m for m in messages)
    new_best = later["early_stopping"]["best_step"]
    assert new_best > stop and (lost / "checkpoints" / str(new_best)).is_dir()


@pytest.mark.parametrize("overrides, message", [
    ({"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\), got 1.0"),
    ({"validation_fraction": -0.1}, r"validation_fraction must be in \[0, 1\), got -0.1"),
    ({"validation_fraction": 0.0001}, "holds out no sample of the 1000"),
    ({"validation_fraction": 0.9}, "leaves 100 of 1000 samples to train on, fewer than train.batch_size=200"),
    ({"patience": -1}, "train.patience must be 0"),
    ({"patience": 3}, "needs a validation split"),
])
def test_bad_validation_settings_are_one_clear_error(spiral_config, tmp_path, overrides, message):
    for key, value in overrides.items():
        spiral_config.train[key] = value
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(spiral_config, tmp_path / "run", **quiet)
    assert not (tmp_path / "run").exists()          # nothing computed, nothing written


def test_vade_prior_histograms_and_only_process_zero_writes(spiral_config, tmp_path):
    from gmvc.data import load_dataset
    from gmvc.eval.events import open_events
    from gmvc.training import context
    from gmvc.validate import build_plan
    from gmvc.training.state import init_params
    spiral_config.model.name = "vade"
    spiral_config.train.restarts = 2
    data = load_dataset(spiral_config.data, 0)
    model = make_model(spiral_config.model, (2,))
    params = init_params(model.init, jax.random.key(0), 2)
    ctx = context.build(build_plan(spiral_config, data))
    assert not open_events(ctx, tmp_path / "other", 0, main_process=False, images=True).enabled
    assert not (tmp_path / "other").exists()
    events = open_events(ctx, tmp_path, 0, main_process=True, images=True)
    events.histograms(7, params)
    events.close()
    acc = read_events(tmp_path / "tensorboard")
    for r in (0, 1):
        weights = acc.Histograms(f"prior/weights/restart_{r}")[0].histogram_value
        assert weights.num == 5 and weights.sum == pytest.approx(1.0, rel=1e-6)     # softmax of the logits
        means = acc.Histograms(f"prior/means/restart_{r}")[0].histogram_value
        assert means.sum == pytest.approx(float(np.sum(params["prior"]["means"][r])), rel=1e-5, abs=1e-5)
        variances = acc.Histograms(f"prior/variances/restart_{r}")[0].histogram_value
        assert variances.num == 10 and variances.min == variances.max == 1.0        # exp(0) at init

"""The command line's bad inputs: each ends in one line on stderr, `gmvc: error: ...`, exit code 2,
no traceback, and nothing written earlier lost; and predict and generate read a trained run's
config.json instead of needing its training overrides again."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, load_config, run_cli

# A tiny trained run shared by the module: K = 6 and 300 points, unlike the config file's defaults
# (K = 5, 5,000 points, 4 restarts), so that predict and generate must read them from config.json.
RUN = {"train.steps": 20, "train.log_every": 10, "train.checkpoint_every": 10, "data.num_points": 300,
       "train.restarts": 1, "tensorboard.enabled": False, "model.num_clusters": 6}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from gmvc.trainer import train_and_evaluate
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train_and_evaluate(load_config("gmvae_spiral.py", RUN), workdir, echo=lambda *a, **k: None)
    return workdir


def cli(*args, cwd):
    """`python -m gmvc.main` run from another folder (`cwd`), with this tree's gmvc."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "gmvc.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def one_error_line(proc):
    """The one stderr line of a refused command (exit code 2, no traceback), without its prefix."""
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmvc: error: "), proc.stderr[-3000:]
    return lines[0][len("gmvc: error: "):]


# --- item 6: a key given twice ------------------------------------------------------------------

@pytest.mark.parametrize("twice, named", [
    (["--config.model.hidden_sizes=(32,32)", "--config.model.hidden_sizes=(64,64)"], "--config.model.hidden_sizes"),
    (["--config.train.steps=10", "--config.train.steps=20"], "--config.train.steps"),
    (["--config.objective.cv=1.0", "--config.objective.cv=2.0"], "--config.objective.cv"),
    (["--config.tensorboard.enabled", "--noconfig.tensorboard.enabled"], "--config.tensorboard.enabled"),
    (["--mode=train", "--mode=predict"], "--mode"),           # a flag: twice with different values
])
def test_a_config_key_given_twice_is_refused(tmp_path, twice, named):
    message = one_error_line(run_cli("--config=configs/gmvae_spiral.py", f"--workdir={tmp_path / 'run'}", *twice))
    assert message.startswith(f"{named} is given twice")
    assert not (tmp_path / "run").exists()


# --- item 19: typos, values and --help ------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("--config.model.num_clustres=3", "unknown config key 'model.num_clustres' (did you mean 'model.num_clusters'?)"),
    ("--config.modle.x=1", "unknown config key 'modle.x' (did you mean 'model'?)"),
    ("--config.model.num_clusters=abc", "--config.model.num_clusters=abc: invalid literal for int() with base 10: "
                                        "'abc'"),
    ("--config.tensorboard.enabled=maybe", "--config.tensorboard.enabled=maybe: not a boolean (true or false)"),
])
def test_config_typos_and_bad_values_are_one_clean_line(tmp_path, override, expected):
    message = one_error_line(run_cli("--config=configs/gmvae_spiral.py", f"--workdir={tmp_path / 'run'}", override))
    assert message == expected
    assert not (tmp_path / "run").exists()


def test_help_exits_0_and_lists_the_config_keys():
    proc = run_cli("--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    out = proc.stdout
    assert "--mode: <train|generate|predict>" in out and "--workdir" in out
    for section, key in [("data", "source='spiral'"), ("model", "num_clusters=10"), ("train", "steps=10000"),
                         ("eval", "samples_per_cluster=10")]:
        assert any(line.startswith(f"  {section}:") for line in out.splitlines()), section
        assert key in out
    assert "config.json" in out and "only eval.*" in out          # what predict and generate may change


# --- item 17: where --config is looked for -------------------------------------------------------

def test_config_by_recipe_name_or_package_path_from_any_folder(tmp_path):
    typo = "--config.model.num_clustres=3"             # refused once the config is found: nothing runs
    for config in ("configs/cluster.py", "cluster.py", "cluster", "vade"):    # vade: a recipe without a file
        message = one_error_line(cli(f"--config={config}", typo, cwd=tmp_path))
        assert message.startswith("unknown config key 'model.num_clustres'"), (config, message)
    message = one_error_line(cli("--config=not_a_config", cwd=tmp_path))
    assert message.startswith("no config 'not_a_config': tried ")
    assert f"not_a_config (from {tmp_path})" in message and str(ROOT / "configs" / "not_a_config.py") in message
    assert "recipe names (cluster, " in message
    assert not list(tmp_path.iterdir())


# --- item 14: tfds data not prepared in the default folder -----------------------------------------

def test_tfds_data_not_prepared_in_the_default_folder_says_how_to_prepare_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    env = {**os.environ, "HOME": str(tmp_path), "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    message = one_error_line(run_cli("--config=configs/gmvae_spiral.py", f"--workdir={tmp_path / 'run'}",
                                     "--config.data.source=tfds:mnist", env=env))
    assert message.startswith(f"tfds dataset 'mnist' (split 'train') is unavailable: the data is not prepared in "
                              f"the tfds default folder {tmp_path / 'tfds'}"), message
    assert "run `tfds build mnist` with --file_format=array_record" in message
    assert "split does not exist" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- item 13: predict and generate read the run's config.json -------------------------------------

def test_predict_takes_the_model_from_config_json_and_data_from_the_command_line(run_dir, tmp_path):
    # The config file's own K, restarts and data size differ from the run's: config.json wins, and a
    # data.* override picks the data to predict. From another folder, by recipe name.
    out = tmp_path / "p.csv"
    proc = cli("--config=gmvae_spiral", f"--workdir={run_dir}", "--mode=predict", f"--output={out}",
               "--config.data.num_points=50", "--config.eval.batch_size=20", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0].split(",")[:8] == ["index", "cluster"] + [f"p_{k}" for k in range(6)]
    assert len(rows) == 1 + 50
    probs = np.array([[float(v) for v in r.split(",")[2:8]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def test_an_override_that_contradicts_the_run_names_the_key(run_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    message = one_error_line(run_cli("--config=configs/gmvae_spiral.py", f"--workdir={run_dir}", "--mode=predict",
                                     f"--output={tmp_path / 'p.csv'}", "--config.model.num_clusters=7"))
    assert message.startswith(f"--config.model.num_clusters=7 contradicts the trained run in {run_dir}, whose "
                              f"config.json has model.num_clusters=6")
    assert "use another --workdir" not in message
    assert not (tmp_path / "p.csv").exists()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_generate_without_config_reads_the_run_and_says_its_sample_count(run_dir):
    proc = run_cli(f"--workdir={run_dir}", "--mode=generate", "--config.eval.plot_points=600")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 600 points over the run's 6 clusters (not the config file's 5): 100 a cluster, the count said
    assert f"wrote samples: {run_dir / 'generated_samples.png'} (100 samples per cluster, one colour each)" \
        in proc.stdout, proc.stdout[-2000:]


# --- item 7: --label on a model without labels ----------------------------------------------------

def test_label_on_a_model_without_labels_is_refused(run_dir):
    for p in run_dir.glob("generated_*.png"):
        p.unlink()
    message = one_error_line(run_cli(f"--workdir={run_dir}", "--mode=generate", "--label=3"))
    assert message.startswith("--label is for a CVAE (a model conditioned on labels); this run's model ('gmvae')")
    assert not list(run_dir.glob("generated_*.png"))
    message = one_error_line(run_cli("--config=configs/gmvae_spiral.py", "--workdir=unused", "--label=3"))
    assert message == "--label is for --mode=generate (this is --mode=train)"
    assert not (ROOT / "unused").exists()


# --- item 10: predict into a folder or an unwritable path -----------------------------------------

def test_predict_into_a_folder_fails_before_predicting_and_leaves_nothing(run_dir, tmp_path):
    (tmp_path / "out").mkdir()
    proc = run_cli(f"--workdir={run_dir}", "--mode=predict", f"--output={tmp_path / 'out'}")
    assert one_error_line(proc) == (f"--output {tmp_path / 'out'} is a folder: give a file path, e.g. "
                                    f"{tmp_path / 'out' / 'predict.csv'}")
    assert "predicted" not in proc.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]          # no .partial


@pytest.mark.parametrize("where, cause", [("/proc/x.csv", "cannot write the predictions to /proc/x.csv: "),
                                          ("{run}/config.json", "is a file of the run in")])
def test_predict_output_that_cannot_take_the_predictions_is_refused_first(run_dir, where, cause):
    from gmvc.errors import RunError
    from gmvc.predict import check_output, predict_to_file
    from gmvc.run.restore import load_trained
    config_json = (run_dir / "config.json").read_bytes()
    trained = load_trained(run_dir)
    out = where.format(run=run_dir)
    with pytest.raises(RunError, match=cause) as raised:
        predict_to_file(trained, trained.config.data, out, echo=lambda *a, **k: None)
    assert "\n" not in str(raised.value)
    with pytest.raises(RunError, match=cause):
        check_output(out, run_dir)
    assert (run_dir / "config.json").read_bytes() == config_json
    assert not list(run_dir.glob("*.partial"))
    assert json.loads(config_json)["model"]["num_clusters"] == 6

"""Faults and bad inputs around a run directory: each is one line naming the problem, and nothing
written earlier is lost."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, config_flags, load_config, run_cli
from test_train import assert_trees_equal, final_params

from gmvc.errors import DataError, RunError

# A deliberately slow run (as tests/test_cli.py's) so that it can be reached between checkpoints.
SLOW_OVERRIDES = {"model.hidden_sizes": (512, 512), "train.batch_size": 1000, "train.restarts": 1, "train.steps": 800,
                  "train.log_every": 10, "train.checkpoint_every": 400, "train.max_checkpoints": 20,
                  "tensorboard.enabled": False}
SLOW = config_flags("gmvae_spiral.py", SLOW_OVERRIDES)
quiet = {"echo": lambda *a, **k: None}


def _wait_for(path, proc, seconds=240):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, "the run ended too early"
        assert time.time() < deadline
        time.sleep(0.02)


def test_busy_workdir_then_ctrl_c_saves_and_resumes_bit_identically(tmp_path):
    """Two real processes on one workdir: the second is refused in one line while the first
    trains. Ctrl-C (SIGINT) on the first: a checkpoint of the step it reached, one line saying how
    to resume, exit 130; the same command resumes to the uninterrupted run's parameters."""
    from gmvc.trainer import train_and_evaluate
    train_and_evaluate(load_config("gmvae_spiral.py", SLOW_OVERRIDES), tmp_path / "straight", **quiet)

    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "gmvc.main", *SLOW, f"--workdir={run}"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "metrics.jsonl", first)                  # training, past its first chunk
    second = run_cli(*SLOW, f"--workdir={run}")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"gmvc: error: {run} is in use by another gmvc run" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    step = int(err.split("interrupted at step ")[1].split(":")[0])
    assert 10 <= step < 800 and step % 10 == 0 and (run / "checkpoints" / str(step)).is_dir()
    assert "the same command resumes the run" in err

    resumed = run_cli(*SLOW, f"--workdir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from checkpoint {run / 'checkpoints' / str(step)}" in resumed.stdout
    assert_trees_equal(final_params(tmp_path / "straight", 800), final_params(run, 800))


def test_a_finished_run_is_not_resumed_with_another_config(spiral_config, tmp_path):
    from gmvc.trainer import train_and_evaluate
    train_and_evaluate(spiral_config, tmp_path, **quiet)
    saved = (tmp_path / "config.json").read_text()
    results = (tmp_path / "results.json").read_text()
    spiral_config.seed, spiral_config.optim.lr = 1, 0.5
    with pytest.raises(RunError, match=r"holds a run of another config \(it differs in optim.lr, seed\)"):
        train_and_evaluate(spiral_config, tmp_path, **quiet)
    assert (tmp_path / "config.json").read_text() == saved and (tmp_path / "results.json").read_text() == results
    # what only watches or places a run may change on a resume
    spiral_config.seed, spiral_config.optim.lr = 0, json.loads(saved)["optim"]["lr"]
    spiral_config.tensorboard.enabled, spiral_config.eval.plot_points = False, 100
    assert train_and_evaluate(spiral_config, tmp_path, **quiet)["steps"] == 200


def test_a_negative_limit_is_refused(spiral_config):
    from gmvc.data import load_dataset
    spiral_config.data.limit = -10
    with pytest.raises(DataError, match="data.limit must be 0 .every sample. or a number of samples, got -10"):
        load_dataset(spiral_config.data, 0)


def test_uint8_files_are_scaled_like_image_folders(tmp_path):
    from gmvc.data import load_dataset
    images = np.random.default_rng(0).integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    c = load_config("vade_digits.py", {"data.source": f"file:{tmp_path / 'x.npy'}"})
    x = load_dataset(c.data, 0).x
    assert x.dtype == np.float32 and x.shape == (20, 6, 6, 1) and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
    from gmvc.predict import open_source                        # --mode=predict reads the same numbers
    n, rows = open_source(c.data, 0, (6, 6, 1))
    np.testing.assert_array_equal(rows(0, n)[0], x)


def test_a_second_fit_into_a_workdir_that_holds_a_run_is_refused(tmp_path):
    import gmvc
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    est = gmvc.GMVAE(n_clusters=2, steps=20, batch_size=50, workdir=str(tmp_path / "est")).fit(x)
    params = est.params_
    with pytest.raises(RunError, match="holds a run already"):
        est.fit(x + 1.0)
    assert_trees_equal(gmvc.load(tmp_path / "est").params_, params)      # the first fit is intact


def test_a_lock_held_elsewhere_is_one_line(spiral_config, tmp_path):
    """The lock is a file lock: any other holder (here a child process) makes the run refuse."""
    from gmvc.trainer import train_and_evaluate
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time; "
                               f"held = filelock.FileLock({str(tmp_path / 'run' / '.gmvc.lock')!r}); "
                               "held.acquire(); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="is in use by another gmvc run"):
            train_and_evaluate(spiral_config, tmp_path / "run", **quiet)
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train_and_evaluate(spiral_config, tmp_path / "run", **quiet)["steps"] == 200
    assert os.listdir(tmp_path / "run")


def test_a_missing_config_file_is_one_line(tmp_path):
    proc = run_cli("--config=configs/no_such_config.py", f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(
        f"gmvc: error: no config 'configs/no_such_config.py': tried configs/no_such_config.py (from {ROOT}), ")
    assert not (tmp_path / "run").exists()


def test_divergence_names_the_likely_causes(spiral_config, tmp_path):
    from gmvc.errors import TrainingError
    from gmvc.trainer import train_and_evaluate
    spiral_config.optim.lr = 10.0
    with pytest.raises(TrainingError, match=r"non-finite values at step \d+ .* The data is on a unit scale already "
                                            r"\(values in \[-1.\d+, 1.\d+\]\); likely cause: the learning rate "
                                            r"\(optim.lr=10.0\)"):
        train_and_evaluate(spiral_config, tmp_path, **quiet)


def test_a_saved_model_never_runs_a_config_file(tmp_path, monkeypatch):
    """A config given as a .py file is run once, at fit; what save() writes is the config itself,
    so loading and refitting elsewhere runs no file."""
    import gmvc
    from gmvc.estimator import GMVCEstimator
    marker = tmp_path / "ran.txt"
    (tmp_path / "my_config.py").write_text(
        "import pathlib\nfrom gmvc.recipes import gmvae_spiral\n"
        f"def get_config():\n    pathlib.Path({str(marker)!r}).write_text('ran')\n    return gmvae_spiral()\n")
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    est = GMVCEstimator(config=str(tmp_path / "my_config.py"),
                        overrides={"train.steps": 20, "train.log_every": 10, "train.restarts": 1}).fit(x)
    assert marker.read_text() == "ran"
    est.save(tmp_path / "saved")
    marker.unlink()
    saved = json.loads((tmp_path / "saved" / "estimator.json").read_text())
    assert isinstance(saved["params"]["config"], dict) and saved["params"]["config"]["model"]["name"] == "gmvae"
    monkeypatch.chdir(tmp_path)
    loaded = gmvc.load(tmp_path / "saved")
    loaded.set_params(workdir=None).fit(x)
    assert not marker.exists()
    np.testing.assert_array_equal(loaded.predict(x[:5]).shape, (5,))


def test_a_fit_without_workdir_leaves_no_folder_behind(tmp_path, monkeypatch):
    import gc
    import tempfile
    import gmvc
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))         # where mkdtemp makes its folders
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    est = gmvc.GMVAE(n_clusters=2, steps=20, batch_size=50).fit(x)
    assert len(list(tmp_path.glob("gmvc_*"))) == 1 and est.predict(x).shape == (200,)
    del est
    gc.collect()
    assert list(tmp_path.glob("gmvc_*")) == []
    from gmvc.errors import TrainingError
    with pytest.raises(TrainingError):                              # a failed fit removes its folder too
        gmvc.GMVAE(n_clusters=2, steps=250, batch_size=50, learning_rate=1e4).fit(x)
    assert list(tmp_path.glob("gmvc_*")) == []



def _flip_a_byte(step_dir):
    target = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_a_corrupt_checkpoint_is_named_and_the_run_resumes_from_the_one_before(spiral_config, tmp_path):
    from gmvc.errors import CheckpointError
    from gmvc.run.restore import load_trained
    from gmvc.trainer import train_and_evaluate
    train_and_evaluate(spiral_config, tmp_path / "straight", **quiet)
    run = tmp_path / "run"
    train_and_evaluate(spiral_config, run, **quiet)                       # checkpoints at 100 and 200
    flipped = _flip_a_byte(run / "checkpoints" / "200")
    with pytest.raises(CheckpointError, match=rf"checkpoint {run / 'checkpoints' / '200'} is corrupt: "
                                              rf"{flipped.relative_to(run / 'checkpoints' / '200')} changed"):
        load_trained(run)
    said = []
    train_and_evaluate(spiral_config, run, echo=lambda m, **k: said.append(m))
    assert said[0].startswith(f"checkpoint {run / 'checkpoints' / '200'} is corrupt (") and "resumes from" in said[0]
    assert said[1].startswith(f"Resuming from checkpoint {run / 'checkpoints' / '100'}")
    assert (run / "checkpoints" / "corrupt_200").is_dir()                 # kept, never deleted
    assert_trees_equal(final_params(tmp_path / "straight", 200), final_params(run, 200))


def test_a_failed_save_is_one_line_and_keeps_the_earlier_checkpoints(spiral_config, tmp_path, monkeypatch):
    import errno
    import orbax.checkpoint as ocp
    from gmvc.errors import CheckpointError
    from gmvc.trainer import train_and_evaluate
    spiral_config.train.steps = 100
    train_and_evaluate(spiral_config, tmp_path, **quiet)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "100").rglob("*")}
    spiral_config.train.steps = 200
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 200:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "200.tmp"))
        return real_save(self, step, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(CheckpointError) as raised:
        train_and_evaluate(spiral_config, tmp_path, **quiet)
    assert str(raised.value) == (f"could not write checkpoint {tmp_path / 'checkpoints' / '200'}: No space left on "
                                 f"device ({tmp_path / 'checkpoints' / '200.tmp'}); the earlier checkpoints are kept")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "100").rglob("*")} == before


def test_predict_refuses_overflowing_data_and_scores_labelled_data(spiral_config, tmp_path):
    from gmvc.trainer import train_and_evaluate
    spiral_config.tensorboard.enabled = False
    train_and_evaluate(spiral_config, tmp_path / "run", write_outputs=False, **quiet)
    flags = [f"--workdir={tmp_path / 'run'}", *(f"--config.{k}={v}" for k, v in
                                                 {"train.restarts": 1, "train.steps": 200, "train.log_every": 50,
                                                  "train.checkpoint_every": 100, "data.num_points": 1000,
                                                  "tensorboard.enabled": False}.items())]
    huge = np.full((10, 2), 1e30, np.float32)
    np.save(tmp_path / "huge.npy", huge)
    bad = run_cli("--config=configs/gmvae_spiral.py", *flags, "--mode=predict", f"--data=file:{tmp_path / 'huge.npy'}",
                  f"--output={tmp_path / 'out.csv'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "the model's outputs are not finite for 10 samples (first: [0, 1, 2, 3, 4]); their values reach 1e+30" \
        in bad.stderr
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.csv.partial").exists()
    good = run_cli("--config=configs/gmvae_spiral.py", *flags, "--mode=predict", f"--output={tmp_path / 'out.csv'}")
    assert good.returncode == 0, good.stderr[-2000:]
    acc = float(good.stdout.split("clustering: acc=")[1].split()[0])
    assert acc == pytest.approx(json.loads((tmp_path / "run" / "results.json").read_text())["acc"], abs=1e-4)


def test_estimator_predict_refuses_overflowing_data():
    import gmvc
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    est = gmvc.GMVAE(n_clusters=2, steps=20, batch_size=50).fit(x)
    with pytest.raises(DataError, match=r"X: the model's outputs are not finite for 3 samples \(first: \[0, 1, 2\]\)"):
        est.predict_proba(np.full((3, 2), 1e30, np.float32))


def test_terms_compose_from_the_command_line(tmp_path):
    """README's example: --config.objective.mmd=... adds a term the config file does not have,
    --config.terms.mmd.<option>=... its options; a misspelt term is one line."""
    flags = [f"--workdir={tmp_path / 'run'}", "--config.train.steps=20", "--config.train.log_every=10",
             "--config.train.restarts=1", "--config.data.num_points=500", "--config.tensorboard.enabled=False"]
    proc = run_cli("--config=configs/gmvae_spiral.py", *flags, "--config.objective.mmd=10.0",
                   "--config.terms.mmd.kernel=imq", "--config.objective.cv.warmup_steps=10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["objective"]["mmd"] == 10.0 and saved["terms"]["mmd"] == {"kernel": "imq"}
    assert saved["objective"]["cv"]["warmup_steps"] == 10
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["mmd"]) and r["mmd"] > 0 for r in logged)
    bad = run_cli("--config=configs/gmvae_spiral.py", f"--workdir={tmp_path / 'bad'}", "--config.objective.mmdd=1.0")
    assert bad.returncode == 2 and "unknown objective term(s) ['mmdd']" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_text_saved_as_npy_is_named_as_such(tmp_path):
    from gmvc.data import load_dataset
    (tmp_path / "x.npy").write_text("1,2\n3,4\n")
    c = load_config("gmvae_spiral.py", {"data.source": f"file:{tmp_path / 'x.npy'}"})
    with pytest.raises(DataError, match=r"is not a .npy/.npz array file \(a text or CSV file\?"):
        load_dataset(c.data, 0)


@pytest.mark.parametrize("source, data_dir, message", [
    ("tfds:not_a_dataset", "", "no tensorflow-datasets builder has this name"),
    ("tfds:mnist", "{tmp}/empty", "the data is not prepared in {tmp}/empty: run `tfds build mnist`"),
])
def test_unavailable_tfds_data_fails_at_once_in_one_line(tmp_path, source, data_dir, message):
    pytest.importorskip("tensorflow_datasets")
    from gmvc.data import load_dataset
    c = load_config("gmvae_spiral.py", {"data.source": source, "data.data_dir": data_dir.format(tmp=tmp_path)})
    t0 = time.time()
    with pytest.raises(DataError) as raised:
        load_dataset(c.data, 0)
    assert message.format(tmp=tmp_path) in str(raised.value) and "\n" not in str(raised.value)
    assert time.time() - t0 < 60                                         # no download attempted
    assert not list(tmp_path.rglob("*.tmp"))


def test_data_of_1e30_diverges_with_its_scale_named(tmp_path):
    from gmvc.errors import TrainingError
    from gmvc.trainer import train_and_evaluate
    x = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32) * 1e30
    np.save(tmp_path / "x.npy", x)
    c = load_config("gmvae_spiral.py", {"data.source": f"file:{tmp_path / 'x.npy'}", "train.restarts": 1,
                                        "train.steps": 100, "train.log_every": 50, "train.batch_size": 100})
    with pytest.raises(TrainingError, match=r"non-finite values at step 50 .* the data's scale \(values in "
                                            r"\[-\d\.\d+e\+30, \d\.\d+e\+30\]"):
        train_and_evaluate(c, tmp_path / "run", **quiet)
    assert not (tmp_path / "run" / "checkpoints" / "50").exists()        # no checkpoint of a NaN state

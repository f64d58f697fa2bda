"""The command line, end to end: a short spiral run, SIGKILL and resume, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, config_flags, load_config, read_results, run_cli
from test_train import assert_trees_equal, final_params

SPIRAL = "--config=configs/gmvae_spiral.py"


def test_short_spiral_run_clusters_the_arms(tmp_path_factory):
    # 2,500 of the default 12,500 steps, 2 restarts: enough to separate the arms. The command
    # line's own compilation cache (gmvc/run/cache.py), in a fresh folder instead of the tests' one.
    tmp_path, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache") / "jax"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["GMVC_COMPILATION_CACHE"] = str(cache)
    proc = run_cli(SPIRAL, f"--workdir={tmp_path}", "--config.train.steps=2500", "--config.train.restarts=2",
                   "--config.objective.cv.warmup_steps=1000", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) >= 2, cached             # the train chunk and the evaluation, at least
    out = proc.stdout
    assert "steps/s" in out and "ETA" in out and "loss=" in out and "elbo=" in out
    assert max(len(line) for line in out.splitlines() if line.startswith("[main]")) <= 100
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("cv" in r and "recon" in r for r in logged)             # every term stays in the log
    assert "clustering: acc=" in out and "nmi=" in out and "ari=" in out
    for name in ("predictions.csv", "metrics.jsonl", "config.json", "data_clusters.png", "latent.png",
                 "samples.png", "results.json"):
        assert f"{tmp_path / name}" in out, name
        assert (tmp_path / name).stat().st_size > 0
    results = read_results(tmp_path)
    assert results["acc"] >= 0.9, results
    assert results["compiles"] == 1
    assert (tmp_path / "checkpoints" / "2500").is_dir()

    again = run_cli(SPIRAL, f"--workdir={tmp_path}", "--config.train.steps=2500", "--config.train.restarts=2",
                    "--config.objective.cv.warmup_steps=1000", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from checkpoint" in again.stdout and "step 2500" in again.stdout
    assert read_results(tmp_path)["acc"] == results["acc"]
    # the resumed run found its programs in the cache: it wrote no new entry
    assert sorted(p.name for p in cache.iterdir()) == cached


# A deliberately slow model so the run can be killed between checkpoints.
SLOW_OVERRIDES = {"model.hidden_sizes": (512, 512), "train.batch_size": 1000, "train.restarts": 1, "train.steps": 60,
                  "train.log_every": 10, "train.checkpoint_every": 10, "train.max_checkpoints": 20}
SLOW = config_flags("gmvae_spiral.py", SLOW_OVERRIDES)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    from gmvc.trainer import train_and_evaluate
    train_and_evaluate(load_config("gmvae_spiral.py", SLOW_OVERRIDES), tmp_path / "straight",
                       echo=lambda *a, **k: None)        # in this process: one process start less

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gmvc.main", *SLOW, f"--workdir={killed_dir}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed_dir / "checkpoints" / "30").is_dir():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "checkpoints" / "60").exists(), "killed too late to test a resume"

    resumed = run_cli(*SLOW, f"--workdir={killed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from checkpoint" in resumed.stdout
    assert_trees_equal(final_params(tmp_path / "straight", 60), final_params(killed_dir, 60))


@pytest.fixture
def data_file(tmp_path):
    def make(array, name="data.npy"):
        path = tmp_path / name
        np.save(path, array)
        return f"--config.data.source=file:{path}"
    return make


def bad_run(tmp_path, *args):
    proc = run_cli(SPIRAL, f"--workdir={tmp_path / 'run'}", "--config.train.steps=10", *args)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()   # nothing computed, nothing written
    return proc.stderr


def test_unknown_config_key(tmp_path):
    assert "unknown config key" in bad_run(tmp_path, "--config.train.stpes=10")


def test_unknown_dataset(tmp_path):
    err = bad_run(tmp_path, "--config.data.source=imagenet")
    assert "unknown dataset 'imagenet'" in err and "spiral" in err


def test_nan_in_data(tmp_path, data_file):
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    x[7, 1] = np.nan
    err = bad_run(tmp_path, data_file(x))
    assert "NaN" in err and "[7]" in err


def test_wrong_rank(tmp_path, data_file):
    assert "rank" in bad_run(tmp_path, data_file(np.zeros(300, np.float32)))


def test_more_clusters_than_samples(tmp_path, data_file):
    err = bad_run(tmp_path, data_file(np.zeros((4, 2), np.float32)), "--config.train.batch_size=2")
    assert "num_clusters=5 is larger than the number of samples (4)" in err


def test_batch_larger_than_data_is_cut_to_the_data_and_said(tmp_path, data_file):
    # gmvae_spiral's batch of 200 on 100 points: cut to 100 (gmvc/recipes/rules.py), in one line.
    x = np.random.RandomState(0).randn(100, 2).astype(np.float32)
    proc = run_cli(SPIRAL, f"--workdir={tmp_path / 'run'}", "--config.train.steps=10", data_file(x))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rule: batch size cut to N = 100 (train)" in proc.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["batch_size"] == 100

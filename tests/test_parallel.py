"""Data-parallel training on 8 fake CPU devices (set in conftest.py) and across two local
processes (jax.distributed, gloo collectives): every layout reads the one-device batches and
noise, so parameters agree with the one-device run to float rounding (tolerance below)."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, config_flags, load_config
from gmvc.errors import ConfigError
from gmvc.trainer import train_and_evaluate
from test_train import final_params

quiet = dict(echo=lambda *a, **k: None)
# float32 sums over 8 devices happen in another order than on one, and Adam turns rounding-level
# differences of near-zero gradients into differences of up to the learning rate per step; so
# parameters are compared leaf by leaf by relative norm, |a - b| / |a| <= REL (measured after
# 60 steps: GMVAE 2e-7; VaDE, whose prior is refitted by EM in between, 4e-3 on one machine and
# 1.0e-2 on an AVX-512 one, there in the decoder's biases, of norm 0.27, where those Adam steps
# weigh most). VaDE's mixture prior, what the clustering reads, is held to PRIOR_REL (measured
# 4e-5 on that machine).
REL = 2e-2
PRIOR_REL = 1e-3


def _assert_close(a, b, rel=REL):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    worst = 0.0
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-12)))
    assert worst <= rel, worst
    return worst


def _gmvae(spiral_config):
    c = spiral_config
    c.data.num_points = 800
    c.train.batch_size = 80
    c.train.restarts = 2
    c.train.restart_batches = "own"           # each restart's batch assembled on every layout
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 60, 20, 60
    return c


def _vade():
    c = load_config("vade_digits.py")
    c.model.hidden_sizes = (64, 64)
    c.data.limit = 800
    c.train.batch_size = 80
    c.phases.pretrain.steps = 30
    c.phases.gmm_init.n_init = 1
    c.train.restarts = 1
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 60, 15, 60
    return c


@pytest.mark.parametrize("model", ["gmvae", "vade"])
def test_single_shard_map_and_pmap_agree(spiral_config, tmp_path, model):
    assert jax.device_count() == 8
    results = {}
    for mode in ("single", "shard_map", "pmap"):
        c = _gmvae(spiral_config.copy_and_resolve_references()) if model == "gmvae" else _vade()
        c.parallel.mode = mode
        summary = train_and_evaluate(c, tmp_path / mode, **quiet)
        assert summary["parallel"]["mode"] == mode and summary["parallel"]["devices"] == (1 if mode == "single" else 8)
        results[mode] = final_params(tmp_path / mode, c.train.steps)
    worst = [_assert_close(results["single"], results[m], REL if model == "vade" else 1e-4) for m in ("shard_map", "pmap")]
    if model == "vade":
        for m in ("shard_map", "pmap"):
            _assert_close(results["single"]["prior"], results[m]["prior"], PRIOR_REL)
    print(model, "largest relative difference per leaf:", worst)


def test_auto_layout_and_the_uneven_batch_error(spiral_config, tmp_path):
    c = _gmvae(spiral_config)
    c.train.batch_size = 100                  # 100 rows over 8 devices
    c.parallel.mode = "shard_map"
    with pytest.raises(ConfigError, match="train.batch_size=100 does not divide evenly over 8 devices"):
        train_and_evaluate(c, tmp_path / "uneven", **quiet)
    assert not (tmp_path / "uneven").exists()
    c.parallel.mode = "auto"                  # fake CPU devices of one process: one device unless asked
    c.train.steps = 20
    summary = train_and_evaluate(c, tmp_path / "auto", **quiet)
    assert summary["parallel"] == {"mode": "single", "devices": 1, "processes": 1}
    c.parallel.devices = 4                    # asked for 4: shard_map, 100 / 4 = 25 per device
    summary = train_and_evaluate(c, tmp_path / "four", **quiet)
    assert summary["parallel"] == {"mode": "shard_map", "devices": 4, "processes": 1}
    c.parallel.mode = "mirrored"
    with pytest.raises(ConfigError, match="unknown parallel.mode 'mirrored'"):
        train_and_evaluate(c, tmp_path / "bad", **quiet)


def test_checkpoint_from_8_devices_resumes_on_one(spiral_config, tmp_path):
    """A checkpoint written by the 8-device run restores on one device and the run continues to
    the same parameters as a one-device run from the start."""
    c = _gmvae(spiral_config)
    c.train.checkpoint_every = 20
    c.parallel.mode = "single"
    train_and_evaluate(c, tmp_path / "straight", **quiet)
    half = c.copy_and_resolve_references()
    half.train.steps = 40
    half.parallel.mode = "shard_map"
    train_and_evaluate(half, tmp_path / "mixed", **quiet)
    messages = []
    train_and_evaluate(c, tmp_path / "mixed", echo=lambda m, **k: messages.append(m))
    assert any("Resuming from checkpoint" in m and "step 40" in m for m in messages)
    _assert_close(final_params(tmp_path / "straight", 60), final_params(tmp_path / "mixed", 60))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """Two local processes (2 CPU devices each) through jax.distributed train the spiral run;
    its checkpoint equals a one-process, one-device run's; only process 0 writes outputs."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    small = {"train.steps": 60, "train.log_every": 20, "train.checkpoint_every": 60, "train.restarts": 1,
             "data.num_points": 800, "train.batch_size": 80}
    args = config_flags("gmvae_spiral.py", small)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "gmvc.main", *args, f"--workdir={tmp_path / 'two'}",
                               f"--coordinator=localhost:{port}", "--num_processes=2", f"--process_id={i}",
                               "--cpu_devices=2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "data-parallel over 4 devices in 2 processes" in outs[0]
    assert "clustering:" in outs[0] and "clustering:" not in outs[1]      # process 1 prints and writes nothing
    from gmvc.trainer import load_run
    c = load_config("gmvae_spiral.py", {**small, "parallel.mode": "single"})             # the one-device run, here; and the 4-device checkpoint restores onto one device
    train_and_evaluate(c, tmp_path / "one", **quiet)
    worst = _assert_close(load_run(c, tmp_path / "one", **quiet).params, load_run(c, tmp_path / "two", **quiet).params,
                          1e-4)
    print("two processes vs one, largest relative difference per leaf:", worst)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def _two_processes(config_file, overrides, workdir):
    """Run config_file with overrides in two local processes of 2 CPU devices each; process 0's output."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "gmvc.main", *config_flags(config_file, overrides),
                               f"--workdir={workdir}", f"--coordinator=localhost:{port}", "--num_processes=2",
                               f"--process_id={i}", "--cpu_devices=2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs[0]


def test_two_processes_stream_their_own_rows(tmp_path):
    """GMVAE on the spiral in two processes with parallel.stream=on, each process gathering only
    its devices' rows of every batch (two restarts, each with its own batches): the parameters
    of the same two processes with the data on the devices, bit for bit."""
    small = {"data.num_points": 800, "train.batch_size": 80, "train.restarts": 2, "train.restart_batches": "own",
             "train.steps": 60, "train.log_every": 20, "train.checkpoint_every": 60}
    out = _two_processes("gmvae_spiral.py", {**small, "parallel.stream": "on"}, tmp_path / "streamed")
    assert "input: streamed from the host" in out and "data-parallel over 4 devices in 2 processes" in out
    _two_processes("gmvae_spiral.py", {**small, "parallel.stream": "off"}, tmp_path / "memory")
    from gmvc.trainer import load_run
    c = load_config("gmvae_spiral.py", small)
    streamed = jax.tree.leaves(load_run(c, tmp_path / "streamed", **quiet).params)
    memory = jax.tree.leaves(load_run(c, tmp_path / "memory", **quiet).params)
    assert len(streamed) == len(memory) > 0
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(streamed, memory))

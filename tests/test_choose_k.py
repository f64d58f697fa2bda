"""model.num_clusters=auto end to end: the command line's flag, results.json's record of K's path,
k_selection.png, the estimator's n_clusters="auto" (live slots as clusters 0..K-1), and the one-line
refusals where it cannot run."""
import json

import jax
import numpy as np
import pytest

import gmvc
from conftest import run_cli
from gmvc.core.metrics import hungarian_accuracy
from gmvc.errors import ConfigError


def _blobs(n=200, d=4, apart=10.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, d))
    centres[1, 0], centres[2, 1] = apart, apart
    y = np.repeat(np.arange(3), n)
    return (rng.normal(size=(3 * n, d)) + centres[y]).astype(np.float32), y


SMALL = {"train.steps": 800, "model.small_hidden_sizes": (32, 32), "train.epochs": 0}


def test_the_command_line_finds_k_and_records_its_path(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    run = run_cli("--config=configs/cluster.py", f"--config.data.source=file:{tmp_path / 'blobs.npz'}",
                  "--config.model.num_clusters=auto", *(f"--config.{k}={v}" for k, v in SMALL.items()),
                  f"--workdir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    found = results["choose_k"]
    assert found["k"] == 3 and found["k_max"] == 20 and len(found["slots"]) == 3
    assert found["path"][0]["k"] <= 20 and found["path"][-1]["k"] == 3
    assert found["moves"] and all(m["accepted"] for m in found["moves"])
    assert sum(m["move"] in ("merge", "retire") for m in found["moves"]) >= 17 - sum(
        m["move"] == "split" for m in found["moves"])                  # 20 slots down to 3
    assert results["acc"] > 0.99 and len(results["cluster_sizes"]) == results["num_clusters"] == 3
    predicted = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert len(predicted) == 601 and "p_2" in predicted[0] and "p_3" not in predicted[0]   # the live slots only
    assert (tmp_path / "run" / "k_selection.png").stat().st_size > 5000
    assert "K found: 3 of 20 slots" in run.stdout + run.stderr
    out = tmp_path / "again.npz"
    p = run_cli("--mode=predict", f"--workdir={tmp_path / 'run'}", f"--data=file:{tmp_path / 'blobs.npz'}",
                "--format=npz", f"--output={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    with np.load(out) as f:                                         # a prediction reads the live slots too
        assert f["probs"].shape == (600, 3) and hungarian_accuracy(f["cluster"], y) > 0.99
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["choose_k"]["auto"] is True and config["model"]["num_clusters"] == 20
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["k"] for r in logged if "k" in r][-1] == 3.0


def test_the_estimator_reports_the_live_clusters():
    x, y = _blobs(n=150, seed=1)
    est = gmvc.VaDE(n_clusters="auto", steps=800, hidden_sizes=(32, 32), random_state=0, progress=False).fit(x)
    assert est.n_clusters_ == 3 and len(est.cluster_slots_) == 3
    assert set(np.unique(est.labels_)) == {0, 1, 2} and hungarian_accuracy(est.labels_, y) > 0.99
    proba = est.predict_proba(x[:10])
    assert proba.shape == (10, 3) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    samples, clusters = est.sample(4, cluster=2)
    assert samples.shape == (4, 4) and (clusters == 2).all()


def test_auto_is_refused_in_one_line_where_it_cannot_run():
    with pytest.raises(ConfigError, match="n_clusters='auto' is gmvc.VaDE's"):
        gmvc.GMVAE(n_clusters="auto").fit(np.zeros((20, 2), np.float32))
    x, _ = _blobs(n=20)
    est = gmvc.GMVCEstimator(config="gmvae", overrides={"choose_k.auto": True, "train.steps": 2}, progress=False)
    with pytest.raises(ConfigError, match="model.num_clusters=auto needs VaDE's mixture prior"):
        est.fit(x)


def test_a_run_resumed_after_its_moves_ends_where_the_straight_run_ends(tmp_path):
    """A crash after the moves began: the checkpoint holds the moved prior, the pin groups and the
    moves' record; the resumed run continues them and ends with the same parameters and K path."""
    import shutil

    from gmvc import recipes
    from gmvc.run.checkpoint import Checkpointer
    from gmvc.trainer import train_and_evaluate
    x, y = _blobs()
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    config = recipes.cluster(n_clusters="auto", steps=800, hidden_sizes=(32, 32))
    config.unlock()
    config.data.source = f"file:{tmp_path / 'blobs.npz'}"
    config.train.epochs, config.train.checkpoint_every, config.train.max_checkpoints = 0, 100, 20
    config.lock()
    quiet = {"echo": lambda *a, **k: None, "write_outputs": False}
    straight = train_and_evaluate(config, tmp_path / "straight", **quiet)
    assert straight["choose_k"]["k"] == 3 and straight["choose_k"]["moves"]
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    ckpt = Checkpointer(tmp_path / "resumed" / "checkpoints")
    steps = ckpt.steps()
    ckpt.close()
    first_move = min(m["step"] for m in straight["choose_k"]["moves"])
    keep = [s for s in steps if s > first_move][0]            # a checkpoint after the first moves
    for s in steps:
        if s > keep:
            shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(s))
    (tmp_path / "resumed" / "results.json").unlink()
    resumed = train_and_evaluate(config, tmp_path / "resumed", **quiet)
    assert resumed["choose_k"]["path"] == straight["choose_k"]["path"]
    assert resumed["choose_k"]["moves"] == straight["choose_k"]["moves"]
    for a, b in zip(jax.tree.leaves(straight.trained.params), jax.tree.leaves(resumed.trained.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Over 4 devices under pmap (the moves read device 0's copy and write every device's): the same K
    config.unlock()
    config.parallel.mode, config.parallel.devices = "pmap", 4
    config.lock()
    pmapped = train_and_evaluate(config, tmp_path / "pmap", **quiet)
    assert pmapped["parallel"]["mode"] == "pmap" and pmapped["choose_k"]["k"] == 3
    assert [p["k"] for p in pmapped["choose_k"]["path"]] == [p["k"] for p in straight["choose_k"]["path"]]

"""benchmarks/quality.py end to end on a short digits run: its JSON, and each run's log.txt."""
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def quality():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import quality
        yield quality
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_quality_reports_seeds_and_keeps_each_runs_log(quality, tmp_path, capsys):
    out = tmp_path / "q.json"
    results = quality.main([f"--config={ROOT / 'configs' / 'vade_digits.py'}", "--seeds=2", "--no-baselines",
                            "--set=train.steps=60", "--set=phases.pretrain.steps=30", "--set=train.restarts=1",
                            "--set=train.log_every=30", f"--workdir={tmp_path / 'runs'}", f"--out={out}"])
    (result,) = results
    assert json.loads(out.read_text()) == results
    assert json.loads(capsys.readouterr().out.strip()) == result            # one JSON line on stdout
    g = result["gmvc"]
    assert g["runs"] == 2 and g["nan_runs"] == 0 and [r["seed"] for r in g["per_seed"]] == [0, 1]
    accs = [r["acc"] for r in g["per_seed"]]
    assert 0.3 < min(accs) <= max(accs) <= 1.0                               # 60 steps cluster, roughly
    assert g["acc_mean"] == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert all(sum(r["cluster_sizes"]) == 1797 for r in g["per_seed"])
    assert g["largest_share_max"] == pytest.approx(max(max(r["cluster_sizes"]) / 1797 for r in g["per_seed"]), abs=1e-4)
    for seed in (0, 1):
        log = (tmp_path / "runs" / "vade_digits" / f"seed{seed}" / "log.txt").read_text()
        assert "phase 'gmm_init': mixture prior initialised from the embeddings (em)" in log
        assert f"acc={g['per_seed'][seed]['acc']:.4f}" in log
    with pytest.raises(SystemExit, match="unknown config key 'train.stepz'"):
        quality.main([f"--config={ROOT / 'configs' / 'vade_digits.py'}", "--seeds=1", "--set=train.stepz=5",
                      f"--workdir={tmp_path / 'bad'}"])


def test_quality_runs_the_default_recipe_on_a_development_set(quality, tmp_path, monkeypatch):
    # iris through file: as a user would (only the source and K set, plus a short run), beside
    # the baselines on the same array; UMAP is left out here (an optional extra).
    real = quality.baseline_methods
    monkeypatch.setattr(quality, "baseline_methods", lambda k: {m: f for m, f in real(k).items() if m != "umap_gmm"})
    (result,) = quality.main(["--dev=iris", "--seeds=1", "--set=train.steps=200", "--set=model.hidden_sizes=(32,)",
                              f"--workdir={tmp_path / 'runs'}"])
    assert result["set"] == "iris" and result["num_samples"] == 150 and result["num_clusters"] == 3
    assert result["dataset"].startswith("file:") and result["dataset"].endswith("iris.npz")
    assert result["config"].endswith("configs/cluster.py")
    run = result["gmvc"]["per_seed"][0]
    assert run["acc"] > 0.6 and sum(run["cluster_sizes"]) == 150 and run["seconds"] > 0
    assert result["kmeans"]["acc_mean"] == pytest.approx(0.8333, abs=0.01)        # k-means on standardized iris
    assert result["full_gmm"]["acc_mean"] == pytest.approx(0.9667, abs=0.01)    # the best of 10 inits
    log = (tmp_path / "runs" / "iris" / "seed0" / "log.txt").read_text()
    assert "input: each feature to mean 0 and std 1" in log and "merged partition's group sizes" in log
    with pytest.raises(SystemExit):
        quality.main(["--dev=irises"])


@pytest.fixture
def time_to_accuracy(quality):
    import time_to_accuracy
    return time_to_accuracy


def test_time_to_accuracy_checks_the_mixture_fit_then_each_log_step(time_to_accuracy, tmp_path):
    digits = str(ROOT / "configs" / "vade_digits.py")
    short = ["--set=train.steps=60", "--set=phases.pretrain.steps=30", "--set=train.restarts=2",
             "--set=train.log_every=15"]
    out = tmp_path / "tta.json"
    reach, miss = time_to_accuracy.main([f"--config={digits}", "--target=0.0", f"--config={digits}", "--target=1.01",
                                         "--cache", *short, f"--out={out}"])
    assert json.loads(out.read_text()) == [reach, miss]
    for result in (reach, miss):
        (run,) = result["per_seed"]
        steps, seconds, accs, phases = zip(*run["curve"])
        # The mixture fit at the end of pretraining is checked, then each log step of main.
        assert steps == (30, 45, 60) and phases == ("gmm_init", "main", "main")
        assert list(seconds) == sorted(seconds) and seconds[0] > 0
        assert all(0.2 < a <= 1.0 for a in accs)
        assert accs[-1] == run["final_acc"]           # the last check makes the run's own restart choice
    (run,) = reach["per_seed"]
    first, second = ({"step": s, "phase": p, "seconds": t, "acc": a} for s, t, a, p in run["curve"][:2])
    assert run["reached"] == first and run["reached_training"] == second
    assert reach["seconds_to_target_max"] == first["seconds"]
    assert reach["seconds_to_target_training_max"] == second["seconds"]
    assert reach["runs_reaching_target"] == reach["runs_reaching_target_training"] == 1
    (run,) = miss["per_seed"]
    assert run["reached"] is None and run["reached_training"] is None
    assert miss["runs_reaching_target"] == 0 and miss["within_budget"] is False
    assert miss["seconds_to_target_mean"] is None and miss["within_budget_training"] is False


def test_throughput_reference_keeps_each_shapes_faster_pass(quality):
    """benchmarks/throughput.py's matmul reference: a shape timed during a slow moment in one
    pass (here 2 ms) and at its rate in the other (1 ms) counts at its rate, per shape."""
    import throughput
    matmuls = [(100, 200, 300, "fwd"), (300, 100, 200, "bwd_weight"), (100, 200, 300, "fwd")]
    slow_first = {(100, 200, 300): 2e-3, (300, 100, 200): 1e-3}
    slow_second = {(100, 200, 300): 1e-3, (300, 100, 200): 4e-3}
    per_shape, rate = throughput.matmul_reference(matmuls, [slow_first, slow_second])
    assert [p["gflops"] for p in per_shape] == [12.0, 12.0, 12.0]          # 1.2e7 FLOPs in 1 ms each
    assert rate == pytest.approx(12.0)
    per_shape, rate = throughput.matmul_reference(matmuls, [slow_first])
    assert [p["gflops"] for p in per_shape] == [6.0, 12.0, 6.0] and rate == pytest.approx(3 * 1.2e7 / 5e-3 / 1e9)


def test_quality_runs_the_baselines_alone(quality, tmp_path, monkeypatch):
    real = quality.baseline_methods
    monkeypatch.setattr(quality, "baseline_methods", lambda k: {m: f for m, f in real(k).items() if m != "umap_gmm"})
    (result,) = quality.main(["--dev=breast_cancer", "--seeds=2", "--baselines-only", f"--workdir={tmp_path}"])
    assert "gmvc" not in result and result["num_samples"] == 569
    assert [r["seed"] for r in result["full_gmm"]["per_seed"]] == [0, 1]
    assert result["full_gmm"]["acc_mean"] == pytest.approx(0.940, abs=0.01)      # standardized, 10 inits
    assert not (tmp_path / "breast_cancer").exists()                          # no gmvc run
    with pytest.raises(SystemExit):
        quality.main(["--dev=iris", "--baselines-only", "--no-baselines"])


def test_graph_criteria_normalized_cut():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import graph_criteria
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import numpy as np
    table = np.array([[1, 2], [0, 0], [0, 3], [2, 2]])          # 4 points, 2 neighbours each
    # groups {0, 1} and {2, 3}: each sends 1 of its 4 links out; {0} alone sends both its links out
    assert graph_criteria.normalized_cut(np.array([0, 0, 1, 1]), table, 2) == pytest.approx(0.25 + 0.25)
    assert graph_criteria.normalized_cut(np.array([0, 1, 1, 1]), table, 2) == pytest.approx(1.0 + 3 / 6)
    assert graph_criteria.normalized_cut(np.array([0, 0, 0, 0]), table, 2) == 0.0


def test_scale_compares_streamed_and_in_memory_training():
    """Two small sizes read by rows: the train runs (streamed and in memory), the passes, the
    resume after SIGKILL, each in its own process, in one JSON object."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = scale.main(["--sizes=600,1200", "--steps=16", "--memory-max=600", "--recipe-max=0", "--by-rows",
                      "--hidden=32"])
    small, large = out["600"], out["1200"]
    assert small["train_stream_on"]["steps_per_sec"] > 0 and small["train_stream_off"]["steps_per_sec"] > 0
    assert small["streamed_over_in_memory"] == pytest.approx(
        small["train_stream_on"]["steps_per_sec"] / small["train_stream_off"]["steps_per_sec"], abs=1e-3)
    assert "train_stream_off" not in large and large["passes"]["rows_read_from"] == "file"
    assert large["passes"]["embed_seconds"] >= 0 and large["passes"]["gather_rows_per_sec"] > 0
    assert large["resume"]["bit_identical"] is True
    assert out["streamed_peak_rss_growth_mb"] == pytest.approx(
        large["train_stream_on"]["peak_rss_mb"] - small["train_stream_on"]["peak_rss_mb"], abs=0.2)

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
    assert "input: each feature to mean 0 and std 1" in log and "kept partition's group sizes" in log
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


def _fake_suite(root, peers=True):
    """A two-set suite as make_suite.py lays it out: a table and 2x2 images, with a peers file."""
    import numpy as np
    (root / "dev").mkdir(parents=True)
    table = {"name": "tab", "suite": "dev", "kind": "tabular", "N": 6, "D": 3, "shape": [3], "K": 2,
             "class_sizes": [4, 2]}
    image = {"name": "img", "suite": "dev", "kind": "image", "N": 4, "D": 4, "shape": [2, 2], "K": 2,
             "class_sizes": [2, 2]}
    (root / "manifest.json").write_text(json.dumps([image, table]))
    rng = np.random.default_rng(0)
    np.savez(root / "dev" / "tab.npz", x=rng.normal(size=(6, 3)).astype(np.float32), y=np.array([0, 0, 1, 0, 1, 0]))
    np.savez(root / "dev" / "img.npz", x=rng.uniform(size=(4, 2, 2)).astype(np.float32), y=np.array([1, 0, 1, 0]))
    if peers:
        rows = [{"set": s["name"], "N": s["N"], "D": s["D"], "K": s["K"], "method": m, "seeds": [0, 1],
                 "accs": [a, a], "acc_mean": a, "nmis": [0.1, 0.3], "nmi_mean": 0.2, "aris": [0.0, 0.2],
                 "ari_mean": 0.1, "seconds": [1.0, 3.0], "notes": []}
                for s, accs in ((table, (0.5, 0.8, 0.7, 0.6)), (image, (0.75, 0.5, 0.75, 0.5)))
                for m, a in zip(("kmeans", "gmm_full", "umap_gmm", "spectral"), accs)]
        (root / "peers_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table, image


def test_suite_loader_checks_each_set_against_its_manifest(quality, tmp_path, monkeypatch):
    import numpy as np
    import suite
    _fake_suite(tmp_path / "s")
    monkeypatch.setenv("GMVC_SUITE_DIR", str(tmp_path / "s"))
    sets = suite.load_suite()
    assert list(sets) == ["img", "tab"] and sets["img"].kind == "image" and sets["tab"].num_clusters == 2
    assert sets["img"].x.shape == (4, 2, 2) and sets["tab"].path == tmp_path / "s" / "dev" / "tab.npz"
    assert list(suite.load_suite(tmp_path / "s", ["tab"])) == ["tab"]

    def broken(x=None, y=None):
        with np.load(tmp_path / "s" / "dev" / "tab.npz") as f:
            good_x, good_y = f["x"], f["y"]
        np.savez(tmp_path / "s" / "dev" / "tab.npz", x=good_x if x is None else x, y=good_y if y is None else y)
        try:
            with pytest.raises(suite.SuiteError) as e:
                suite.load_suite(tmp_path / "s")
        finally:
            np.savez(tmp_path / "s" / "dev" / "tab.npz", x=good_x, y=good_y)
        assert str(e.value).startswith("tab: ") and "\n" not in str(e.value)
        return str(e.value)

    x = np.zeros((6, 3), np.float32)
    assert "x is float64, not float32" in broken(x=np.zeros((6, 3)))
    assert "x has shape [6, 4], the manifest says [6, 3]" in broken(x=np.zeros((6, 4), np.float32))
    x[0, :2] = np.nan, np.inf
    assert "x has 2 non-finite values" in broken(x=x)
    assert "y spans 0..2, not 0..1 (K=2)" in broken(y=np.array([0, 0, 1, 0, 2, 0]))
    assert "class sizes [3, 3], the manifest says [4, 2]" in broken(y=np.array([0, 0, 1, 1, 1, 0]))
    assert "y has shape [5], not [6]" in broken(y=np.array([0, 0, 1, 0, 1]))
    (tmp_path / "s" / "dev" / "img.npz").unlink()
    with pytest.raises(suite.SuiteError, match=r"^img: .*img.npz is missing"):
        suite.load_suite(tmp_path / "s")
    with pytest.raises(suite.SuiteError, match=r"no set\(s\) \['nope'\]"):
        suite.load_suite(tmp_path / "s", ["nope"])
    monkeypatch.delenv("GMVC_SUITE_DIR")
    with pytest.raises(suite.SuiteError, match=r"no suite directory: give one or set \$GMVC_SUITE_DIR"):
        suite.load_suite()


def test_scoreboard_best_peer_gap_and_mean_rank(quality):
    import scoreboard

    def fig(acc, seconds=2.0):
        return {"acc_mean": acc, "acc_std": 0.01, "nmi_mean": acc / 2, "ari_mean": acc / 4, "seconds_mean": seconds}

    results = [
        {"set": "a", "kind": "tabular", "num_samples": 10, "num_clusters": 2, "gmvc": fig(0.9, 30.0),
         "kmeans": fig(0.6), "full_gmm": fig(0.95), "umap_gmm": fig(0.8), "spectral": fig(0.7)},
        {"set": "b", "kind": "image", "num_samples": 20, "num_clusters": 3, "gmvc": fig(0.7, 50.0),
         "kmeans": fig(0.5), "full_gmm": fig(0.5), "umap_gmm": fig(0.6), "spectral": fig(0.4)},
        {"set": "c", "kind": "timeseries", "num_samples": 30, "num_clusters": 4, "gmvc": fig(0.3),
         "kmeans": fig(0.5), "full_gmm": fig(0.4), "spectral": fig(0.45)},          # no UMAP + GMM here
    ]
    score = scoreboard.board(results)
    a, b, c = score["sets"]
    assert (a["best_peer"], a["gap"]) == ("full_gmm", pytest.approx(-0.05))
    assert (b["best_peer"], b["gap"]) == ("umap_gmm", pytest.approx(0.1))
    assert (c["best_peer"], c["gap"]) == ("kmeans", pytest.approx(-0.2))
    assert b["ranks"] == {"gmvc": 1, "umap_gmm": 2, "kmeans": 3.5, "full_gmm": 3.5, "spectral": 5}   # a tie shares
    assert score["common_sets"] == ["a", "b"] and score["left_out"] == {"c": ["umap_gmm"]}
    m = score["methods"]
    assert m["gmvc"]["mean_acc"] == pytest.approx(0.8) and m["gmvc"]["mean_seconds"] == pytest.approx(40.0)
    assert m["gmvc"]["mean_rank"] == pytest.approx((2 + 1) / 2) and m["gmvc"]["sets"] == 3
    assert m["full_gmm"]["mean_rank"] == pytest.approx((1 + 3.5) / 2) and m["umap_gmm"]["sets"] == 2
    assert m["kmeans"]["mean_acc"] == pytest.approx(0.55) and m["kmeans"]["mean_nmi"] == pytest.approx(0.275)
    assert score["gmvc_vs_best_peer"] == {"mean_gap": pytest.approx(-0.05), "sets_at_or_above": 1, "sets": 3}
    text = scoreboard.table(score)
    lines = text.splitlines()
    assert lines[0].startswith("| set | kind | N | K | gmvc ACC | NMI | ARI | s/fit | k-means | full GMM | UMAP+GMM |")
    assert lines[2] == ("| a | tabular | 10 | 2 | 0.900 (0.010) | 0.450 | 0.225 | 30 | 0.600 (0.010) | 0.950 (0.010) "
                        "| 0.800 (0.010) | 0.700 (0.010) | full GMM | -0.050 |")
    assert "| c | timeseries | 30 | 4 |" in lines[4] and "| – |" in lines[4]
    assert lines[5] == "| mean ACC (2 sets) |  |  |  | 0.800 |  |  |  | 0.550 | 0.725 | 0.700 | 0.550 |  |  |"
    assert lines[6] == "| mean rank |  |  |  | 1.50 |  |  |  | 4.25 | 2.25 | 2.50 | 4.50 |  |  |"
    assert "left out: c (no UMAP+GMM)." in text and "at or above it on 1 of 3 sets" in text


def test_scoreboard_reads_the_suites_peers_without_training(quality, tmp_path, capsys):
    # The suite's sets with --baselines-only: the peers' figures come from the peers file (its
    # gmm_full named full_gmm), nothing is fitted, and the board prints as one JSON object.
    _fake_suite(tmp_path / "s")
    score = quality.main([f"--suite={tmp_path / 's'}", "--sets=tab,img", "--baselines-only",
                          f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'b.json'}"])
    assert json.loads(capsys.readouterr().out) == score == json.loads((tmp_path / "b.json").read_text())
    assert [r["set"] for r in score["sets"]] == ["img", "tab"] and score["peers"].endswith("peers_dev.jsonl")
    img, tab = score["sets"]
    assert tab["best_peer"] == "full_gmm" and tab["methods"]["full_gmm"]["acc_mean"] == 0.8 and "gap" not in tab
    assert tab["methods"]["full_gmm"]["seconds_mean"] == 2.0 and tab["methods"]["full_gmm"]["nmi_std"] == 0.1
    assert img["ranks"] == {"kmeans": 1.5, "umap_gmm": 1.5, "full_gmm": 3.5, "spectral": 3.5}
    assert score["methods"]["kmeans"]["mean_rank"] == pytest.approx((4 + 1.5) / 2)
    assert not (tmp_path / "runs" / "tab").exists()                           # no gmvc run
    with pytest.raises(SystemExit, match=r"unknown set\(s\) \['nope'\]"):
        quality.main([f"--suite={tmp_path / 's'}", "--sets=tab,nope", "--baselines-only"])
    with pytest.raises(SystemExit, match="img: class sizes"):
        import numpy as np
        np.savez(tmp_path / "s" / "dev" / "img.npz", x=np.zeros((4, 2, 2), np.float32), y=np.array([1, 1, 1, 0]))
        quality.main([f"--suite={tmp_path / 's'}", "--sets=img", "--baselines-only"])
    (tmp_path / "s" / "peers_dev.jsonl").write_text(json.dumps(
        {"set": "tab", "N": 7, "D": 3, "K": 2, "method": "kmeans", "seeds": [0], "acc_mean": 0.5, "nmi_mean": 0.1,
         "ari_mean": 0.0, "seconds": [1.0]}) + "\n")
    with pytest.raises(SystemExit, match=r"tab kmeans: N=7 \(manifest: 6\)"):
        quality.main([f"--suite={tmp_path / 's'}", "--sets=tab", "--baselines-only"])


def test_a_collapsed_run_is_one_cluster_far_above_the_largest_class(quality):
    import numpy as np
    two = np.repeat([0, 1], 1000)
    assert not quality.collapsed(np.repeat([0, 1], [1002, 998]), two, 2)      # a near-even split
    assert quality.collapsed(np.repeat([0, 1], [1600, 400]), two, 2)
    uneven = np.repeat([0, 1, 2], [1200, 600, 200])                              # the largest class: 60%
    assert not quality.collapsed(np.repeat([0, 1, 2], [1190, 611, 199]), uneven, 3)
    assert quality.collapsed(np.repeat([0, 1, 2], [1950, 30, 20]), uneven, 3)
    assert quality.collapsed(np.repeat([0, 1], [60, 40]), None, 2)             # no labels: more than half


def test_fit_cost_needs_data(quality, tmp_path):
    import fit_cost
    with pytest.raises(SystemExit, match="give --suite=DIR, or .npz files and --clusters=K"):
        fit_cost.main([])
    with pytest.raises(SystemExit, match="no manifest|manifest"):
        fit_cost.main([f"--suite={tmp_path}"])

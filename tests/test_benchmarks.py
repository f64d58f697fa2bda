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
    for seed in (0, 1):
        log = (tmp_path / "runs" / "vade_digits" / f"seed{seed}" / "log.txt").read_text()
        assert "phase 'gmm_init': mixture prior initialised from the embeddings (em)" in log
        assert f"acc={g['per_seed'][seed]['acc']:.4f}" in log
    with pytest.raises(SystemExit, match="unknown config key 'train.stepz'"):
        quality.main([f"--config={ROOT / 'configs' / 'vade_digits.py'}", "--seeds=1", "--set=train.stepz=5",
                      f"--workdir={tmp_path / 'bad'}"])

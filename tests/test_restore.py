"""gmvc.run.restore: the one restore, with the restart the run's training chose (results.json)."""
import json

import jax
import numpy as np
import pytest
from conftest import load_config
from test_train import assert_trees_equal

from gmvc.errors import CheckpointError
from gmvc.run.restore import load_trained, restore_stacked
from gmvc.trainer import load_run, train_and_evaluate

RUN = {"train.restarts": 2, "train.steps": 20, "train.log_every": 10, "train.checkpoint_every": 10,
       "data.num_points": 200, "tensorboard.enabled": False}
quiet = {"echo": lambda *a, **k: None}


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in sorted(workdir.rglob("*"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("restore") / "run"
    c = load_config("gmvae_spiral.py", RUN)
    summary = train_and_evaluate(c, workdir, write_outputs=False, **quiet)
    return c, workdir, summary


def test_the_restart_recorded_by_training_is_the_one_restored(run):
    c, workdir, summary = run
    before = _snapshot(workdir)
    stacked, step, _ = restore_stacked(c, workdir, load_trained(workdir).model)
    chosen = summary["chosen_restart"]
    trained = load_trained(workdir)                       # the config from config.json
    assert step == trained.step == 20 and trained.restart == chosen and trained.data_shape == (2,)
    assert_trees_equal(trained.params, jax.tree.map(lambda a: a[chosen], stacked))
    # generation and the notebooks restore the same parameters, and training returned them
    assert_trees_equal(load_run(c, workdir, **quiet).params, trained.params)
    assert_trees_equal(summary.trained.params, trained.params)
    assert (summary.trained.step, summary.trained.restart, summary.trained.data_shape) == (20, chosen, (2,))
    assert _snapshot(workdir) == before                    # nothing written or removed


def test_a_restore_for_prediction_reads_only_the_parameters(run):
    """load_trained builds no optimizer, phases or tables and reads no data: gmvc.training is never
    imported; without results.json the sample shape comes from the checkpoint's meta; the
    checkpoint's parameters restore alone."""
    import shutil
    import subprocess
    import sys
    from gmvc.run.checkpoint import Checkpointer
    _, workdir, _ = run
    copy = workdir.parent / "no_results"
    shutil.copytree(workdir, copy)
    (copy / "results.json").unlink()
    code = ("import sys; from gmvc.run.restore import load_trained; t = load_trained(sys.argv[1]); "
            "print(t.data_shape, t.step, sorted(m for m in sys.modules if m.startswith('gmvc.training')))")
    done = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "(2,) 20 []"
    ckpt = Checkpointer(copy / "checkpoints")
    try:
        saved = ckpt.read(20)
        params = ckpt.restore_params(20, saved["params"])
        assert ckpt.meta(20) == {"phase": "main", "data_shape": [2]} and set(saved) == {"step", "params", "opt_state"}
    finally:
        ckpt.close()
    assert_trees_equal(params, saved["params"])


def test_results_json_decides_the_restart(run, tmp_path):
    c, workdir, summary = run
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    results = json.loads((copy / "results.json").read_text())
    other = 1 - summary["chosen_restart"]
    (copy / "results.json").write_text(json.dumps({**results, "chosen_restart": other}))
    stacked, _, _ = restore_stacked(c, copy, load_trained(copy).model)
    trained = load_trained(copy)
    assert trained.restart == other
    assert_trees_equal(trained.params, jax.tree.map(lambda a: a[other], stacked))
    assert not np.array_equal(np.asarray(jax.tree.leaves(trained.params)[0]),
                              np.asarray(jax.tree.leaves(load_trained(workdir).params)[0]))
    (copy / "results.json").write_text(json.dumps({**results, "chosen_restart": 5}))
    with pytest.raises(CheckpointError, match="restart 5 is not among its 2"):
        load_trained(copy)


def test_an_unfinished_run_gives_restart_0_and_says_where_it_stopped(tmp_path):
    c = load_config("gmvae_spiral.py", RUN)
    half = load_config("gmvae_spiral.py", {**RUN, "train.steps": 10})
    train_and_evaluate(half, tmp_path, write_outputs=False, **quiet)
    (tmp_path / "results.json").unlink()                   # as if killed before the end
    said = []
    trained = load_trained(tmp_path, c, echo=lambda m, **k: said.append(m))
    assert trained.restart == 0 and trained.step == 10 and trained.data_shape == (2,)
    assert said == [f"note: the run in {tmp_path} gives its parameters of step 10 of 20 (where it stopped, or "
                    f"its best step under early stopping)",
                    f"note: the run in {tmp_path} has no restart choice for its checkpoint of step 10 (it has not "
                    f"finished); restart 0 of 2 is used"]


def test_results_of_an_earlier_end_do_not_choose_for_a_later_checkpoint(run, tmp_path):
    """A finished run resumed with more steps and stopped keeps its old results.json: the choice
    it records was made for other parameters, so restart 0 is used."""
    c, workdir, summary = run
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    results = json.loads((copy / "results.json").read_text())
    (copy / "results.json").write_text(json.dumps({**results, "steps": 10, "chosen_restart": 1}))
    assert load_trained(copy).restart == 0
    (copy / "results.json").write_text(json.dumps({**results, "chosen_restart": 1}))
    assert load_trained(copy).restart == 1


def test_no_run_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(CheckpointError, match="does not exist .train it first"):
        load_trained(tmp_path, load_config("gmvae_spiral.py", RUN))


def test_balance_restart_choice_reads_the_partition_not_the_soft_usage():
    # A restart whose q(c | x) is uniform for every sample uses its clusters evenly on average and
    # puts every sample in one cluster: the balance choice must see the second.
    from gmvc.eval.restarts import partition_imbalance
    k, n = 10, 5000
    uniform = np.full((n, k), -np.log(k))
    even = np.log(np.eye(k)[np.arange(n) % k] * 0.9 + 0.01)
    assert partition_imbalance(uniform) == pytest.approx(np.log(k))
    assert partition_imbalance(even) == pytest.approx(0.0, abs=1e-12)
    skewed = np.log(np.eye(k)[np.minimum(np.arange(n) % 12, k - 1)] * 0.9 + 0.01)     # cluster 9 takes 3 shares
    assert 0 < partition_imbalance(skewed) < np.log(k)
    assert np.isnan(partition_imbalance(np.full((3, k), np.nan)))


def test_a_checkpoint_of_another_format_is_named_in_one_line(run):
    """A checkpoint without the "state" item (another layout of items) is refused by path, and
    left as it was."""
    import shutil
    _, workdir, _ = run
    copy = workdir.parent / "other_format"
    shutil.copytree(workdir, copy)
    step_dir = copy / "checkpoints" / "20"
    (step_dir / "state").rename(step_dir / "default")
    (step_dir / "gmvc_checksums.json").unlink()
    before = _snapshot(copy)
    held = r"checkpoints/20 holds no 'state' item \(it holds \['default', 'meta'\]\)"
    with pytest.raises(CheckpointError, match=held):
        load_trained(copy)
    assert _snapshot(copy) == before


def test_an_unreadable_meta_is_named_not_read_as_empty(run):
    """Early stopping's record lives in a checkpoint's meta: a meta that cannot be read is a
    CheckpointError naming the checkpoint, and a checkpoint without one reads as {}."""
    import shutil
    from gmvc.run.checkpoint import Checkpointer
    _, workdir, _ = run
    copy = workdir.parent / "bad_meta"
    shutil.copytree(workdir, copy)
    (copy / "checkpoints" / "20" / "gmvc_checksums.json").unlink()
    (copy / "checkpoints" / "20" / "meta" / "metadata").write_text("{not json")
    shutil.rmtree(copy / "checkpoints" / "10" / "meta")
    ckpt = Checkpointer(copy / "checkpoints")
    try:
        with pytest.raises(CheckpointError, match=r"checkpoints/20: its meta could not be read"):
            ckpt.meta(20)
        assert ckpt.meta(10) == {} and ckpt.steps() == [10, 20]
    finally:
        ckpt.close()
        ckpt.close()                                    # closing twice is harmless

"""The training loop: resume equivalence, one compile, outputs, NaN reporting, checkpoints."""
import json

import jax
import numpy as np
import pytest

from gmvc.run.checkpoint import Checkpointer
from gmvc.errors import CheckpointError, ConfigError, RunError, TrainingError
from gmvc.training.state import Tables, TrainState
from gmvc.trainer import train_and_evaluate

quiet = dict(echo=lambda *a, **k: None)


def final_params(workdir, step):
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        restored = ckpt.read(step)
    finally:
        ckpt.close()
    return restored["params"]


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_gives_identical_parameters(spiral_config, tmp_path):
    straight = train_and_evaluate(spiral_config, tmp_path / "straight", **quiet)
    assert straight["compiles"] == 1

    half = spiral_config.copy_and_resolve_references()
    half.train.steps = 100
    train_and_evaluate(half, tmp_path / "resumed", **quiet)
    messages = []
    resumed = train_and_evaluate(spiral_config, tmp_path / "resumed", echo=lambda m, **k: messages.append(m))
    assert any("Resuming from checkpoint" in m and "step 100" in m for m in messages)
    assert resumed["compiles"] == 1
    assert_trees_equal(final_params(tmp_path / "straight", 200), final_params(tmp_path / "resumed", 200))
    # The log of the resumed run holds each logged step exactly once.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [50, 100, 150, 200]


def test_steps_not_multiple_of_log_every(spiral_config, tmp_path):
    spiral_config.train.steps = 120   # the last chunk runs 20 active steps of 50
    out = train_and_evaluate(spiral_config, tmp_path, **quiet)
    assert out["steps"] == 120 and out["compiles"] == 1
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 120
    state = ckpt.read(120)
    ckpt.close()
    assert int(state["step"]) == 120


def test_host_loop_matches_the_scanned_chunk(spiral_config, tmp_path):
    """train.loop=host (one compiled step per call, the default for conv networks) reads the same
    batches and noise as the scanned chunk: same parameters to float tolerance, same metrics log
    steps, one compile per phase; the last chunk stops at train.steps."""
    spiral_config.train.steps = 120
    scanned = train_and_evaluate(spiral_config, tmp_path / "scan", **quiet)
    spiral_config.train.loop = "host"
    hosted = train_and_evaluate(spiral_config, tmp_path / "host", **quiet)
    assert hosted["compiles"] == scanned["compiles"] == 1 and hosted["steps"] == 120
    for a, b in zip(jax.tree.leaves(final_params(tmp_path / "scan", 120)),
                    jax.tree.leaves(final_params(tmp_path / "host", 120))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    logs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("scan", "host")]
    assert [r["step"] for r in logs[1]] == [50, 100, 120]
    assert logs[1][-1]["loss"] == pytest.approx(logs[0][-1]["loss"], rel=1e-3)
    for scan_line, host_line in zip(*logs):                  # both the last step's gradient norm
        assert host_line["grad_norm"] == pytest.approx(scan_line["grad_norm"], rel=1e-3)
    spiral_config.train.loop = "python"
    with pytest.raises(ConfigError, match="unknown train.loop 'python'"):
        train_and_evaluate(spiral_config, tmp_path / "bad", **quiet)


def test_restarts_choose_lowest_objective(spiral_config, tmp_path):
    spiral_config.train.restarts = 3
    out = train_and_evaluate(spiral_config, tmp_path, **quiet)
    losses = out["restart_objective"]
    assert len(losses) == 3 and len(set(losses)) == 3          # different inits, different results
    assert out["chosen_restart"] == int(np.argmin(losses))
    spiral_config.train.restart_batches = "mine"
    with pytest.raises(ConfigError, match="unknown train.restart_batches 'mine'"):
        train_and_evaluate(spiral_config, tmp_path / "bad", **quiet)


def test_outputs_written(spiral_config, tmp_path):
    out = train_and_evaluate(spiral_config, tmp_path, **quiet)
    for name in ("predictions", "metrics_log", "config", "data_clusters", "latent", "samples"):
        assert (tmp_path / out["files"][name].split("/")[-1]).stat().st_size > 0, name
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,cluster,label," + ",".join(f"p_{k}" for k in range(5))
    assert len(rows) == 1 + 1000
    probs = np.array([[float(v) for v in r.split(",")[3:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    clusters = np.array([int(r.split(",")[1]) for r in rows[1:]])
    np.testing.assert_array_equal(clusters, probs.argmax(1))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["steps"] == 200 and saved["model"]["num_clusters"] == 5
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("step", "steps_per_sec", "loss", "recon", "cond_prior", "w_prior", "c_prior", "cv"):
        assert key in record
    assert 0.0 <= out["acc"] <= 1.0 and sum(out["cluster_sizes"]) == 1000


def test_nan_is_reported_with_step_and_term(spiral_config, tmp_path):
    spiral_config.data.source = "file:" + str(tmp_path / "huge.npy")
    np.save(tmp_path / "huge.npy", np.full((500, 2), 1e30, np.float32))
    with pytest.raises(TrainingError, match=r"step 50 .*recon"):
        train_and_evaluate(spiral_config, tmp_path / "run", **quiet)
    assert not (tmp_path / "run" / "checkpoints" / "50").exists()


def test_corrupt_checkpoint_is_reported_and_kept(spiral_config, tmp_path):
    """Without its checksums (a checkpoint written before them) a corrupt checkpoint is named by
    the restore and left in place; with them, it is moved aside and the run resumes before it
    (tests/test_faults.py)."""
    from gmvc.run.checkpoint import CHECKSUMS
    train_and_evaluate(spiral_config, tmp_path, **quiet)
    step_dir = tmp_path / "checkpoints" / "200"
    (step_dir / CHECKSUMS).unlink()
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in files:
        p.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=str(step_dir)):
        train_and_evaluate(spiral_config, tmp_path, **quiet)
    assert all(p.exists() for p in files)


def test_incompatible_checkpoint_is_reported_and_kept(spiral_config, tmp_path, monkeypatch):
    """A checkpoint of another network is named, with a leaf whose shape differs, from its
    metadata: no array is read (orbax would leave the other reads of a failed restore
    unawaited). The metadata's leaf names are the train state's, so the check sees every leaf."""
    import orbax.checkpoint as ocp
    from gmvc.run.checkpoint import Checkpointer, _leaf_shapes
    train_and_evaluate(spiral_config, tmp_path, **quiet)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    saved = _leaf_shapes(ckpt._manager.item_metadata(200)["state"].tree)
    ckpt.close()
    seen, check = [], Checkpointer._check_metadata
    monkeypatch.setattr(Checkpointer, "_check_metadata", lambda self, step, like, item: (
        item == "state" and seen.append(like), check(self, step, like, item))[1])
    train_and_evaluate(spiral_config, tmp_path, **quiet)          # resumes at its last step: the same model
    assert len(seen) == 1 and _leaf_shapes(seen[0]) == saved and len(saved) > 10
    spiral_config.model.hidden_sizes = (37,)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", lambda *a, **k: pytest.fail("restore started"))
    # config.json names the difference first; without it, the checkpoint's metadata does
    with pytest.raises(RunError, match=r"holds a run of another config \(it differs in model.hidden_sizes\)"):
        train_and_evaluate(spiral_config, tmp_path, **quiet)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoints/200 .*shapes differ: \S+ is \(\d+"):
        train_and_evaluate(spiral_config, tmp_path, **quiet)
    assert (tmp_path / "checkpoints" / "200").is_dir()


def _small_phased_config():
    """vade_digits' phases (pretrain -> gmm_init -> main), shrunk to seconds."""
    from gmvc.recipes import vade_digits
    c = vade_digits()
    c.unlock()
    c.model.hidden_sizes = (32, 32)
    c.phases.pretrain.steps = 40
    c.phases.gmm_init.n_init = 2
    c.train.steps, c.train.restarts, c.train.log_every, c.train.checkpoint_every = 80, 2, 20, 40
    return c


def test_later_phases_compile_in_the_background_and_train_the_same(tmp_path):
    """Every phase's program (both chunks, the mixture fit, the final score) compiles in the
    warm-up thread, none on the main thread; the run is the same, bit for bit, as one with
    train.compile_ahead="off", which compiles each phase when it starts."""
    import threading

    def run_recording_compiles(config, workdir):
        """The run's summary and its compilations as (program name, thread name)."""
        compiled = []

        def listen(event, seconds, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                compiled.append((kwargs.get("fun_name", ""), threading.current_thread().name))

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            return train_and_evaluate(config, workdir, **quiet), compiled
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)

    warm_config = _small_phased_config()
    warm_config.train.compile_ahead = "on"       # "auto" is off on the CPU
    warm, compiled = run_recording_compiles(warm_config, tmp_path / "warm")
    ahead = [name for name, thread in compiled if thread.startswith("gmvc-compile")]
    # In phase order: pretrain's chunk, the init_prior fit, main's chunk, the final restart
    # choice's score. The phases' smaller programs (a fresh Adam state, the embedding, the fit's
    # key) compile there too, unless an earlier test in this process compiled the same program.
    assert [n for n in ahead if n in ("jit(traced)", "jit(<lambda>)")] == ["jit(traced)", "jit(<lambda>)",
                                                                          "jit(traced)", "jit(<lambda>)"], compiled
    main_thread = [name for name, thread in compiled if not thread.startswith("gmvc-compile")]
    phase_programs = {"jit(traced)", "jit(<lambda>)", "jit(init_fn)", "jit(embed)", "jit(_threefry_fold_in)",
                      "jit(stack)", "jit(concatenate)", "jit(convert_element_type)"}
    assert not phase_programs & set(main_thread), main_thread
    assert warm["compiles"] == 2

    cold_config = _small_phased_config()
    cold_config.train.compile_ahead = "off"
    cold, compiled = run_recording_compiles(cold_config, tmp_path / "cold")
    assert cold["compiles"] == 2
    assert not [name for name, thread in compiled if thread.startswith("gmvc-compile")], compiled
    assert_trees_equal(final_params(tmp_path / "warm", 80), final_params(tmp_path / "cold", 80))
    assert (tmp_path / "warm" / "metrics.jsonl").read_text().count("\n") == 4
    for a, b in zip(*(open(tmp_path / d / "metrics.jsonl").read().splitlines() for d in ("warm", "cold"))):
        wa, wb = json.loads(a), json.loads(b)
        assert wa["loss"] == wb["loss"] and wa["step"] == wb["step"]


def test_compile_ahead_auto_is_off_on_the_cpu_and_bad_values_are_named(tmp_path):
    """"auto" compiles ahead only off the CPU (this machine: off); "on"/"off" and the command
    line's "True"/"False" are read as such; an unknown value stops the run before it starts,
    naming the key."""
    from gmvc.training.warmup import compiles_ahead
    config = _small_phased_config()
    assert config.train.compile_ahead == "auto" and jax.default_backend() == "cpu"
    for value, expected in (("auto", False), ("on", True), ("off", False), ("True", True), ("False", False)):
        config.train.compile_ahead = value
        assert compiles_ahead(config) is expected, value
    config.train.compile_ahead = "sometimes"
    with pytest.raises(ConfigError, match="train.compile_ahead 'sometimes'"):
        train_and_evaluate(config, tmp_path / "bad", **quiet)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_chunk_reads_the_phase_bounds_as_values():
    """One compiled chunk serves phases of different (start, end): the loss sees the step counted
    from the phase's start, steps at or past its end do not run, and a new bounds value does not
    compile again."""
    import jax.numpy as jnp
    from gmvc.training import steps
    traces = []

    def fake_step(state, batch, keys, start=0, measure=True):
        return state._replace(step=state.step + 1), {"relative_step": (state.step - start).astype(jnp.float32)}

    chunk = steps.make_train_chunk(fake_step, num_examples=40, batch_size=10, chunk_len=8)
    run = jax.jit(lambda s, x, r, b: (traces.append(1), chunk(s, Tables(), x, r, b))[1])
    x, rng = jnp.zeros((40, 3)), jax.random.key(0)
    state, m = run(TrainState(jnp.asarray(10, jnp.int32), {}, ()), x, rng, np.asarray([10, 15], np.int32))
    assert int(state.step) == 15 and float(m["relative_step"]) == 2.0     # steps 10..14 -> 0..4
    state, m = run(TrainState(jnp.asarray(15, jnp.int32), {}, ()), x, rng, np.asarray([12, 30], np.int32))
    assert int(state.step) == 23 and float(m["relative_step"]) == 6.5     # steps 15..22 -> 3..10
    assert len(traces) == 1


def test_each_restart_reads_its_own_data_order():
    """With `restarts`, make_train_chunk gives every restart its own permutation of the data each
    epoch: restart 0 reads the batches a one-restart chunk reads, the others other batches, and
    each still sees every sample once per epoch. make_restarts_step's own_batches hands each
    restart its own rows."""
    import jax.numpy as jnp
    from gmvc.training import steps
    x = jnp.arange(40, dtype=jnp.float32)[:, None]               # row i holds i
    rng = jax.random.key(3)

    def record(state, batch, keys, start=0, measure=True, hyper=()):    # the "params" become the batch's rows
        return TrainState(state.step + 1, batch["data"][:, 0], state.opt_state), {"loss": jnp.float32(0.0)}

    def epoch_rows(restarts):
        step = steps.make_restarts_step(record, 3, own_batches=restarts is not None)
        one = jax.jit(steps.make_indexed_step(step, num_examples=40, batch_size=10, restarts=restarts))
        state = TrainState(jnp.int32(0), jnp.zeros((3, 10)), jnp.zeros(3))
        rows = []
        for _ in range(4):                                    # one epoch: 4 batches of 10
            state, _ = one(state, Tables(), x, rng, np.asarray([0, 4], np.int32))
            rows.append(np.asarray(state.params))
        return np.concatenate(rows, axis=1)                   # [3 restarts, 40 rows]

    shared, own = epoch_rows(None), epoch_rows(3)
    assert (shared == shared[:1]).all()                       # one order for all
    np.testing.assert_array_equal(own[0], shared[0])
    for r in range(3):
        assert sorted(own[r]) == list(range(40))
    assert (own[1] != own[0]).mean() > 0.8 and (own[2] != own[1]).mean() > 0.8
    # the scanned chunk reads the same batches as the indexed step
    step = steps.make_restarts_step(record, 3, own_batches=True)
    chunk = jax.jit(steps.make_train_chunk(step, num_examples=40, batch_size=10, chunk_len=1, total_steps=10,
                                           restarts=3))
    state, _ = chunk(TrainState(jnp.int32(3), jnp.zeros((3, 10)), jnp.zeros(3)), Tables(), x, rng)
    np.testing.assert_array_equal(np.asarray(state.params), own[:, 30:])


def test_phases_differing_only_in_steps_share_one_program(tmp_path, monkeypatch):
    """main and main2 (same spec, other steps) run one compiled chunk, and train as two programs
    would: the same parameters and logged losses."""
    from gmvc.training import program

    def two_mains():
        c = _small_phased_config()
        c.train.phases = ("pretrain", "gmm_init", "main", "main2")
        c.phases.main = {"kind": "train", "steps": 20}
        c.phases.main2 = {"kind": "train", "steps": -1}
        return c

    shared = train_and_evaluate(two_mains(), tmp_path / "shared", **quiet)
    assert shared["compiles"] == 2                       # pretrain's chunk and the mains' one
    monkeypatch.setattr(program, "program_key", lambda spec: json.dumps(spec, sort_keys=True, default=repr))
    apart = train_and_evaluate(two_mains(), tmp_path / "apart", **quiet)
    assert apart["compiles"] == 3
    assert_trees_equal(final_params(tmp_path / "shared", 80), final_params(tmp_path / "apart", 80))
    logs = [[json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")] for d in ("shared", "apart")]
    assert [l["step"] for l in logs[0]] == [20, 40, 60, 80] == [l["step"] for l in logs[1]]
    assert [l["loss"] for l in logs[0]] == [l["loss"] for l in logs[1]]


def test_a_phase_trains_at_its_own_batch_size(spiral_config, tmp_path):
    """A phase's batch_size replaces train.batch_size for that phase: the run is bit-identical to
    one whose train.batch_size is that size, and differs from the default's; bad sizes are named,
    and a size above the data is cut to it (gmvc/recipes/rules.py)."""

    def one_phase(global_batch, phase_batch=None):
        c = spiral_config.copy_and_resolve_references()
        c.unlock()
        c.train.steps, c.train.batch_size = 100, global_batch
        c.train.phases = ("only",)
        c.phases = {"only": {"kind": "train", "steps": -1,
                             **({} if phase_batch is None else {"batch_size": phase_batch})}}
        return c

    train_and_evaluate(one_phase(64, 32), tmp_path / "phase", **quiet)
    train_and_evaluate(one_phase(32), tmp_path / "global", **quiet)
    train_and_evaluate(one_phase(64), tmp_path / "default", **quiet)
    assert_trees_equal(final_params(tmp_path / "phase", 100), final_params(tmp_path / "global", 100))
    a, b = final_params(tmp_path / "phase", 100), final_params(tmp_path / "default", 100)
    assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) > 1e-3
    with pytest.raises(ConfigError, match="phase 'only': batch_size must be a whole number"):
        train_and_evaluate(one_phase(64, 0), tmp_path / "zero", **quiet)
    said = []
    train_and_evaluate(one_phase(64, 5000), tmp_path / "big", echo=lambda m, **k: said.append(m))   # cut to N
    assert "rule: batch size cut to N = 1000 (only)" in said
    train_and_evaluate(one_phase(64, 1000), tmp_path / "whole", **quiet)
    assert_trees_equal(final_params(tmp_path / "big", 100), final_params(tmp_path / "whole", 100))


def test_importing_train_leaves_the_reporting_libraries_for_later():
    """matplotlib, scipy and scikit-learn (about 3 s of imports) are not loaded at start-up: a
    run imports them in a background thread once training runs (gmvc.run.export.preload)."""
    import subprocess
    import sys
    probe = ("import sys, gmvc.trainer; "
             "print(sorted(m for m in ('matplotlib', 'scipy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

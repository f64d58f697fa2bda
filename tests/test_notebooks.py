"""The notebooks in notebooks/ run top to bottom without an error, with GMVC_NOTEBOOK_QUICK=1 (every
run shrunk to a smoke test), on one CPU device (conftest.py's XLA_FLAGS for 8 fake devices is
left out of the kernel's environment). Each executes from an in-memory copy: the committed file
and its saved outputs are never written. The committed files are checked too: saved with their
outputs and pictures, no errors, a parameter cell on top, no functions defined in cells.

Speed (a smoke run is almost all start-up and XLA compilation):
- one kernel runs the four notebooks in turn, each from `%reset -f` (every name cleared, so a
  notebook still runs on its own imports): the kernel start, the imports and jax's first-trace
  warm-up are paid once;
- the kernel uses the test session's JAX compilation cache (JAX_COMPILATION_CACHE_DIR, set in
  conftest.py): a program two notebooks build compiles once, and a later session reads the
  programs back.
"""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = ["quickstart", "elbo_anatomy", "objectives_compared", "s3vdc_stability"]


def _read(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["GMVC_NOTEBOOK_QUICK"] = "1"
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("xla_cache")))   # conftest.py sets one
    env["TMPDIR"] = str(tmp_path_factory.mktemp("notebook_tmp"))   # the notebooks' run directories
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path_factory.mktemp("notebook_cwd")))
    yield km
    km.shutdown_kernel(now=True)


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel):
    nb = _read(name)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    if not kernel.is_alive():                       # an earlier notebook took the kernel down
        kernel.restart_kernel(now=True)
    client = nbclient.NotebookClient(nb, km=kernel, timeout=600)
    try:
        client.execute()                            # raises CellExecutionError, naming the cell, on any error
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    # Every figure a cell draws is shown, those drawn after a fit included: gmvc's file plots never
    # switch matplotlib's backend away from the notebook's.
    shown = [c for c in nb.cells if c.cell_type == "code" and any("image/png" in o.get("data", {}) for o in c.outputs)]
    drawn = [c for c in nb.cells if c.cell_type == "code" and "plt.subplots" in c.source]
    assert drawn and len(shown) >= len(drawn), f"{len(drawn)} cells draw a figure, {len(shown)} show one"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook(name):
    """Saved with the outputs of a full (not quick) run, pictures included, and no errors; the
    step counts come from the first code cell, which reads GMVC_NOTEBOOK_QUICK; no functions or
    classes defined in cells (reusable code belongs in gmvc/experiments.py)."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    assert "GMVC_NOTEBOOK_QUICK" in code[0].source
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run top to bottom, once"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not [c.source for c in code if "\ndef " in "\n" + c.source or "\nclass " in "\n" + c.source]


@pytest.fixture
def fast_compiles():
    """XLA's optimisation passes off: the programs below are tiny and run once (as conftest's
    fast_compiles_module does for whole modules)."""
    import jax
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_sweep_run_is_the_single_run_with_that_weight(fast_compiles):
    """objectives_compared's sweep: run r of the vmapped program (its weight a traced input) ends
    where an ordinary run of the objective with that cv weight ends, from the same start and batches."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gmvc import experiments
    from gmvc.training import steps
    from gmvc.recipes import gmvae_spiral
    from gmvc.data import load_dataset
    from gmvc.models import make_model
    from gmvc.objectives import make_objective
    from gmvc.training.state import Tables, TrainState, make_optimizer

    config = experiments.override(
        experiments.scale_steps(gmvae_spiral(), 0.002),
        {"data.num_points": 500, "model.hidden_sizes": (16,), "model.prior_hidden": 16})   # 25 steps, warm-up 10
    data = load_dataset(config.data, config.seed)
    model, tx = make_model(config.model, data.x.shape[1:]), make_optimizer(config.optim)
    weights, init_rng, train_rng = [0.5, 2.0], *jax.random.split(jax.random.key(0))
    state, weight, seed = experiments.init_sweep(model, tx, init_rng, weights, [0])
    chunk = lambda step: jax.jit(steps.make_train_chunk(step, num_examples=len(data.x), batch_size=config.train.batch_size,
                                                        chunk_len=config.train.steps, total_steps=config.train.steps))
    sweep_step = experiments.make_sweep_step(experiments.make_sweep_objective(model, config.objective, config.terms, "cv"),
                                             tx, weight, seed)
    swept = chunk(sweep_step)(state, Tables(), data.x, train_rng)[0].params
    r, w = 1, weights[1]
    objective = {**config.objective.to_dict(), "cv": {**config.objective.cv.to_dict(), "value": w}}
    single = steps.make_restarts_step(steps.make_train_step(make_objective(model, objective, config.terms), tx), 1)
    params = jax.tree.map(lambda a: a[r:r + 1], state.params)
    ref = chunk(single)(TrainState(jnp.int32(0), params, jax.vmap(tx.init)(params)), Tables(), data.x,
                        train_rng)[0].params
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])
    run_r, other, start = flat(jax.tree.map(lambda a: a[r], swept)), flat(jax.tree.map(lambda a: a[0], swept)), flat(params)
    assert np.abs(run_r - start).max() > 1e-2                     # it trained
    assert np.abs(run_r - other).max() > 1e-3                     # the other weight went elsewhere
    assert np.abs(run_r - flat(ref)).max() < 1e-5

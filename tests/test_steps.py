"""The train steps (gmvc/training/steps.py) with the optimizer of training/state.py on a tiny VaDE:
frozen groups stay bit-identical, the lifted step trains as the vmapped one, a chunk's grad norm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmvc.models import make_model
from gmvc.objectives import make_batch, make_objective
from gmvc.training import steps
from gmvc.training.state import Tables, TrainState, make_optimizer
from helpers_vade import _assert_trees_equal, _max_abs_diff, _uniform_data, _vade_config

pytestmark = pytest.mark.usefixtures("fast_compiles_module")


def _train_few_steps(params, tx, loss_fn, x, n=5, batch=50):
    train_step = steps.make_train_step(loss_fn, tx)

    def run(params, x):
        state = TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params))

        def body(state, i):
            batch_x = jax.lax.dynamic_slice_in_dim(x, (i % (len(x) // batch)) * batch, batch)
            return train_step(state, make_batch(batch_x), jax.random.fold_in(jax.random.key(7), i))

        state, aux = jax.lax.scan(body, state, jnp.arange(n))
        return state, aux

    state, aux = jax.jit(run)(params, jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(aux["loss"])))
    return state.params, aux


@pytest.fixture(scope="module")
def tiny_vade():
    cfg = _vade_config()
    x = _uniform_data()
    model = make_model(cfg.model, x.shape[1:])
    params = jax.jit(model.init)(jax.random.key(0))
    # The objective reaches the prior (vade_kl), so only the optimizer can keep it fixed.
    loss_fn = make_objective(model, cfg.objective, cfg.terms)
    return cfg, model, params, loss_fn, x


@pytest.mark.parametrize("trainable", [("net",), ("net", "prior")])
def test_optimizer_freezes_untrained_groups(tiny_vade, trainable):
    cfg, model, params, loss_fn, x = tiny_vade
    new, aux = _train_few_steps(params, make_optimizer(cfg.optim, trainable=trainable), loss_fn, x)
    assert np.all(np.asarray(aux["grad_norm"]) > 0)
    for group in ("net", "prior"):
        if group in trainable:
            assert _max_abs_diff(new[group], params[group]) > 1e-4, group    # Adam moves every leaf ~ lr
            for a, b in zip(jax.tree.leaves(new[group]), jax.tree.leaves(params[group])):
                assert np.any(np.asarray(a) != np.asarray(b)), group
        else:
            _assert_trees_equal(new[group], params[group])                  # bit-identical


def test_lifted_step_trains_as_the_vmapped_step(tiny_vade):
    """steps.make_lifted_step with one restart (no vmap: the loss reads params[0], Adam updates the
    [1, ...] arrays as they are) against make_restarts_step's vmap of the plain step: the same
    parameters, moments, step counters and metrics after a few steps."""
    from gmvc.training import state as state_lib
    cfg, model, _, loss_fn, x = tiny_vade
    tx = make_optimizer(cfg.optim)
    params = state_lib.init_params(model.init, jax.random.key(3), 1)
    runs = {}
    for name, step_fn in (("vmapped", steps.make_restarts_step(steps.make_train_step(loss_fn, tx), 1)),
                          ("lifted", steps.make_lifted_step(loss_fn, tx, 1))):
        step_fn, s, auxes = jax.jit(step_fn), state_lib.create_state(params, tx), []
        for i in range(4):
            s, aux = step_fn(s, make_batch(jnp.asarray(x[i * 40:(i + 1) * 40])), steps.step_keys(jax.random.key(5), i, 40))
            auxes.append(aux)
        runs[name] = (s, auxes)
    (a, aux_a), (b, aux_b) = runs["vmapped"], runs["lifted"]
    assert int(b.step) == 4
    assert _max_abs_diff(b.params, params) > 1e-4                # it trained
    for u, v in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state))):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=2e-4, atol=2e-6)
    counts = [np.asarray(c) for c in jax.tree.leaves(b.opt_state) if c.dtype == jnp.int32]
    assert counts and all(np.array_equal(c, [4]) for c in counts)
    for p, q in zip(aux_a, aux_b):
        assert q["loss"].shape == q["grad_norm"].shape == (1,)
        np.testing.assert_allclose(np.asarray(q["loss"]), np.asarray(p["loss"]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(q["grad_norm"]), np.asarray(p["grad_norm"]), rtol=1e-4)


def test_chunk_measures_the_gradient_norm_of_its_last_step(tiny_vade):
    """make_train_chunk averages the metrics over its active steps but takes grad_norm from the
    last active one (the others skip the norm): against the same steps one at a time
    (make_indexed_step reads the same batches and measures every step)."""
    from gmvc.training import state as state_lib
    cfg, model, _, loss_fn, x = tiny_vade
    tx = make_optimizer(cfg.optim)
    step_fn = steps.make_lifted_step(loss_fn, tx, 1)
    s0 = state_lib.create_state(state_lib.init_params(model.init, jax.random.key(3), 1), tx)
    x, rng, bounds = jnp.asarray(x), jax.random.key(11), jnp.asarray([0, 5], jnp.int32)
    one = jax.jit(steps.make_indexed_step(step_fn, num_examples=len(x), batch_size=40))
    s, auxes = s0, []
    for _ in range(5):
        s, aux = one(s, Tables(), x, rng, bounds)
        auxes.append(aux)
    norms = [float(a["grad_norm"][0]) for a in auxes]
    assert len(set(norms)) == 5 and min(norms) > 0
    chunk = jax.jit(steps.make_train_chunk(step_fn, num_examples=len(x), batch_size=40, chunk_len=3))
    s, first = chunk(s0, Tables(), x, rng, bounds)                # steps 0, 1, 2
    s, second = chunk(s, Tables(), x, rng, bounds)                # steps 3, 4 (the third is past the end)
    assert int(s.step) == 5
    for metrics, active in ((first, range(0, 3)), (second, range(3, 5))):
        np.testing.assert_allclose(float(metrics["grad_norm"][0]), norms[active[-1]], rtol=1e-4)
        np.testing.assert_allclose(float(metrics["loss"][0]), np.mean([float(auxes[i]["loss"][0]) for i in active]),
                                   rtol=1e-4)

"""The one-pass Adam kernel (gmvc/fused_adam.py) against optax's Adam + apply_updates."""
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gmvc import fused_adam
from gmvc.state import make_optimizer

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                                    reason="no C++ compiler: the kernel cannot be built here")


def optim(**kw):
    c = ml_collections.ConfigDict({"lr": 0.002, "b1": 0.9, "b2": 0.999, "eps": 1e-4, "clip_norm": 0.0,
                                   "lr_schedule": {}, "prior_lr": -1.0, "prior_lr_schedule": {}})
    c.update(kw)
    return c


def params_like(rng, lead=()):
    shapes = {"net": {"dense": {"kernel": (37, 70_001 // 37), "bias": (19,)}, "head": {"kernel": (5, 3)}},
              "prior": {"mu": (10, 4), "logits": (10,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(lead + s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def run(tx, params, grads_seq, fused):
    """params and opt_state after one jitted apply per gradient, fused or optax's own update."""
    def step(p, s, g):
        if fused:
            return tx.apply(g, s, p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step)
    state = tx.init(params)
    for g in grads_seq:
        params, state = step(params, state, g)
    return params, state


def assert_trees_close(a, b, rtol=2e-6, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@needs_compiler
def test_kernel_builds_and_is_used_on_cpu():
    """On a machine with a compiler the kernel builds and the train steps use it: a silent fall
    back to optax would hide a broken build."""
    assert fused_adam.load(), fused_adam._loaded.get("why")
    assert fused_adam.enabled()
    tx = make_optimizer(optim())
    p = params_like(np.random.default_rng(0))
    text = jax.jit(tx.apply).lower(p, tx.init(p), p).as_text()
    assert text.count(fused_adam.TARGET) == 1          # the one leaf of fused_adam.MIN_SIZE elements or more
    small = {"net": {"kernel": p["net"]["head"]["kernel"]}, "prior": p["prior"]}      # spiral-sized weights only
    assert fused_adam.TARGET not in jax.jit(tx.apply).lower(small, tx.init(small), small).as_text()


@needs_compiler
def test_apply_matches_optax_over_steps():
    """Five steps with a decaying learning rate on both groups: the weights, both moments and the
    counts agree with optax.adam + apply_updates (to float32 rounding), and they moved."""
    rng = np.random.default_rng(1)
    tx = make_optimizer(optim(lr_schedule={"kind": "exponential_decay", "decay_rate": 0.5, "decay_steps": 2}))
    p0 = params_like(rng)
    grads = [params_like(rng) for _ in range(5)]
    fused, s_fused = run(tx, p0, grads, fused=True)
    plain, s_plain = run(tx, p0, grads, fused=False)
    assert_trees_close(fused, plain)
    assert_trees_close(s_fused, s_plain)
    moved = np.abs(np.asarray(fused["net"]["dense"]["kernel"] - p0["net"]["dense"]["kernel"]))
    assert moved.min() > 0 and 0.003 < moved.max() < 0.011         # 5 steps of at most lr, decaying
    assert int(s_fused.inner_states["net"].inner_state[0].count) == 5


@needs_compiler
def test_apply_frozen_group_and_restart_axis():
    """A frozen prior stays as it was; under jax.vmap over 3 restarts (each with its own step
    count, so its own bias correction) and with a [1, ...] leading axis (the one-restart step),
    each restart's update is its own optax update."""
    rng = np.random.default_rng(2)
    tx = make_optimizer(optim(), trainable=("net",))
    p0 = params_like(rng, lead=(3,))
    g = params_like(rng, lead=(3,))
    state = jax.vmap(tx.init)(p0)
    adam = state.inner_states["net"].inner_state[0]
    counts = jnp.asarray([0, 4, 100], jnp.int32)
    state.inner_states["net"] = state.inner_states["net"]._replace(
        inner_state=(adam._replace(count=counts), state.inner_states["net"].inner_state[1]))

    fused = jax.jit(jax.vmap(tx.apply))(g, state, p0)
    def plain(g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    expected = jax.jit(jax.vmap(plain))(g, state, p0)
    assert_trees_close(fused, expected)
    np.testing.assert_array_equal(np.asarray(fused[0]["prior"]["mu"]), np.asarray(p0["prior"]["mu"]))
    steps = [np.abs(np.asarray(fused[0]["net"]["head"]["kernel"][r] - p0["net"]["head"]["kernel"][r])).max()
             for r in range(3)]
    assert steps[0] > 0 and steps[1] != steps[0]

    one = jax.tree.map(lambda a: a[:1], (g, state, p0))            # [1, ...], not vmapped
    one_state = jax.vmap(tx.init)(one[2])
    assert_trees_close(jax.jit(tx.apply)(one[0], one_state, one[2]), jax.jit(plain)(one[0], one_state, one[2]))


def test_clipping_uses_optax():
    """With gradient clipping on, apply is optax's own update (clip, then Adam)."""
    rng = np.random.default_rng(4)
    tx = make_optimizer(optim(clip_norm=0.5))
    p0 = params_like(rng)
    grads = [params_like(rng) for _ in range(2)]
    assert_trees_close(run(tx, p0, grads, fused=True), run(tx, p0, grads, fused=False), rtol=0, atol=0)
    text = jax.jit(tx.apply).lower(p0, tx.init(p0), p0).as_text()
    assert fused_adam.TARGET not in text


def test_update_matches_reference_and_rows():
    """The kernel on k rows of scalars updates k slabs each with its own row; the jax.numpy
    reference is the same arithmetic."""
    if not fused_adam.load():
        pytest.skip("kernel not built here")
    rng = np.random.default_rng(3)
    g, p, m, v = (jnp.asarray(rng.standard_normal((2, 33, 3001)), jnp.float32) for _ in range(4))
    v = jnp.abs(v)
    scalars = jnp.asarray([[1e-3, 0.9, 0.999, 0.1, 0.001, 0.1, 0.001, 1e-8],
                           [5e-2, 0.5, 0.9, 0.5, 0.1, 0.75, 0.19, 1e-3]], jnp.float32)
    out = jax.jit(fused_adam.update)(g, p, m, v, scalars)
    ref = jax.jit(fused_adam.reference_update)(g, p, m, v, scalars)
    assert_trees_close(out, ref)
    assert not np.allclose(np.asarray(out[0][0] - p[0]) / 1e-3, np.asarray(out[0][1] - p[1]) / 5e-2)


def test_no_compiler_falls_back_with_a_note(tmp_path):
    """Without a working compiler the kernel is not available: one note on stderr, and the train
    step runs optax's update (the same arithmetic)."""
    code = ("import jax, numpy as np; from gmvc import fused_adam; from gmvc.state import make_optimizer\n"
            "import ml_collections as mc\n"
            "print(fused_adam.enabled())\n"
            "c = mc.ConfigDict(dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0, lr_schedule={}, prior_lr=-1.0,"
            " prior_lr_schedule={}))\n"
            "tx = make_optimizer(c); p = {'net': {'w': jax.numpy.ones(3)}, 'prior': {'m': jax.numpy.ones(2)}}\n"
            "print(float(tx.apply(p, tx.init(p), p)[0]['net']['w'][0]))\n")
    env = {**os.environ, "CXX": "false", "GMVC_KERNEL_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    enabled, weight = done.stdout.split()
    assert enabled == "False" and abs(float(weight) - 0.9) < 1e-6        # 1 - lr: Adam's first step
    assert done.stderr.count("one-pass Adam kernel is not available") == 1
    assert not list(tmp_path.glob("*.so"))


@needs_compiler
def test_damaged_cached_library_is_rebuilt(tmp_path):
    """A truncated file in the kernel cache is built again, not loaded and not fatal."""
    env = {**os.environ, "GMVC_KERNEL_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    code = "from gmvc import fused_adam; print(fused_adam._library_path().name)"
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip()
    (tmp_path / name).write_bytes(b"\x7fELF truncated")
    done = subprocess.run([sys.executable, "-c", "from gmvc import fused_adam; print(fused_adam.load())"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip() == "True", done.stderr
    assert (tmp_path / name).stat().st_size > 10_000

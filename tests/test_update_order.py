"""The order of the in-place weight updates (gmvc/update_order.py): each waits for a gradient
computed after its weight's last reader, and XLA then copies no weight to keep it."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmvc import fused_adam, steps, update_order
from gmvc.state import make_optimizer
from test_fused_adam import needs_compiler, optim

SIZES = (256, 300, 300, 256)        # every kernel of fused_adam.MIN_SIZE elements or more


def mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    net = {f"layer{i}": {"kernel": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
                         "bias": jnp.zeros((b,), jnp.float32)}
           for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]))}
    return {"net": net, "prior": {"means": jnp.asarray(rng.standard_normal((3, SIZES[-1])), jnp.float32)}}


def mlp_loss(params, batch, rng, step):
    h = batch
    for i in range(len(SIZES) - 1):
        layer = params["net"][f"layer{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(SIZES) - 2:
            h = jax.nn.relu(h)
    noise = 0.01 * jax.random.normal(rng, h.shape)
    loss = jnp.mean(jnp.min(jnp.sum((h[:, None] + noise[:, None] - params["prior"]["means"]) ** 2, -1), 1))
    return loss, {"step": step}


def leaf_index(params):
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return lambda group, *keys: paths.index(jax.tree_util.keystr(
        tuple(jax.tree_util.DictKey(k) for k in (group, *keys))))


def test_value_and_grad_matches_jax_and_orders_by_layer():
    params, batch = mlp_params(), jnp.asarray(np.random.default_rng(1).standard_normal((32, SIZES[0])), jnp.float32)
    args = (batch, jax.random.key(2), 7)
    (loss, aux), grads, order = jax.jit(lambda p: update_order.value_and_grad(mlp_loss, p, *args))(params)
    (loss_ref, aux_ref), grads_ref = jax.jit(jax.value_and_grad(mlp_loss, has_aux=True))(params, *args)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    assert int(aux["step"]) == 7
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)
    at = leaf_index(params)
    # a layer's weight is read last by the backward matmul dy @ W^T, whose result makes the layer
    # below's gradients: its update waits for the one of them computed first (the bias's sum)
    assert order[at("net", "layer2", "kernel")] == at("net", "layer1", "bias")
    assert order[at("net", "layer1", "kernel")] == at("net", "layer0", "bias")
    # the first layer's weight is read by the forward pass only: any gradient will do, the first
    first = order[at("net", "layer0", "kernel")]
    assert first is not None and first not in (at("net", "layer0", "bias"), at("net", "layer0", "kernel"))
    # biases are read by the forward pass only, and so are the prior's means
    assert order[at("net", "layer2", "bias")] == first and order[at("prior", "means")] == first


def test_gradient_order_none_without_a_dependent_gradient():
    """A weight whose readers feed the loss only (no gradient depends on them) has no gradient
    to wait for: its update then waits for every gradient."""
    def loss(p, scale):
        return jnp.sum(p["a"] * scale) + jnp.sum(jax.lax.stop_gradient(p["b"]) ** 2)
    params = {"a": jnp.ones((4,)), "b": jnp.ones((4,))}
    closed = jax.make_jaxpr(jax.grad(loss))(params, 2.0)
    order = update_order.gradient_order(closed.jaxpr, 2, 0)
    assert order == [None, None]


def weight_copies(text):
    """The copies of weight-sized float32 arrays in compiled HLO text."""
    shapes = {f"f32[{a},{b}]" for a, b in zip(SIZES[:-1], SIZES[1:])} | {f"f32[{b},{a}]" for a, b in zip(SIZES[:-1], SIZES[1:])}
    return [line.strip()[:100] for line in text.splitlines()
            if re.search(r"= (f32\[[0-9,]+\])\{[0-9,]*\} copy\(", line)
            and re.search(r"= (f32\[[0-9,]+\])", line).group(1) in shapes]


@needs_compiler
def test_in_place_updates_copy_no_weight():
    """A scan of train steps (as make_train_chunk runs them) keeps every weight in place. Waiting
    only for a weight's own gradient (computed before dy @ W^T reads the weight) makes XLA copy
    weights: the count can tell the two apart."""
    assert fused_adam.enabled()
    tx = make_optimizer(optim())
    params = mlp_params()
    batch = jnp.asarray(np.random.default_rng(1).standard_normal((32, SIZES[0])), jnp.float32)
    step = steps.make_train_step(mlp_loss, tx)

    def own_order_step(state, batch, rng):       # each update waits for its own gradient only
        (_, aux), grads = jax.value_and_grad(mlp_loss, has_aux=True)(state["params"], batch, rng, state["step"])
        params, opt_state = tx.apply(grads, state["opt_state"], state["params"], list(range(len(jax.tree.leaves(grads)))))
        return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, aux

    def compiled(one_step):
        def chunk(state, batch, rng):
            return jax.lax.scan(lambda s, k: (one_step(s, batch, k)[0], None), state, jax.random.split(rng, 3))[0]
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        return jax.jit(chunk, donate_argnums=0).lower(state, batch, jax.random.key(0)).compile(), state

    ordered, state = compiled(step)
    assert fused_adam.TARGET in ordered.as_text()
    assert weight_copies(ordered.as_text()) == []
    assert len(weight_copies(compiled(own_order_step)[0].as_text())) >= 1
    # and the ordered steps compute optax's Adam
    out = ordered(jax.tree.map(jnp.copy, state), batch, jax.random.key(0))     # the state is donated
    ref_tx = optax.adam(0.002, b1=0.9, b2=0.999, eps=1e-4)
    p, s = params, ref_tx.init(params)
    for k in jax.random.split(jax.random.key(0), 3):
        g = jax.grad(lambda q: mlp_loss(q, batch, k, 0)[0])(p)
        u, s = ref_tx.update(g, s, p)
        p = optax.apply_updates(p, u)
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@needs_compiler
def test_one_restart_step_orders_every_weight():
    """The lifted one-restart step (the benchmark's and the runs' path: [1, ...] weights, each read
    through a squeeze) gives every weight the layer below's gradient, and copies none of them."""
    tx = make_optimizer(optim())
    assert tx.in_place
    params = jax.tree.map(lambda a: a[None], mlp_params())
    batch = jnp.asarray(np.random.default_rng(1).standard_normal((32, SIZES[0])), jnp.float32)
    orders = []
    real = update_order.gradient_order

    def spy(*a):
        orders.append(real(*a))
        return orders[-1]

    step = steps.make_lifted_step(mlp_loss, tx, 1)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.vmap(tx.init)(params)}

    def chunk(state, batch, rng):
        return jax.lax.scan(lambda s, k: (step(s, batch, k)[0], None), state, jax.random.split(rng, 3))[0]

    try:
        update_order.gradient_order = spy
        text = jax.jit(chunk, donate_argnums=0).lower(state, batch, jax.random.key(0)).compile().as_text()
    finally:
        update_order.gradient_order = real
    at = leaf_index(params)
    assert orders and orders[-1][at("net", "layer2", "kernel")] == at("net", "layer1", "bias")
    assert orders[-1][at("net", "layer1", "kernel")] == at("net", "layer0", "bias")
    assert None not in orders[-1]
    copies = [line for line in text.splitlines() if re.search(r"= f32\[1,(256,300|300,300|300,256)\]\{[0-9,]*\} copy\(", line)]
    assert copies == [] and fused_adam.TARGET in text

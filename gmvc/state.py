"""The train state: a plain pytree {"step", "params", "opt_state"}, and the optimizer that owns it.

Parameter groups are the top-level keys of params ("net", "prior"); each gets its own Adam with
its own learning-rate schedule through optax.partition, or is frozen with set_to_zero.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmvc import fused_adam
from gmvc.schedules import make_schedule


class Optimizer(NamedTuple):
    """An optax gradient transformation (init, update) with `apply(grads, opt_state, params,
    order=None) -> (params, opt_state)`: the update applied to the weights, on the CPU in one pass
    over them (gmvc/fused_adam.py), else as optax's update + apply_updates. `order`: for each
    leaf of params, the gradient leaf its in-place update waits for (gmvc/update_order.py).
    `in_place`: whether apply may run the kernel (the only user of `order`; decided without building it)."""
    init: Callable
    update: Callable
    apply: Callable
    in_place: bool = False


def make_optimizer(optim_cfg, trainable=("net", "prior"), lr=None):
    """Adam per parameter group; groups not in `trainable` (or with learning rate 0) are frozen
    by set_to_zero. `lr` overrides optim.lr for the "net" group (a phase's own rate); the
    optim.lr_schedule (and optim.prior_lr_schedule for the prior, default the same) shapes a
    numeric rate; decay counts the group's own updates within the phase."""
    def adam(schedule):
        opt = optax.adam(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
        # clipping inside the group: a frozen group's gradients must not shrink a trained group's steps
        return optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), opt) if optim_cfg.clip_norm > 0 else opt

    def shaped(rate, schedule):
        return {**schedule.to_dict(), "value": rate} if schedule and isinstance(rate, (int, float)) and rate else rate

    net_lr = shaped(optim_cfg.lr if lr is None else lr, optim_cfg.lr_schedule)
    prior_lr = optim_cfg.prior_lr
    if isinstance(prior_lr, (int, float)) and prior_lr < 0:
        prior_lr = net_lr
    else:
        prior_lr = shaped(prior_lr, optim_cfg.prior_lr_schedule or optim_cfg.lr_schedule)
    groups, schedules = {}, {}
    for group, rate in (("net", net_lr), ("prior", prior_lr)):
        if group not in trainable or (isinstance(rate, (int, float)) and rate == 0):
            groups[group] = optax.set_to_zero()
        else:
            schedules[group] = make_schedule(rate, f"learning rate of {group!r}")
            groups[group] = adam(schedules[group])
    tx = optax.partition(groups, group_labels)
    if optim_cfg.clip_norm > 0:                  # clipping: optax's update (it reads every gradient first)
        schedules = None
    hyper = (float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps))
    return Optimizer(tx.init, tx.update, lambda g, s, p, order=None: apply_update(tx, schedules, hyper, g, s, p, order),
                     in_place=schedules is not None and fused_adam.wanted())


def apply_update(tx, schedules, hyper, grads, opt_state, params, order=None):
    """(params, opt_state) after one step of `tx` (make_optimizer's partition of Adam and frozen
    groups). With `schedules` ({group: learning-rate schedule} of the Adam groups) and the kernel
    enabled, each float32 weight of fused_adam.MIN_SIZE elements or more is updated by the kernel
    in one pass (the smaller ones by the same arithmetic in jax.numpy), with optax's state;
    otherwise (no weight that large, or a state laid out otherwise) by optax itself. The kernel's
    call for the i-th leaf of params waits for the gradient leaf order[i]
    (update_order.value_and_grad), or, where that is None or no order is given, for every
    gradient."""
    inner = getattr(opt_state, "inner_states", None)
    kernel = lambda p, *more: p.size >= fused_adam.MIN_SIZE and all(a.dtype == jnp.float32 for a in (p, *more))
    # no weight large enough (spiral's networks): optax's update, and the kernel is not even built
    large = schedules is not None and any(kernel(p) for group in schedules for p in jax.tree.leaves(params[group]))
    if not large or inner is None or not fused_adam.enabled() or not all(
            _adam_layout(inner.get(group)) for group in schedules):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
    b1, b2, eps = hyper
    params, inner = dict(params), dict(inner)
    # Each kernel call waits (`after`: one element of a gradient) until the backward matmuls that
    # read its weight (dy @ W^T) are done: nothing else orders them before the in-place update, and
    # XLA then copied each such weight twice a step to keep it (13 MB each time for the reference
    # network). Without an order for it, a call waits for the whole backward pass.
    flat = jax.tree.leaves(grads)
    every = jnp.stack([g.reshape(-1)[0].astype(jnp.float32) for g in flat if g.size])
    order = [None] * len(flat) if order is None else order
    after = jax.tree.unflatten(jax.tree.structure(params), [
        every if i is None or not flat[i].size else flat[i].reshape(-1)[0].astype(jnp.float32) for i in order])
    for group, schedule in schedules.items():
        adam_state, sched_state = inner[group].inner_state
        count = optax.safe_increment(adam_state.count)
        columns = [schedule(sched_state.count), b1, b2, 1 - b1, 1 - b2, 1 - b1**count, 1 - b2**count, eps]
        lead = jnp.shape(count)                   # [1] for the one-restart step's [1, ...] weights
        scalars = jnp.stack([jnp.broadcast_to(jnp.asarray(c, jnp.float32), lead) for c in columns], axis=-1)
        step = lambda g, p, m, v, a: (fused_adam.update if kernel(p, g, m, v) else fused_adam.reference_update)(
            g, p, m, v, scalars, a)
        new = jax.tree.map(step, grads[group], params[group], adam_state.mu[group], adam_state.nu[group],
                           after[group])
        is_triple = lambda x: isinstance(x, tuple)
        params[group] = jax.tree.map(lambda t: t[0], new, is_leaf=is_triple)
        mu = {**adam_state.mu, group: jax.tree.map(lambda t: t[1], new, is_leaf=is_triple)}
        nu = {**adam_state.nu, group: jax.tree.map(lambda t: t[2], new, is_leaf=is_triple)}
        inner[group] = inner[group]._replace(inner_state=(
            adam_state._replace(count=count, mu=mu, nu=nu),
            sched_state._replace(count=optax.safe_increment(sched_state.count))))
    return params, opt_state._replace(inner_states=inner)


def _adam_layout(masked):
    """Whether a group's optimizer state is optax.adam's, as apply_update reads it."""
    state = getattr(masked, "inner_state", None)
    return (isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], optax.ScaleByAdamState)
            and isinstance(state[1], optax.ScaleByScheduleState))


def group_labels(params):
    """Every leaf is labelled by its top-level group name."""
    return {group: jax.tree.map(lambda _: group, subtree) for group, subtree in params.items()}


def init_params(init_fn, rng, restarts=1):
    """[R, ...] parameters: R independent initialisations, in one compiled program (the same
    values as running the initialisers op by op, in half the time: each initialiser there
    compiles on its own)."""
    def initialise(key):
        return jax.vmap(init_fn)(jax.random.split(key, restarts))

    return jax.jit(initialise)(rng)


def opt_init(tx):
    """The compiled opt_state of params [R, ...]: one program for every parameter shape."""
    return jax.jit(jax.vmap(tx.init))


def create_state(params, tx, step=0, opt_state=None, neighbours=None, init_opt=None):
    """{"step": scalar, "params": [R, ...], "opt_state": [R, ...]} (a fresh opt_state unless given,
    from `init_opt`, opt_init(tx), when it was compiled ahead), and "neighbours": [R, N, k] for a
    phase that uses the neighbour table (gmvc/neighbours.py)."""
    fresh = lambda: (init_opt or opt_init(tx))(params)
    state = {"step": _int32(step), "params": params,
             "opt_state": fresh() if opt_state is None else opt_state}
    if neighbours is not None:
        state["neighbours"] = _int32(neighbours)
    return state


def _int32(a):
    """An int32 jax array: host values are transferred (jnp.asarray would compile a conversion
    program for them); jax arrays and tracers (jax.eval_shape) are converted as they are."""
    return jnp.asarray(a, jnp.int32) if isinstance(a, jax.Array) else jax.device_put(np.asarray(a, np.int32))

"""The train state, a named pytree (step, params, opt_state); the per-sample tables a step reads
beside it; and the optimizer that owns the state.

Parameter groups are the top-level keys of params ("net", "prior"); each gets its own Adam with
its own learning-rate schedule through optax.partition, or is frozen with set_to_zero.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmvc.core.schedules import make_schedule


class TrainState(NamedTuple):
    step: object            # [] int32: steps taken in the run (phases count on from each other)
    params: dict            # [R, ...]: every restart's parameters
    opt_state: object       # [R, ...]: the current phase's optimizer state


class Tables(NamedTuple):
    """Per-sample step inputs, fixed while a phase trains (each has its own checkpoint item)."""
    neighbours: Optional[object] = None     # [R, N, k] int32: each sample's nearest neighbours
    groups: Optional[object] = None         # [R, N] int32: each sample's group (the `pin` term)

    def to_dict(self):
        return {k: v for k, v in self._asdict().items() if v is not None}


def make_optimizer(optim_cfg, trainable=("net", "prior"), lr=None):
    """Adam per parameter group; groups not in `trainable` (or with learning rate 0) are frozen
    by set_to_zero. `lr` overrides optim.lr for the "net" group (a phase's own rate); the
    optim.lr_schedule (and optim.prior_lr_schedule for the prior, default the same) shapes a
    numeric rate; decay counts the group's own updates within the phase."""
    def adam(schedule, group):
        opt = optax.adam(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
        if group == "net":
            opt = scale_wide_layers(opt)
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
    groups = {}
    for group, rate in (("net", net_lr), ("prior", prior_lr)):
        if group not in trainable or (isinstance(rate, (int, float)) and rate == 0):
            groups[group] = optax.set_to_zero()
        else:
            groups[group] = adam(make_schedule(rate, f"learning rate of {group!r}"), group)
    return optax.partition(groups, group_labels)


# Adam moves every weight by about the learning rate, whatever its gradient's size, so a layer's
# step on its outputs adds up over its inputs: a layer with many more inputs than any of gmvc's
# networks (a 100,000-feature table's first layer) would take steps hundreds of times larger and
# kill its units in a few steps. Above WIDE_FAN_IN inputs, a layer's steps are scaled by
# WIDE_FAN_IN / fan_in (as muP scales Adam's rate by width); no layer of the recipes is that wide.
WIDE_FAN_IN = 4096


def scale_wide_layers(inner, widest=WIDE_FAN_IN):
    """`inner` (an optax transformation) whose updates of each weight array of fan-in above
    `widest` (a dense kernel [in, out], a conv kernel [h, w, in, out]) are scaled by widest /
    fan-in. Its state is inner's own, so checkpoints keep their shape."""
    def factor(u):
        fan_in = int(np.prod(u.shape[:-1])) if u.ndim >= 2 else 0
        return widest / fan_in if fan_in > widest else None

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        return jax.tree.map(lambda u: u if factor(u) is None else u * factor(u), updates), state

    return optax.GradientTransformation(inner.init, update)


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


def create_state(params, tx, step=0, opt_state=None, init_opt=None):
    """TrainState(step, params [R, ...], opt_state [R, ...]): a fresh opt_state unless given, from
    `init_opt`, opt_init(tx), when it was compiled ahead."""
    fresh = lambda: (init_opt or opt_init(tx))(params)
    return TrainState(_int32(step), params, fresh() if opt_state is None else opt_state)


def make_tables(neighbours=None, groups=None):
    """Tables of int32 arrays: "neighbours" [R, N, k] for a phase that uses the neighbour table
    (gmvc/core/neighbours.py), "groups" [R, N] for a phase with the `pin` term (each sample's
    group in the last init_prior phase's partition)."""
    return Tables(*(None if t is None else _int32(t) for t in (neighbours, groups)))


def _int32(a):
    """An int32 jax array: host values are transferred (jnp.asarray would compile a conversion
    program for them); jax arrays and tracers (jax.eval_shape) are converted as they are."""
    return jnp.asarray(a, jnp.int32) if isinstance(a, jax.Array) else jax.device_put(np.asarray(a, np.int32))

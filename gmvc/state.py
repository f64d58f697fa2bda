"""The train state: a plain pytree {"step", "params", "opt_state"}, and the optimizer that owns it.

Parameter groups are the top-level keys of params ("net", "prior"); each gets its own Adam with
its own learning-rate schedule through optax.partition, or is frozen with set_to_zero.
"""
import jax
import jax.numpy as jnp
import optax

from gmvc.schedules import make_schedule


def make_optimizer(optim_cfg):
    def adam(lr_spec, what):
        return optax.adam(make_schedule(lr_spec, what), b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)

    prior_lr = optim_cfg.prior_lr
    if isinstance(prior_lr, (int, float)) and prior_lr < 0:
        prior_lr = optim_cfg.lr
    prior_tx = optax.set_to_zero() if prior_lr == 0 else adam(prior_lr, "optim.prior_lr")
    tx = optax.partition({"net": adam(optim_cfg.lr, "optim.lr"), "prior": prior_tx}, group_labels)
    if optim_cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), tx)
    return tx


def group_labels(params):
    """Every leaf is labelled by its top-level group name."""
    return {group: jax.tree.map(lambda _: group, subtree) for group, subtree in params.items()}


def create_state(init_fn, tx, rng, restarts=1):
    """{"step": scalar, "params": [R, ...], "opt_state": [R, ...]}: R independent initialisations."""
    params = jax.vmap(init_fn)(jax.random.split(rng, restarts))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.vmap(tx.init)(params)}

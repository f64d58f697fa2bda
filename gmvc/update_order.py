"""When each weight may be updated in place: the gradient computed first after its last use.

The one-pass Adam kernel (gmvc/fused_adam.py) overwrites a weight in place, so its call must come
after every operation that reads the weight: the forward matmul and, in the backward pass, the
matmul dy @ W^T that carries the gradient to the layer below. Nothing in the traced program says
so, and without an order XLA keeps such a weight alive by copying it (13 MB each time for the
reference VaDE network). Each kernel call is therefore given one element of a gradient as an
extra input (`after`): one that is computed after the weight's last reader. Waiting for the whole
backward pass (one element of every gradient) is correct for every weight, but then no update
can overlap the backward matmuls of the layers below. This module reads the traced gradient
program and picks, for each weight, the gradient that the backward pass computes first among
those that depend on every reader of the weight: for a stack of dense layers, the gradient of
the layer below, so each update runs while the backward pass goes on. A choice that turned out
early in XLA's schedule would only cost a copy, never a wrong value: the order is a dependency.
"""
import jax
from jax.extend import core

# Operations whose output holds the weight's values, rearranged (reshape and squeeze are bitcasts
# in XLA; a slice, a conversion, a broadcast or a copy may be materialised): whatever reads their
# output is counted as reading the weight, on the safe side, and the view itself as a reader too.
VIEWS = frozenset({"squeeze", "reshape", "slice", "dynamic_slice", "convert_element_type", "transpose",
                   "broadcast_in_dim", "copy", "reduce_precision"})


def value_and_grad(loss_fn, params, *args):
    """((loss, aux), grads, order): jax.value_and_grad(loss_fn, has_aux=True)(params, *args),
    traced once to a jaxpr and evaluated from it (the same operations), with `order`: for each
    leaf of params (in jax.tree.leaves order) the index, among the leaves of grads, of the
    gradient to wait for before that leaf is updated in place, or None where none depends on
    every reader of it."""
    closed, shape = jax.make_jaxpr(jax.value_and_grad(loss_fn, has_aux=True), return_shape=True)(params, *args)
    outs = core.jaxpr_as_fun(closed)(*jax.tree.leaves((params, *args)))
    (loss, aux), grads = jax.tree.unflatten(jax.tree.structure(shape), outs)
    n = len(jax.tree.leaves(params))
    return (loss, aux), grads, gradient_order(closed.jaxpr, n, len(closed.jaxpr.outvars) - n)


def gradient_order(jaxpr, num_params, first_grad):
    """For each of the jaxpr's first `num_params` inputs (the weights), the index i of the output
    first_grad + i (their gradients) computed first, in the jaxpr's order (a view where what it
    views was computed), among those that depend on every equation reading the weight or a view
    of it; None where there is none."""
    view_of = {v: i for i, v in enumerate(jaxpr.invars[:num_params])}
    readers = [0] * num_params          # per weight: bit set of the equations reading it
    depends = {}                        # var -> bit set of reading equations it depends on
    produced = {}                       # var -> position of the equation computing it
    count = 0
    for k, eqn in enumerate(jaxpr.eqns):
        ins = [v for v in eqn.invars if isinstance(v, core.Var)]
        mask = 0
        for v in ins:
            mask |= depends.get(v, 0)
        read = {view_of[v] for v in ins if v in view_of}
        if read:
            bit = 1 << count
            count += 1
            mask |= bit
            for w in read:
                readers[w] |= bit
            if eqn.primitive.name in VIEWS and len(read) == 1 and len(eqn.outvars) == 1:
                view_of[eqn.outvars[0]] = next(iter(read))
        # a view's output counts as computed where its input was: the gradients of [1, ...] weights
        # are broadcasts of the [...] gradients, all at the jaxpr's end
        at = produced.get(ins[0], k) if eqn.primitive.name in VIEWS and len(ins) == 1 else k
        for v in eqn.outvars:
            depends[v], produced[v] = mask, at
    grads = jaxpr.outvars[first_grad:first_grad + num_params]
    order = []
    for need in readers:
        done = [(produced[g], i) for i, g in enumerate(grads)
                if isinstance(g, core.Var) and g in produced and depends[g] & need == need]
        order.append(min(done)[1] if done else None)
    return order

"""Data-parallel training: one per-device step body, three wrappers.

The train step is written once (steps.make_train_step with axis_name=AXIS): gradients and
metrics are averaged with `lax.pmean` over the data axis, and whole-batch terms gather the
batch over it. This module places the data and the state and wraps the chunk of steps:

- "single": plain `jit` on one device (the default with one device);
- "shard_map": `jit` + `jax.shard_map` over a 1-D mesh of all devices (the default with several
  accelerators or processes, or with parallel.devices > 1);
- "pmap": `jax.pmap` (config.parallel.mode="pmap").

The data array is split by rows over the devices (each process holds only its rows, assembled
with `jax.make_array_from_process_local_data`); the parameters and optimizer state are
replicated. Every step reads the same global batch and the same per-sample noise as on one
device (steps.make_epoch_order, steps.step_keys): each device picks the batch's rows it holds,
one `psum` assembles the batch, and each device trains on its 1/n of it. So a run on n devices
follows the one-device run up to float rounding.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gmvc.core.batching import to_host  # noqa: F401  (parallel.to_host: a replicated array as numpy)
from gmvc.errors import ConfigError


AXIS = "data"
MODES = ("auto", "single", "shard_map", "pmap")


class Layout(NamedTuple):
    mode: str                # "single" | "shard_map" | "pmap"
    devices: tuple
    mesh: Optional[object]   # jax.sharding.Mesh for shard_map

    @property
    def n(self):
        return len(self.devices)

    @property
    def axis_name(self):
        return None if self.mode == "single" else AXIS


def make_layout(parallel_cfg):
    """The devices and wrapper a run uses (its config checked by gmvc.validate)."""
    mode, devices = parallel_cfg.mode, jax.devices()
    devices = tuple(devices[:parallel_cfg.devices] if parallel_cfg.devices > 0 else devices)
    if mode == "auto":
        mode = "shard_map" if _splits_by_default(parallel_cfg, devices) else "single"
    if mode == "single":
        devices = devices[:1]
    mesh = jax.make_mesh((len(devices),), (AXIS,), devices=devices) if mode == "shard_map" else None
    return Layout(mode, devices, mesh)


def _splits_by_default(parallel_cfg, devices):
    """The "auto" mode goes data-parallel over several accelerators, several processes, or when
    parallel.devices asks for n > 1. Fake CPU devices of one process stay on one device unless
    asked: XLA already spreads one CPU device over every core, so splitting only adds
    collectives (and XLA:CPU's in-process all-reduce can stall when convolutions hold the
    shared thread pool)."""
    if len(devices) < 2:
        return False
    return jax.process_count() > 1 or parallel_cfg.devices > 1 or devices[0].platform != "cpu"


def padded_rows(num_examples, n):
    return -(-num_examples // n) * n


def select_local_batch(n):
    """Per-device `select` for steps.make_train_chunk: x is this device's block of rows of the
    data; returns this device's 1/n of the global batch `idx` and its per-sample keys."""

    def select(x_local, idx, keys):
        d = jax.lax.axis_index(AXIS)
        rows = jax.tree.leaves(x_local)[0].shape[0]
        pos = idx - d * rows
        mine = (pos >= 0) & (pos < rows)
        safe = jnp.clip(pos, 0, rows - 1)

        def pick(a):
            return jnp.where(mine.reshape((-1,) + (1,) * (a.ndim - 1)), a[safe], jnp.zeros((), a.dtype))

        full = jax.lax.psum(jax.tree.map(pick, x_local), AXIS)     # the global batch, on every device
        return jax.tree.map(lambda a: local_share(a, n), full), local_share(keys, n)

    return select


def local_share(a, n):
    """This device's 1/n of `a` [B, ...] (a global batch's rows, keys or groups) inside the
    per-device body: rows d B/n .. (d + 1) B/n - 1 of device d."""
    b = a.shape[0] // n
    return jax.lax.dynamic_slice_in_dim(a, jax.lax.axis_index(AXIS) * b, b)


def put_data(layout, inputs):
    """The training inputs (an array or {"x", "y"}; arrays or gmvc.data.rows.Rows, read here)
    placed for the layout: as they are on one device; split by rows (padded to a multiple of n)
    over the mesh; [n, rows, ...] for pmap. With several processes, each reads and contributes
    only its own block of rows."""
    if layout.mode == "single":
        return jax.device_put(jax.tree.map(np.asarray, inputs), layout.devices[0])
    n = layout.n
    num = len(jax.tree.leaves(inputs)[0])
    total = padded_rows(num, n)

    def block(a, lo, hi):                    # rows lo..hi - 1 of the zero-padded inputs
        a = np.asarray(a[lo:min(hi, num)])
        return np.concatenate([a, np.zeros((hi - lo - len(a), *a.shape[1:]), a.dtype)]) if len(a) < hi - lo else a

    if layout.mode == "pmap":
        return _pmap_put(layout, jax.tree.map(lambda a: block(a, 0, total).reshape(n, total // n, *a.shape[1:]),
                                              inputs))
    sharding = NamedSharding(layout.mesh, P(AXIS))
    if jax.process_count() == 1:
        return jax.device_put(jax.tree.map(lambda a: block(a, 0, total), inputs), sharding)
    # Each process passes only the rows of its own devices (contiguous blocks in mesh order).
    rows = total // n
    first, stop = process_block(layout)
    lo, hi = first * rows, stop * rows
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, block(a, lo, hi),
                                                                         (total, *a.shape[1:])), inputs)


def process_block(layout):
    """(first, stop): the positions of this process's devices along the mesh's data axis, which
    hold blocks first..stop - 1 of the rows (and of every batch). One ConfigError where they are
    not contiguous or there are none."""
    order = list(layout.mesh.devices.flat)
    mine = [i for i, d in enumerate(order) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ConfigError(f"process {jax.process_index()} holds mesh positions {mine} of {len(order)}: the data "
                          f"axis needs each process's devices side by side (parallel.devices: 0 for all)")
    return mine[0], mine[-1] + 1


def put_state(layout, state):
    """Replicate the train state over the layout's devices (pmap: a leading device axis)."""
    if not jax.tree.leaves(state):
        return state
    if layout.mode == "single":
        return jax.device_put(state, layout.devices[0])
    if layout.mode == "pmap":
        return _pmap_put(layout, jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (layout.n, *np.shape(a))), state))
    sharding = NamedSharding(layout.mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(state, sharding)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a)),
                        state)


def _pmap_put(layout, stacked):
    """[n, ...] host arrays -> arrays whose slice i lives on device i (pmap's own placement)."""
    return jax.pmap(lambda a: a, devices=list(layout.devices))(stacked)


def get_state(layout, state):
    """One copy of the state as host numpy arrays (from any layout)."""
    if layout.mode == "pmap":
        state = jax.tree.map(lambda a: a[0], state)
    return jax.tree.map(to_host, state)


def wrap_chunk(layout, chunk, feed_spec=P(AXIS), donate=True):
    """Compile chunk(state, tables, feed, rng, bounds) -> (state, metrics) for the layout: the
    state and the tables replicated, the feed (the data's rows, or a streamed chunk's batches)
    split by `feed_spec`, the key and the phase's (start, end) replicated. For shard_map and
    pmap, `chunk` is the per-device body (its step pmeans over AXIS)."""
    donate_argnums = (0,) if donate else ()
    if layout.mode == "single":
        return jax.jit(chunk, donate_argnums=donate_argnums)
    if layout.mode == "shard_map":
        # check_vma=False: pmap semantics, the body pmeans its own gradients
        body = jax.shard_map(chunk, mesh=layout.mesh, in_specs=(P(), P(), feed_spec, P(), P()),
                             out_specs=(P(), P()), check_vma=False)
        return jax.jit(body, donate_argnums=donate_argnums)
    return jax.pmap(chunk, axis_name=AXIS, in_axes=(0, 0, 0, None, None), devices=list(layout.devices),
                    donate_argnums=donate_argnums)


def metrics_to_host(layout, metrics):
    if layout.mode == "pmap":
        metrics = jax.tree.map(lambda a: a[0], metrics)
    return jax.tree.map(to_host, metrics)

"""Inputs as stored, read as values: 8-bit data travel as uint8 (a quarter of float32's bytes)
and become float32 value / 255 where the model reads them (gmvc/models/__init__.py,
gmvc/objectives/__init__.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def as_values(a):
    """uint8 as float32 value / 255 (numpy or jax, traced or not); anything else as it is."""
    if getattr(a, "dtype", None) == np.uint8:
        return a.astype(jnp.float32) / jnp.float32(255.0)
    return a


def host_values(a):
    """as_values on the host: a numpy array, float32 for uint8."""
    a = np.asarray(a)
    return a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a


def reading_values(fn):
    """fn(params, inputs, *rest) with every uint8 leaf of `inputs` read as values first; the
    identity for inputs that are values already (no op is added to the program)."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def wrapped(params, inputs, *rest):
        return fn(params, jax.tree.map(as_values, inputs), *rest)

    return wrapped

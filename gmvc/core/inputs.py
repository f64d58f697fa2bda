"""Inputs as stored, read as values: 8-bit data travel as uint8 (a quarter of float32's bytes)
and become float32 value / 255 where the model reads them (gmvc/models/__init__.py,
gmvc/objectives/__init__.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np


# value / 255 of every byte, divided once here: a table read is exact on every backend, where a
# compiled division by 255 may become a multiplication by 1/255 (other roundings than the host's).
_BYTE_VALUES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def as_values(a):
    """uint8 as float32 value / 255 (numpy or jax, traced or not); anything else as it is."""
    if getattr(a, "dtype", None) == np.uint8:
        return jnp.asarray(_BYTE_VALUES)[a]
    return a


def host_values(a):
    """as_values on the host: a numpy array, float32 for uint8 (the same values)."""
    a = np.asarray(a)
    return _BYTE_VALUES[a] if a.dtype == np.uint8 else a


def reading_values(fn):
    """fn(params, inputs, *rest) with every uint8 leaf of `inputs` read as values first; the
    identity for inputs that are values already (no op is added to the program)."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def wrapped(params, inputs, *rest):
        return fn(params, jax.tree.map(as_values, inputs), *rest)

    return wrapped

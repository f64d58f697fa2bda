"""Weight and learning-rate schedules: pure functions of the step, evaluated inside jit.

A schedule spec in a config is either a number (constant) or a dict naming a kind:
  {"kind": "constant", "value": v}
  {"kind": "linear_warmup", "value": v, "warmup_steps": n, "start": s0}   s0 -> v over n steps
  {"kind": "exponential_decay", "value": v, "decay_rate": r, "decay_steps": n, "floor": f}
  {"kind": "periodic_cubic", "value": v, "ramp_steps": n, "hold_steps": m, "start": s0}  (S3VDC's beta)
"""
import numbers

import jax.numpy as jnp

from gmvc.errors import ConfigError


def _constant(value):
    return lambda step: jnp.asarray(value, jnp.float32)


def _linear_warmup(value, warmup_steps, start=0.0):
    if warmup_steps <= 0:
        return _constant(value)

    def schedule(step):
        frac = jnp.clip(step / warmup_steps, 0.0, 1.0)
        return jnp.asarray(start + (value - start) * frac, jnp.float32)
    return schedule


def _exponential_decay(value, decay_rate, decay_steps, floor=0.0):
    if decay_steps <= 0:
        raise ConfigError(f"exponential_decay needs decay_steps > 0, got {decay_steps}")

    def schedule(step):
        decayed = value * decay_rate ** jnp.floor(step / decay_steps)
        return jnp.maximum(jnp.asarray(decayed, jnp.float32), floor)
    return schedule


def _periodic_cubic(value, ramp_steps, hold_steps, start=0.0):
    """S3VDC's periodic beta-annealing: start -> value along a cubic over ramp_steps, hold at value
    for hold_steps, repeat."""
    if ramp_steps <= 0 or hold_steps < 0:
        raise ConfigError(f"periodic_cubic needs ramp_steps > 0 and hold_steps >= 0, got {ramp_steps}, {hold_steps}")

    def schedule(step):
        frac = jnp.minimum(jnp.mod(step, ramp_steps + hold_steps) / ramp_steps, 1.0)
        return jnp.asarray(start + (value - start) * frac**3, jnp.float32)
    return schedule


_KINDS = {"constant": _constant, "linear_warmup": _linear_warmup, "exponential_decay": _exponential_decay,
          "periodic_cubic": _periodic_cubic}


def make_schedule(spec, what="schedule"):
    """Return step -> float32 scalar from a number or a schedule dict."""
    if isinstance(spec, numbers.Real):
        return _constant(float(spec))
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise ConfigError(f"{what}: unknown schedule kind {kind!r}; known kinds: {sorted(_KINDS)}")
    try:
        return _KINDS[kind](**spec)
    except TypeError as e:
        raise ConfigError(f"{what}: bad arguments for schedule {kind!r}: {e}") from None

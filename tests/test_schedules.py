"""Weight / learning-rate schedules (gmvc/core/schedules.py), eagerly and inside jit; S3VDC's
periodic cubic beta schedule."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmvc.errors import ConfigError
from gmvc.core.schedules import make_schedule

WARMUP = {"kind": "linear_warmup", "value": 2.0, "warmup_steps": 10, "start": 0.5}
DECAY = {"kind": "exponential_decay", "value": 1.0, "decay_rate": 0.5, "decay_steps": 10, "floor": 0.1}

CASES = [
    (0.25, {0: 0.25, 1: 0.25, 10_000: 0.25}),
    (3, {0: 3.0, 7: 3.0}),
    ({"kind": "constant", "value": 1.5}, {0: 1.5, 123: 1.5}),
    (WARMUP, {0: 0.5, 1: 0.65, 5: 1.25, 9: 1.85, 10: 2.0, 11: 2.0, 1000: 2.0}),
    ({"kind": "linear_warmup", "value": 1.0, "warmup_steps": 4}, {0: 0.0, 1: 0.25, 2: 0.5, 4: 1.0, 8: 1.0}),
    (DECAY, {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25, 25: 0.25, 30: 0.125, 40: 0.1, 100: 0.1}),
    ({"kind": "exponential_decay", "value": 2.0, "decay_rate": 0.1, "decay_steps": 1}, {0: 2.0, 1: 0.2, 3: 0.002}),
]


@pytest.mark.parametrize("spec,expected", CASES)
def test_schedule_values(spec, expected):
    schedule = make_schedule(spec)
    for step, want in expected.items():
        got = schedule(step)
        assert jnp.asarray(got).dtype == jnp.float32
        assert float(got) == pytest.approx(want, rel=1e-6), (step, want)


@pytest.mark.parametrize("spec,expected", CASES)
def test_schedule_values_under_jit(spec, expected):
    schedule = jax.jit(make_schedule(spec))
    steps = np.array(sorted(expected), np.int32)
    got = jax.vmap(schedule)(jnp.asarray(steps))           # traced int32 steps, as in the train loop
    assert got.dtype == jnp.float32 and got.shape == steps.shape
    np.testing.assert_allclose(np.asarray(got), [expected[s] for s in steps], rtol=1e-6)
    for step in steps[:2]:
        assert float(schedule(jnp.int32(step))) == pytest.approx(expected[int(step)], rel=1e-6)


def test_spec_is_not_mutated_and_configdict_accepted():
    spec = dict(WARMUP)
    make_schedule(spec)
    assert spec == WARMUP                                   # "kind" not popped from the caller's dict
    schedule = make_schedule(ml_collections.ConfigDict(DECAY))
    assert float(schedule(20)) == pytest.approx(0.25)


def test_unknown_kind_raises_config_error():
    with pytest.raises(ConfigError, match="cosine") as e:
        make_schedule({"kind": "cosine", "value": 1.0}, what="objective.cv")
    assert "objective.cv" in str(e.value) and "linear_warmup" in str(e.value)
    with pytest.raises(ConfigError, match="None"):
        make_schedule({"value": 1.0})                        # no kind at all


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="linear_warmup") as e:
        make_schedule({"kind": "linear_warmup", "value": 1.0, "warmup": 10}, what="optim.lr")
    assert "optim.lr" in str(e.value) and "warmup" in str(e.value)
    with pytest.raises(ConfigError, match="exponential_decay"):
        make_schedule({"kind": "exponential_decay", "value": 1.0})    # decay_rate, decay_steps missing


# ---------------------------------------------------------------- S3VDC's periodic beta schedule

def _periodic_cubic_by_hand(step, value=1.0, ramp=100, hold=50, start=5e-4):
    frac = min((step % (ramp + hold)) / ramp, 1.0)
    return start + (value - start) * frac**3


def test_periodic_cubic_values():
    spec = {"kind": "periodic_cubic", "value": 1.0, "ramp_steps": 100, "hold_steps": 50, "start": 5e-4}
    expected = {0: 5e-4, 50: 5e-4 + (1 - 5e-4) / 8, 100: 1.0, 120: 1.0, 149: 1.0, 150: 5e-4,
                200: 5e-4 + (1 - 5e-4) / 8, 275: 1.0, 310: 5e-4 + (1 - 5e-4) * 0.1**3}
    for step, want in expected.items():
        assert want == pytest.approx(_periodic_cubic_by_hand(step), rel=1e-12)
    schedule = make_schedule(spec)
    for step, want in expected.items():
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(sorted(expected), jnp.int32))     # traced int32 steps
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), [expected[s] for s in sorted(expected)], rtol=1e-6)


def test_s3vdc_reference_beta_schedule():
    """S3VDC's reference beta: gamma = 5e-4 -> 1 along a cubic over 2500 steps, 2500 at 1, repeat."""
    ramp, hold, start = 2500, 2500, 5e-4
    schedule = make_schedule({"kind": "periodic_cubic", "value": 1.0, "start": start, "ramp_steps": ramp,
                              "hold_steps": hold})
    expected = {0: start, 1250: start + (1 - start) / 8, 2500: 1.0, 4999: 1.0, 5000: start,
                5625: start + (1 - start) / 64, 17500: 1.0}
    for step, want in expected.items():
        assert want == pytest.approx(_periodic_cubic_by_hand(step, 1.0, ramp, hold, start), rel=1e-12)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
    with pytest.raises(ConfigError, match="periodic_cubic"):
        make_schedule({"kind": "periodic_cubic", "value": 1.0, "ramp_steps": 0, "hold_steps": hold})

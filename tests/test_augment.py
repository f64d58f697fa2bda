"""Image augmentation in the train step (gmvc/training/augment.py): exact warps, per-sample keys, bad specs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmvc.objectives import make_batch
from gmvc.training.augment import check_data, make_augment, parse_augment, shift_images, warp
from gmvc.errors import ConfigError


def _images(n=6, h=9, w=7, c=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def test_integer_shift_moves_pixels_exactly():
    img = _images(1)[0]
    out = np.asarray(warp(img, 0.0, jnp.array([2.0, -1.0])))
    np.testing.assert_allclose(out[2:, :-1], img[:-2, 1:], atol=1e-6)
    assert np.all(out[:2] == 0) and np.all(out[:, -1] == 0)          # zeros shifted in


def test_quarter_turn_is_rot90():
    img = _images(1, h=8, w=8)[0]
    np.testing.assert_allclose(np.asarray(warp(img, np.pi / 2, jnp.zeros(2))), np.rot90(img, axes=(0, 1)), atol=1e-5)


def test_half_pixel_shift_averages_neighbours():
    img = _images(1)[0]
    out = np.asarray(warp(img, 0.0, jnp.array([0.0, 0.5])))
    np.testing.assert_allclose(out[:, 1:], 0.5 * (img[:, 1:] + img[:, :-1]), atol=1e-6)


def test_separable_shift_is_the_warp_without_rotation():
    """shift_images (two batched matmuls, the path of every shift-only spec) against warp's
    map_coordinates at angle 0: offsets fractional, whole, negative, past the border."""
    x = _images(6)
    offsets = np.array([[0.3, -1.7], [2.0, 1.0], [-2.5, 0.5], [0.0, 0.0], [1.25, -0.75], [9.5, -8.0]], np.float32)
    got = np.asarray(shift_images(jnp.asarray(x), jnp.asarray(offsets)))
    want = np.stack([np.asarray(warp(img, 0.0, jnp.asarray(o))) for img, o in zip(x, offsets)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got[0] - x[0]).mean() > 0.05 and np.all(got[5] == 0)       # moved; all shifted out
    keys = jax.random.split(jax.random.key(3), 6)     # a shift-only spec takes this path
    out = np.asarray(_augment({"shift": 2})(x, keys))
    by_warp = np.asarray(_augment({"shift": 2, "rotate": 1e-30})(x, keys))
    np.testing.assert_allclose(out, by_warp, atol=1e-5)


def test_per_sample_keys_decide_each_image():
    x = _images(6)
    keys = jax.random.split(jax.random.key(3), 6)
    augment = _augment({"shift": 2, "rotate": 15})
    full = np.asarray(augment(x, keys))
    part = np.asarray(augment(x[2:4], keys[2:4]))
    np.testing.assert_array_equal(full[2:4], part)                 # the same however the batch is split
    again = np.asarray(augment(x, keys))
    np.testing.assert_array_equal(full, again)
    assert np.abs(full - x).mean() > 0.05                          # it does move the images
    other = np.asarray(augment(x, jax.random.split(jax.random.key(4), 6)))
    assert np.abs(other - full).mean() > 0.05


def test_labels_pass_through_and_empty_spec_is_identity():
    x, y = _images(4), np.arange(4)
    keys = jax.random.split(jax.random.key(0), 4)
    out = _augment({"shift": 1})({"x": x, "y": y}, keys)
    np.testing.assert_array_equal(out["y"], y)
    assert out["x"].shape == x.shape
    assert parse_augment({"shift": 0, "rotate": 0}, "t") == {}
    batch = make_batch(x)
    assert make_augment({})(batch, keys) is batch


def test_neighbours_get_their_own_draws():
    x = _images(4)
    keys = jax.random.split(jax.random.key(0), 4)
    out = make_augment(parse_augment({"shift": 2, "rotate": 15}, "t"))(make_batch(x, x), keys)
    assert np.abs(np.asarray(out["data"]) - np.asarray(out["neighbours"])).mean() > 0.05
    np.testing.assert_array_equal(out["data"], _augment({"shift": 2, "rotate": 15})(x, keys))
    assert make_augment(parse_augment({"shift": 2}, "t"))(make_batch(x), keys)["neighbours"] is None


def test_groups_pass_through_unchanged():
    x, groups = _images(4), jnp.array([3, 0, 2, 2])
    keys = jax.random.split(jax.random.key(0), 4)
    out = make_augment(parse_augment({"shift": 2}, "t"))(make_batch(x, x, groups), keys)
    np.testing.assert_array_equal(out["groups"], groups)
    assert make_augment(parse_augment({"shift": 2}, "t"))(make_batch(x), keys)["groups"] is None


def _augment(spec):
    """The augmentation of `spec` on a batch without neighbours, given and returning its inputs."""
    augment = make_augment(parse_augment(spec, "t"))
    return lambda inputs, keys: augment(make_batch(inputs), keys)["data"]


@pytest.mark.parametrize("spec, message", [({"shear": 1}, "unknown augment key"), ({"shift": -1}, ">= 0"),
                                           ({"rotate": float("nan")}, "finite")])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_augment(spec, "phase 'pretrain'")


def test_points_data_is_refused_before_training(spiral_config, tmp_path):
    from gmvc.trainer import train_and_evaluate
    c = spiral_config
    c.unlock()
    c.train.phases = ("main",)
    c.phases = {"main": {"kind": "train", "steps": -1, "augment": {"shift": 1.0}}}
    with pytest.raises(ConfigError, match="augment needs image data"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    check_data({}, (2,), "no augment is fine on points")

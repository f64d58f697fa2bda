"""Random affine augmentation of image batches inside the train step: each sample is rotated by
an angle drawn uniformly from [-rotate, rotate] degrees and shifted by up to `shift` pixels on
each axis (bilinear interpolation, zeros outside), with its own key, so the same step sees the
same augmented batch however it is split over devices and after a resume.

A train phase asks for it with `"augment": {"shift": 3, "rotate": 10}`. Clustering gains from
it because the codes then vary less with where and at what slant a digit is written; the scores
used to choose a fit or a restart, and every prediction, read the data as it is.
"""
import jax
import jax.numpy as jnp
import numpy as np

from gmvc.core import mixture
from gmvc.errors import ConfigError

AUGMENT_KEYS = ("shift", "rotate")
_SALT = 0x6175   # folded into each sample's key so augmentation noise is not the model's noise


def parse_augment(spec, where):
    """The augment spec as floats, or {} for none; a ConfigError for unknown keys or bad values."""
    if spec is not None and not hasattr(spec, "keys"):
        raise ConfigError(f"{where}: augment must be a dict such as {{'shift': 2}}, got {spec!r} (\"auto\" is "
                          f"set from the data when a run reads it: gmvc/recipes/rules.py)")
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown augment key(s) {unknown}; known: {list(AUGMENT_KEYS)}")
    spec = {k: float(spec.get(k, 0.0)) for k in AUGMENT_KEYS}
    bad = {k: v for k, v in spec.items() if not np.isfinite(v) or v < 0}
    if bad:
        raise ConfigError(f"{where}: augment values must be finite and >= 0; got {bad}")
    return spec if any(spec.values()) else {}


def check_data(spec, data_shape, where):
    if spec and len(data_shape) != 3:
        raise ConfigError(f"{where}: augment needs image data [H, W, C]; this data's samples have shape "
                          f"{tuple(data_shape)}")


def warp(image, angle, offset):
    """One image [H, W, C] rotated by `angle` radians about its centre, then shifted by `offset`
    [2] pixels (rows, columns): the output pixel (i, j) reads the input at the inverse transform."""
    h, w = image.shape[:2]
    ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    di, dj = ii - offset[0] - ci, jj - offset[1] - cj
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_i, src_j = cos * di + sin * dj + ci, -sin * di + cos * dj + cj
    channel = lambda c: jax.scipy.ndimage.map_coordinates(c, [src_i, src_j], order=1, mode="constant")
    return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def _hat(n, offset):
    """[n, n] bilinear weights of a shift by `offset` along one axis: output i reads input p with
    weight max(0, 1 - |i - offset - p|); inputs outside [0, n) are zeros."""
    i = jnp.arange(n, dtype=jnp.float32)[:, None]
    return jnp.maximum(0.0, 1.0 - jnp.abs(i - offset - jnp.arange(n, dtype=jnp.float32)[None, :]))


def shift_images(images, offsets):
    """Images [B, H, W, C] each shifted by its offset [B, 2] (rows, columns): warp with angle 0.
    The bilinear shift is separable, rows_b @ image_b @ columns_b^T, so a batch is two batched
    matmuls in place of map_coordinates' per-pixel gathers, which are slow on a CPU."""
    h, w = images.shape[1:3]
    rows = jax.vmap(lambda o: _hat(h, o))(offsets[:, 0])         # [B, H, H]
    cols = jax.vmap(lambda o: _hat(w, o))(offsets[:, 1])         # [B, W, W]
    hp = jax.lax.Precision.HIGHEST
    out = jnp.einsum("bip,bpqc->biqc", rows, images, precision=hp)
    return jnp.einsum("biqc,bjq->bijc", out, cols, precision=hp)


def _draws(rng, shift, rotate):
    """One sample's (angle in radians, offset [2]) from its key."""
    rng_angle, rng_shift = jax.random.split(rng)
    offset = jax.random.uniform(rng_shift, (2,), minval=-shift, maxval=shift)
    angle = jax.random.uniform(rng_angle, (), minval=-rotate, maxval=rotate) * (np.pi / 180.0)
    return angle, offset


def make_augment(spec):
    """augment(batch, rng) -> batch with its images warped; `batch` is objectives.make_batch's
    (its inputs an image array [B, H, W, C] or {"x": images, "y": labels}); `rng` one key per
    sample [B] (or one key, split). An empty spec is the identity."""
    if not spec:
        return lambda batch, rng: batch
    shift, rotate = spec["shift"], spec["rotate"]

    def augment_images(x, rng):
        keys = rng if rng.shape == (x.shape[0],) else jax.random.split(rng, x.shape[0])
        keys = jax.vmap(lambda k: jax.random.fold_in(k, _SALT))(keys)
        angles, offsets = jax.vmap(lambda k: _draws(k, shift, rotate))(keys)
        if not rotate:
            return shift_images(x, offsets)
        return jax.vmap(warp)(x, angles, offsets)

    def augment_inputs(inputs, rng):
        if isinstance(inputs, dict):                   # {"x", "y"}: a model conditioned on labels
            return {**inputs, "x": augment_images(inputs["x"], rng)}
        return augment_images(inputs, rng)

    def augment(batch, rng):
        nbr = batch["neighbours"]                      # the neighbours get their own draws
        return {**batch, "data": augment_inputs(batch["data"], rng),
                "neighbours": None if nbr is None else augment_inputs(nbr, mixture.fold_in(rng, 1))}

    return augment

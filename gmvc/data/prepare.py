"""How a run reads its data: the scaling (`data.scaling`) and the likelihood ("auto") chosen
from the values, written to the run's scaling.json so predictions and samples read new data the
same way.

`data.scaling`:
- "none": the values as they are (8-bit data is always read as value / 255).
- "max": divided by the largest value, for non-negative intensities or counts (pixel values
  0-16 or 0-255 stored as floats): into [0, 1].
- "standardize": each feature (each pixel of an image) to mean 0 and std 1; a constant feature
  becomes 0.
- "auto": "none" for values in [0, 1]; "max" for non-negative whole numbers; else
  "standardize".

`model.likelihood = "auto"`: Bernoulli where the scaled values lie in [0, 1], else Gaussian.
"""
import json
import pathlib
from typing import NamedTuple

import numpy as np

from gmvc.data.rows import Rows, chunks
from gmvc.errors import CheckpointError, ConfigError

SCALINGS = ("none", "auto", "max", "standardize")
SCALING_FILE = "scaling.json"


class Scaling(NamedTuple):
    kind: str                 # none | max | standardize
    offset: np.ndarray        # subtracted, per feature ([*sample_shape]) or one number
    scale: np.ndarray         # then divided by
    reason: str               # why "auto" chose it (one phrase), or "set by data.scaling"

    def apply(self, x):
        if self.kind == "none":
            return x
        if isinstance(x, Rows):
            return x.with_transform(self.apply)
        return ((x - self.offset) / self.scale).astype(np.float32)

    def invert(self, x):
        """Model outputs (samples, reconstructions) back in the data's own units."""
        if self.kind == "none":
            return x
        return (np.asarray(x) * self.scale + self.offset).astype(np.float32)

    def describe(self):
        if self.kind == "max":
            what = f"divided by their largest value ({float(np.max(self.scale)):g})"
        else:
            what = {"none": "the values as they are", "standardize": "each feature to mean 0 and std 1"}[self.kind]
        return f"{what} ({self.reason})"

    def to_json(self):
        return {"kind": self.kind, "reason": self.reason, "offset": np.asarray(self.offset).tolist(),
                "scale": np.asarray(self.scale).tolist()}


NO_SCALING = Scaling("none", np.float32(0.0), np.float32(1.0), "set by data.scaling")


def check_scaling(kind):
    if kind not in SCALINGS:
        raise ConfigError(f"unknown data.scaling {kind!r}; known: {list(SCALINGS)}")


def choose(x):
    """(kind, reason): "auto"'s choice for the data x."""
    if isinstance(x, Rows) and x.source.dtype == np.uint8 and x.transform is None:
        return "none", "8-bit values read as value / 255"
    lo, hi = bounds(x)
    if lo >= 0.0 and hi <= 1.0:
        return "none", f"values in [{lo:g}, {hi:g}]"
    if lo >= 0.0 and all(np.all(c == np.round(c)) for _, c in chunks(x)):
        return "max", f"non-negative whole numbers up to {hi:g}"
    return "standardize", f"real values in [{lo:.4g}, {hi:.4g}]"


def fit(x, kind):
    """The Scaling of data x ([N, ...] float32) for data.scaling `kind`."""
    check_scaling(kind)
    reason = "set by data.scaling"
    if kind == "auto":
        kind, reason = choose(x)
    if kind == "none":
        return NO_SCALING._replace(reason=reason)
    if kind == "max":
        top = max(float(np.abs(c).max()) for _, c in chunks(x))
        return Scaling("max", np.float32(0.0), np.float32(top if top > 0 else 1.0), reason)
    if isinstance(x, Rows):          # by chunks: the sums of x and x^2 in float64
        s1 = s2 = 0.0
        for _, c in x.chunks():
            c = c.astype(np.float64)
            s1, s2 = s1 + c.sum(0), s2 + (c * c).sum(0)
        mean = s1 / len(x)
        std = np.sqrt(np.maximum(s2 / len(x) - mean * mean, 0.0))
    else:
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)     # a constant feature becomes 0
    return Scaling("standardize", mean.astype(np.float32), std.astype(np.float32), reason)


def bounds(x):
    """(low, high) of the values of x (an array or Rows, gmvc/data/rows.py)."""
    return x.bounds() if isinstance(x, Rows) else (float(x.min()), float(x.max()))


def likelihood_for(x):
    """"auto"'s likelihood for the scaled data x."""
    lo, hi = bounds(x)
    return "bernoulli" if lo >= 0.0 and hi <= 1.0 else "gaussian"


def save(scaling, workdir):
    path = pathlib.Path(workdir) / SCALING_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(scaling.to_json()) + "\n")
    tmp.replace(path)


def load(workdir, kind, sample_shape):
    """The Scaling a run recorded (kind "none" needs no file)."""
    if kind == "none":
        return NO_SCALING
    path = pathlib.Path(workdir) / SCALING_FILE
    try:
        d = json.loads(path.read_text())
        s = Scaling(str(d["kind"]), np.asarray(d["offset"], np.float32), np.asarray(d["scale"], np.float32),
                    str(d.get("reason", "")))
    except FileNotFoundError:
        raise CheckpointError(f"run {workdir}: {SCALING_FILE} is missing (data.scaling={kind!r} needs it)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"run {workdir}: {SCALING_FILE} is not a valid scaling record ({e})") from None
    per_feature = s.offset.shape in ((), tuple(sample_shape)) and s.scale.shape in ((), tuple(sample_shape))
    if s.kind != kind or not per_feature or not np.all(np.isfinite(s.scale)) or np.any(s.scale == 0):
        raise CheckpointError(f"run {workdir}: {SCALING_FILE} does not match the run (kind {s.kind!r}, "
                              f"config {kind!r}, sample shape {list(sample_shape)})")
    return s


def resolve(config, data):
    """(config, data, scaling): config with data.scaling and an "auto" likelihood resolved from
    the data (what config.json records), the data scaled, and the Scaling. The same data resolve
    the same way, so a resumed run's config matches its config.json."""
    kind = config.data.scaling
    check_scaling(kind)
    scaling = fit(data.x, kind)
    if scaling.kind != "none":
        data = data._replace(x=scaling.apply(data.x))
    likelihood = config.model.likelihood
    if kind == scaling.kind and likelihood != "auto":
        return config, data, scaling
    config = config.copy_and_resolve_references()
    config.unlock()
    config.data.scaling = scaling.kind
    if likelihood == "auto":
        config.model.likelihood = likelihood_for(data.x)
    config.lock()
    return config, data, scaling


def describe(config, scaling, was_auto_likelihood):
    """The one line a run prints about how it reads its data."""
    like = config.model.likelihood
    return (f"input: {scaling.describe()}; {like} likelihood"
            f"{' (chosen from the scaled values)' if was_auto_likelihood else ''}")

"""Dataset registry. `load_dataset(data_cfg, seed)` returns a Dataset of float32 samples
[N, D] (points) or [N, H, W, C] (images), with labels only for reporting metrics."""
from typing import NamedTuple, Optional

import numpy as np

from gmvc.data import sources
from gmvc.errors import DataError


class Dataset(NamedTuple):
    x: np.ndarray                 # [N, D] or [N, H, W, C], float32
    y: Optional[np.ndarray]       # [N] int labels, or None; never used for training
    name: str

    @property
    def is_image(self):
        return self.x.ndim == 4


_SOURCES = {"spiral": sources.spiral, "digits": sources.digits, "mnist5k": sources.mnist5k}
_PREFIXED = {"tfds": sources.tfds, "file": sources.file, "folder": sources.folder}
_ARG_NAMES = {"tfds": "name", "file": "path", "folder": "root"}


def known_sources():
    return sorted(_SOURCES) + [f"{p}:<{_ARG_NAMES[p]}>" for p in _PREFIXED]


def load_dataset(data_cfg, seed):
    name = data_cfg.source
    prefix, _, arg = name.partition(":")
    if name in _SOURCES:
        x, y = _SOURCES[name](data_cfg, seed)
    elif prefix in _PREFIXED and arg:
        x, y = _PREFIXED[prefix](arg, data_cfg)
    else:
        raise DataError(f"unknown dataset {name!r}; known data sources: {', '.join(known_sources())}")
    if data_cfg.limit < 0:
        raise DataError(f"data.limit must be 0 (every sample) or a number of samples, got {data_cfg.limit}")
    if data_cfg.limit:
        x, y = x[: data_cfg.limit], (None if y is None else y[: data_cfg.limit])
    return validate(x, y, name)


def validate(x, y, name):
    """Check shape, dtype and values; return a Dataset of float32 with images in NHWC."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"dataset {name!r}: data must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:                      # [N, H, W] greyscale images
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise DataError(f"dataset {name!r}: data must have rank 2 [N, D] or 4 [N, H, W, C] "
                        f"(rank 3 [N, H, W] is read as greyscale); got shape {x.shape}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise DataError(f"dataset {name!r}: data is empty (shape {x.shape})")
    # 8-bit images into [0, 1], whatever source they come from (file:, tfds:, a batch to predict)
    x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(len(x), -1))[0])
        raise DataError(f"dataset {name!r}: {bad.sum()} NaN/inf values in {len(rows)} samples "
                        f"(first bad sample indices: {rows[:5].tolist()})")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"dataset {name!r}: {len(y)} labels for {len(x)} samples")
        y = np.unique(y, return_inverse=True)[1].astype(np.int32)
    return Dataset(x=x, y=y, name=name)

"""Dataset registry. `load_dataset(data_cfg, seed)` returns a Dataset of float32 samples
[N, D] (points) or [N, H, W, C] (images), with labels only for reporting metrics. 8-bit data and
large files come as Rows (gmvc/data/rows.py), which read as the same float32 values."""
from typing import NamedTuple, Optional

import numpy as np

from gmvc.data import sources
from gmvc.data.rows import Rows, chunks
from gmvc.errors import DataError


class Dataset(NamedTuple):
    x: np.ndarray                 # [N, D] or [N, H, W, C], float32 values (an array, or Rows)
    y: Optional[np.ndarray]       # [N] class indices 0..C-1, or None; never used for training
    name: str
    classes: Optional[np.ndarray] = None   # [C] the labels as given: y = i is the label classes[i]

    def label_values(self):
        """[N] the labels as given (what the files show), or None."""
        if self.y is None:
            return None
        return self.y if self.classes is None else self.classes[self.y]

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
        x = x.head(data_cfg.limit) if isinstance(x, Rows) else x[: data_cfg.limit]
        y = None if y is None else y[: data_cfg.limit]
    return validate(x, y, name)


def validate(x, y, name):
    """Check shape, dtype and values; return a Dataset with images in NHWC: float32, or Rows
    (gmvc/data/rows.py) for 8-bit data (kept as uint8, read as value / 255) and for arrays read
    from a file by rows."""
    if not isinstance(x, Rows):
        x = np.asarray(x)
    dtype = x.source.dtype if isinstance(x, Rows) else x.dtype
    if dtype == object or not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise DataError(f"dataset {name!r}: data must be numeric, got dtype {dtype}")
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"dataset {name!r}: data must be real numbers, got complex values ({dtype}); pass their "
                        f"magnitude (np.abs), or their real and imaginary parts as separate features")
    if x.ndim == 3:                      # [N, H, W] greyscale images
        x = x.reshape_samples(x.shape[1:] + (1,)) if isinstance(x, Rows) else x[..., None]
    if x.ndim not in (2, 4):
        raise DataError(f"dataset {name!r}: data must have rank 2 [N, D] or 4 [N, H, W, C] "
                        f"(rank 3 [N, H, W] is read as greyscale); got shape {x.shape}")
    if x.shape[0] == 0 or min(x.shape[1:]) == 0:
        raise DataError(f"dataset {name!r}: data is empty (shape {x.shape})")
    if dtype == np.uint8:                # 8-bit data, whatever source: read as value / 255
        x = x if isinstance(x, Rows) else Rows(np.ascontiguousarray(x))
    else:
        x = x if isinstance(x, Rows) else x.astype(np.float32)
        _check_finite(x, name)
    classes = None
    if y is not None:
        y, classes = _check_labels(y, len(x), name)
    return Dataset(x=x, y=y, name=name, classes=classes)


def _check_labels(y, n, name):
    """(class indices [N] int32, the label values [C]) of labels `y`, which only score a run."""
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise DataError(f"dataset {name!r}: {len(y)} labels for {n} samples")
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool or y.dtype.kind in "US"):
        raise DataError(f"dataset {name!r}: labels must be numbers or strings, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.inexact):
        bad = np.nonzero(~np.isfinite(y))[0]
        if len(bad):
            raise DataError(f"dataset {name!r}: {len(bad)} labels are NaN or inf (first at samples "
                            f"{bad[:5].tolist()}); labels only score a run: drop 'y', or give every sample its class")
    classes, index = np.unique(y, return_inverse=True)
    return index.astype(np.int32), classes


def nonfinite_rows(x):
    """(how many NaN/inf values, the indices of the samples holding them) of x (an array, or
    Rows read by chunks)."""
    count, found = 0, [np.zeros(0, np.int64)]
    for start, chunk in chunks(x):
        bad = ~np.isfinite(chunk)
        if bad.any():
            count += int(bad.sum())
            found.append(start + np.unique(np.nonzero(bad.reshape(len(chunk), -1))[0]))
    return count, np.concatenate(found)


def _check_finite(x, name):
    """One DataError naming the NaN/inf values of x."""
    count, rows = nonfinite_rows(x)
    if count:
        raise DataError(f"dataset {name!r}: {count} NaN/inf values in {len(rows)} samples "
                        f"(first bad sample indices: {rows[:5].tolist()})")

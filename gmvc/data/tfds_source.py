"""The one file that talks to tensorflow-datasets (random access through tfds.data_source)."""
import numpy as np

from gmvc.errors import DataError

_IMAGE_KEYS = ("image", "img")
_LABEL_KEYS = ("label", "labels")


def load(name, split="train", data_dir=None, read_batch=1024):
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # not registered, not downloaded and no network, bad split ...
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is unavailable: {type(e).__name__}: {e}") from None
    n = len(source)
    if n == 0:
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is empty")
    first = source[0]
    image_key = next((k for k in _IMAGE_KEYS if k in first), None)
    if image_key is None:
        raise DataError(f"tfds dataset {name!r} has no image feature (features: {sorted(first)})")
    label_key = next((k for k in _LABEL_KEYS if k in first), None)
    images, labels = [], []
    for start in range(0, n, read_batch):
        rows = source.__getitems__(list(range(start, min(start + read_batch, n))))
        images.extend(r[image_key] for r in rows)
        if label_key:
            labels.extend(r[label_key] for r in rows)
    x = np.stack(images)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x.astype(np.float32) / scale, (np.asarray(labels) if label_key else None)

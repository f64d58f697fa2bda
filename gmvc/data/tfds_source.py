"""The one file that talks to tensorflow-datasets (random access through tfds.data_source)."""
import numpy as np

from gmvc.errors import DataError

_IMAGE_KEYS = ("image", "img")
_LABEL_KEYS = ("label", "labels")


def load(name, split="train", data_dir=None):
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # not registered, not downloaded and no network, bad split ...
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is unavailable: {type(e).__name__}: {str(e)[:300]}") from None
    n = len(source)
    if n == 0:
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is empty")
    first = source[0]
    image_key = next((k for k in _IMAGE_KEYS if k in first), None)
    if image_key is None:
        raise DataError(f"tfds dataset {name!r} has no image feature (features: {sorted(first)})")
    label_key = next((k for k in _LABEL_KEYS if k in first), None)
    images, labels = [], []
    for i in range(n):  # decoding each image dominates the cost; one record at a time is fine
        row = source[i]
        images.append(row[image_key])
        if label_key:
            labels.append(row[label_key])
    x = np.stack(images)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return x.astype(np.float32) / scale, (np.asarray(labels) if label_key else None)

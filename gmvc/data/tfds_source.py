"""The one file that talks to tensorflow-datasets (random access through tfds.data_source)."""
import numpy as np

from gmvc.errors import DataError

_IMAGE_KEYS = ("image", "img")
_LABEL_KEYS = ("label", "labels")


def load(name, split="train", data_dir=None):
    import tensorflow_datasets as tfds
    try:
        # Never a download at run time: data that is not prepared fails at once, with how to fix it.
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not registered, not prepared, bad split ...
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if type(e).__name__ == "DatasetNotFoundError" and "not found" in first.lower():
            hint = "no tensorflow-datasets builder has this name (tfds.list_builders() lists them)"
        elif "split" in first.lower():
            hint = "the split does not exist (data.split)"
        else:
            hint = (f"the data is not prepared in {data_dir or 'the tfds default folder'}: run `tfds build {name}` "
                    f"where there is a network, or set data.data_dir to a folder that holds it")
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is unavailable: {hint} ({type(e).__name__}: "
                        f"{first})") from None
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

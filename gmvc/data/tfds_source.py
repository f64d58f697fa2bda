"""The one file that talks to tensorflow-datasets (random access through tfds.data_source).

No TensorFlow is needed: tfds.data_source reads ArrayRecord files with the array_record package
and decodes images with Pillow; preparing data (`tfds build`, download_and_prepare) also needs
importlib_resources. pyproject.toml lists the three (tests/test_tfds.py)."""
import contextlib
import logging
import re

import numpy as np

from gmvc.data import rows
from gmvc.errors import DataError

_IMAGE_KEYS = ("image", "img")
_LABEL_KEYS = ("label", "labels")
_PIP_NAMES = {"PIL": "pillow", "cv2": "opencv-python"}   # module -> the package that installs it


def load(name, split="train", data_dir=None):
    import tensorflow_datasets as tfds
    try:
        # Never a download at run time: data that is not prepared fails at once, with how to fix it.
        # tfds's warnings on the way (a version folder without its dataset_info.json) say the same
        # less clearly: the one line below replaces them.
        with _quiet_absl():
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except ImportError as e:  # a package tfds reads with is missing: not a data problem
        raise _missing_package(name, split, e) from None
    except Exception as e:  # not registered, not prepared, bad split ...
        first = _first_line(e)
        if type(e).__name__ == "DatasetNotFoundError" and "not found" in first.lower():
            hint = "no tensorflow-datasets builder has this name (tfds.list_builders() lists them)"
        elif "split" in first.lower() and "not been generated" not in str(e) and "`splits` is empty" not in first:
            hint = "the split does not exist (data.split)"
        else:                 # tfds's own words here are about its file formats, not the cause
            folder = data_dir or f"the tfds default folder {tfds.core.constants.DATA_DIR} ($TFDS_DATA_DIR sets it)"
            raise DataError(f"tfds dataset {name!r} (split {split!r}) is unavailable: the data is not prepared in "
                            f"{folder}: run `tfds build {name}` with --file_format=array_record (the format read "
                            f"here) where there is a network, or set data.data_dir to a folder that holds it") from None
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is unavailable: {hint} ({type(e).__name__}: "
                        f"{first})") from None
    n = len(source)
    if n == 0:
        raise DataError(f"tfds dataset {name!r} (split {split!r}) is empty")
    try:
        first = source[0]             # the first decode: Pillow (or OpenCV) is imported here
    except ImportError as e:
        raise _missing_package(name, split, e) from None
    image_key = next((k for k in _IMAGE_KEYS if k in first), None)
    if image_key is None:
        raise DataError(f"tfds dataset {name!r} has no image feature (features: {sorted(first)})")
    label_key = next((k for k in _LABEL_KEYS if k in first), None)
    image = np.asarray(first[image_key])
    if n * image.nbytes > rows.LAZY_ABOVE_BYTES:        # records decoded when a batch asks for them
        labels = None
        if label_key:                                     # the labels without decoding the images
            plain = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
            labels = np.asarray([plain[i][label_key] for i in range(n)])
        return rows.Rows(TfdsImages(source, image_key, n, image)), labels
    images, labels = [], []
    for i in range(n):  # decoding each image dominates the cost; one record at a time is fine
        row = source[i]
        images.append(row[image_key])
        if label_key:
            labels.append(row[label_key])
    return np.stack(images), (np.asarray(labels) if label_key else None)       # uint8: scaled by load_dataset


class TfdsImages:
    """The images of a tfds data_source, as a source of gmvc.data.rows: read by record when rows
    are asked for; nothing is kept."""

    def __init__(self, source, key, n, first):
        self.source, self.key, self.path = source, key, f"tfds:{key}"
        self.shape, self.dtype = (n, *first.shape), first.dtype
        self.nbytes = n * first.nbytes

    def __len__(self):
        return self.shape[0]

    def read(self, index):
        index = [int(r) for r in np.asarray(index, np.int64).reshape(-1)]
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        records = self.source.__getitems__(index) if hasattr(self.source, "__getitems__") else \
            [self.source[r] for r in index]
        for i, record in enumerate(records):
            out[i] = record[self.key]
        return out


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:300]


def _missing_package(name, split, e):
    """The one-line DataError for an ImportError raised inside tfds, naming what to install."""
    first = _first_line(e)
    module = (e.name or "").split(".")[0] or next((m for m in _PIP_NAMES if re.search(rf"\b{m}\b", first)), "")
    install = f"pip install {_PIP_NAMES.get(module, module)}" if module else "reinstall gmvc (pip install -e .)"
    return DataError(f"tfds dataset {name!r} (split {split!r}) cannot be read: tensorflow-datasets needs a package "
                     f"that is not installed: {install} ({type(e).__name__}: {first})")

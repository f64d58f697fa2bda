"""Image files: the `folder:<root>` data source (root/<class name>/<image files>) and `load_inputs`,
which reads a user's images or arrays to reconstruct. Pillow is imported only when used."""
import concurrent.futures
import os
import pathlib

import numpy as np

from gmvc.data import rows
from gmvc.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GREY_MODES = {"1", "L", "LA", "I", "F"}          # plus "I;16*" and palettes of greys (see _is_grey)


def _is_image_file(p):
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(folder):
    """The image files directly in `folder`, sorted by name; hidden and other files are skipped."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _root(path, what):
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist")
    if not p.is_dir():
        raise DataError(f"{what} {str(p)!r} is not a directory")
    return p


def _list_folder(root):
    """[(class name, [image paths])] for the class folders under `root` that hold images, sorted by name."""
    p = _root(root, "image folder")
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise DataError(f"image folder {str(p)!r} is empty; expected {str(p)}/<class name>/<image files>")
    classes = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    if not classes:
        raise DataError(f"image folder {str(p)!r} has no class subfolders; "
                        f"expected {str(p)}/<class name>/<image files>")
    listing = [(c.name, files) for c in classes if (files := _image_files(c))]
    if not listing:
        raise DataError(f"image folder {str(p)!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                        f"in its {len(classes)} class subfolders")
    return listing


def class_names(root):
    """The class names of `folder:<root>`, in label order (label k is class_names(root)[k]).
    Class folders without any image file are left out, as they contribute no samples."""
    return [name for name, _ in _list_folder(root)]


# ---------------------------------------------------------------- decoding

def _open(path):
    from PIL import Image
    try:
        img = Image.open(path)
    except Exception as e:
        raise DataError(f"image file {str(path)!r} could not be read: {type(e).__name__}: {e}") from None
    return img


def _is_grey(img):
    if img.mode in _GREY_MODES or img.mode.startswith("I;16"):
        return True
    if img.mode in ("P", "PA"):
        palette = img.getpalette()     # flat [r, g, b, r, g, b, ...], read with the header
        if palette is None:
            return True
        pal = np.asarray(palette).reshape(-1, 3)
        return bool((pal == pal[:, :1]).all())
    return False


def _decode(img, path, channels, size=None, stored=False):
    """Pixels of `img` as float32 [H, W, channels] in [0, 1], resized (bilinear) to size=(W, H) if
    given; `stored`: 8-bit images as their uint8 values (16-bit ones stay float32)."""
    from PIL import Image
    try:
        img.load()
        if img.mode == "I" or img.mode.startswith("I;16"):     # 16-bit greyscale
            im = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0)
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.BILINEAR)
            a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None]
            return np.repeat(a, channels, axis=-1)
        im = img.convert("L" if channels == 1 else "RGB")          # RGBA/LA/PA: alpha dropped
        if size is not None and im.size != tuple(size):
            im = im.resize(tuple(size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8) if stored else np.asarray(im, dtype=np.float32) / 255.0
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"image file {str(path)!r} could not be decoded: {type(e).__name__}: {e}") from None
    return a[..., None] if channels == 1 else a


def _scan(paths, channels=None, size=None, where=""):
    """(width, height, channels, all 8-bit?) of the images, from their headers only.
    channels=None: 1 if every image is greyscale, else 3. size=None: every image must have the
    first one's size; else all are resized to it."""
    headers = []
    for p in paths:                  # headers only: size and mode, before decoding anything
        with _open(p) as img:
            headers.append((img.size, _is_grey(img), not (img.mode == "I" or img.mode.startswith("I;16"))))
    if size is None:
        (w, h), first = headers[0][0], paths[0]
        for p, (s, _, _) in zip(paths, headers):
            if s != (w, h):
                raise DataError(f"images{where} differ in size: {str(first)!r} is {w}x{h} but {str(p)!r} is "
                                f"{s[0]}x{s[1]} (width x height); all images must have the same size")
    else:
        w, h = size
    if channels is None:
        channels = 1 if all(grey for _, grey, _ in headers) else 3
    return w, h, channels, all(eight for _, _, eight in headers)


def _read_images(paths, channels=None, size=None, where=""):
    """Decode image files into float32 [N, H, W, C] (channels, size: as _scan reads them)."""
    w, h, channels, _ = _scan(paths, channels, size, where)
    return _decode_all(paths, w, h, channels)


def _decode_all(paths, w, h, channels, stored=False):
    out = np.empty((len(paths), h, w, channels), np.uint8 if stored else np.float32)
    for i, p in enumerate(paths):
        with _open(p) as img:
            out[i] = _decode(img, p, channels, size=(w, h), stored=stored)
    return out


# ---------------------------------------------------------------- the folder:<root> source

def load_folder(root, cfg=None):
    """The `folder:<root>` source: images in root/<class name>/, classes sorted by name -> labels
    0..C-1, samples ordered by class then file name. Returns (x [N, H, W, C], y [N] int32): x is
    uint8 where every image is 8-bit (read as value / 255: gmvc.data.validate), else float32 in
    [0, 1]; above rows.LAZY_ABOVE_BYTES, Rows that decode the images when a batch asks for them.
    C is 1 if every image is greyscale, else 3 (colour; alpha dropped)."""
    listing = _list_folder(root)
    paths = [p for _, files in listing for p in files]
    y = np.concatenate([np.full(len(files), k, np.int32) for k, (_, files) in enumerate(listing)])
    where = f" in folder {str(pathlib.Path(root).expanduser())!r}"
    w, h, c, eight = _scan(paths, where=where)
    if eight and len(paths) * h * w * c > rows.LAZY_ABOVE_BYTES:     # decoded when a batch asks for them
        return rows.Rows(FolderImages(paths, (h, w, c))), y
    return _decode_all(paths, w, h, c, stored=eight), y


class FolderImages:
    """The 8-bit images of a folder: source, decoded as uint8 when rows are read (gmvc.data.rows),
    in worker threads; nothing is kept."""

    def __init__(self, paths, shape, workers=None):
        self.path = pathlib.Path(paths[0]).parent.parent
        self.paths, self.shape, self.dtype = list(paths), (len(paths), *shape), np.dtype(np.uint8)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1),
                                                           thread_name_prefix="gmvc-decode")

    def __len__(self):
        return len(self.paths)

    def read(self, index):
        index = np.asarray(index, np.int64).reshape(-1)
        h, w, c = self.shape[1:]
        out = np.empty((len(index), h, w, c), np.uint8)

        def one(i):
            p = self.paths[index[i]]
            with _open(p) as img:
                out[i] = _decode(img, p, c, size=(w, h), stored=True)

        list(self._pool.map(one, range(len(index))))
        return out


# ---------------------------------------------------------------- inputs to reconstruct

def _fit_array(a, path, data_shape):
    """[N, *data_shape] from an array of shape [N, *data_shape] or data_shape (one sample); greyscale
    images [H, W] / [N, H, W] get the channel axis."""
    s = data_shape
    if a.shape == s:
        a = a[None]
    elif len(s) == 3 and s[-1] == 1 and a.shape == s[:2]:
        a = a[None, ..., None]
    elif len(s) == 3 and s[-1] == 1 and a.ndim == 3 and a.shape[1:] == s[:2]:
        a = a[..., None]
    if a.ndim != len(s) + 1 or a.shape[1:] != s:
        raise DataError(f"input {str(path)!r} has shape {a.shape}; wanted {list(s)} (one sample) "
                        f"or [N, {', '.join(map(str, s))}]")
    if len(a) == 0:
        raise DataError(f"input {str(path)!r} is empty (shape {a.shape})")
    return a


def _load_array(p, data_shape):
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"input {str(p)!r} could not be read as .npy/.npz: {e}") from None
    if isinstance(loaded, np.ndarray):
        a = loaded
    else:
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"input {str(p)!r}: an .npz needs an array named 'x' (found {loaded.files})")
            a = loaded["x"]
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"input {str(p)!r}: data must be numeric, got dtype {a.dtype}")
    a = _fit_array(a.astype(np.float32), p, data_shape)
    bad = ~np.isfinite(a)
    if bad.any():
        raise DataError(f"input {str(p)!r}: {bad.sum()} NaN/inf values")
    return a


def load_inputs(path, data_shape):
    """Inputs to reconstruct, as float32 [N, *data_shape]. `path` is one image file, a folder of image
    files (sorted by name; if it has none directly, the images of its class subfolders as in
    folder:<root>), an .npy file, or an .npz with an array 'x'. Images are scaled to [0, 1],
    converted to data_shape's channels (1: greyscale, 3: RGB) and resized (bilinear) to its H, W.
    Arrays are taken as they are; [H, W] / [N, H, W] greyscale arrays get a channel axis and a
    single sample gets a batch axis."""
    data_shape = tuple(int(d) for d in data_shape)
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise DataError(f"input {str(p)!r} does not exist")
    if p.is_file() and p.suffix.lower() in (".npy", ".npz"):
        return _load_array(p, data_shape)
    if p.is_dir():
        paths = _image_files(p)
        if not paths:
            if not any(e.is_dir() and not e.name.startswith(".") for e in p.iterdir()):
                raise DataError(f"input folder {str(p)!r} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths = [f for _, files in _list_folder(p) for f in files]
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        paths = [p]
    else:
        raise DataError(f"input {str(p)!r}: expected an image file ({', '.join(IMAGE_EXTENSIONS)}), "
                        f"a folder of images, an .npy or an .npz file")
    if len(data_shape) != 3:
        raise DataError(f"input {str(p)!r} is an image, but the model's data are not images "
                        f"(sample shape {list(data_shape)}); give an .npy/.npz file")
    h, w, c = data_shape
    if c not in (1, 3):
        raise DataError(f"input {str(p)!r}: images can be read for 1 (greyscale) or 3 (RGB) channels, "
                        f"the model's data have {c} (sample shape {list(data_shape)})")
    return _read_images(paths, channels=c, size=(w, h))

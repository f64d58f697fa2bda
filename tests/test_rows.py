"""Samples kept as stored (gmvc/data/rows.py): 8-bit data stay uint8 up to the device, large
.npy/.npz files are read by rows instead of loaded, and both read as the float32 values the
whole-array path gave."""
import pathlib

import jax
import numpy as np
import pytest

from gmvc import recipes
from gmvc.data import load_dataset, rows
from gmvc.data.rows import NpyFile, Rows
from gmvc.errors import DataError
from gmvc.run.restore import load_trained
from gmvc.trainer import train_and_evaluate


def data_cfg(path, **kw):
    c = recipes.cluster(3).data
    c.unlock()
    c.source = f"file:{path}"
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture
def lazy(monkeypatch):
    monkeypatch.setattr(rows, "LAZY_ABOVE_BYTES", 0)


def test_rows_read_from_the_file_as_the_loaded_array(tmp_path, lazy):
    a = np.random.default_rng(0).integers(0, 256, (500, 7, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    x = load_dataset(data_cfg(tmp_path / "a.npy"), 0).x
    assert isinstance(x, Rows) and isinstance(x.source, NpyFile) and x.shape == (500, 7, 5, 1)
    want = a[..., None].astype(np.float32) / np.float32(255)
    assert np.array_equal(np.asarray(x), want) and x.dtype == np.float32
    idx = np.array([[499, 3, 3, 0], [-1, 250, 251, 7]])            # unsorted, repeated, negative
    assert np.array_equal(x[idx], want[idx]) and np.array_equal(np.take(x, idx, axis=0), want[idx])
    assert np.array_equal(x[10:400:7], want[10:400:7]) and np.array_equal(x[42], want[42])
    assert np.array_equal(x[:, 2], want[:, 2]) and np.array_equal(x[..., 0], want[..., 0])
    assert np.array_equal(x[[4, 1], 3:5, 0], want[[4, 1], 3:5, 0]) and np.array_equal(x[-2, 1], want[-2, 1])
    assert np.array_equal(x[want[:, 0, 0, 0] > 0.5], want[want[:, 0, 0, 0] > 0.5])
    # as stored: uint8, and a view of rows reads the same rows
    stored = x.stored()
    assert stored.dtype == np.uint8 and np.array_equal(stored[5:9], a[5:9, ..., None])
    sub = x.subset(np.array([9, 2, 400]))
    assert np.array_equal(sub[1:], want[[2, 400]]) and len(sub) == 3 and sub.nbytes == 3 * 35 * 4
    assert x.min() == float(want.min()) and x.max() == float(want.max())
    with pytest.raises(IndexError):
        x[np.array([500])]


def test_npz_members_and_small_files(tmp_path, lazy, monkeypatch):
    x = np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32)
    y = np.arange(300) % 3
    np.savez(tmp_path / "stored.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "zipped.npz", x=x, y=y)
    stored = load_dataset(data_cfg(tmp_path / "stored.npz"), 0)
    assert isinstance(stored.x.source, NpyFile) and np.array_equal(np.asarray(stored.x), x)
    assert np.array_equal(stored.y, y)
    zipped = load_dataset(data_cfg(tmp_path / "zipped.npz"), 0)           # compressed: loaded
    assert isinstance(zipped.x, np.ndarray) and np.array_equal(zipped.x, x)
    monkeypatch.setattr(rows, "LAZY_ABOVE_BYTES", 300 * 6 * 4)           # not above it: loaded
    assert isinstance(load_dataset(data_cfg(tmp_path / "stored.npz"), 0).x, np.ndarray)
    # data.limit: the first rows, still read from the file
    monkeypatch.setattr(rows, "LAZY_ABOVE_BYTES", 0)
    head = load_dataset(data_cfg(tmp_path / "stored.npz", limit=50), 0)
    assert isinstance(head.x, Rows) and np.array_equal(np.asarray(head.x), x[:50]) and len(head.y) == 50


def test_bad_files_read_by_rows(tmp_path, lazy, monkeypatch):
    x = np.ones((400, 5), np.float32)
    x[333, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    monkeypatch.setattr(rows, "CHUNK_BYTES", 100 * 5 * 4)                # the NaN in the fourth chunk
    with pytest.raises(DataError, match=r"1 NaN/inf values in 1 samples \(first bad sample indices: \[333\]\)"):
        load_dataset(data_cfg(tmp_path / "nan.npy"), 0)
    np.save(tmp_path / "cut.npy", np.ones((400, 5), np.float32))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-40])
    with pytest.raises(DataError, match="is truncated"):
        load_dataset(data_cfg(tmp_path / "cut.npy"), 0)


def test_standardized_rows_match_the_loaded_array(tmp_path, lazy):
    from gmvc.data import prepare
    x = (np.random.default_rng(2).normal(size=(700, 4)) * [1, 10, 100, 0] + 5).astype(np.float32)
    np.save(tmp_path / "r.npy", x)
    lazy_x = load_dataset(data_cfg(tmp_path / "r.npy"), 0).x
    s_lazy, s_mem = prepare.fit(lazy_x, "auto"), prepare.fit(x, "auto")
    assert s_lazy.kind == s_mem.kind == "standardize"
    np.testing.assert_allclose(s_lazy.offset, s_mem.offset, rtol=1e-6)
    np.testing.assert_allclose(s_lazy.scale, s_mem.scale, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s_lazy.apply(lazy_x)), s_mem.apply(x), rtol=1e-5, atol=1e-5)


def blobs_file(tmp_path, n=600):
    rng = np.random.default_rng(0)
    centres = rng.integers(40, 215, (3, 16))
    x = np.clip(centres[np.arange(n) % 3] + rng.normal(0, 12, (n, 16)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "blobs.npz", x=x, y=np.arange(n) % 3)
    return tmp_path / "blobs.npz"


def uint8_run(path, workdir, lines, stream):
    c = recipes.cluster(3, steps=80)
    c.unlock()
    c.data.source, c.seed, c.train.log_every, c.parallel.stream = f"file:{path}", 1, 20, stream
    for phase in ("gmm_init", "gmm_init2", "gmm_init3"):
        c.phases[phase].n_init = 2
    c.lock()
    summary = train_and_evaluate(c, workdir, echo=lambda *a, **k: lines.append(" ".join(map(str, a))),
                                 write_outputs=False)
    return jax.tree.leaves(load_trained(workdir).params), summary


def test_uint8_files_train_as_stored_streamed_or_in_memory(tmp_path, lazy):
    from gmvc.training import context
    from gmvc.validate import build_plan
    path = blobs_file(tmp_path)
    lines = []
    memory, s_memory = uint8_run(path, tmp_path / "memory", lines, "off")
    assert any("8-bit values read as value / 255" in line for line in lines)
    streamed, s_streamed = uint8_run(path, tmp_path / "streamed", lines, "on")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(memory, streamed))
    assert s_memory["acc"] == s_streamed["acc"] > 0.95
    # what the device holds: the uint8 rows, a quarter of float32
    data = load_dataset(data_cfg(path), 0)
    c = load_trained(tmp_path / "memory").config
    ctx = context.build(build_plan(c, data))
    assert ctx.x_device.dtype == np.uint8 and ctx.x_device.shape == (600, 16)
    assert ctx.x_train.dtype == np.uint8 and isinstance(ctx.x_train.source, NpyFile)


def test_a_large_image_folder_is_decoded_by_rows(tmp_path, monkeypatch):
    from PIL import Image
    from gmvc.data.images import FolderImages
    rng = np.random.default_rng(3)
    for label in range(3):
        (tmp_path / "imgs" / f"c{label}").mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{label}" / f"{i}.png")
    cfg = data_cfg("unused")
    cfg.source = f"folder:{tmp_path / 'imgs'}"
    loaded = load_dataset(cfg, 0)                    # small: decoded at once, kept as uint8
    assert isinstance(loaded.x.source.a, np.ndarray) and loaded.x.source.dtype == np.uint8
    monkeypatch.setattr(rows, "LAZY_ABOVE_BYTES", 0)
    lazy = load_dataset(cfg, 0)
    assert isinstance(lazy.x.source, FolderImages) and lazy.x.shape == (21, 6, 5, 1)
    assert np.array_equal(np.asarray(lazy.x), np.asarray(loaded.x)) and np.array_equal(lazy.y, loaded.y)
    assert np.array_equal(lazy.x.stored()[[20, 0, 20]], loaded.x.stored()[[20, 0, 20]])


def test_files_are_told_apart_by_their_bytes_not_their_names(tmp_path, lazy):
    a = np.arange(600, dtype=np.float32).reshape(200, 3)
    np.save(tmp_path / "x.npy", a)
    (tmp_path / "x.npy").rename(tmp_path / "UPPER.NPY")
    x = load_dataset(data_cfg(tmp_path / "UPPER.NPY"), 0).x
    assert isinstance(x.source, NpyFile) and np.array_equal(np.asarray(x), a)
    (tmp_path / "table.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="is not a .npy/.npz array file"):
        load_dataset(data_cfg(tmp_path / "table.csv"), 0)
    np.save(tmp_path / "scalar.npy", np.float32(3.0))
    with pytest.raises(DataError, match="must have rank 2"):
        load_dataset(data_cfg(tmp_path / "scalar.npy"), 0)


def test_bytes_read_as_the_same_values_on_the_host_and_the_device():
    from gmvc.core.inputs import as_values, host_values
    every = np.arange(256, dtype=np.uint8)
    host = host_values(every)
    assert host.dtype == np.float32 and np.array_equal(host, every.astype(np.float32) / np.float32(255))
    assert np.array_equal(np.asarray(jax.jit(as_values)(every)), host)
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    assert as_values(floats) is floats


def test_bounds_and_index_checks(tmp_path, lazy):
    a = np.random.default_rng(4).integers(3, 250, (300, 8), dtype=np.uint8)
    np.save(tmp_path / "u.npy", a)
    x = load_dataset(data_cfg(tmp_path / "u.npy"), 0).x
    assert x.bounds() == (0.0, 1.0)                                   # 8-bit: known without reading
    assert x.min() == pytest.approx(a.min() / 255) and x.max() == pytest.approx(a.max() / 255)
    f = (a / 10).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    y = load_dataset(data_cfg(tmp_path / "f.npy"), 0).x
    assert y.bounds() == (float(f.min()), float(f.max()))
    with pytest.raises(IndexError, match="boolean index"):
        x[np.ones(299, bool)]
    assert x.subset(np.arange(5))[[]].shape == (0, 8)

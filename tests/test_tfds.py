"""tfds:<name> end to end on a real tensorflow-datasets dataset, without TensorFlow and without
mocks: a tiny builder defined here prepares 8x8 greyscale PNGs from a local folder (tfds's
manual_dir) into ArrayRecord files under tmp_path, and gmvc reads them through its one
tfds.data_source call (gmvc/data/tfds_source.py) and trains on them."""
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, load_config, read_results

tfds = pytest.importorskip("tensorflow_datasets")

NAME = "gmvc_tiny_images"                 # the builder's registered name (its class name in snake case)
SIZE, CLASSES, PER_CLASS = 8, 3, 20       # 60 images of 8x8x1 in 3 classes


def _tiny_builder():
    """The builder class, registered once per process: tfds registers each GeneratorBasedBuilder
    subclass by name when it is defined and refuses the same name twice, so a second import of
    this module (another import path, a rerun in the same interpreter) reuses the first class.
    Every pytest-xdist worker is its own process and defines it once."""
    try:
        return tfds.builder_cls(NAME)
    except tfds.core.registered.DatasetNotFoundError:
        pass

    class GmvcTinyImages(tfds.core.GeneratorBasedBuilder):
        """Images read from the manual folder: <manual_dir>/<class index>/<any name>.png."""
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "A folder of <class>/<name>.png greyscale 8x8 images."

        def _info(self):
            # DatasetInfo directly: dataset_info_from_configs() reads metadata files next to a
            # dataset package, which a test module does not have.
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
                "label": tfds.features.ClassLabel(num_classes=CLASSES)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(dl_manager.manual_dir)}

        def _generate_examples(self, root):
            # Paths, not arrays: tfds encodes numpy images with tf.image.encode_png (TensorFlow),
            # but stores the bytes of an image file as they are.
            for path in sorted(root.glob("*/*.png")):
                yield f"{path.parent.name}/{path.name}", {"image": path, "label": int(path.parent.name)}

    assert GmvcTinyImages.name == NAME
    return GmvcTinyImages


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, images [N, 8, 8] uint8, labels [N]): the images written as PNG files, then
    prepared by tfds into data_dir as ArrayRecord (the random-access format tfds.data_source
    reads); no TensorFlow is imported on the way."""
    from PIL import Image
    tf_before = "tensorflow" in sys.modules
    raw, data_dir = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label in range(CLASSES):
        (raw / str(label)).mkdir()
        # Each class its own brightness band and stripe, plus noise, so every image is distinct.
        base = np.zeros((SIZE, SIZE), np.int16) + 40 + 80 * label
        base[:, 2 * label: 2 * label + 2] += 60
        for i in range(PER_CLASS):
            image = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(raw / str(label) / f"{i:03d}.png")
            images.append(image)
            labels.append(label)
    builder = _tiny_builder()(data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    assert list((data_dir / NAME / "1.0.0").glob(f"{NAME}-train.array_record-*"))
    assert tf_before or "tensorflow" not in sys.modules
    return data_dir, np.stack(images), np.array(labels)


def test_tfds_source_reads_a_prepared_dataset(prepared):
    """load_dataset gives every image once, as float32 [N, 8, 8, 1] = uint8 / 255, each with its
    own label, in the order tfds stores them (tfds shuffles at preparation)."""
    from gmvc.data import load_dataset
    data_dir, images, labels = prepared
    c = load_config("vade_digits.py", {"data.source": f"tfds:{NAME}", "data.data_dir": str(data_dir)})
    d = load_dataset(c.data, 0)
    n = len(images)
    assert d.name == f"tfds:{NAME}" and d.is_image
    assert d.x.shape == (n, SIZE, SIZE, 1) and d.x.dtype == np.float32
    assert 0.0 <= d.x.min() and d.x.max() <= 1.0
    pixels = np.rint(d.x[..., 0] * 255).astype(np.uint8)
    np.testing.assert_allclose(d.x[..., 0], pixels / np.float32(255), rtol=0, atol=1e-7)
    # The same order as tfds.data_source gives, image and label.
    source = tfds.data_source(NAME, split="train", data_dir=str(data_dir), download=False)
    np.testing.assert_array_equal(pixels, np.stack([source[i]["image"][..., 0] for i in range(n)]))
    np.testing.assert_array_equal(d.y, [source[i]["label"] for i in range(n)])
    # The generated images, each once, each with its label (ClassLabel indices are kept: 0..2).
    generated = {image.tobytes(): label for image, label in zip(images, labels)}
    assert len(generated) == n
    assert sorted(p.tobytes() for p in pixels) == sorted(generated)
    assert [generated[p.tobytes()] for p in pixels] == d.y.tolist()
    assert np.bincount(d.y).tolist() == [PER_CLASS] * CLASSES
    assert pixels.tobytes() != images.tobytes()             # tfds's order, not the generation order


def test_training_on_tfds_data_end_to_end(prepared, tmp_path):
    """The vade_digits recipe's phases (pretrain -> gmm_init -> main), shrunk, train on the
    prepared dataset through data.source = tfds:<name> and write their results."""
    from gmvc.trainer import train_and_evaluate
    data_dir, images, _ = prepared
    n = len(images)
    c = load_config("vade_digits.py", {
        "data.source": f"tfds:{NAME}", "data.data_dir": str(data_dir),
        "model.num_clusters": CLASSES, "model.hidden_sizes": (32, 32), "model.z_dim": 4,
        "train.batch_size": 20, "train.steps": 30, "train.restarts": 1, "train.log_every": 10,
        "train.checkpoint_every": 30, "eval.batch_size": 20, "eval.samples_per_cluster": 2})
    c.phases.pretrain.steps = 15
    c.phases.gmm_init.n_init = 2
    summary = train_and_evaluate(c, tmp_path, echo=lambda *a, **k: None)
    results = read_results(tmp_path)
    assert results["num_samples"] == summary["num_samples"] == n
    assert results["steps"] == 30 and results["num_clusters"] == CLASSES
    assert sum(results["cluster_sizes"]) == n
    assert np.isfinite(results["restart_objective"]).all() and len(results["restart_objective"]) == 1
    assert 0.0 <= results["acc"] <= 1.0
    assert (tmp_path / "predictions.csv").read_text().count("\n") >= n


def test_unprepared_tfds_data_fails_at_once_in_one_line(prepared, tmp_path):
    """A registered builder whose data is not in data_dir: the one-line DataError, in seconds,
    without preparing or downloading anything there."""
    from gmvc.data import load_dataset
    from gmvc.errors import DataError
    empty = tmp_path / "empty"
    empty.mkdir()
    c = load_config("vade_digits.py", {"data.source": f"tfds:{NAME}", "data.data_dir": str(empty)})
    t0 = time.time()
    with pytest.raises(DataError) as raised:
        load_dataset(c.data, 0)
    message = str(raised.value)
    assert time.time() - t0 < 10
    assert f"the data is not prepared in {empty}: run `tfds build {NAME}`" in message, message
    assert "\n" not in message
    assert not [p for p in empty.rglob("*") if p.is_file()]


@pytest.mark.parametrize("module, package", [("array_record", "array_record"), ("PIL", "pillow")])
def test_a_missing_package_is_named_not_taken_for_unprepared_data(prepared, module, package):
    """Without the package tfds reads the records with (array_record) or decodes the images with
    (Pillow), the one-line DataError says what to install; it does not claim the data is not
    prepared. A fresh interpreter, with the module made unimportable before anything loads it."""
    data_dir = prepared[0]
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from gmvc.data import tfds_source\n"
            f"try:\n    tfds_source.load({NAME!r}, data_dir={str(data_dir)!r})\n"
            f"except Exception as e:\n    print('RAISED', type(e).__name__, '|', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RAISED ")]   # tfds prints banners too
    assert len(lines) == 1 and lines[0].startswith("RAISED DataError | "), (out.stdout, out.stderr[-2000:])
    assert f"cannot be read: tensorflow-datasets needs a package that is not installed: pip install {package} (" \
        in lines[0] and "not prepared" not in lines[0], lines[0]


def test_tfds_can_start_preparing_catalogue_datasets():
    """`tfds build mnist` (download_and_prepare) first reads the builder's checksums beside its
    code, which needs the importlib_resources package: tensorflow-datasets 4.9.x declares it only
    for Python < 3.9, so gmvc's dependencies must bring it (pyproject.toml)."""
    urls = tfds.builder_cls("mnist").url_infos
    assert any("train-images" in url for url in urls), sorted(urls)


def test_a_large_tfds_source_is_read_by_records(prepared, monkeypatch):
    """Above rows.LAZY_ABOVE_BYTES the images stay in the ArrayRecord files and are decoded when
    rows are read: the same values and labels as loading them."""
    from gmvc.data import load_dataset, rows
    from gmvc.data.tfds_source import TfdsImages
    data_dir, images, _ = prepared
    c = load_config("vade_digits.py", {"data.source": f"tfds:{NAME}", "data.data_dir": str(data_dir)})
    loaded = load_dataset(c.data, 0)
    monkeypatch.setattr(rows, "LAZY_ABOVE_BYTES", 0)
    lazy = load_dataset(c.data, 0)
    assert isinstance(lazy.x.source, TfdsImages) and lazy.x.stored().dtype == np.uint8
    assert np.array_equal(np.asarray(lazy.x), np.asarray(loaded.x)) and np.array_equal(lazy.y, loaded.y)
    assert np.array_equal(lazy.x[[5, 1, 5]], np.asarray(loaded.x)[[5, 1, 5]])

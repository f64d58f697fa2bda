"""--mode=predict: cluster any data with a trained run, in fixed-size batches, streamed to csv,
json lines or npz. Memory stays bounded by the batch: an `.npy` file is read through a memory
map, each batch is checked (shape, NaN) and predicted, and its rows are appended to the output
(npz: to memory-mapped `.npy` members, zipped at the end). The output is written under a
temporary name and renamed when complete, so an earlier file is never half-overwritten."""
import json
import os
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np

from gmvc.core import batching
from gmvc.core.k_moves import cluster_slots, on_slots
from gmvc.data import load_dataset, validate
from gmvc.errors import ConfigError, DataError, RunError

FORMATS = ("csv", "jsonl", "npz")


def open_source(data_cfg, seed, data_shape):
    """(n, rows(start, stop) -> (x float32 [b, *data_shape], y [b] or None)) for a data source,
    read once. `file:<.npy>` is memory-mapped and checked batch by batch; other sources are
    loaded as the training loop loads them."""
    source = data_cfg.source
    path = pathlib.Path(source.partition(":")[2]).expanduser() if source.startswith("file:") else None
    if path is not None and path.suffix == ".npy" and path.is_file():
        try:
            x_all = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise DataError(f"data file {str(path)!r} could not be read as .npy: {e}") from None
        n = min(len(x_all), data_cfg.limit) if data_cfg.limit else len(x_all)
        return n, lambda start, stop: (_check_shape(validate(np.asarray(x_all[start:stop]), None, source).x,
                                                    data_shape, source, start), None)
    data = load_dataset(data_cfg, seed)
    x = _check_shape(data.x, data_shape, source, 0)
    return len(x), lambda start, stop: (x[start:stop], None if data.y is None else data.y[start:stop])


def _check_shape(x, data_shape, source, start):
    if tuple(x.shape[1:]) != tuple(data_shape):
        raise DataError(f"data {source!r} (rows from {start}): samples of shape {list(x.shape[1:])}; the model "
                        f"was trained on {list(data_shape)}")
    return x


class _Writer:
    """Appends batches of predictions to one output file of the chosen format."""

    def __init__(self, path, fmt, num_clusters, z_dim, total):
        self.path, self.fmt, self.k, self.total = pathlib.Path(path), fmt, num_clusters, total
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.count = 0
        if fmt == "npz":
            self.dir = pathlib.Path(tempfile.mkdtemp(prefix="gmvc_predict_", dir=self.path.parent))
            shapes = {"z_mean": (total, z_dim)}
            if num_clusters:
                shapes.update(cluster=(total,), probs=(total, num_clusters))
            self.arrays = {name: np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+",
                                                           dtype=np.int64 if name == "cluster" else np.float32,
                                                           shape=shape) for name, shape in shapes.items()}
        else:
            self.file = open(self.tmp, "w")
            if fmt == "csv":
                header = ["index"] + (["cluster"] if num_clusters else [])
                header += [f"p_{k}" for k in range(num_clusters)] + [f"z_{d}" for d in range(z_dim)]
                self.file.write(",".join(header) + "\n")

    def add(self, log_gamma, z_mean):
        b = len(z_mean)
        index = np.arange(self.count, self.count + b)
        probs = np.exp(log_gamma.astype(np.float64)) if self.k else None
        cluster = probs.argmax(1) if self.k else None
        if self.fmt == "npz":
            self.arrays["z_mean"][index] = z_mean
            if self.k:
                self.arrays["cluster"][index] = cluster
                self.arrays["probs"][index] = probs
        elif self.fmt == "csv":
            for i in range(b):
                head = [str(index[i])] + ([str(cluster[i])] if self.k else [])
                values = ([f"{p:.6g}" for p in probs[i]] if self.k else []) + [f"{v:.6g}" for v in z_mean[i]]
                self.file.write(",".join(head + values) + "\n")
        else:
            for i in range(b):
                record = {"index": int(index[i])}
                if self.k:
                    record.update(cluster=int(cluster[i]), probs=[round(float(p), 6) for p in probs[i]])
                record["z_mean"] = [round(float(v), 6) for v in z_mean[i]]
                self.file.write(json.dumps(record) + "\n")
        self.count += b

    def close(self):
        if self.fmt == "npz":
            for a in self.arrays.values():
                a.flush()
            self.arrays = None
            with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                for member in sorted(self.dir.iterdir()):
                    z.write(member, member.name)
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        if self.fmt == "npz":
            self.arrays = None
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def predict_to_file(trained, data_cfg, out_path, fmt="csv", batch_size=None, echo=print):
    """Predict every sample of `data_cfg`'s source with `trained` (gmvc.run.restore.load_trained) and
    write cluster, probabilities and latent means to `out_path`; returns the number of rows."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown prediction format {fmt!r}; known: {list(FORMATS)}")
    batch_size = batch_size or trained.config.eval.batch_size
    predict = batching.make_predict(trained.model, batch_size)
    out_path = check_output(out_path, trained.workdir)             # before anything is read or computed
    total, rows = open_source(data_cfg, trained.config.seed, trained.data_shape)
    z_dim = int(trained.config.model.z_dim)
    slots = cluster_slots(trained.config, trained.model, trained.params)    # auto: the live slots, as clusters
    try:
        writer = _Writer(out_path, fmt, len(slots), z_dim, total)
    except OSError as e:
        raise RunError(f"cannot write the predictions to {out_path}: {e.strerror or e}") from None
    clusters, labels = [], []
    try:
        for start in range(0, total, batch_size):
            x, y = rows(start, min(total, start + batch_size))
            x = trained.scaling.apply(x)                        # as the run read its data
            out = on_slots(check_finite_outputs(predict(trained.params, x), x, f"data {data_cfg.source!r}", start),
                           slots)
            writer.add(out.get("log_gamma"), out["z_mean"])
            if y is not None and "log_gamma" in out:
                clusters.append(out["log_gamma"].argmax(1))
                labels.append(y)
            if (start // batch_size) % 50 == 0:
                echo(f"predicted {min(start + len(x), total)}/{total}", flush=True)
        writer.close()
    except BaseException as e:
        writer.abort()
        if isinstance(e, OSError):                      # a full disk, a folder removed meanwhile ...
            raise RunError(f"cannot write the predictions to {out_path}: {e.strerror or e}") from None
        raise
    if clusters and sum(map(len, labels)) == writer.count:        # labels only score the predictions
        from gmvc.core import metrics
        report = metrics.clustering_report(np.concatenate(clusters), np.concatenate(labels))
        echo("clustering: " + " ".join(f"{m}={report[m]:.4f}" for m in ("acc", "majority_acc", "nmi", "ari")),
             flush=True)
    echo(f"wrote predictions ({writer.count} rows, {fmt}): {out_path}", flush=True)
    return writer.count


def check_output(out_path, workdir=None):
    """`out_path` as a Path once it is known to take the predictions: not a folder, not a file of
    the run in `workdir` (other than earlier predictions), its folder writable (created if
    missing). A RunError names the path and the cause."""
    out_path = pathlib.Path(out_path).expanduser()
    if out_path.is_dir():
        raise RunError(f"--output {out_path} is a folder: give a file path, e.g. {out_path / 'predict.csv'}")
    if workdir is not None and out_path.exists() and not out_path.name.startswith("predict") and \
            out_path.resolve().is_relative_to(pathlib.Path(workdir).resolve()):
        raise RunError(f"--output {out_path} is a file of the run in {workdir}; predictions would replace it: "
                       f"give another path")
    probe = out_path.with_name(out_path.name + ".partial")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(probe, "x"):
            pass
        probe.unlink()
    except FileExistsError:          # an earlier run's leftover (or a running predict's): left alone
        if not os.access(probe, os.W_OK):
            raise RunError(f"cannot write the predictions to {out_path}: {probe} is not writable") from None
    except OSError as e:
        raise RunError(f"cannot write the predictions to {out_path}: {e.strerror or e}") from None
    return out_path


def check_finite_outputs(out, x, what, start=0):
    """`out` (a batch of model.predict) when every value is finite, else one DataError naming
    the first samples and their scale: values far beyond the training data's overflow."""
    bad = np.zeros(len(out["z_mean"]), bool)
    for a in out.values():
        bad |= ~np.isfinite(np.asarray(a, np.float64)).reshape(len(bad), -1).all(1)
    if bad.any():
        rows = (np.nonzero(bad)[0] + start)[:5].tolist()
        raise DataError(f"{what}: the model's outputs are not finite for {int(bad.sum())} samples (first: {rows}); "
                        f"their values reach {float(np.abs(x[bad]).max()):.3g}, far beyond the scale of the data "
                        f"the run was trained on")
    return out

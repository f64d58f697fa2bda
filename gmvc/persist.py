"""Saving and loading the estimators. A saved model is its run's folder (the checkpoints,
config.json, results.json, scaling.json) with estimator.json (the class and its arguments) and
labels.npy (the training samples' clusters); gmvc.load also reads a command-line run's folder.

What loading trusts: only files inside the folder (a link that leaves it is refused), no code
(a config saved as a file is read as the config.json the run wrote) and no place to write (a
loaded model fitted again trains in a new folder of its own, whatever estimator.json says).
"""
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from gmvc import config as config_lib
from gmvc import recipes
from gmvc.data.prepare import SCALING_FILE
from gmvc.errors import CheckpointError
from gmvc.run.restore import RESULTS_FILE, load_trained, read_json, read_results

ESTIMATOR_FILE = "estimator.json"
LABELS_FILE = "labels.npy"
PREDICTIONS_FILE = "predictions.csv"
READ_FILES = (ESTIMATOR_FILE, "config.json", RESULTS_FILE, LABELS_FILE, PREDICTIONS_FILE, SCALING_FILE)
READ_FOLDERS = ("checkpoints",)


def save(est, path):
    """Write the fitted estimator `est` to `path`, a new folder (see GMVCEstimator.save)."""
    path = pathlib.Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; save into a new folder (nothing was written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        shutil.copytree(est.workdir_, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.png", "metrics.jsonl", PREDICTIONS_FILE, ".gmvc.lock"))
        (tmp / ESTIMATOR_FILE).write_text(json.dumps(_info(est), indent=2) + "\n")
        if getattr(est, "labels_", None) is not None:
            np.save(tmp / LABELS_FILE, np.asarray(est.labels_, np.int64))
        if path.exists():
            raise FileExistsError(f"{path} appeared while saving; nothing was written there")
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)        # ours alone: mkdtemp made it
        raise
    return path


def _info(est):
    params = est.get_params()
    params["workdir"] = None                          # a saved model is not tied to the folder it trained in
    named = params.get("config") is None or (isinstance(params["config"], str) and params["config"] in recipes.RECIPES)
    if "config" in params and not named:
        params["config"] = config_lib.to_dict(est.config_)    # the config itself, never a file to run
    return {"class": type(est).__name__, "params": _jsonable(params), "sample_shape": list(est.sample_shape_),
            "n_features_in": int(est.n_features_in_), "n_iter": int(getattr(est, "n_iter_", 0))}


def load(path, classes):
    """An estimator (one of `classes`; the first for a command-line run) from a folder written by
    save, or from a command-line run's folder."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} holds no gmvc run (no config.json)")
    check_links(path)
    info = read_json(path / ESTIMATOR_FILE, required=False)
    est = _estimator(path, info, classes)
    trained = load_trained(path)
    est._set_trained(trained)
    est.labels_ = saved_labels(path, read_results(path).get("num_samples"), trained.model.num_clusters)
    est.n_features_in_ = int(trained.data_shape[0])      # what validate_data counts: X.shape[1]
    est.n_iter_ = trained.step if info is None else info["n_iter"]
    return est


def _estimator(path, info, classes):
    """The estimator estimator.json describes (checked field by field), unfitted."""
    if info is None:                                   # a command-line run: its config, as it ran
        return classes[0](config=read_json(path / "config.json", required=True))
    where = path / ESTIMATOR_FILE
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(info).__name__}")
    by_name = {c.__name__: c for c in classes}
    cls = by_name.get(info.get("class"))
    if cls is None:
        raise CheckpointError(f"{where}: field 'class' must be one of {sorted(by_name)}, got {info.get('class')!r}")
    params = info.get("params", {})
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: field 'params' must be an object of {cls.__name__}'s arguments, "
                              f"got {params!r}")
    known = cls._get_param_names()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise CheckpointError(f"{where}: field 'params' holds {unknown[0]!r}, which is not an argument of "
                              f"{cls.__name__} (its arguments: {', '.join(known)})")
    n_iter = info.setdefault("n_iter", 0)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise CheckpointError(f"{where}: field 'n_iter' must be an int >= 0, got {n_iter!r}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    params["workdir"] = None                           # never where the files say: a refit makes its own folder
    if isinstance(params.get("config"), str) and params["config"] not in recipes.RECIPES:
        params["config"] = read_json(path / "config.json", required=True)   # a saved model never runs a file
    est = cls(**params)
    try:
        est._check_params()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: field 'params': {e}") from None
    return est


def check_links(path):
    """Refuse a folder whose files that load reads (or anything under its checkpoint folders) are
    links leading out of it: a saved model reads its own files only."""
    root = path.resolve()
    for name in READ_FILES + READ_FOLDERS:
        top = path / name
        if not os.path.lexists(top):
            continue
        _check_inside(root, top)
        if name in READ_FOLDERS and top.is_dir():
            for folder, dirs, files in os.walk(top):
                for entry in dirs + files:
                    _check_inside(root, pathlib.Path(folder) / entry)


def _check_inside(root, p):
    try:
        target = p.resolve()
    except (OSError, RuntimeError) as e:               # a loop of links
        raise CheckpointError(f"{p} cannot be resolved ({e}); nothing was loaded") from None
    if not target.is_relative_to(root):
        raise CheckpointError(f"{p} is a link to {target}, outside {root}: a saved model reads only the files of "
                              f"its own folder (nothing was loaded)")


def saved_labels(path, n_samples, n_clusters):
    """The training samples' clusters, [N] ints in 0..K-1: labels.npy of a saved estimator, or the
    cluster column of a command-line run's predictions.csv; None when neither is there (or the
    model does not cluster)."""
    npy, csv = path / LABELS_FILE, path / PREDICTIONS_FILE
    if not n_clusters:
        return None
    if npy.is_file():
        where = npy
        try:
            labels = np.load(npy, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"{npy} is not a readable .npy array ({e})") from None
    elif csv.is_file():
        where = f"{csv}, column 'cluster'"
        with csv.open() as f:
            header = f.readline().strip().split(",")
        if "cluster" not in header:
            return None
        try:
            labels = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=header.index("cluster"), dtype=np.int64,
                                ndmin=1)
        except ValueError as e:
            raise CheckpointError(f"{where}: not a column of ints ({e})") from None
    else:
        return None
    return _checked_labels(labels, where, n_samples, n_clusters)


def _checked_labels(labels, where, n_samples, n_clusters):
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 1:
        what = f"dtype {labels.dtype}, shape {list(labels.shape)}" if isinstance(labels, np.ndarray) else "not an array"
        raise CheckpointError(f"{where}: the labels must be ints of shape [N], got {what}")
    if n_samples is not None and len(labels) != n_samples:
        raise CheckpointError(f"{where}: {len(labels)} labels for the run's {n_samples} samples "
                              f"(results.json, field 'num_samples')")
    if len(labels) and not (0 <= labels.min() and labels.max() < n_clusters):
        raise CheckpointError(f"{where}: the labels must lie in 0..{n_clusters - 1}, got values in "
                              f"[{labels.min()}, {labels.max()}]")
    return labels


def _jsonable(params):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
            if v is None or isinstance(v, (bool, int, float, str, tuple, list, dict))}

"""The one way to restore a run: its latest checkpoint (or, under early stopping, its best
step's parameters), with the restart its training chose (recorded in results.json). Generation,
prediction, the estimators, the notebooks and early stopping all restore through here; nothing
in the run directory is written or removed."""
import json
import pathlib
from typing import NamedTuple

import jax

from gmvc import config as config_lib
from gmvc.data import prepare
from gmvc.errors import CheckpointError
from gmvc.models import make_model
from gmvc.core.batching import to_host
from gmvc.run.checkpoint import Checkpointer

RESULTS_FILE = "results.json"


class Restored(NamedTuple):
    config: object
    model: object
    params: dict         # one restart's parameters: the one training chose
    step: int
    data_shape: tuple
    workdir: pathlib.Path
    restart: int
    scaling: object      # gmvc.data.prepare.Scaling: how the run read its data (new data are read the same way)


def load_trained(workdir, config=None, echo=None, data_shape=None):
    """The trained run in `workdir` (CLI or estimator). `config` defaults to the run's
    config.json; the sample shape (`data_shape`) to results.json's, or for a run that has not
    finished, its latest checkpoint's. Reads the model's parameters alone: no optimizer, phases
    or data are built. The restart is the one results.json records for the latest
    checkpoint; a run that has not finished (or was resumed past its results) gives restart 0,
    and `echo` says so."""
    workdir = pathlib.Path(workdir)
    check_run_exists(workdir)
    config = read_config(workdir) if config is None else _resolved_like(config, workdir)
    results = read_results(workdir)
    data_shape = data_shape or results.get("data_shape") or _checkpoint_data_shape(workdir, config)
    model = make_model(config.model, tuple(data_shape))
    stacked, step, _, latest = _restore(config, workdir, model)
    finished = results.get("steps") == latest
    restart = int(results.get("chosen_restart", 0)) if finished else 0
    if not 0 <= restart < config.train.restarts:
        raise CheckpointError(f"run {workdir}: restart {restart} is not among its {config.train.restarts}")
    if echo and step < config.train.steps:
        echo(f"note: the run in {workdir} gives its parameters of step {step} of {config.train.steps} (where it "
             f"stopped, or its best step under early stopping)", flush=True)
    if echo and not finished and config.train.restarts > 1:
        echo(f"note: the run in {workdir} has no restart choice for its checkpoint of step {latest} (it has not "
             f"finished); restart 0 of {config.train.restarts} is used", flush=True)
    params = jax.tree.map(lambda a: a[restart], stacked)
    scaling = prepare.load(workdir, config.data.scaling, tuple(data_shape))
    return Restored(config, model, params, step, tuple(data_shape), workdir, restart, scaling)


def _checkpoint_data_shape(workdir, config):
    """The sample shape the latest checkpoint records."""
    ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints", config.train.max_checkpoints)
    try:
        step = ckpt.latest_step()
        shape = ckpt.meta(step).get("data_shape") if step else None
    finally:
        ckpt.close()
    if not (isinstance(shape, list) and shape and all(_count(d) and d > 0 for d in shape)):
        raise CheckpointError(f"run {workdir} records no sample shape (results.json, or its latest checkpoint's "
                              f"meta): it has no checkpoint written by this version of gmvc")
    return shape


def read_results(workdir):
    """results.json of the run in `workdir` ({} when it has none), its fields that restoring
    reads checked: a CheckpointError names the file and the field."""
    path = pathlib.Path(workdir) / RESULTS_FILE
    results = read_json(path, required=False)
    if results is None:
        return {}
    if not isinstance(results, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(results).__name__}")
    checks = {"data_shape": (lambda v: isinstance(v, list) and len(v) > 0 and all(_count(d) and d > 0 for d in v),
                             "a list of positive ints"),
              "steps": (_count, "an int >= 0"), "chosen_restart": (_count, "an int >= 0"),
              "num_samples": (_count, "an int >= 0")}
    for field, (ok, what) in checks.items():
        if field in results and not ok(results[field]):
            raise CheckpointError(f"{path}: field {field!r} must be {what}, got {results[field]!r}")
    return results


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _resolved_like(config, workdir):
    """`config` with what the run chose from its data taken from its config.json: data.scaling,
    the likelihood, the batch sizes and the phases (gmvc/data/prepare.py, gmvc/recipes/rules.py)."""
    stored = read_config(workdir)
    config = config.copy_and_resolve_references()
    config.unlock()
    config.data.scaling, config.model.likelihood = stored.data.scaling, stored.model.likelihood
    config.train.batch_size, config.phases = stored.train.batch_size, stored.phases.to_dict()
    config.lock()
    return config


def check_run_exists(workdir):
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"no run in {workdir}: {checkpoints} does not exist (train it first, with the same "
                              f"--config and --workdir)")


def restore_stacked(config, workdir, model):
    """(params of every restart [R, ...], step, the phase's name) from the latest checkpoint of
    the run in `workdir`, or under early stopping (train.patience > 0) from its best step's
    parameters."""
    return _restore(config, workdir, model)[:3]


def _restore(config, workdir, model):
    """restore_stacked's, and the latest checkpoint's step. Reads the parameters alone: no
    optimizer, phases or tables are built."""
    config.lock()
    check_run_exists(workdir)
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    ckpt = Checkpointer(checkpoints, config.train.max_checkpoints)
    try:
        latest = step = ckpt.latest_step()
        if not step:
            raise CheckpointError(f"no checkpoint in {checkpoints} (train the run first)")
        like_params = params_like(model, config.train.restarts)
        meta = ckpt.meta(latest)
        record = meta.get("early_stopping") if config.train.patience > 0 else None
        if record and record.get("best_step"):
            step = record["best_step"]          # kept by the manager (Checkpointer's BestN)
        stacked = jax.tree.map(to_host, ckpt.restore_params(step, like_params))
        return stacked, step, meta.get("phase"), latest
    finally:
        ckpt.close()


def params_like(model, restarts):
    """The shapes and dtypes of a run's [R, ...] parameters (nothing is initialised)."""
    return jax.eval_shape(lambda: jax.vmap(model.init)(jax.random.split(jax.random.key(0), restarts)))


def read_config(workdir):
    return config_lib.from_dict(read_json(pathlib.Path(workdir) / "config.json", required=True))


def read_json(path, required):
    path = pathlib.Path(path)
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} does not exist")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); it was left in place") from None

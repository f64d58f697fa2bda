"""The one file that talks to orbax. A checkpoint holds up to three items: "state" (step,
params, opt_state), "tables" (the per-sample step inputs: neighbours, groups) and "meta" (JSON:
the phase it was written in, early stopping's record). Parameters restore alone, without an
optimizer or the tables (restore_params). The manager keeps the `max_to_keep` latest checkpoints
and, of those saved with a validation ELBO (early stopping's improvements), the best one.

Checkpoints are written synchronously, so a step that is listed is complete; a run killed
mid-save leaves only a temporary folder that orbax ignores. Each checkpoint also gets a list of
its files' SHA-256 sums (CHECKSUMS), checked before it is read: a changed byte is reported by
file, and a run resumes from its newest intact checkpoint."""
import hashlib
import json
import logging
import pathlib

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as keep

from gmvc.errors import CheckpointError


class Checkpointer:
    def __init__(self, directory, max_to_keep=3):
        self.directory = pathlib.Path(directory).absolute()
        self._intact = set()           # steps verified (or written) by this checkpointer
        best = keep.BestN(get_metric_fn=_val_elbo, n=1, keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True,
                                               preservation_policy=keep.AnyPreservationPolicy(
                                                   [keep.LatestN(max_to_keep), best]),
                                               best_fn=_val_elbo, best_mode="max",
                                               keep_checkpoints_without_metrics=False)
        try:
            # The handler named up front: a manager opened on existing checkpoints otherwise
            # knows it only after a save or restore, and item_metadata returns None.
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
                "state": ocp.PyTreeCheckpointHandler(), "tables": ocp.PyTreeCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()})
        except Exception as e:
            raise CheckpointError(f"checkpoint folder {self.directory} could not be opened: {e}") from None

    def latest_step(self):
        return self._manager.latest_step()

    def path(self, step):
        return self.directory / str(step)

    def save(self, step, state, tables=None, meta=None, val_elbo=None):
        """Write checkpoint `step`: `state` a dict (a TrainState's fields, or only "params"),
        `tables` a dict of per-sample arrays, `meta` a JSON-able dict; `val_elbo`, early stopping's
        new best, keeps it past max_to_keep until a better one is saved. A failure (a full disk,
        a read-only folder) is one line naming the path and the cause, and the earlier checkpoints
        stay as they were."""
        items = {"state": ocp.args.PyTreeSave(dict(state))}
        if tables:
            items["tables"] = ocp.args.PyTreeSave(dict(tables))
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**items),
                               metrics=None if val_elbo is None else {"val_elbo": float(val_elbo)})
            self._manager.wait_until_finished()
            if jax.process_index() == 0:
                sums = {str(f.relative_to(self.path(step))): _sha256(f) for f in _files(self.path(step))}
                (self.path(step) / CHECKSUMS).write_text(json.dumps(sums, indent=0, sort_keys=True))
            self._intact.add(int(step))
        except Exception as e:
            raise CheckpointError(f"could not write checkpoint {self.path(step)}: {_cause(e)}; the earlier "
                                  f"checkpoints are kept") from None

    def verify(self, step):
        """None if checkpoint `step` is as it was written (or predates checksums), else what changed.
        A checkpoint is read through once: found intact (or just written), it is not hashed again."""
        if step in self._intact:
            return None
        listed = self.path(step) / CHECKSUMS
        if not listed.is_file():
            return None
        try:
            sums = json.loads(listed.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"its {CHECKSUMS} is unreadable ({e})"
        for name, digest in sorted(sums.items()):
            f = self.path(step) / name
            if not f.is_file():
                return f"{name} is missing"
            if _sha256(f) != digest:
                return f"{name} changed since it was written"
        self._intact.add(step)
        return None

    def latest_valid_step(self, echo=None):
        """The newest checkpoint that verifies, or 0. A newer one that does not is moved aside to
        corrupt_<step> (kept, never deleted) and `echo` says so, so the run retrains from there."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = self.verify(step)
            if problem is None:
                return step
            if jax.process_count() > 1:
                raise CheckpointError(f"checkpoint {self.path(step)} is corrupt: {problem}; it was left in place")
            aside = self.directory / f"corrupt_{step}"
            while aside.exists():
                aside = aside.with_name(aside.name + "_")
            self.path(step).rename(aside)
            self._manager.reload()
            if echo:
                echo(f"checkpoint {self.path(step)} is corrupt ({problem}): moved to {aside}, the run resumes from "
                     f"the checkpoint before it", flush=True)
        return 0

    def restore(self, step, like, tables_like=None):
        """(state, tables) of checkpoint `step` in the structure, shapes and dtypes of `like` (a
        dict of the state's fields, or a part of them: {"params": ...} restores the parameters
        alone) and `tables_like` (a dict, or None: not read). A corrupt or incompatible checkpoint
        is reported by path and left where it is."""
        problem = self.verify(step)
        if problem:
            raise CheckpointError(f"checkpoint {self.path(step)} is corrupt: {problem}; it was left in place")
        self._check_items(step)
        like, tables_like = dict(like), dict(tables_like or {})
        self._check_metadata(step, like, "state")
        self._check_metadata(step, tables_like, "tables")
        items = {"state": _restore_args(like, partial=True)}
        if tables_like:
            items["tables"] = _restore_args(tables_like, partial=False)
        try:
            restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.path(step)} could not be restored (corrupt, or written by a run with a "
                f"different model/config): {type(e).__name__}: {str(e)[:500]}. It was left in place; "
                f"use another --workdir to start afresh.") from None
        state, tables = restored["state"], restored["tables"] if tables_like else {}
        _check_same_shapes((state, tables), (like, tables_like), self.path(step))
        return state, tables

    def _check_items(self, step):
        """A checkpoint without the "state" item: one line, not orbax's error."""
        if self.path(step).is_dir() and not (self.path(step) / "state").is_dir():
            held = sorted(p.name for p in self.path(step).iterdir() if p.is_dir())
            raise CheckpointError(f"checkpoint {self.path(step)} holds no 'state' item (it holds {held}): it was "
                                  f"written in another format; it was left in place; use another --workdir to "
                                  f"train afresh")

    def restore_params(self, step, params_like):
        """The parameters of checkpoint `step` alone (no optimizer, no tables), shaped like
        `params_like`."""
        return self.restore(step, {"params": params_like})[0]["params"]

    def meta(self, step):
        """Checkpoint `step`'s "meta" item ({} where it has none); an unreadable one is a
        CheckpointError, not a silent {} (early stopping's record lives there)."""
        if not (self.path(step) / "meta").is_dir():
            return {}
        try:
            meta = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.path(step)}: its meta could not be read ({type(e).__name__}: "
                                  f"{str(e)[:200]}); it was left in place") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {self.path(step)}: its meta is not a JSON object; it was left in place")
        return meta

    def steps(self):
        return list(self._manager.all_steps())

    def phase(self, step):
        """The name of the phase checkpoint `step` was written in, or None."""
        return self.meta(step).get("phase")

    def read(self, step):
        """Everything checkpoint `step` holds, as saved: {"step", "params", "opt_state", and its
        tables by name} (arrays as numpy)."""
        self._check_items(step)
        try:
            restored = self._manager.restore(int(step))
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.path(step)} could not be read: {type(e).__name__}: "
                                  f"{str(e)[:300]}") from None
        return {**restored["state"], **(restored.get("tables") or {})}

    def _check_metadata(self, step, like, item):
        """Compare the shapes the checkpoint's metadata lists for `item` with `like`'s before
        reading any array: a checkpoint of another model is reported without starting a restore
        that fails part way (orbax then leaves its other reads unawaited). Leaves only one side
        names are left to the restore to judge."""
        try:
            saved = _leaf_shapes(self._manager.item_metadata(int(step))[item].tree)
        except Exception:
            return                  # the restore reports an unreadable checkpoint
        wanted = _leaf_shapes(like)
        differ = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
        if differ:
            k = differ[0]
            more = f", and {len(differ) - 1} more" if len(differ) > 1 else ""
            raise CheckpointError(f"checkpoint {self.path(step)} does not match this config (array shapes differ: "
                                  f"{'.'.join(k)} is {saved[k]} there, {wanted[k]} here{more}); it was left in "
                                  f"place; use another --workdir to start afresh.")

    def close(self):
        if self._manager is not None:
            self._manager.close()
            self._manager = None


CHECKSUMS = "gmvc_checksums.json"


def _val_elbo(metrics):
    return metrics["val_elbo"]


class _QuietUnscored(logging.Filter):
    """Checkpoints saved without a validation ELBO are the rule (only early stopping's best steps
    carry one), not a warning on stderr."""

    def filter(self, record):
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUnscored())


def _files(directory):
    return sorted(f for f in pathlib.Path(directory).rglob("*") if f.is_file() and f.name != CHECKSUMS)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cause(e):
    """The innermost OSError's words (no space left, permission denied), else the error's."""
    seen, inner = set(), e
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.strerror:
            return f"{inner.strerror} ({inner.filename or type(inner).__name__})"
        inner = inner.__cause__ or inner.__context__
    return f"{type(e).__name__}: {str(e)[:200]}"


def _key_name(key):
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_shapes(tree):
    """{path of names: shape} of a pytree's array leaves (a metadata tree's too)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda a: hasattr(a, "shape"))[0]
    return {tuple(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _restore_args(like, partial):
    """The PyTreeRestore of an item shaped like `like` (partial: the leaves `like` names only)."""
    def leaf(a):
        a = ocp.utils.to_shape_dtype_struct(a)
        if getattr(a, "sharding", None) is None:          # host arrays: read onto this process's first device
            first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            a = jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=first)
        return a

    abstract = jax.tree.map(leaf, like)
    return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=partial)


def _check_same_shapes(restored, like, path):
    got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), restored)
    want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), like)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise CheckpointError(f"checkpoint {path} does not match this config's model (parameter shapes differ); "
                              f"it was left in place; use another --workdir to start afresh.")

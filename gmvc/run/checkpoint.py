"""The one file that talks to orbax. Checkpoints are written synchronously, so a step that is
listed is complete; a run killed mid-save leaves only a temporary folder that orbax ignores."""
import pathlib

import jax
import orbax.checkpoint as ocp

from gmvc.errors import CheckpointError


class Checkpointer:
    def __init__(self, directory, max_to_keep=3):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               create=True)
        try:
            # The handler named up front: a manager opened on existing checkpoints otherwise
            # knows it only after a save or restore, and item_metadata returns None.
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_handlers=ocp.StandardCheckpointHandler())
        except Exception as e:
            raise CheckpointError(f"checkpoint folder {self.directory} could not be opened: {e}") from None

    def latest_step(self):
        return self._manager.latest_step()

    def path(self, step):
        return self.directory / str(step)

    def save(self, step, state):
        self._manager.save(int(step), args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def saved_shape(self, step, key):
        """Shape of the top-level array `key` in checkpoint `step`, or None if it holds none."""
        try:
            tree = self._manager.item_metadata(int(step)).tree
            return tuple(tree[key].shape) if key in tree else None
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.path(step)} could not be read (corrupt?): "
                                  f"{type(e).__name__}: {str(e)[:300]}. It was left in place.") from None

    def restore(self, step, like):
        """Restore checkpoint `step` into the structure, shapes and dtypes of `like`.
        A corrupt or incompatible checkpoint is reported by path and left where it is."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        self._check_metadata(step, like)
        try:
            restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.path(step)} could not be restored (corrupt, or written by a run with a "
                f"different model/config): {type(e).__name__}: {str(e)[:500]}. It was left in place; "
                f"use another --workdir to start afresh.") from None
        _check_same_shapes(restored, like, self.path(step))
        return restored

    def _check_metadata(self, step, like):
        """Compare the shapes the checkpoint's metadata lists with `like`'s before reading any
        array: a checkpoint of another model is reported without starting a restore that fails
        part way (orbax then leaves its other reads unawaited). Leaves only one side names are
        left to the restore to judge."""
        try:
            saved = _leaf_shapes(self._manager.item_metadata(int(step)).tree)
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
        self._manager.close()


def _key_name(key):
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_shapes(tree):
    """{path of names: shape} of a pytree's array leaves (a metadata tree's too)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda a: hasattr(a, "shape"))[0]
    return {tuple(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def _check_same_shapes(restored, like, path):
    got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), restored)
    want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), like)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise CheckpointError(f"checkpoint {path} does not match this config's model (parameter shapes differ); "
                              f"it was left in place; use another --workdir to start afresh.")

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
        try:
            restored = self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.path(step)} could not be restored (corrupt, or written by a run with a "
                f"different model/config): {type(e).__name__}: {str(e)[:500]}. It was left in place; "
                f"use another --workdir to start afresh.") from None
        _check_same_shapes(restored, like, self.path(step))
        return restored

    def close(self):
        self._manager.close()


def _check_same_shapes(restored, like, path):
    got = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), restored)
    want = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), like)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise CheckpointError(f"checkpoint {path} does not match this config's model (parameter shapes differ); "
                              f"it was left in place; use another --workdir to start afresh.")

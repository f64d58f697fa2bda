"""What the phases of a run share: the model, the phases and their compiled programs, the data
as training reads it, and the run's keys. Built once by the trainer, after validation."""
from typing import NamedTuple, Optional

import jax
import numpy as np

from gmvc.data.rows import Rows, stored
from gmvc.errors import DataError
from gmvc.training import parallel, stream
from gmvc.training.embedding_phases import EmbeddingPhases
from gmvc.training.phases import neighbour_k, uses_groups, uses_neighbours
from gmvc.training.program import make_programs, uses_host_loop
from gmvc.training.state import Tables


class RunContext(NamedTuple):
    config: object
    data: object                 # the Dataset (every sample)
    model: object
    phases: list
    layout: parallel.Layout
    programs: dict               # train phase name -> Program (gmvc/training/program.py)
    embedding: EmbeddingPhases   # the init_prior and neighbours phases
    inputs: object               # what the model reads, every sample (an array or {"x", "y"})
    split: Optional[tuple]       # (train rows, validation rows), or None
    x_device: object             # the training inputs placed for the layout (streamed: on the host)
    rngs: dict                   # "init", "train", "sample", "prior"
    stream_note: Optional[str] = None   # why the inputs are streamed (or why not, above the budget)
    streamed: bool = False              # the training inputs stay on the host (gmvc/training/stream.py)

    @property
    def x_train(self):
        """The training rows of the data (host, as stored), as the embedding phases read them."""
        x = stored(self.data.x)
        return x if self.split is None else rows(x, self.split[0])

    @property
    def y_train(self):
        return self.data.y if self.data.y is None or self.split is None else self.data.y[self.split[0]]

    @property
    def val_inputs(self):
        return None if self.split is None else rows(self.inputs, self.split[1])

    @property
    def last_phase(self):
        return [p.name for p in self.phases if p.kind == "train"][-1]

    def tables_like(self, index):
        """Tables of int32 ShapeDtypeStructs: the per-sample tables train phase `index` reads."""
        r, n, spec = self.config.train.restarts, len(self.x_train), self.phases[index].spec
        like = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)
        return Tables(like(r, n, neighbour_k(self.phases, index)) if uses_neighbours(spec) else None,
                      like(r, n) if uses_groups(spec) else None)


def build(plan, say=None):
    """The RunContext of a gmvc.validate.Plan: its data split and placed, its programs. `say`
    reports the embedding phases' choices, one line each."""
    config, data, model, phases, layout = plan.config, plan.data, plan.model, plan.phases, plan.layout
    split = split_indices(len(data.x), config.train.validation_fraction, config.seed)
    num_train = len(data.x) if split is None else len(split[0])
    inputs = model_inputs(model, data)
    train_inputs = inputs if split is None else rows(inputs, split[0])
    nbytes = sum(a.nbytes for a in jax.tree.leaves(train_inputs))
    streamed, note = stream.decide(config.parallel, nbytes, layout, uses_host_loop(config))
    init, train, sample, prior = jax.random.split(jax.random.key(config.seed), 4)
    return RunContext(config, data, model, phases, layout,
                      make_programs(config, model, phases, num_train, layout, streamed=streamed),
                      EmbeddingPhases(model, config.train.restarts, config.eval.batch_size, phases, say), inputs, split,
                      train_inputs if streamed else parallel.put_data(layout, train_inputs),
                      {"init": init, "train": train, "sample": sample, "prior": prior}, note, streamed)


def rows(inputs, index):
    """The rows `index` of the inputs (of Rows: a view, nothing read)."""
    return jax.tree.map(lambda a: a.subset(index) if isinstance(a, Rows) else a[index], inputs)


def model_inputs(model, data):
    """What the model reads: the data array as stored (8-bit data stay uint8: the model reads
    them as value / 255), or {"x", "y"} for a model conditioned on labels."""
    x = stored(data.x)
    if not model.num_labels:
        return x
    if data.y is None:
        raise DataError(f"this model is conditioned on labels (num_labels={model.num_labels}) but dataset "
                        f"{data.name!r} has none")
    if data.y.min() < 0 or data.y.max() >= model.num_labels:
        raise DataError(f"dataset {data.name!r} has labels {int(data.y.min())}..{int(data.y.max())}; the model "
                        f"is conditioned on {model.num_labels} (model.num_clusters): labels must be 0.."
                        f"{model.num_labels - 1}")
    return {"x": x, "y": data.y.astype(np.int32)}


def validation_size(n, fraction):
    return int(round(n * fraction))


def split_indices(n, fraction, seed):
    """(train rows, validation rows), each sorted, from a permutation drawn from the seed; None
    when there is no validation split (then training reads all the data)."""
    if fraction == 0.0:
        return None
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = validation_size(n, fraction)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])

"""The evaluators of a run's log steps, each a plug-in that returns a dict of values to log
(make_evaluators), and early stopping, a rule over the validation values:

- train.validation_fraction: that share of the samples (a permutation from config.seed, no
  labels needed) never trains; at every log step its ELBO (and each ELBO term) is computed with
  fixed noise, in one compiled program per run, and logged as val_elbo, val_recon, ...
- train.patience > 0: in the last train phase, the run stops once the validation ELBO has not
  improved for `patience` log steps in a row. Each new best step is checkpointed when it is
  found, and the checkpoint manager keeps the best one besides the latest ones; the run's
  outputs (predictions, plots, results, and what load_run / the estimators restore) come from
  it. The state of early stopping (best step, best value, checks without improvement) is in
  every checkpoint's meta, so a resumed run (also after SIGKILL) continues exactly where the
  checkpoint was.
- Several restarts (train.restarts R > 1, trained together): the ELBO is computed for each; the
  run's score at a step is the best restart's (the val_* values logged are that restart's), so
  it stops when no restart improves; the restart is then chosen as usual (train.restart_choice).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gmvc.training import parallel
from gmvc.objectives import make_batch, make_elbo
from gmvc.core.batching import tree_len

# Where a logged training value differs from the ELBO term: c_prior is logged with free bits.
_TRAIN_NAMES = {"c_prior": "c_prior_kl"}


def train_elbo(values, model):
    """The training ELBO from the chunk's logged terms, when the objective has all of them."""
    names = [_TRAIN_NAMES.get(t, t) for t in model.elbo_terms]
    if names and all(isinstance(values.get(t), float) for t in names):
        return -sum(values[t] for t in names)
    return None


def place(layout, tree):
    """A copy of `tree` next to the train state's parameters (replicated over the mesh for shard_map)."""
    if layout.mode == "shard_map":
        return parallel.put_state(layout, tree)
    return jax.device_put(tree, layout.devices[0])


class ValidationELBO:
    """elbo(params [R, ...]) -> {"elbo": [R], <term>: [R]} on the validation inputs: per-sample
    terms (each sample alone, with its own fixed noise key), so padding the last batch changes
    nothing and the value does not depend on the batch size. One compiled program sums a batch;
    the batches sit on the device, or with `streamed` (training inputs streamed from the host)
    stay on the host and go to the device one at a time. Either way the same batch sums are
    added up on the host in the same order, so the value is the same."""

    def __init__(self, model, inputs, batch_size, seed, layout, streamed=False):
        self.names = model.elbo_terms
        self.layout = layout
        n = tree_len(inputs)
        bs = min(batch_size, n)
        nb = -(-n // bs)
        rows = np.arange(nb * bs).reshape(nb, bs)
        self.batches = [(jax.tree.map(lambda a: np.asarray(a[np.minimum(r, n - 1)]), inputs), r.astype(np.int32),
                         (r < n).astype(np.float32)) for r in rows]
        self.on_host = streamed
        if not streamed:
            self.batches = [place(layout, b) for b in self.batches]
        self.count = float(n)
        self.fn = jax.jit(self._make(model, seed))

    def _make(self, model, seed):
        names = self.names
        loss = make_elbo(model)

        def one(params, sample, row):
            batch = jax.tree.map(lambda a: a[None], sample)
            key = jax.random.fold_in(jax.random.key(seed), row)[None]       # [1]: per-sample keys
            return loss(params, make_batch(batch), key, 0)[1]

        def batch_sums(params, batch, row, m):
            aux = jax.vmap(one, in_axes=(None, 0, 0))(params, batch, row)
            return {t: jnp.sum(aux[t] * m) for t in names}

        return lambda params, *args: jax.vmap(batch_sums, in_axes=(0, None, None, None))(params, *args)

    def __call__(self, params):
        """params: [R, ...] arrays placed like the train state's (or host arrays)."""
        if not isinstance(jax.tree.leaves(params)[0], jax.Array):
            params = place(self.layout, params)
        sums = [self.fn(params, *(place(self.layout, b) if self.on_host else b)) for b in self.batches]
        terms = {t: sum(parallel.to_host(s[t]).astype(np.float64) for s in sums) / self.count for t in self.names}
        terms["elbo"] = -sum(terms[t] for t in self.names)
        return terms


class EarlyStopping:
    """Best validation ELBO, its step, and the log steps since. Its record goes into every
    checkpoint's meta (resume reads it back); the best step's checkpoint is written when it is
    found, and the checkpoint manager keeps it (gmvc/run/checkpoint.py)."""

    def __init__(self, patience):
        self.patience = patience
        self.best_step, self.best_value, self.bad_count = None, -math.inf, 0

    @property
    def stopped(self):
        return self.bad_count >= self.patience

    def resume(self, record):
        if record:
            self.best_step, self.bad_count = record["best_step"], record["bad_count"]
            self.best_value = -math.inf if record["best_value"] is None else record["best_value"]

    def update(self, step, value):
        """Read the validation ELBO of log step `step`; returns whether it is a new best."""
        if math.isfinite(value) and value > self.best_value:
            self.best_step, self.best_value, self.bad_count = step, value, 0
            return True
        self.bad_count += 1
        return False

    def record(self):
        return {"best_step": self.best_step, "bad_count": self.bad_count,
                "best_value": self.best_value if math.isfinite(self.best_value) else None}

    def summary(self, stopped_at):
        return {"patience": self.patience, "best_step": self.best_step,
                "best_val_elbo": self.best_value if math.isfinite(self.best_value) else None,
                "stopped_at": stopped_at}


def make_evaluators(ctx):
    """The log steps' evaluators of a run: each evaluator(step, phase, params, values) -> a dict
    of values to log (params [R, ...] placed like the train state's; values: the chunk's)."""
    evaluators = [TrainELBO(ctx.model)]
    if ctx.val_inputs is not None:
        evaluators.append(Validation(ctx))
    return evaluators


class TrainELBO:
    """The training ELBO, from the chunk's logged terms where the objective has all of them."""

    def __init__(self, model):
        self.model = model

    def __call__(self, step, phase, params, values):
        elbo = train_elbo(values, self.model)
        return {} if elbo is None else {"elbo": elbo}


class Validation:
    """The validation split's ELBO and its terms (val_elbo, val_<term>): the best restart's, and
    each restart's ELBO (val_elbo_per_restart) with several."""

    def __init__(self, ctx):
        config = ctx.config
        self.restarts = config.train.restarts
        self.elbo = ValidationELBO(ctx.model, ctx.val_inputs, config.eval.batch_size, config.seed, ctx.layout,
                                   ctx.streamed)

    def __call__(self, step, phase, params, values):
        per_restart = self.elbo(params)                              # each [R]
        best = int(np.nanargmax(per_restart["elbo"])) if np.isfinite(per_restart["elbo"]).any() else 0
        out = {f"val_{k}": float(v[best]) for k, v in per_restart.items()}
        if self.restarts > 1:
            out["val_elbo_per_restart"] = [round(float(v), 5) for v in per_restart["elbo"]]
        return out

    def final(self, params, chosen):
        """results.json's "validation": the chosen restart's validation ELBO (and each restart's)."""
        per_restart = self.elbo(params)
        return {"elbo": float(per_restart["elbo"][chosen]),
                **({"elbo_per_restart": [float(v) for v in per_restart["elbo"]]} if self.restarts > 1 else {})}

"""Compiling later phases ahead (train.compile_ahead): their programs compile in one background
thread while earlier phases run (XLA releases the GIL while it compiles), so a phase change does
not stop for compilation. Off by default on a CPU, where the compiling thread takes a core from
the training."""
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from gmvc.training.embedding_phases import prior_fit_rows
from gmvc.training.phases import fit_reads_table, neighbour_k

COMPILE_AHEAD = {"on": True, "true": True, "off": False, "false": False}


class Warmup:
    """`submit(name, fn, ...)` queues a compilation; `ready(name)` waits for it. A failed warm-up
    is left to the phase's own call, which compiles (and reports any error) as it would have."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gmvc-compile")
        self._jobs = {}

    def submit(self, name, fn, *args, **kwargs):
        self._jobs[name] = self._pool.submit(fn, *args, **kwargs)

    def ready(self, name):
        job = self._jobs.pop(name, None)
        if job is not None:
            job.exception()         # waits; on an error the phase compiles for itself

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def compiles_ahead(config):
    """train.compile_ahead: "on", "off" (True/False too), or "auto": off on the CPU, on elsewhere
    (the host compiles while the device trains)."""
    key = str(config.train.compile_ahead).lower()
    return jax.default_backend() != "cpu" if key == "auto" else COMPILE_AHEAD[key]


def start_warmup(ctx, params_like, start_at):
    """Queue, in phase order, the compilation of every phase of the RunContext `ctx` from
    `start_at` on (with the embedding its init_prior and neighbours phases read), then of the
    final restart choice's score; nothing when compiles_ahead(config) is False. `params_like`:
    the shapes of the [R, ...] parameters."""
    warm = Warmup()
    if not compiles_ahead(ctx.config):
        return warm
    config, x_rows = ctx.config, ctx.x_train
    one_like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params_like)
    fits, embed = ctx.embedding.fits, ctx.embedding.embed
    if any(p.kind == "init_prior" for p in ctx.phases[start_at:]):
        # an init_prior phase's key, fold_in(prior_rng, i), is dispatched eagerly
        warm.submit("fold_in", lambda: jax.block_until_ready(jax.random.fold_in(ctx.rngs["train"], 0)))
    embed_batches = set()           # the embedding's batch sizes already queued
    for i, phase in enumerate(ctx.phases):
        if i < start_at:
            continue
        if phase.kind in ("init_prior", "neighbours"):
            n = prior_fit_rows(phase.spec, len(x_rows)) if phase.kind == "init_prior" else len(x_rows)
            batch = min(config.eval.batch_size, n)
            if batch not in embed_batches:
                embed_batches.add(batch)
                warm.submit(f"embed {batch}", lambda b: embed.batch.lower(
                    one_like, jax.ShapeDtypeStruct((b, *x_rows.shape[1:]), x_rows.dtype)).compile(), batch)
        if phase.kind == "train":
            program = ctx.programs[phase.name]
            if program.owner is not program:
                continue            # its program is an earlier phase's, compiled (or queued) already
            warm.submit(phase.name, program.precompile, params_like, ctx.x_device, ctx.rngs["train"],
                        ctx.tables_like(i))
        elif phase.kind == "init_prior":
            x_like = jax.ShapeDtypeStruct((prior_fit_rows(phase.spec, len(x_rows)), *x_rows.shape[1:]), x_rows.dtype)
            z_like = jax.eval_shape(ctx.model.embed, one_like, x_like)
            table_like = (jax.ShapeDtypeStruct((len(x_rows), neighbour_k(ctx.phases, i)), np.int32)
                          if fit_reads_table(phase.spec) else None)
            warm.submit(phase.name, lambda f, z, t: f.lower(ctx.rngs["train"], 0, z, t).compile(), fits[phase.name],
                        z_like, table_like)
    warm.submit("finish", ctx.programs[ctx.last_phase].precompile_full_loss, one_like, ctx.inputs)
    return warm

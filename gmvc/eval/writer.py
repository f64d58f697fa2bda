"""The one writer of a run. Process 0 writes; every other process holds one that writes nothing,
so no other code asks which process it runs in. What it writes:

- say(message): a line for the person watching (above the progress bar, when one is drawn);
- log(step, phase, values, params): a log step's values to metrics.jsonl and the progress line or
  bar (gmvc/run/progress.py), and to TensorBoard (gmvc/eval/events.py): train/ and val/ scalars,
  the prior's histograms, and every tensorboard.images_every steps the sample images;
- the final evaluation's scalars and images (scalars, snapshot).
"""
import math
import sys

import jax

from gmvc.eval.events import NullEvents, open_events
from gmvc.run.progress import Progress
from gmvc.training import parallel


class Writer:
    def __init__(self, echo, main_process):
        self.echo, self.main = echo, main_process
        self.progress, self.events = None, NullEvents()
        self.images_every, self.total = 0, 0

    def say(self, *args, **kwargs):
        """A line for the person watching: above the progress bar once it is drawn."""
        if not self.main:
            return
        (self.progress.say if self.progress is not None else self.echo)(*args, **{"flush": True, **kwargs})

    def open(self, ctx, workdir, step, bar, images):
        """Start the progress line or bar (`bar`: draw one on stdout) and the TensorBoard events
        from `step` (a resumed run's later records are dropped)."""
        t = ctx.config.train
        self.total = t.steps
        self.progress = Progress(workdir / "metrics.jsonl", step, t.steps, self.echo, write=self.main,
                                 bar=sys.stdout if bar and self.main else None)
        self.events = open_events(ctx, workdir, step, self.main, images=images)
        every = ctx.config.tensorboard.images_every
        self.images_every = math.ceil(every / t.log_every) * t.log_every if every else 0

    def log(self, step, phase, values, params):
        """Write a log step; adds its steps per second to `values`. `params`: [R, ...] arrays."""
        values["steps_per_sec"] = self.progress(step, values, phase) if self.main else 0.0
        if not self.events.enabled:
            return
        self.events.scalars(step, {k: v for k, v in values.items() if not k.startswith("val_")}, "train")
        self.events.scalars(step, {k[4:]: v for k, v in values.items() if k.startswith("val_")}, "val")
        # A program over arrays that span processes would wait for the others: process 0 reads its copy.
        spans = any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in jax.tree.leaves(params))
        self.events.histograms(step, jax.tree.map(parallel.to_host, params) if spans else params)
        if self.images_every and step % self.images_every == 0 and step < self.total:
            # Host copies: the same compiled programs as the final images' (finish passes host arrays).
            self.events.snapshot(step, jax.tree.map(lambda a: parallel.to_host(a)[0], params))

    def scalars(self, step, values, prefix):
        self.events.scalars(step, values, prefix)

    def snapshot(self, step, params, out=None, samples=None):
        self.events.snapshot(step, params, out=out, samples=samples)

    def flush(self):
        self.events.flush()

    def close(self):
        if self.progress is not None:
            self.progress.close()
        self.events.close()

"""TensorBoard event files of a run in <workdir>/tensorboard, written without TensorFlow
(tensorboardX writes the event protocol buffers itself):

- scalars at every log step: train/<term> (every loss term and metric), val/<term>;
- histograms at every log step: the mixture prior's weights, means and variances
  (GMVAE, whose prior is a network of w: the component means at w = 0);
- images every tensorboard.images_every steps and at the end: samples per cluster and inputs
  above their reconstructions (image grids; 2-D point data as rasterised scatter plots);
- the latent means of a fixed subset of the data for the embedding projector, with the index,
  the predicted cluster and the label (when known) as metadata, at the same times.

Only process 0 writes (NullEvents elsewhere). A resumed run hides the events logged past its
checkpoint (tensorboardX's purge_step) and drops their projector folders, so TensorBoard shows
each step once."""
import os
import pathlib
import shutil
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from gmvc.eval.clustering import samples_per_group
from gmvc.run import export
from gmvc.core.batching import make_predict, tree_len, tree_slice

# matplotlib's tab10, as 8-bit RGB: the colours of the PNG scatter plots.
_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)
_GREY = np.array([200, 200, 200], np.uint8)
RECONSTRUCTIONS = 500        # point data: inputs reconstructed in the scatter image


class NullEvents:
    """What every process but 0 gets: the same calls, nothing written."""
    enabled = False

    def scalars(self, step, values, prefix):
        pass

    def histograms(self, step, params):
        pass

    def snapshot(self, step, params, out=None, samples=None):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class Events(NullEvents):
    """`params` passed to the methods below carry the restarts' leading [R] axis."""
    enabled = True

    def __init__(self, logdir, start_step, ctx, images):
        """`ctx`: the run's training.context.RunContext; `images`: also write the images and the
        projector embeddings."""
        from tensorboardX import SummaryWriter   # imported here: runs without events never load it
        config, model, inputs = ctx.config, ctx.model, ctx.inputs
        self.logdir = pathlib.Path(logdir)
        self.model, self.data, self.inputs, self.rng = model, ctx.data, inputs, ctx.rngs["sample"]
        self.images = images
        self.per_group = samples_per_group(config, model, ctx.data.is_image)
        self._predict = make_predict(model, config.eval.batch_size)
        self.recon_count = config.eval.samples_per_cluster
        self.restarts = config.train.restarts
        if start_step:
            _drop_projector_steps_after(self.logdir, start_step)
        # A unique file name: a run resumed within the same second must not overwrite the last file.
        self.writer = SummaryWriter(logdir=str(self.logdir), purge_step=start_step + 1 if start_step else None,
                                    flush_secs=10, filename_suffix=f".{start_step:010d}.{uuid.uuid4().hex[:8]}")
        n = tree_len(inputs)
        count = min(n, config.tensorboard.projector_points) if images else 0
        # A fixed subset from the seed: the same points at every step and after a resume.
        self.subset = np.sort(np.random.default_rng(config.seed).permutation(n)[:count]) if count else None
        self._prior_stats = jax.jit(jax.vmap(_make_prior_stats(model)))
        self._jitted, self._frame = {}, None

    def scalars(self, step, values, prefix):
        for name, value in values.items():
            if isinstance(value, float) and np.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def histograms(self, step, params):
        stats = jax.device_get(self._prior_stats(params))      # each [R, ...]
        for name, value in stats.items():
            for r in range(self.restarts):
                tag = f"prior/{name}" + (f"/restart_{r}" if self.restarts > 1 else "")
                self.writer.add_histogram(tag, np.asarray(value[r], np.float64).ravel(), step)

    def snapshot(self, step, params, out=None, samples=None):
        """Images and projector embeddings of one restart's `params` (no [R] axis). `out` (predictions
        of the whole data) and `samples` ([G, n, ...]) are reused when the caller has them."""
        if not self.images:
            return
        if samples is None:
            # The same jitted function (model.sample, static n) as evaluate's: one compile serves both.
            samples = jax.jit(self.model.sample, static_argnums=2)(params, self.rng, self.per_group)
        samples = np.asarray(jax.device_get(samples))
        self._images(step, params, samples)
        if self.subset is not None:
            self._projector(step, params, out)
        self.writer.flush()

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()

    def _fn(self, name, fn):
        if name not in self._jitted:
            self._jitted[name] = jax.jit(fn)
        return self._jitted[name]

    def _reconstruct(self, params, inputs):
        def recon(p, x):
            labels = x["y"] if isinstance(x, dict) else None
            return self.model.decode(p, self.model.embed(p, x), labels)
        return np.asarray(jax.device_get(self._fn("recon", recon)(params, inputs)))

    def _images(self, step, params, samples):
        if self.data.is_image:
            if len(samples) == 1:                                 # no groups: one square grid
                side = int(np.sqrt(samples.shape[1]))
                samples = samples[0, : side * side].reshape(side, side, *samples.shape[2:])
            n = self.recon_count
            x = tree_slice(self.inputs, 0, n)
            originals = np.asarray(self.data.x[:n])
            pairs = np.stack([_pad(originals, n), _pad(self._reconstruct(params, x), n)])   # [2, n, H, W, C]
            self._add_image("samples", export.image_grid(np.clip(samples, 0, 1)), step)
            self._add_image("reconstructions", export.image_grid(np.clip(pairs, 0, 1)), step)
            return
        idx = self.subset if self.subset is not None else np.arange(tree_len(self.inputs))
        idx = idx[:RECONSTRUCTIONS]
        originals = self.data.x[idx]
        recon = self._reconstruct(params, jax.tree.map(lambda a: a[idx], self.inputs))
        if self._frame is None:
            n = len(self.data.x)                     # at most FRAME_ROWS rows, spread over the data
            self._frame = Frame(self.data.x[np.linspace(0, n - 1, min(n, FRAME_ROWS)).astype(int)])
        frame = self._frame
        colours = np.repeat(np.arange(len(samples)), samples.shape[1])
        self._add_image("samples", frame.draw([(samples.reshape(-1, samples.shape[-1]), colours)]), step)
        self._add_image("reconstructions", frame.draw([(originals, None), (recon, np.zeros(len(recon), int))]), step)

    def _add_image(self, tag, image, step):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        self.writer.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

    def _projector(self, step, params, out):
        if out is None:      # evaluate's predict program (batches of eval.batch_size): compiled once
            out = self._predict(params, jax.tree.map(lambda a: a[self.subset], self.inputs))
        else:
            out = {k: v[self.subset] for k, v in out.items()}
        columns = {"index": self.subset}
        if "log_gamma" in out:
            columns["cluster"] = np.asarray(out["log_gamma"]).argmax(1)
        if self.data.y is not None:
            columns["label"] = self.data.label_values()[self.subset]
        write_projector(self.logdir, step, np.asarray(out["z_mean"]), columns)


def _make_prior_stats(model):
    def stats(params):
        prior = params.get("prior") or {}
        if "logits" in prior:
            return {"weights": jax.nn.softmax(prior["logits"]), "means": prior["means"],
                    "variances": jnp.exp(prior["log_vars"])}
        if model.num_clusters and model.centres is not None:
            return {"means": model.centres(params)}
        return {}
    return stats


def _pad(images, n):
    out = np.ones((n, *images.shape[1:]), np.float32)
    out[: len(images)] = images
    return out


FRAME_ROWS = 20_000


class Frame:
    """A fixed square canvas around the data (its first two principal components above 2-D), so
    the pictures of every step line up. Points are drawn as 2x2-pixel dots: numpy only, cheap
    enough to run during training."""

    def __init__(self, x, size=256):
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        self.centre = x.mean(0)
        self.axes = None
        if x.shape[1] > 2:
            _, _, vt = np.linalg.svd(x[:5000] - self.centre, full_matrices=False)
            self.axes = vt[:2].T
        p = self._project(x)
        lo, hi = np.percentile(p, 0.5, axis=0), np.percentile(p, 99.5, axis=0)
        half = 0.55 * float(np.max(hi - lo)) or 1.0
        self.mid, self.half, self.size = (lo + hi) / 2, half, size

    def _project(self, x):
        x = np.asarray(x, np.float64).reshape(len(x), -1) - self.centre
        if self.axes is not None:
            return x @ self.axes
        return x if x.shape[1] == 2 else np.concatenate([x, np.zeros_like(x)], 1)

    def draw(self, layers):
        """layers: [(points [N, D], colour index [N] or None for grey)], drawn in order."""
        canvas = np.full((self.size, self.size, 3), 255, np.uint8)
        for points, colours in layers:
            p = (self._project(points) - self.mid) / (2 * self.half) + 0.5       # [N, 2] in [0, 1] when inside
            col = np.floor(p[:, 0] * (self.size - 1)).astype(np.int64)
            row = np.floor((1 - p[:, 1]) * (self.size - 1)).astype(np.int64)
            inside = (col >= 0) & (col < self.size - 1) & (row >= 0) & (row < self.size - 1)
            rgb = _GREY[None] if colours is None else _PALETTE[np.asarray(colours)[inside] % len(_PALETTE)]
            for dr in (0, 1):
                for dc in (0, 1):
                    canvas[row[inside] + dr, col[inside] + dc] = rgb
        return canvas


PROJECTOR_DIR = "projector"


def write_projector(logdir, step, z_mean, columns):
    """tensors.tsv and metadata.tsv of one step under <logdir>/projector/<step>/, and a
    projector_config.pbtxt that lists every step's embedding (TensorBoard's projector reads it)."""
    logdir = pathlib.Path(logdir)
    folder = logdir / PROJECTOR_DIR / f"{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    export.atomic_write_text(folder / "tensors.tsv", "".join("\t".join(f"{v:.6g}" for v in row) + "\n"
                                                             for row in z_mean))
    names = list(columns)
    rows = zip(*(np.asarray(columns[c]).tolist() for c in names))
    export.atomic_write_text(folder / "metadata.tsv", "\t".join(names) + "\n"
                             + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    _write_projector_config(logdir)


def _projector_steps(logdir):
    root = pathlib.Path(logdir) / PROJECTOR_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def _write_projector_config(logdir):
    entries = []
    for step in _projector_steps(logdir):
        rel = f"{PROJECTOR_DIR}/{step:08d}"
        entries.append(f'embeddings {{\n  tensor_name: "latent_means:step_{step}"\n  tensor_path: "{rel}/tensors.tsv"\n'
                       f'  metadata_path: "{rel}/metadata.tsv"\n}}\n')
    export.atomic_write_text(pathlib.Path(logdir) / "projector_config.pbtxt", "".join(entries))


def _drop_projector_steps_after(logdir, step):
    dropped = [s for s in _projector_steps(logdir) if s > step]
    for s in dropped:
        shutil.rmtree(pathlib.Path(logdir) / PROJECTOR_DIR / f"{s:08d}", ignore_errors=True)
    if dropped:
        _write_projector_config(logdir)


def open_events(ctx, workdir, start_step, main_process, images):
    """Events in <workdir>/tensorboard for process 0 when tensorboard.enabled, else NullEvents."""
    if not (main_process and ctx.config.tensorboard.enabled):
        return NullEvents()
    logdir = pathlib.Path(workdir) / "tensorboard"
    os.makedirs(logdir, exist_ok=True)
    return Events(logdir, start_step, ctx, images)

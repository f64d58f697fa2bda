"""Generation from a trained run directory (python -m gmvc.main --config=... --mode=generate):

- generated_samples.png: samples per cluster (clustering models), per label (CVAE), or one grid
  from the prior (VAE);
- generated_reconstructions.png: inputs (the user's image file, folder, .npy or .npz given by
  --inputs, else the first samples of the run's data) above their reconstructions;
- generated_interpolation.png: decoded points on the straight line between two cluster centres
  (one row per pair; default every cluster to the next), or, for models without clusters,
  between the codes of consecutive inputs.
Image data gives PNG grids (the file is the grid: rows x columns of cells with 1-pixel gaps,
each upscaled by export.grid_scale); 2-D point data gives scatter plots.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from gmvc.run import export
from gmvc.errors import ConfigError, DataError


def parse_pairs(text, k):
    """"0-1,2-5" -> [(0, 1), (2, 5)]; "" -> every cluster to the next."""
    if not text:
        return [(c, (c + 1) % k) for c in range(k)] if k > 1 else []
    pairs = []
    for part in text.split(","):
        try:
            a, b = (int(v) for v in part.split("-"))
        except ValueError:
            raise ConfigError(f"--interpolate: {part!r} is not a pair of cluster numbers like 0-1") from None
        if not (0 <= a < k and 0 <= b < k):
            raise ConfigError(f"--interpolate: pair {part!r} names a cluster outside 0..{k - 1}")
        pairs.append((a, b))
    return pairs


def _line(a, b, steps):
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) * a[None] + t * b[None]                  # [steps, Dz]


def generate(run, workdir, inputs_path="", label=-1, pairs="", rng=None, echo=print):
    """Write the three generation outputs of `run` (gmvc.trainer.load_run) into workdir; returns
    {name: path}."""
    model, data, params, cfg = run.model, run.data, run.params, run.config
    workdir = pathlib.Path(workdir)
    rng = jax.random.key(cfg.seed + 1) if rng is None else rng
    n = cfg.eval.samples_per_cluster
    image = data.is_image
    paths = {}
    chosen = parse_pairs(pairs, model.num_clusters) if model.num_clusters else []   # checked before any output
    if label != -1 and not model.num_labels:
        raise ConfigError(f"--label is for a CVAE (a model conditioned on labels); this run's model "
                          f"({cfg.model.name!r}) takes none")
    if label != -1 and not inputs_path:
        raise ConfigError("--label conditions the reconstruction of --inputs; give --inputs too (without it the "
                          "first samples of the run's data are reconstructed with their own labels)")

    # samples
    groups = max(model.num_clusters, model.num_labels, 1)
    per_group = n * n if groups == 1 and image else (n if image else max(1, cfg.eval.plot_points // groups))
    samples = np.asarray(jax.jit(model.sample, static_argnums=2)(params, rng, per_group))
    group = "cluster" if model.num_clusters else ("label" if model.num_labels else "")
    paths["samples"] = workdir / "generated_samples.png"
    if image:
        export.save_image_grid(paths["samples"], samples if group else samples[0].reshape(n, n, *samples.shape[2:]))
    else:
        export.plot_scatter(paths["samples"], samples.reshape(-1, samples.shape[-1]),
                            np.repeat(np.arange(groups), per_group), groups, "generated samples", cfg.eval.plot_points)

    # reconstructions
    x, labels, source = _reconstruction_inputs(run, inputs_path, label, n)
    decode = jax.jit(model.decode)
    model_in = {"x": x, "y": labels} if model.num_labels else x
    z = jax.jit(model.embed)(params, model_in)
    recon = np.asarray(decode(params, z, labels))
    paths["reconstructions"] = workdir / "generated_reconstructions.png"
    if image:
        rows = []
        for start in range(0, len(x), n):                     # input row, reconstruction row, ...
            rows += [_pad_row(x[start:start + n], n), _pad_row(recon[start:start + n], n)]
        export.save_image_grid(paths["reconstructions"], np.stack(rows))
    else:
        pts = np.concatenate([x, recon])
        export.plot_scatter(paths["reconstructions"], pts, np.repeat([0, 1], len(x)), 2,
                            f"{source} (0) and reconstructions (1)", cfg.eval.plot_points)

    # interpolation
    if model.num_clusters:
        centres = model.centres(params)
        ends = [(centres[a], centres[b], None) for a, b in chosen]
        names = [f"{a} -> {b}" for a, b in chosen]
    else:
        ends = [(z[i], z[i + 1], None if labels is None else labels[i]) for i in range(min(len(z) - 1, n))]
        names = [f"input {i} -> {i + 1}" for i in range(len(ends))]
    if ends:
        steps = n
        rows = []
        for a, b, lab in ends:
            line = _line(a, b, steps)
            rows.append(np.asarray(decode(params, line, None if lab is None else jnp.full((steps,), lab))))
        rows = np.stack(rows)                                   # [pairs, steps, ...]
        paths["interpolation"] = workdir / "generated_interpolation.png"
        if image:
            export.save_image_grid(paths["interpolation"], rows)
        else:
            export.plot_scatter(paths["interpolation"], rows.reshape(-1, rows.shape[-1]),
                                np.repeat(np.arange(len(rows)), steps), max(len(rows), 1),
                                "interpolation paths", cfg.eval.plot_points)
    what = {"samples": f"{per_group} samples per {group}, one {'row' if image else 'colour'} each" if group
            else "samples from the prior",
            "reconstructions": f"rows of inputs ({source}), each above its reconstruction",
            "interpolation": f"one row per path: {', '.join(names)}" if ends else ""}
    for name, p in paths.items():
        echo(f"wrote {name}: {p} ({what[name]})", flush=True)
    return {name: str(p) for name, p in paths.items()}


def _pad_row(images, n):
    out = np.ones((n, *images.shape[1:]), np.float32)
    out[: len(images)] = images
    return out


def _reconstruction_inputs(run, inputs_path, label, n):
    """(x [M, *shape], labels [M] or None, description)."""
    model, data = run.model, run.data
    shape = data.x.shape[1:]
    if inputs_path:
        from gmvc.data import images
        x = run.scaling.apply(images.load_inputs(inputs_path, shape))      # as the run read its data
        if len(x) > 5 * n:
            x = x[: 5 * n]                                      # a picture of at most five pairs of rows
        source = f"{inputs_path} (first {len(x)})"
        if model.num_labels:
            if not 0 <= label < model.num_labels:
                raise ConfigError(f"this model is conditioned on a label: give --label=0..{model.num_labels - 1} "
                                  f"to reconstruct {inputs_path}")
            labels = np.full((len(x),), label, np.int32)
        else:
            labels = None
    else:
        x = data.x[:n]
        source = f"the first {len(x)} samples of {data.name!r}"
        labels = run.inputs["y"][:n] if model.num_labels else None
    if len(x) == 0:
        raise DataError(f"no inputs to reconstruct in {inputs_path or data.name}")
    return np.asarray(x, np.float32), labels, source

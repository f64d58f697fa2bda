"""Outputs a program can load (csv, json, json lines) and pictures a person can look at (PNG).
Every file is written to a temporary name and renamed, so a crash never leaves half a file.
matplotlib is imported when a plot is drawn (gmvc.trainer preloads it while training runs)."""
import json
import os
import pathlib
import threading

import numpy as np


def new_figure(figsize):
    """(figure, axes) of a file-only Figure on its own Agg canvas: pyplot's global state (its
    backend, its list of open figures) is never touched, so a notebook keeps showing its plots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def atomic_write_text(path, text):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_predictions_csv(path, gamma, labels=None):
    """One row per sample: index, cluster, [label: as the data gave it], p_0 .. p_{K-1}."""
    cluster = gamma.argmax(1)
    header = ["index", "cluster"] + (["label"] if labels is not None else []) + [f"p_{k}" for k in range(gamma.shape[1])]
    label = _label_texts(labels, len(gamma))
    lines = [",".join(header)]
    lines += [f"{i},{c}{lab}," + ",".join(f"{p:.6g}" for p in row_p)
              for i, c, lab, row_p in zip(range(len(gamma)), cluster.tolist(), label, gamma)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_latent_csv(path, z_mean, labels=None):
    """One row per sample: index, [label: as the data gave it], z_0 .. z_{D-1} (the latent means)."""
    header = ["index"] + (["label"] if labels is not None else []) + [f"z_{d}" for d in range(z_mean.shape[1])]
    label = _label_texts(labels, len(z_mean))
    lines = [",".join(header)]
    lines += [f"{i}{lab}," + ",".join(f"{v:.6g}" for v in row_z) for i, lab, row_z in zip(range(len(z_mean)), label, z_mean)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _label_texts(labels, n):
    """",<label>" per sample (whole-number floats without their ".0"; text with its commas
    quoted), or "" each when there are no labels."""
    if labels is None:
        return [""] * n
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    texts = [str(v) for v in labels.tolist()]
    return ["," + ('"' + t.replace('"', '""') + '"' if any(c in t for c in ',"\n') else t) for t in texts]


def _save(fig, path):
    path = pathlib.Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _to_2d(a):
    """First two principal components when there are more than two dimensions."""
    a = a.reshape(len(a), -1)
    if a.shape[1] <= 2:
        return a if a.shape[1] == 2 else np.concatenate([a, np.zeros_like(a)], 1)
    a = a - a.mean(0)
    _, _, vt = np.linalg.svd(a[:5000], full_matrices=False)
    return a @ vt[:2].T


def _scatter(ax, points, colors, k, title):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    ax.scatter(points[:, 0], points[:, 1], c=colors, cmap=cmap, vmin=-0.5, vmax=(10 if k <= 10 else 20) - 0.5,
               s=4, alpha=0.7, linewidths=0)
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="datalim")


def plot_scatter(path, points, clusters, k, title, max_points):
    idx = np.linspace(0, len(points) - 1, min(len(points), max_points)).astype(int)
    fig, ax = new_figure((5.5, 5.5))
    _scatter(ax, _to_2d(np.asarray(points[idx])), clusters[idx], k, title)
    _save(fig, path)


def image_grid(images):
    """[rows, cols, H, W, C] -> one [rows*H, cols*W] (or RGB) array with 1-pixel gaps."""
    rows, cols, h, w, c = images.shape
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), np.float32)
    for i in range(rows):
        for j in range(cols):
            grid[i * (h + 1): i * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = images[i, j]
    return grid[..., 0] if c == 1 else grid


def grid_scale(height):
    """Integer upscaling so a grid cell is at least about 56 pixels high (8x8 digits become visible)."""
    return max(1, -(-56 // height))


def save_image_grid(path, images):
    """[rows, cols, H, W, C] in [0, 1] -> one PNG of exactly rows x cols cells with 1-pixel white
    gaps, each pixel upscaled by grid_scale(H) (no axes or titles: the file is the grid itself)."""
    from PIL import Image
    grid = image_grid(np.clip(np.asarray(images, np.float32), 0, 1))
    s = grid_scale(images.shape[2])
    grid = np.repeat(np.repeat(grid, s, axis=0), s, axis=1)
    path = pathlib.Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def plot_image_rows(path, images, row_labels, title):
    """One row of images per cluster."""
    grid = image_grid(np.clip(images, 0, 1))
    fig, ax = new_figure((0.6 * images.shape[1] + 1, 0.6 * images.shape[0] + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    h = images.shape[2] + 1
    if any(row_labels):
        ax.set_yticks(np.arange(len(row_labels)) * h + h / 2 - 1, row_labels)
    else:
        ax.set_yticks([])
    ax.set_xticks([])
    ax.set_title(title)
    _save(fig, path)


def examples_per_cluster(x, clusters, k, per_cluster):
    """[K, per_cluster, ...] members of each cluster (blank where a cluster has too few)."""
    out = np.ones((k, per_cluster) + x.shape[1:], np.float32)
    for c in range(k):
        members = x[np.flatnonzero(clusters == c)[:per_cluster]]
        out[c, : len(members)] = members
    return out


def write_plots(workdir, x, clusters, z_mean, samples, k, max_points, group_name="cluster"):
    """data_clusters.png, latent.png, samples.png; returns their paths. `clusters` colours the
    points (predicted clusters, or labels for a model that does not cluster); samples are
    [G, n, ...] grouped by `group_name` ("cluster", "label", or "" for one ungrouped set)."""
    workdir = pathlib.Path(workdir)
    paths = {name: workdir / f"{name}.png" for name in ("data_clusters", "latent", "samples")}
    by = "predicted cluster" if group_name == "cluster" else "label"
    if x.ndim == 4:
        n = samples.shape[1]
        plot_image_rows(paths["data_clusters"], examples_per_cluster(x, clusters, k, min(n, 10)),
                        [f"{by.split()[-1]} {c}" for c in range(k)], f"data by {by}")
        if group_name:
            plot_image_rows(paths["samples"], samples, [f"{group_name} {c}" for c in range(len(samples))],
                            f"samples per {group_name}")
        else:
            side = int(np.sqrt(n))
            plot_image_rows(paths["samples"], samples[0, : side * side].reshape(side, side, *samples.shape[2:]),
                            [""] * side, "samples from the prior")
    else:
        plot_scatter(paths["data_clusters"], x, clusters, k, f"data coloured by {by}", max_points)
        flat = samples.reshape(-1, samples.shape[-1])
        plot_scatter(paths["samples"], flat, np.repeat(np.arange(len(samples)), samples.shape[1]), max(k, len(samples)),
                     f"samples generated per {group_name}" if group_name else "samples from the prior", max_points)
    plot_scatter(paths["latent"], z_mean, clusters, k,
                 f"latent means by {by}" + (" (first 2 principal components)" if z_mean.shape[1] > 2 else ""),
                 max_points)
    return paths


def preload():
    """Import what the evaluation at the end needs (matplotlib, scipy, scikit-learn: about 3 s)
    in a background thread, while the compiled steps run without the GIL."""
    def load():
        try:
            new_figure((1, 1))
            import scipy.optimize  # noqa: F401
            import sklearn.metrics  # noqa: F401
        except Exception:      # the import at the point of use reports any error
            pass

    threading.Thread(target=load, name="gmvc-imports", daemon=True).start()

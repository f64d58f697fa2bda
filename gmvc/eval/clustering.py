"""The end of a run: every sample's cluster, scored against labels when the data has them, and
the files a person looks at (predictions.csv, plots)."""
import jax
import numpy as np

from gmvc.core import metrics
from gmvc.core.batching import make_predict
from gmvc.run import export

SCORES = ("acc", "majority_acc", "nmi", "ari")


def predict_all(model, params, inputs, batch_size):
    """numpy {"log_gamma": [N, K], "z_mean": [N, Dz]} of every sample."""
    return make_predict(model, batch_size)(params, inputs)


def score(model, out, labels):
    """{"num_samples", "num_clusters", "cluster_sizes", and with labels acc, nmi, ...}, and each
    sample's cluster (labels for a model without clusters)."""
    k, n = model.num_clusters, len(out["z_mean"])
    k = out["log_gamma"].shape[1] if k else 0          # model.num_clusters=auto: the live slots
    summary = {"num_samples": n, "num_clusters": k}
    if not k:
        return summary, (labels if labels is not None else np.zeros(n, np.int64))
    clusters = out["log_gamma"].argmax(1)
    summary["cluster_sizes"] = np.bincount(clusters, minlength=k).tolist()
    if labels is not None:
        summary.update(metrics.clustering_report(clusters, labels))
    return summary, clusters


def samples_per_group(config, model, is_image):
    """How many samples per cluster (label) the plots and the TensorBoard images draw."""
    groups = max(model.num_clusters, model.num_labels, 1)
    per_group = config.eval.samples_per_cluster if is_image else max(1, config.eval.plot_points // groups)
    if is_image and groups == 1:
        per_group = config.eval.samples_per_cluster ** 2      # one square grid
    return per_group


def draw_samples(config, model, params, rng, is_image):
    """[groups, per_group, *sample_shape] generated samples (model.sample) as numpy."""
    count = samples_per_group(config, model, is_image)
    return np.asarray(jax.device_get(jax.jit(model.sample, static_argnums=2)(params, rng, count)))


def write_outputs(workdir, config, model, data, out, clusters, samples):
    """predictions.csv and the plots; returns {name: path} of every file of the run."""
    k = model.num_clusters
    if k:
        export.write_predictions_csv(workdir / "predictions.csv", np.exp(out["log_gamma"]), data.label_values())
    else:                                                    # the latent codes
        export.write_latent_csv(workdir / "predictions.csv", out["z_mean"], data.label_values())
    colours = int(clusters.max()) + 1 if len(clusters) else 1
    group = "cluster" if k else ("label" if model.num_labels else "")
    paths = export.write_plots(workdir, data.x, clusters, out["z_mean"], samples, max(k, colours),
                               config.eval.plot_points, group_name=group)
    return {name: str(p) for name, p in
            {"predictions": workdir / "predictions.csv", "metrics_log": workdir / "metrics.jsonl",
             "config": workdir / "config.json", "checkpoints": workdir / "checkpoints", **paths,
             **({"tensorboard": workdir / "tensorboard"} if (workdir / "tensorboard").is_dir() else {})}.items()}

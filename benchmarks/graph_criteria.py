"""Do the neighbour graph's criteria prefer the true partition? On each development set, the
`cluster` recipe's pretraining alone, then on the embedding (for 3, 10 and 15 neighbours):

- the recipe's first partition (30 over-clustered fits merged along the graph, kept by modularity);
- the true classes (read only here, to be scored);
- a full-covariance GMM on the input features (scikit-learn, the best of 10 inits);

each with its accuracy, its modularity on the neighbour graph and its normalized cut. Where the
true classes score lower modularity and a higher cut than the recipe's partition, no choice made
on the graph reaches them.

    python benchmarks/graph_criteria.py --dev=iris,breast_cancer --seeds=100,101

Prints one JSON object per set and seed (one line each).
"""
import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import DEV_SETS, dev_jobs, load_config  # noqa: E402


def normalized_cut(groups, table, k):
    """sum over groups of (links leaving the group) / (links of its members) on the graph `table`."""
    leave = (groups[table] != groups[:, None]).sum(axis=1)
    return float(sum(leave[groups == g].sum() / max((groups == g).sum() * table.shape[1], 1) for g in range(k)))


def embed_after_pretraining(path, overrides, seed, workdir):
    from gmvc.run.restore import load_trained
    from gmvc.trainer import train_and_evaluate
    config = load_config(path, overrides, seed)
    config.train.phases = ("pretrain",)
    train_and_evaluate(config, workdir, echo=lambda *a, **k: None, write_outputs=False)
    run = load_trained(workdir)
    from gmvc.data import load_dataset
    data = load_dataset(run.config.data, seed)
    return np.asarray(run.model.embed(run.params, run.scaling.apply(data.x))), data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", default="iris,breast_cancer")
    p.add_argument("--seeds", default="100,101")
    p.add_argument("--neighbours", default="3,10,15")
    args = p.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    import jax
    import jax.numpy as jnp
    from sklearn.mixture import GaussianMixture
    from gmvc.core import metrics
    from gmvc.core.mixture_init import fit_diag_gmm_merged, partition_modularity
    from gmvc.core.neighbours import knn_table
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, overrides in dev_jobs(args.dev.split(","), pathlib.Path(tmp) / "data"):
            k = DEV_SETS[name]
            for seed in map(int, args.seeds.split(",")):
                z, data = embed_after_pretraining(path, overrides, seed, pathlib.Path(tmp) / f"{name}{seed}")
                x = data.x.reshape(len(data.x), -1)
                gmm = GaussianMixture(k, covariance_type="full", n_init=10, random_state=seed).fit_predict(x)
                result = {"set": name, "seed": seed, "num_samples": len(z)}
                for nn in map(int, args.neighbours.split(",")):
                    table = jnp.asarray(knn_table(jnp.asarray(z), nn))
                    over = min(8 * k, max(k + 1, len(z) // 20))
                    _, merged = fit_diag_gmm_merged(jax.random.PRNGKey(seed), jnp.asarray(z), table, k, over, smooth=1,
                                                    n_init=30, select="modularity", with_groups=True, linkage="both",
                                                    kmeans_iters=50, em_iters=20)
                    t = np.asarray(table)
                    for what, groups in (("merged", np.asarray(merged)), ("classes", data.y), ("full_gmm", gmm)):
                        result[f"{what}_{nn}nn"] = {
                            "acc": round(metrics.hungarian_accuracy(groups, data.y), 4),
                            "modularity": round(float(partition_modularity(jnp.asarray(groups), table, k)), 4),
                            "normalized_cut": round(normalized_cut(groups, t, k), 4),
                            "sizes": np.bincount(groups, minlength=k).tolist()}
                print(json.dumps(result), flush=True)
                out.append(result)
    return out


if __name__ == "__main__":
    main()

"""Label-free criteria for the number of clusters, on the `cluster` recipe's pretrained embedding
of each development set (as benchmarks/graph_criteria.py pretrains it), for K = 2..max:

- `modularity`: the modularity of the recipe's merged partition into K groups on the 3-neighbour
  graph (30 over-clustered fits, as the recipe's first fit); the K where it peaks;
- `hdbscan`: the number of clusters scikit-learn's HDBSCAN finds with min_cluster_size = N / 100
  (and the share it calls noise);
- scikit-learn's GaussianMixture (full covariance, 3 inits) chosen by BIC over K = 1..max on the
  input features.

    python benchmarks/k_criteria.py --dev --seeds=100,101 --max-k=15
    python benchmarks/k_criteria.py --dev --seeds=100,101 --hdbscan-grid     # HDBSCAN's settings

Prints one JSON object per set and seed (one line each), with each criterion's K and its curve.
"""
import argparse
import json
import pathlib
import sys
import tempfile
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from graph_criteria import embed_after_pretraining  # noqa: E402
from quality import DEV_SETS, dev_jobs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", nargs="?", const=",".join(DEV_SETS), default=",".join(DEV_SETS))
    p.add_argument("--seeds", default="100,101")
    p.add_argument("--max-k", type=int, default=15)
    p.add_argument("--hdbscan-grid", action="store_true",
                   help="HDBSCAN's count at 18 settings (min_cluster_size N/100, N/50, N/20; min_samples 5, 15, "
                        "its default; eom and leaf selection) instead of the three criteria")
    args = p.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp
    from sklearn.cluster import HDBSCAN
    from sklearn.mixture import GaussianMixture
    from gmvc.core.mixture_init import fit_diag_gmm_merged, partition_modularity
    from gmvc.core.neighbours import knn_table
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, overrides in dev_jobs(args.dev.split(","), pathlib.Path(tmp) / "data"):
            for seed in map(int, args.seeds.split(",")):
                z, data = embed_after_pretraining(path, overrides, seed, pathlib.Path(tmp) / f"{name}{seed}")
                n, zj = len(z), jnp.asarray(z)
                if args.hdbscan_grid:
                    grid = {}
                    for ms in (5, 15, None):
                        for frac in (0.01, 0.02, 0.05):
                            for sel in ("eom", "leaf"):
                                lab = HDBSCAN(min_cluster_size=max(5, int(frac * n)), min_samples=ms,
                                              cluster_selection_method=sel, copy=True).fit_predict(z)
                                grid[f"{ms}/{frac}/{sel}"] = [int(lab.max() + 1), round(float((lab < 0).mean()), 2)]
                    result = {"set": name, "seed": seed, "true_k": DEV_SETS[name], "hdbscan_grid": grid}
                    print(json.dumps(result), flush=True)
                    out.append(result)
                    continue
                table = jnp.asarray(knn_table(zj, 3))
                modularity = {}
                for k in range(2, args.max_k + 1):
                    over = min(8 * k, max(k + 1, n // 20))
                    if over <= k:
                        break
                    _, groups = fit_diag_gmm_merged(jax.random.PRNGKey(seed), zj, table, k, over, smooth=1, n_init=30,
                                                    select="modularity", with_groups=True, linkage="both",
                                                    kmeans_iters=50, em_iters=20)
                    modularity[k] = round(float(partition_modularity(groups, table, k)), 4)
                hdb = HDBSCAN(min_cluster_size=max(5, n // 100), copy=True).fit_predict(z)
                x = data.x.reshape(n, -1)
                bic = {}
                for k in range(1, args.max_k + 1):
                    try:
                        bic[k] = round(float(GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed)
                                             .fit(x).bic(x)), 1)
                    except ValueError:
                        bic[k] = round(float(GaussianMixture(k, covariance_type="full", n_init=3, reg_covar=1e-3,
                                                             random_state=seed).fit(x).bic(x)), 1)
                result = {"set": name, "seed": seed, "true_k": DEV_SETS[name],
                          "modularity_k": max(modularity, key=modularity.get),
                          "hdbscan_k": int(hdb.max() + 1), "hdbscan_noise": round(float((hdb < 0).mean()), 3),
                          "gmm_bic_k": min(bic, key=bic.get),
                          "modularity": modularity, "bic": bic}
                print(json.dumps(result), flush=True)
                out.append(result)
    return out


if __name__ == "__main__":
    main()

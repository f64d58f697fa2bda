"""The rules by which a recipe meets its data, applied when a run starts (and recorded in its
config.json, so a resumed run and its predictions read the same values):

- a phase's `"augment": "auto"`: images ([H, W, C] samples) are shifted by up to max(1, H / 14)
  pixels (2 for 28 x 28), points are not augmented;
- a batch size above the number of samples N is cut to N;
- with model.small_below > 0, data of fewer than that many values (N x the sample's size) use
  the network widths model.small_hidden_sizes in place of model.hidden_sizes: a small data set
  gets a network it can fit quickly (the `cluster` recipe: (128, 128, 256) below 1,000,000
  values: 5,000 images of 28 x 28 keep (500, 500, 1000), 2,000 of 16 x 16 do not);
- an init_prior phase's `"features"` (the comparison with a full GMM on the features) is turned
  off for images ([H, W, C] samples): pixel coordinates are no space in which image classes are
  Gaussian, nor one whose nearest neighbours judge a partition;
- an over-clustered fit (`overcluster`) has at most max(K + 1, N / 20) components, so that every
  component has about 20 samples or more;
- with choose_k.auto (model.num_clusters=auto), the model gets K_max = max(2, min(
  choose_k.max_clusters, N / 20)) slots (model.num_clusters; every component about 20 samples or
  more), the over-clustered fit scales its components with K_max in place of K, the refits
  (init_prior phases with keep_current) leave the run (they would refit K_max components over
  the moves) and the features' GMM is off (it needs K);
- with train.epochs > 0, train.steps (and with it every phase given as a share of it, the log
  and checkpoint intervals) becomes min(train.steps, max(train.min_steps, epochs x N /
  batch_size)): the steps follow the data up to the ceiling train.steps;
- above FIT_ROWS (100,000) samples, a mixture fit on every embedding (method "em") that sets
  n_init makes max(3, n_init x FIT_ROWS / N) fits, so that its cost stays about that of
  FIT_ROWS samples (3 fits at 1,000,000).

No rule reads a data set's name or its labels.
"""
import math

FIT_ROWS = 100_000


def shift_for(sample_shape):
    """The augmentation "auto" gives samples of this shape: {} for points."""
    if len(sample_shape) != 3:
        return {}
    return {"shift": float(max(1, round(sample_shape[0] / 14)))}


def fit_to_data(config, n, sample_shape):
    """(config, notes): config with the rules applied for n samples of `sample_shape`, and one
    short line per rule that changed a value. `config` is not modified."""
    c = config.copy_and_resolve_references()
    c.unlock()
    changed = {}                                  # rule -> phase names
    if c.train.batch_size > n:
        c.train.batch_size = n
        changed.setdefault(f"batch size cut to N = {n}", []).append("train")
    _steps_by_epochs(c, n, changed)
    _small_network(c, n * math.prod(sample_shape), changed)
    phases = c.phases.to_dict()
    _auto_slots(c, phases, n, changed)
    k = int(c.model.num_clusters)
    for name, spec in phases.items():
        if spec.get("augment") == "auto":
            spec["augment"] = shift_for(sample_shape)
            what = f"shifts of up to {spec['augment']['shift']:g} px (images)" if spec["augment"] else "none (points)"
            changed.setdefault(f"augment: {what}", []).append(name)
        if spec.get("features") and len(sample_shape) == 3:
            spec["features"] = 0
            changed.setdefault("features' GMM: off (images)", []).append(name)
        if _whole(spec.get("batch_size")) and spec["batch_size"] > n:
            spec["batch_size"] = n
            changed.setdefault(f"batch size cut to N = {n}", []).append(name)
        fits = spec.get("n_init")
        if spec.get("kind") == "init_prior" and spec.get("method", "em") == "em" and _whole(fits) and fits > 3 \
                and n > FIT_ROWS:
            spec["n_init"] = max(3, round(fits * FIT_ROWS / n))
            if spec["n_init"] < fits:
                changed.setdefault(f"n_init {fits} cut to max(3, {fits} x {FIT_ROWS:,} / N) = {spec['n_init']}",
                                   []).append(name)
        cap = max(k + 1, n // 20)
        if _whole(spec.get("overcluster")) and spec["overcluster"] > cap:
            spec["overcluster"] = cap
            changed.setdefault(f"overcluster cut to max(K + 1, N / 20) = {cap}", []).append(name)
    if not changed:
        return config, []
    c.phases = phases
    c.lock()
    return c, [f"{rule} ({', '.join(names)})" for rule, names in changed.items()]


def _auto_slots(c, phases, n, changed):
    """choose_k.auto: the slots, the over-clustered fit, no refits and no features' GMM (see the
    module's rules)."""
    if not c.choose_k.auto:
        return
    k_old, k_max = int(c.model.num_clusters), max(2, min(int(c.choose_k.max_clusters), n // 20))
    c.model.num_clusters = k_max
    changed.setdefault(f"num_clusters auto: K_max = max(2, min({c.choose_k.max_clusters}, N / 20)) = {k_max} slots",
                       []).append("model")
    refits = [name for name in c.train.phases if phases.get(name, {}).get("keep_current")]
    if refits:
        c.train.phases = tuple(name for name in c.train.phases if name not in refits)
        changed.setdefault("num_clusters auto: no refits (the moves change the prior)", []).extend(refits)
    for name, spec in phases.items():
        if _whole(spec.get("overcluster")) and spec["overcluster"] and name not in refits:
            spec["overcluster"] = max(k_max + 1, round(spec["overcluster"] * k_max / max(k_old, 1)))
        if spec.get("features") and name not in refits:
            spec["features"] = 0
            changed.setdefault("num_clusters auto: features' GMM off (it needs K)", []).append(name)


def _steps_by_epochs(c, n, changed):
    """train.steps from train.epochs (see the module's rules), the intervals scaled with it."""
    t = c.train
    if not (_whole(t.epochs) and t.epochs > 0):
        return
    steps = min(t.steps, max(t.min_steps, -(-t.epochs * n // t.batch_size)))
    if steps >= t.steps:
        return
    scale = steps / t.steps
    t.log_every = max(1, min(steps, round(t.log_every * scale)))
    t.checkpoint_every = max(1, round(t.checkpoint_every * scale))
    changed.setdefault(f"train.steps {t.steps} cut to max({t.min_steps}, {t.epochs} epochs x N / "
                       f"{t.batch_size}) = {steps}", []).append("train")
    t.steps = steps


def _small_network(c, values, changed):
    """model.hidden_sizes from model.small_hidden_sizes below model.small_below values."""
    m = c.model
    widths = tuple(m.small_hidden_sizes)
    if not (_whole(m.small_below) and m.small_below > 0 and widths and all(_whole(w) and w > 0 for w in widths)) \
            or values >= m.small_below:
        return                                          # off, or a bad value that validate names
    if widths != tuple(m.hidden_sizes):
        changed.setdefault(f"hidden sizes {tuple(m.hidden_sizes)} -> {widths} (N x sample size = {values:,} values "
                           f"< {m.small_below:,})", []).append("model")
        m.hidden_sizes = widths


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)

"""The full set of config keys with their defaults. The recipes (gmvc/recipes/, which the files
in configs/ call) start from `base_config()` and override; the result is locked, so a misspelt
key is an error."""
import ml_collections

from gmvc.errors import ConfigError


def base_config():
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "spiral"       # spiral | digits | mnist5k | tfds:<name> | file:<path> | folder:<root>
    c.data.num_points = 5000       # spiral: total points
    c.data.arms = 5                # spiral: number of arms
    c.data.noise = 0.05            # spiral: std of the noise across an arm
    c.data.split = "train"         # tfds: split to read
    c.data.data_dir = ""           # tfds: data directory ("" = tfds default)
    c.data.scaling = "none"        # none | auto | max | standardize (gmvc/data/prepare.py)
    c.data.limit = 0               # use only the first `limit` samples (0 = all)

    c.model = ml_collections.ConfigDict()
    c.model.name = "gmvae"
    c.model.num_clusters = 10
    c.model.net = "mlp"                # mlp | conv
    c.model.conv_filters = (32, 64, 128)
    c.model.conv_kernels = (5, 5, 3)
    c.model.hidden_sizes = (500,)
    c.model.small_hidden_sizes = ()    # with small_below > 0: the widths used in place of hidden_sizes for data
    c.model.small_below = 0            # of fewer than small_below values, N x the sample's size (gmvc/recipes/rules.py)
    c.model.activation = "relu"
    c.model.z_dim = 10
    c.model.w_dim = 10
    c.model.prior_hidden = 500
    c.model.likelihood = "bernoulli"   # bernoulli | gaussian
    c.model.sigma = 1.0                # gaussian: output std; <= 0 learns a log-variance per output
    c.model.input_dropout = 0.0        # training only: each input value zeroed with this probability (denoising)
    c.model.gamma_transform = "none"   # vade: none | inverse_minmax (S3VDC's NaN guard)

    # model.num_clusters=auto: the mixture finds K while it trains (gmvc/training/k_auto.py). The model
    # gets max(2, min(max_clusters, N / 20)) slots (a rule of gmvc/recipes/rules.py); between chunks of
    # the clustering phases its components retire, merge and split (gmvc/core/k_moves.py).
    c.choose_k = ml_collections.ConfigDict()
    c.choose_k.auto = False            # set by --config.model.num_clusters=auto (or n_clusters="auto")
    c.choose_k.max_clusters = 20       # the most clusters a run can find
    c.choose_k.alpha = 1.0             # the Dirichlet process's concentration in the Hastings ratios
    c.choose_k.niw_scale = 10.0        # NIW prior scale: psi = niw_scale x diag(variance of the embeddings)
    c.choose_k.merge_test = "hastings" # hastings | valley | both: what a merge must pass besides the links
    c.choose_k.merge_links = 0.02      # a merge needs at least this share of the smaller one's 10-NN links to join the two
    c.choose_k.merge_ratio = 0.5       # valley: merge when the density between the two means dips no lower than
                                       # this share of the lower peak
    c.choose_k.split_margin = 0.0      # split when log H exceeds this (valley: and the halves show a valley)
    c.choose_k.min_share = 0.01        # retire a component holding fewer than max(5, min_share x N) samples
    c.choose_k.at_fit = True           # rounds of moves right after the first fit, on the pretrained embeddings
    c.choose_k.during = "retire"       # retire | all: the moves after each chunk of the clustering phases
    c.choose_k.patience = 2            # the moves stop after this many rounds in a row that changed nothing

    # Term name -> weight (a number or a schedule dict, see gmvc/core/schedules.py).
    c.objective = ml_collections.ConfigDict({"recon": 1.0, "cond_prior": 1.0, "w_prior": 1.0,
                                             "c_prior": 1.0, "cv": 1.0})
    c.terms = ml_collections.ConfigDict({"c_prior": {"free_bits": 0.5}})

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3                  # learning rate of the "net" group (the schedule's value)
    c.optim.lr_schedule = ml_collections.ConfigDict()   # {} = constant; else a schedule dict without
                                                        # "value" (gmvc/core/schedules.py), e.g. exponential_decay
    c.optim.prior_lr = -1.0            # for the "prior" group; < 0 = same as lr (and schedule), 0 = frozen
    c.optim.prior_lr_schedule = ml_collections.ConfigDict()   # {} = lr_schedule's shape
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 0.0            # global gradient-norm clipping; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.steps = 10000
    c.train.batch_size = 100
    c.train.log_every = 250            # steps per compiled chunk; metrics are fetched once per chunk
    c.train.checkpoint_every = 2500    # rounded up to a multiple of log_every
    c.train.max_checkpoints = 3
    c.train.phases = ()                # names of config.phases in order; () = one phase of train.steps
    c.train.loop = "auto"              # scan | host | auto (host for conv networks; see gmvc/training/program.py)
    c.train.compile_ahead = "auto"     # on | off | auto: compile later phases in a background thread
                                       # (gmvc/training/warmup.py); auto = off on a CPU, on elsewhere
    c.train.restarts = 1               # independent inits trained together; one is kept, chosen by:
    c.train.restart_choice = "objective"   # objective (lowest on the data) | balance (most even partition)
    c.train.restart_batches = "shared"   # shared (one data order for all restarts) | own (each its own order)
    c.train.validation_fraction = 0.0  # held out of training; its ELBO is logged (gmvc/eval/evaluators.py)
    c.train.patience = 0               # > 0: stop when the validation ELBO has not improved for this many log
                                       # steps (last train phase); outputs come from the best step's parameters
    c.train.epochs = 0                 # > 0: train.steps becomes min(train.steps, max(train.min_steps,
    c.train.min_steps = 0              # epochs x N / batch_size)): phases follow the data (gmvc/recipes/rules.py)

    c.phases = ml_collections.ConfigDict()   # see gmvc/training/phases.py

    c.parallel = ml_collections.ConfigDict()  # see gmvc/training/parallel.py
    c.parallel.mode = "auto"           # auto | single | shard_map | pmap (auto: shard_map on several accelerators
                                       # or processes, or when devices > 1; single on one process's CPU)
    c.parallel.devices = 0             # use the first n devices (0 = all)
    c.parallel.stream = "auto"         # auto | on | off: batches assembled on the host and sent ahead of the step
                                       # (gmvc/training/stream.py); auto: when the training inputs exceed
    c.parallel.device_budget_mb = 4096.0   # this many MB as they sit on the device (uint8 data: 1 byte a value)

    c.tensorboard = ml_collections.ConfigDict()   # event files in <workdir>/tensorboard (gmvc/eval/events.py)
    c.tensorboard.enabled = True       # scalars and prior histograms at every log step
    c.tensorboard.images_every = 2500  # samples, reconstructions and projector embeddings every this many steps
                                       # (rounded up to log_every) and at the end; 0 = only at the end
    c.tensorboard.projector_points = 1000   # latent means of this many samples for the projector (0 = none)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 1000
    c.eval.samples_per_cluster = 10
    c.eval.plot_points = 5000          # at most this many points in scatter plots
    return c


def to_dict(config):
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def from_dict(d):
    """The base config updated by `d` (as config.json holds it): unknown keys are errors."""
    c = base_config()
    _merge(c, d, "")
    return c


def _merge(c, d, prefix):
    for key, value in d.items():
        if key not in c:
            raise ConfigError(f"unknown config key {prefix + key!r}")
        if isinstance(c[key], ml_collections.ConfigDict) and isinstance(value, dict) and key not in FREE_SECTIONS:
            _merge(c[key], value, prefix + key + ".")
        else:
            c[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else (
                tuple(value) if isinstance(value, list) else value)


# Sections whose keys are free (term names, phase names, schedule fields).
FREE_SECTIONS = ("objective", "terms", "phases", "lr_schedule", "prior_lr_schedule")


# A setting given by name wins over the rule that would choose it from the data
# (gmvc/recipes/rules.py): the rule is turned off unless its own switch is given too.
RULE_SWITCHES = {"model.hidden_sizes": ("model.small_below", 0), "train.steps": ("train.epochs", 0)}


def given_settings_win(c, keys):
    """Turn off, in `c`, the rule of each key of RULE_SWITCHES that `keys` (the overridden dotted
    keys) name without naming the rule's switch."""
    for key, (switch, off) in RULE_SWITCHES.items():
        if key in keys and switch not in keys:
            section, name = switch.split(".")
            c[section][name] = off


def apply_overrides(c, overrides):
    """Set each dotted key of `overrides` in `c` (an unknown key is a ConfigError); a setting a
    rule would choose is then used as given (given_settings_win)."""
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        target = c
        for p in parents:
            if p not in target:
                raise ConfigError(f"unknown config key {dotted!r}")
            target = target[p]
        if last not in target and not any(p in FREE_SECTIONS for p in parents):
            raise ConfigError(f"unknown config key {dotted!r}")
        target[last] = value
    given_settings_win(c, overrides)


def check_key(c, dotted):
    """A ConfigError naming `dotted` (and the nearest key) when `c` has no such key."""
    import difflib
    node, done = c, []
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            near = difflib.get_close_matches(part, known, 1)
            hint = f" (did you mean {'.'.join(done + near)!r}?)" if near else (
                f" ({'.'.join(done)} has no keys)" if done and not known else "")
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
        node = node[part]
        done.append(part)


def describe_keys(c=None, width=100):
    """The keys of `c` (default the base config) with their values, a few lines per section."""
    c = base_config() if c is None else c
    lines = ["  " + " ".join(f"{k}={v!r}" for k, v in c.items() if not isinstance(v, ml_collections.ConfigDict))]
    for section, values in c.items():
        if not isinstance(values, ml_collections.ConfigDict):
            continue
        line = f"  {section}:"
        for key, value in values.items():
            item = f" {key}={value.to_dict() if hasattr(value, 'to_dict') else value!r}"
            if len(line) + len(item) > width:
                lines.append(line)
                line = "   "
            line += item
        lines.append(line)
    return "\n".join(lines)


# What --mode=predict and --mode=generate take from the command line; everything else comes from
# the run's config.json (the model, its data scaling and how it was trained).
RUN_SETTABLE = {"predict": ("eval.", "data."), "generate": ("eval.",)}
RUN_FIXED = ("data.scaling",)


def for_trained_run(stored, given, mode, where):
    """The config `mode` (predict | generate) uses for the trained run in `where`: `stored` (its
    config.json) with the keys of `given` ({dotted key: value}, the command line's overrides) that
    `mode` may set. A given key it may not set must agree with `stored` ("auto" agrees with what
    the run resolved it to; a batch size with the smaller one the data cut it to): else a
    ConfigError naming the key."""
    c = stored.copy_and_resolve_references()
    c.unlock()
    for key, value in sorted(given.items()):
        if key.startswith(RUN_SETTABLE[mode]) and key not in RUN_FIXED:
            apply_overrides(c, {key: value})
            continue
        try:
            has = _plain(_lookup(stored, key))
        except KeyError:
            has = None
        if not _agrees(key, _plain(value), has):
            settable = " and ".join(f"{p}*" for p in RUN_SETTABLE[mode]) + (
                ", except data.scaling" if mode == "predict" else "")
            raise ConfigError(f"--config.{key}={_plain(value)!r} contradicts the trained run in {where}, whose "
                              f"config.json has {key}={has!r}: --mode={mode} takes the model and its training "
                              f"settings from config.json (only {settable} may change); drop the override")
    c.lock()
    return c


def _lookup(c, dotted):
    for part in dotted.split("."):
        if not isinstance(c, ml_collections.ConfigDict) or part not in c:
            raise KeyError(dotted)
        c = c[part]
    return c


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _agrees(key, value, stored):
    if value == stored or value == "auto":
        return True
    return key == "train.batch_size" and isinstance(stored, int) and stored < value    # cut to the data

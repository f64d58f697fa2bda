"""gmvc command line.

    python -m gmvc.main --config=cluster --config.data.source=file:my.npz --workdir=runs/mine
    python -m gmvc.main --mode=predict --workdir=runs/mine --data=file:new.npy --output=new.csv
    python -m gmvc.main --mode=generate --workdir=runs/mine

--config names a config: a file path (relative to the working directory), else a file of gmvc's
configs/ folder (configs/cluster.py, cluster.py or cluster), else a recipe name (gmvc.recipes).
Any config key can be overridden once: --config.train.steps=2000 (a tuple: --config.model.hidden_sizes=(64,64)).
Training writes the run's config to <workdir>/config.json. --mode=predict and --mode=generate read
the model and its training settings from there (--config may then be left out); on their command
line only eval.* (and for predict data.*, except data.scaling) may change, and an override of any
other key that contradicts config.json is an error naming the key.
"""
import logging as std_logging
import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gmvc.errors import ConfigError, GmvcError, Interrupted

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config: a file path (relative to the working directory), else a file of gmvc's configs/ "
    "(cluster.py or cluster), else a recipe name (gmvc.recipes). predict, generate: default the run's config.json.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "generate", "predict"],
                          "train: train (or resume) and evaluate; generate: sample, reconstruct and interpolate "
                          "with the trained run in --workdir (PNG files in the run directory); predict: cluster "
                          "--data with the trained run, written to --output. predict and generate read the run's "
                          "config.json: only eval.* (predict: and data.*, except data.scaling) overrides may change "
                          "it; an override contradicting another of its keys is an error.")
_DATA = flags.DEFINE_string("data", "", "predict: the data source to predict (spiral, digits, file:<path>, ...; "
                            "default: the run's data.source).")
_FORMAT = flags.DEFINE_enum("format", "csv", ["csv", "jsonl", "npz"], "predict: output format.")
_OUTPUT = flags.DEFINE_string("output", "", "predict: output file (default: <workdir>/predict.<format>).")
_INPUTS = flags.DEFINE_string("inputs", "", "generate: an image file, a folder of images, a .npy or an .npz (array "
                              "'x') to reconstruct (default: the first samples of the run's data).")
_LABEL = flags.DEFINE_integer("label", -1, "generate, CVAE only, with --inputs: the label to condition on.")
_INTERPOLATE = flags.DEFINE_string("interpolate", "", "generate: cluster pairs to interpolate between, e.g. "
                                   "'0-1,2-3' (default: every cluster to the next).")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "Multi-process: the coordinator's host:port (process 0's "
                                   "machine), or 'auto' to let JAX detect the cluster (SLURM, TPU pod). "
                                   "Default: $GMVC_COORDINATOR.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: how many processes (default "
                                      "$GMVC_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id, 0..num_processes-1 "
                                   "(default $GMVC_PROCESS_ID).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Give this process N CPU devices (to try data-parallel "
                                    "training without accelerators).")

# Flags that only one mode reads: given in another mode they would be ignored, so they are refused.
MODE_FLAGS = {"data": "predict", "format": "predict", "output": "predict", "inputs": "generate", "label": "generate",
              "interpolate": "generate"}
PACKAGE_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
_given = {}          # the --config.<key> overrides of the command line: key -> value (set by parse_flags)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # Before JAX looks for its backends: its note that no TPU is here reads like an error on a CPU
    # or GPU machine; orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)
    from gmvc.training import distributed
    from gmvc.run.cache import enable_compilation_cache
    enable_compilation_cache()                   # before anything compiles (gmvc/run/cache.py)
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _CPU_DEVICES.value)
    except GmvcError as e:
        fail(e)
    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.name}"
    try:
        # Each mode imports what it runs, after flag parsing (--help stays fast); predict reads the
        # model, its parameters, the scaling and the config, and nothing of training.
        if _MODE.value == "train":
            from gmvc.trainer import train_and_evaluate
            train_and_evaluate(config, workdir)
            return
        config = run_config(workdir)
        if _MODE.value == "generate":
            from gmvc.generate import generate
            from gmvc.trainer import load_run
            generate(load_run(config, workdir), workdir, _INPUTS.value, _LABEL.value, _INTERPOLATE.value)
        else:
            predict(config, workdir)
    except Interrupted as e:
        print(f"gmvc: {e}", file=sys.stderr, flush=True)
        sys.exit(130)
    except GmvcError as e:
        fail(e)
    except KeyboardInterrupt:
        print("gmvc: interrupted (nothing was saved since the last checkpoint)", file=sys.stderr, flush=True)
        sys.exit(130)


def fail(message):
    print(f"gmvc: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_config(workdir):
    """The trained run's config.json with the overrides predict and generate may change."""
    from gmvc import config as config_lib
    from gmvc.run.restore import check_run_exists, read_config
    check_run_exists(workdir)
    given = dict(_given)
    if _DATA.value:
        if given.get("data.source", _DATA.value) != _DATA.value:
            raise ConfigError(f"--data={_DATA.value} and --config.data.source={given['data.source']} disagree: "
                              f"give one")
        given["data.source"] = _DATA.value
    return config_lib.for_trained_run(read_config(workdir), given, _MODE.value, workdir)


def predict(config, workdir):
    from gmvc.run.restore import load_trained
    from gmvc.predict import predict_to_file
    out_path = _OUTPUT.value or f"{workdir}/predict.{_FORMAT.value}"
    predict_to_file(load_trained(workdir, config), config.data, out_path, _FORMAT.value)   # checks out_path first


def parse_flags(argv):
    """absl's parser, with every command-line error (unknown or repeated key, bad value, missing
    config) as one line on stderr, exit code 2; --help lists the flags and config keys, exit 0."""
    if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
        print_help()
        sys.exit(0)
    try:
        argv = resolve_config_flag(argv)
        keys = check_given_once(argv)
        argv, terms = split_term_overrides(argv)
        argv, keys = auto_clusters(argv, keys)
        check_keys(argv, keys - {".".join(path) for path, _ in terms})
        sys.argv = argv                              # the config flag reads its overrides from sys.argv
        argv = flags.FLAGS(argv)
        check_mode_flags()
        if _CONFIG.value is None:
            if _MODE.value == "train" or not _WORKDIR.value:
                raise ConfigError("--config is required (predict and generate: or the --workdir of a trained "
                                  "run); see --help")
            return argv
        apply_term_overrides(_CONFIG.value, terms)
        from gmvc import config as config_lib
        config_lib.given_settings_win(_CONFIG.value, keys)       # a given model.hidden_sizes or train.steps is used
        _given.update({key: _get(_CONFIG.value, key) for key in keys})
        return argv
    except flags.IllegalFlagValueError as e:              # "flag --config.x=v: <the parser's reason>"
        message = str(e).removeprefix("flag ")
        fail(message.split(":")[0] + ": not a boolean (true or false)" if "Non-boolean" in message else message)
    except flags.UnrecognizedFlagError as e:
        fail(f"{e} (--help lists the flags)")
    except (flags.Error, GmvcError, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        fail(e.args[0] if isinstance(e, (KeyError, AttributeError)) and e.args else e)


def resolve_config_flag(argv):
    """argv with --config=<name> replaced by the file it names (a path, else a file of the package's
    configs/, else a recipe of gmvc.recipes), the config checked to load."""
    index = [i for i, a in enumerate(argv) if a.split("=", 1)[0] in ("--config", "-config")]
    workdir = _flag_value(argv, "workdir")
    if not index and workdir and _flag_value(argv, "mode") in ("predict", "generate"):
        config_json = pathlib.Path(workdir).expanduser() / "config.json"
        if config_json.is_file():        # the run's own config: its overrides work without --config
            spec = f"{pathlib.Path(__file__).resolve().parent / 'recipe_config.py'}:{config_json.resolve()}"
            load_config_file(spec)
            return argv[:1] + [f"--config={spec}"] + argv[1:]
    if not index:
        return argv
    i = index[0]
    if "=" not in argv[i]:
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a value: a config file or a recipe name")
        argv = argv[:i] + [f"--config={argv[i + 1]}"] + argv[i + 2:]
    spec = find_config(argv[i].split("=", 1)[1])
    load_config_file(spec)                                    # its errors in one line, before absl's
    return argv[:i] + [f"--config={spec}"] + argv[i + 1:]


def _flag_value(argv, name):
    """The value of --name=value or --name value in argv (before absl parses it), or None."""
    for i, arg in enumerate(argv):
        head, eq, value = arg.partition("=")
        if head in (f"--{name}", f"-{name}"):
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def find_config(value):
    """The config file (with its ':argument') that --config=`value` names."""
    from gmvc import recipes
    path, colon, arg = value.partition(":")
    given = pathlib.Path(path).expanduser()
    candidates = [given, PACKAGE_CONFIGS / given.name]
    if given.suffix != ".py":
        candidates.append(PACKAGE_CONFIGS / f"{given.name}.py")
    for candidate in candidates:
        if path and candidate.is_file():
            return f"{candidate.resolve()}{colon}{arg}"
    if path in recipes.RECIPES and not colon:
        return f"{pathlib.Path(__file__).resolve().parent / 'recipe_config.py'}:{path}"
    tried = [f"{candidates[0]} (from {os.getcwd()})"] + [str(c) for c in candidates[1:]]
    raise ConfigError(f"no config {value!r}: tried {', '.join(tried)} and the recipe names "
                      f"({', '.join(recipes.names())})")


def load_config_file(spec):
    import runpy
    path, colon, arg = spec.partition(":")
    try:
        config = runpy.run_path(path)["get_config"](*([arg] if colon else []))
    except GmvcError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot load the config {path}: {type(e).__name__}: {e}") from None
    if not hasattr(config, "to_dict"):
        raise ConfigError(f"cannot load the config {path}: get_config() returned {type(config).__name__}, "
                          f"not a ConfigDict")
    return config


def config_key(arg):
    """'model.z_dim' for --config.model.z_dim=..., --noconfig.model.z_dim; None for other arguments."""
    head = arg.split("=", 1)[0].lstrip("-")
    for prefix in ("config.", "noconfig."):
        if head.startswith(prefix) and arg.startswith("-"):
            return head[len(prefix):]
    return None


def check_given_once(argv):
    """The config keys given. A key given twice is an error (absl would join two tuples or keep
    the last value), and so is a flag given twice with different values."""
    seen = {}
    for arg in argv[1:]:
        if not arg.startswith("-"):
            continue
        key = config_key(arg)
        name = f"--config.{key}" if key is not None else "--" + arg.split("=", 1)[0].lstrip("-")
        if name in seen and (key is not None or seen[name] != arg):
            tuple_hint = " (a tuple in one value: --config.model.hidden_sizes=(64,64))" if key else ""
            raise ConfigError(f"{name} is given twice; give each flag and config key once{tuple_hint}")
        seen[name] = arg
    return {n[len("--config."):] for n in seen if n.startswith("--config.")}


def check_keys(argv, keys):
    """Every overridden key exists in the config (term sections excepted: they may add a term)."""
    from gmvc import config as config_lib
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        if keys:
            raise ConfigError(f"--config.{sorted(keys)[0]} needs --config (a config or recipe to override)")
        return
    config = load_config_file(spec)
    for key in sorted(keys):
        config_lib.check_key(config, key)


def check_mode_flags():
    for name, mode in MODE_FLAGS.items():
        if flags.FLAGS[name].present and _MODE.value != mode:
            raise ConfigError(f"--{name} is for --mode={mode} (this is --mode={_MODE.value})")


def print_help():
    from gmvc import config as config_lib
    module = sys.argv[0] if __name__ == "__main__" else __name__
    flag_help = "\n".join(line for line in flags.FLAGS.module_help(module).splitlines() if not line.endswith(".py:"))
    print(__doc__.strip() + "\n\nflags:\n" + flag_help.strip("\n") + "\n")
    print("config keys (the base defaults; a config file sets its own; --config.<key>=<value> overrides):")
    print(config_lib.describe_keys())


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


# Sections whose keys are term names, so an override may add a key the config file lacks.
TERM_SECTIONS = ("objective", "terms")


def auto_clusters(argv, keys):
    """(argv, keys) with --config.model.num_clusters=auto read as --config.choose_k.auto=true:
    model.num_clusters holds a number (the slots a rule then gives the run)."""
    flag = "--config.model.num_clusters"
    if not any(a.split("=", 1)[0] == flag and a.split("=", 1)[-1].strip().lower() == "auto" for a in argv):
        return argv, keys
    argv = [a for a in argv if a.split("=", 1)[0] != flag] + ["--config.choose_k.auto=true"]
    return argv, (keys - {"model.num_clusters"}) | {"choose_k.auto"}


def split_term_overrides(argv):
    """(argv without them, [(path, value)]) for the --config.objective.<term>=... and
    --config.terms.<term>.<option>=... overrides: they may name a term the config file does not
    have (adding it), which absl's parser would refuse as an unknown key."""
    keep, terms = [], []
    for arg in argv:
        head, eq, value = arg.partition("=")
        path = head[len("--config."):].split(".") if head.startswith("--config.") else []
        if eq and len(path) >= 2 and path[0] in TERM_SECTIONS:
            terms.append((path, _literal(value)))
        else:
            keep.append(arg)
    return keep, terms


def apply_term_overrides(config, terms):
    if not terms:
        return
    config.unlock()
    for path, value in terms:
        target = config
        for key in path[:-1]:
            if key not in target:
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    config.lock()


def _literal(text):
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text                               # a word: a kernel's name, a schedule's kind


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

"""gmvc command line: python -m gmvc.main --config=configs/gmvae_spiral.py [--workdir=DIR]
Any config field can be overridden: --config.train.steps=2000.
--mode=generate writes samples, reconstructions and interpolations of a trained run (gmvc/generate.py)."""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gmvc.errors import GmvcError, Interrupted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "generate", "predict"],
                          "train: train (or resume) and evaluate; generate: sample, reconstruct and interpolate "
                          "with the trained run in --workdir (PNG files in the run directory); predict: cluster "
                          "--data with the trained run, written to --output.")
_DATA = flags.DEFINE_string("data", "", "predict: the data source to predict (spiral, digits, file:<path>, ...; "
                            "default: the config's data.source).")
_FORMAT = flags.DEFINE_enum("format", "csv", ["csv", "jsonl", "npz"], "predict: output format.")
_OUTPUT = flags.DEFINE_string("output", "", "predict: output file (default: <workdir>/predict.<format>).")
_INPUTS = flags.DEFINE_string("inputs", "", "generate: an image file, a folder of images, a .npy or an .npz (array "
                              "'x') to reconstruct (default: the first samples of the run's data).")
_LABEL = flags.DEFINE_integer("label", -1, "generate, CVAE with --inputs: the label to condition on.")
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
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
        print(f"gmvc: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    from gmvc.trainer import load_run, train_and_evaluate  # after flag parsing: keeps --help fast

    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.name}"
    try:
        if _MODE.value == "generate":
            from gmvc.generate import generate
            generate(load_run(config, workdir), workdir, _INPUTS.value, _LABEL.value, _INTERPOLATE.value)
        elif _MODE.value == "predict":
            predict(config, workdir)
        else:
            train_and_evaluate(config, workdir)
    except Interrupted as e:
        print(f"gmvc: {e}", file=sys.stderr, flush=True)
        sys.exit(130)
    except GmvcError as e:
        print(f"gmvc: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gmvc: interrupted (nothing was saved since the last checkpoint)", file=sys.stderr, flush=True)
        sys.exit(130)


def predict(config, workdir):
    from gmvc.run.restore import load_trained
    from gmvc.predict import predict_to_file
    trained = load_trained(workdir, config)
    data_cfg = config.data.copy_and_resolve_references()
    if _DATA.value:
        data_cfg.source = _DATA.value
    predict_to_file(trained, data_cfg, _OUTPUT.value or f"{workdir}/predict.{_FORMAT.value}", _FORMAT.value)


def parse_flags(argv):
    """absl's parser, with config errors (unknown key, bad value, missing file) as one clear line."""
    argv, terms = split_term_overrides(argv)
    sys.argv = argv                              # the config flag reads its overrides from sys.argv
    try:
        argv = flags.FLAGS(argv)
        _CONFIG.value.name                       # a config file that failed to load says so only when read
        apply_term_overrides(_CONFIG.value, terms)
        return argv
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        message = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "'").strip("'\" ")
        if isinstance(e, AttributeError):
            message = f"unknown config key: {message}"
        elif isinstance(e, OSError) and "Errno" in message:     # the config file: its path and the cause
            message = "cannot load the config: " + message[message.index("[Errno"):].replace("'", "")
        print(f"gmvc: error: {message}", file=sys.stderr)
        print("usage: python -m gmvc.main --config=configs/<experiment>.py [--workdir=DIR] "
              "[--mode=train|generate|predict] [--config.<key>=<value> ...]", file=sys.stderr)
        sys.exit(2)


# Sections whose keys are term names, so an override may add a key the config file lacks.
TERM_SECTIONS = ("objective", "terms")


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

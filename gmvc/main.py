"""gmvc command line: python -m gmvc.main --config=configs/gmvae_spiral.py [--workdir=DIR]
Any config field can be overridden: --config.train.steps=2000."""
import sys

from absl import app, flags
from ml_collections import config_flags

from gmvc.errors import GmvcError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train"], "train: train (or resume) and evaluate.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gmvc.train import train_and_evaluate  # after flag parsing: keeps --help fast

    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.name}"
    try:
        train_and_evaluate(config, workdir)
    except GmvcError as e:
        print(f"gmvc: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run():
    app.run(main)


if __name__ == "__main__":
    run()

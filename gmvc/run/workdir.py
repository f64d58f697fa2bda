"""One run per run directory: a lock held while a run trains there, and a resume only with the
config the run started with (what config.json records), so a directory's checkpoints, logs and
config always describe one run."""
import json
import pathlib

import filelock

from gmvc.errors import RunError
from gmvc.run.restore import read_json

LOCK_FILE = ".gmvc.lock"
# Keys a resumed run may change: how it is watched, placed and logged, and how long it trains.
RESUME_FREE = ("name", "parallel", "tensorboard", "eval", "train.steps", "train.log_every", "train.checkpoint_every",
               "train.max_checkpoints", "train.compile_ahead", "train.loop")


def lock(workdir):
    """The held lock of `workdir` (release() when the run ends; the system releases it if the
    process dies), or RunError when another process holds it."""
    workdir = pathlib.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        held = filelock.FileLock(str(workdir / LOCK_FILE), timeout=0)
        held.acquire()
    except filelock.Timeout:
        raise RunError(f"{workdir} is in use by another gmvc run; wait for it to end or use another "
                       f"--workdir") from None
    except OSError as e:
        raise RunError(f"{workdir} cannot hold a run: {e.strerror or e} ({type(e).__name__})") from None
    return held


def check_same_config(workdir, config_dict):
    """RunError when `workdir` holds checkpoints of a run whose config.json differs from
    `config_dict` in a key that changes what is trained (anything but RESUME_FREE)."""
    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if not path.is_file() or not (workdir / "checkpoints").is_dir():
        return
    saved = read_json(path, required=True)
    old, new = _flat(saved), _flat(_plain(config_dict))
    # a key only one side has (a setting added to gmvc since) is not a difference of the run
    differ = sorted(k for k in old.keys() & new.keys() if old[k] != new[k] and not _free(k))
    differ += sorted(k for k in old.keys() ^ new.keys() if _names_section(k) and not _free(k))
    if differ:
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise RunError(f"{workdir} holds a run of another config (it differs in {shown}); resume it with the "
                       f"config in {path}, or use another --workdir (nothing was changed)")


def _names_section(key):
    """Whether `key` sits in a section of term or phase names (objective, terms, phases), where a
    key on one side only is a term or phase the other run does not have."""
    return key.split(".")[0] in ("objective", "terms", "phases")


def _free(key):
    return any(key == k or key.startswith(k + ".") for k in RESUME_FREE)


def _plain(value):
    """JSON's view of a config value (tuples as lists), as config.json stores it."""
    return json.loads(json.dumps(value))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

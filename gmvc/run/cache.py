"""JAX's persistent compilation cache for the command line and the estimators' fit: a second
run of a config (another seed, a resume, --mode=generate, a refit on data of the same shape)
loads its compiled programs from disk instead of compiling them again.

The directory is $GMVC_COMPILATION_CACHE, default ~/.cache/gmvc/jax; GMVC_COMPILATION_CACHE=off
turns it off. A cache the user set for JAX itself (JAX_COMPILATION_CACHE_DIR or
jax.config.jax_compilation_cache_dir) is left as it is. The cache runs code it reads: keep it
in a directory only you can write to.
"""
import os
import pathlib
import sys

import jax

ENV = "GMVC_COMPILATION_CACHE"
DEFAULT_DIR = "~/.cache/gmvc/jax"
OFF = ("", "0", "off", "false", "no", "none")
MAX_BYTES = 2 * 1024**3          # least recently used entries go beyond this
MIN_COMPILE_SECONDS = 0.0        # every program (a fit compiles ~50 small ones: 2-3 s a fit uncached)


def enable_compilation_cache():
    """Turn the cache on (call before the first compilation); returns its directory, or None
    when it is off or cannot be created (then a note goes to stderr and nothing else changes)."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    value = os.environ.get(ENV, DEFAULT_DIR)
    if value.strip().lower() in OFF:
        return None
    directory = pathlib.Path(value).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"gmvc: note: no compilation cache ({ENV}={value}: {e}); programs compile every run",
              file=sys.stderr, flush=True)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(directory)

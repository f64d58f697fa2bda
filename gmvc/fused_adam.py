"""Adam in one pass over the weights on CPU: an XLA FFI kernel (gmvc/csrc/adam.cc).

XLA:CPU by default fuses no computation with several outputs, so optax's Adam followed by
apply_updates compiles to three loop fusions per weight (the first moment, the second, the
weights): ten passes over them. The kernel reads the gradient, the weights and both moments once
and writes the weights and moments once, in place, with the arithmetic of optax.adam +
optax.apply_updates. For the reference VaDE network (3.35 M weights) the update alone takes
about 1.0 ms in place of 1.7-3.4 ms, and its train step at batch 256 0.6 ms less (README, Speed).

The kernel is compiled on first use with the machine's C++ compiler ($CXX, else g++; about 2 s)
into $GMVC_KERNEL_CACHE (default ~/.cache/gmvc/kernels), keyed by its source, jaxlib's version
and the CPU, and loaded from there afterwards. If that fails (no compiler, say) one note goes to
stderr and optax's update runs instead: the same arithmetic, slower. GMVC_FUSED_ADAM=off chooses
optax's update. Other backends (GPU, TPU) always use optax's update.
"""
import ctypes
import hashlib
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp

from gmvc import cache

SOURCE = pathlib.Path(__file__).with_name("csrc") / "adam.cc"
TARGET = "gmvc_adam"
ENV = "GMVC_FUSED_ADAM"
CACHE_ENV = "GMVC_KERNEL_CACHE"
DEFAULT_CACHE = "~/.cache/gmvc/kernels"
MIN_SIZE = 1 << 16      # smaller weights: XLA's own fusions (a call costs about 10-20 us; spiral's GMVAE)
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC")

_lock = threading.Lock()
_loaded = {}           # "ok": bool, "why": the reason it is not, "lib": the loaded library


def wanted():
    """Whether train steps traced now would use the kernel if it builds: the default backend is
    the CPU and GMVC_FUSED_ADAM is not off (nothing is built to answer)."""
    return os.environ.get(ENV, "on").strip().lower() not in cache.OFF and jax.default_backend() == "cpu"


def enabled():
    """Whether train steps traced now use the kernel: wanted(), and the kernel is built and
    registered."""
    return wanted() and load()


def load():
    """Build (once per machine), load and register the kernel; True when it is ready. On failure
    a note on stderr says why, once, and False is returned from then on."""
    with _lock:
        if "ok" not in _loaded:
            try:
                path = _build(_library_path())
                try:
                    _loaded["lib"] = ctypes.cdll.LoadLibrary(str(path))
                except OSError:             # a damaged file in the cache: build it again, once
                    path.unlink(missing_ok=True)
                    _loaded["lib"] = ctypes.cdll.LoadLibrary(str(_build(path)))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_loaded["lib"].GmvcAdam), platform="cpu")
                _loaded["ok"] = True
            except Exception as e:          # noqa: BLE001 - any failure means: use optax's update
                _loaded["ok"], _loaded["why"] = False, f"{type(e).__name__}: {e}"
                print(f"gmvc: the one-pass Adam kernel is not available ({_loaded['why'][:500]}); "
                      "optax's update is used instead (the same arithmetic, slower)", file=sys.stderr)
        return _loaded["ok"]


def update(g, p, m, v, scalars, after=None):
    """(p, m, v) after one Adam step of the float32 leaf p with gradient g, first and second
    moments m and v; scalars f32[..., 8] = (lr, b1, b2, 1 - b1, 1 - b2, 1 - b1^t, 1 - b2^t, eps), t
    the step counted from 1. Leading axes L of scalars are leading axes of p: each p[i] (i in L) is updated
    with scalars[i]. Under jax.vmap every argument gains the mapped axis, and the same holds."""
    out = jax.ShapeDtypeStruct(p.shape, jnp.float32)
    call = jax.ffi.ffi_call(TARGET, (out, out, out), input_output_aliases={1: 0, 2: 1, 3: 2},
                            vmap_method="broadcast_all")
    return tuple(call(g, p, m, v, scalars, jnp.zeros((), jnp.float32) if after is None else after))


def reference_update(g, p, m, v, scalars, after=None):
    """The same update written in jax.numpy (for leaves that are not float32, and for tests)."""
    lead = scalars.shape[:-1]
    lr, b1, b2, a1, a2, c1, c2, eps = (scalars[..., i].reshape(lead + (1,) * (p.ndim - len(lead))) for i in range(8))
    m = a1 * g + b1 * m
    v = a2 * (g * g) + b2 * v
    step = (m / c1) / (jnp.sqrt(v / c2) + eps)
    return (p + (-lr) * step).astype(p.dtype), m.astype(p.dtype), v.astype(p.dtype)


def _library_path():
    cache = pathlib.Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _jaxlib_version().encode(), " ".join(FLAGS).encode(), _cpu().encode(),
                 _compiler().encode()):
        key.update(part)
        key.update(b"\0")
    return cache / f"adam-{key.hexdigest()[:20]}.so"


def _build(path):
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [_compiler(), *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-1500:]}")
        os.replace(tmp, path)      # whole or not at all: several processes may build at once
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _compiler():
    return os.environ.get("CXX") or "g++"


def _jaxlib_version():
    try:
        import jaxlib
        return jaxlib.__version__
    except Exception:                       # noqa: BLE001
        return ""


def _cpu():
    """The CPU's model and instruction-set flags (-march=native builds for them)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in info if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.machine() + platform.processor()

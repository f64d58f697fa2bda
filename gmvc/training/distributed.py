"""Multi-process (multi-host) start-up through JAX's own distributed runtime.

`initialize(...)` calls `jax.distributed.initialize` from flags or the environment, before any
other JAX call:
- explicit: coordinator address ("host:port"), process count and this process's id, from
  --coordinator/--num_processes/--process_id or GMVC_COORDINATOR/GMVC_NUM_PROCESSES/GMVC_PROCESS_ID;
- "auto": no arguments, JAX detects the cluster (SLURM, TPU pods, Open MPI ...).
On CPU the processes exchange gradients through gloo collectives. Afterwards every process sees
every device (jax.devices()), and the run is data-parallel over all of them (gmvc/training/parallel.py).
"""
import os

from gmvc.errors import ConfigError


def settings(coordinator="", num_processes=0, process_id=-1, env=None):
    """(mode, kwargs): mode "none", "explicit" or "auto"."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get("GMVC_COORDINATOR", "")
    num_processes = num_processes or int(env.get("GMVC_NUM_PROCESSES", "0") or 0)
    process_id = process_id if process_id >= 0 else int(env.get("GMVC_PROCESS_ID", "-1") or -1)
    if coordinator == "auto":
        return "auto", {}
    if not coordinator and num_processes <= 1:
        return "none", {}
    if not coordinator or num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(f"multi-process run needs a coordinator address (host:port), a process count and a "
                          f"process id in 0..count-1; got coordinator={coordinator!r}, "
                          f"num_processes={num_processes}, process_id={process_id}")
    return "explicit", {"coordinator_address": coordinator, "num_processes": num_processes,
                        "process_id": process_id}


def initialize(coordinator="", num_processes=0, process_id=-1, cpu_devices=0):
    """Start the distributed runtime if asked to; returns True when it did. `cpu_devices` > 0
    gives this process that many CPU devices (for trying multi-device code without accelerators)."""
    import jax
    mode, kwargs = settings(coordinator, num_processes, process_id)
    if cpu_devices > 0:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if mode == "none":
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True

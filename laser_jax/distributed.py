"""Multi-process start-up: join the JAX cluster when launched by one.

`launch/local.py` sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
SLURM (`srun`, several tasks) and Cloud TPU pod slices are detected by JAX itself.
"""
from __future__ import annotations

import logging
import os

import jax
from orbax.checkpoint import multihost

log = logging.getLogger("laser_jax")


def cluster_detected() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def maybe_initialize(mode: str = "auto") -> None:
    """Call `jax.distributed.initialize()` when `mode` is "on", or "auto" and a cluster is
    detected. Must run before any other JAX call."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed must be auto, on or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and not cluster_detected()) or jax.distributed.is_initialized():
        return
    env = os.environ
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("joined the JAX cluster: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Block until every process of the cluster reaches the barrier `name` (no-op with one
    process). It uses the coordination service, not a collective: the CPU collectives' first
    use (gloo's context set-up) gives up after 30 s, so processes that finish compiling far
    apart (a loaded machine) must meet here before their first collective."""
    multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def process_index_and_count() -> tuple:
    """(this process's index, the number of processes) of the job, without starting a
    backend: (0, 1) unless `maybe_initialize` joined a cluster."""
    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def share_from_process_0(key: str, value: str, timeout_s: int = 3600) -> str:
    """Process 0's `value` on every process (the coordination service's key-value store, not a
    collective: it works before anything is compiled). `key` must be unique per call."""
    client = multihost.get_jax_distributed_client()
    if jax.process_index() == 0:
        client.key_value_set(key, value)
        return value
    return client.blocking_key_value_get(key, timeout_s * 1000)

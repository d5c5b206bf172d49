"""Multi-host launch: `jax.distributed.initialize` when the job runs on several hosts (a TPU pod slice).

On a pod every host runs the same command (`gcloud compute tpus tpu-vm ssh ... --worker=all --command=...`);
JAX finds the coordinator from the TPU metadata. Elsewhere (GPU clusters, several CPU processes) set
`--config.distributed.coordinator_address=host:port`, `num_processes` and `process_id` explicitly, or the
standard JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables.

After initialisation `jax.devices()` lists every host's devices, so the meshes in `longrope_jax.sharding` span the
pod; each host loads only its slice of every batch (`train.data.batch_iterator`), Orbax writes and restores the
checkpoint shards of every host, and only process 0 writes JSON, metrics and plots (`is_primary`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax

from longrope_jax.errors import ConfigError
from longrope_jax.settings import Section

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class DistributedSettings(Section):
    """Multi-host (TPU pod slice): "auto" joins the hosts when the environment says there are several; set
    coordinator_address / num_processes / process_id to launch by hand elsewhere."""

    SECTION: ClassVar[str] = "distributed"

    initialize: str = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1

    def check(self) -> None:
        if self.initialize not in MODES:
            raise ConfigError(f"distributed.initialize={self.initialize!r}: use one of {MODES}")


def _launched_multi_host() -> bool:
    """Whether the environment says this process is one of several (TPU pod slice, SLURM, JAX variables)."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def initialize_distributed(settings: DistributedSettings | Any = None) -> bool:
    """Calls `jax.distributed.initialize` when this is a multi-host launch; returns whether it did.

    settings: the config's `distributed` section (initialize auto|on|off, coordinator_address, num_processes,
    process_id); None means auto. Must run before any other JAX call in the process.
    """
    settings = DistributedSettings.parse(settings)
    mode, address = settings.initialize, settings.coordinator_address
    if mode == "off" or (mode == "auto" and not address and not _launched_multi_host()):
        return False
    kwargs: dict[str, Any] = {}
    if address:
        num, pid = int(settings.num_processes), int(settings.process_id)
        if num < 1 or not 0 <= pid < num:
            raise ConfigError(f"distributed.coordinator_address is set, so distributed.num_processes (got {num}) and "
                              f"distributed.process_id (got {pid}, must be in [0, num_processes)) are needed too")
        kwargs = dict(coordinator_address=address, num_processes=num, process_id=pid)
    # CPU processes need a collectives backend to talk to each other (TPU/GPU ignore this setting).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def is_primary() -> bool:
    """True on the process that writes run files (JSON results, metrics, plots): process 0."""
    return jax.process_index() == 0

"""Starting or joining Ray: ``RAY_ADDRESS`` decides, the code is the same on a laptop and a cluster."""

from __future__ import annotations

import logging
import os

from neurobridge.config import Settings


def ensure_ray(settings: Settings, min_cpus: int = 0) -> None:
    """Join ``RAY_ADDRESS`` or start a local Ray. ``min_cpus`` declares at least that many logical CPUs locally:
    a training worker holding one of a laptop's two CPUs must leave room for Ray Data's read tasks, or both wait
    forever (oversubscribing logical CPUs on a small machine is what keeps them both moving)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs = {"logging_level": logging.WARNING, "include_dashboard": False}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        # address="local": never attach to a stale cluster file left by an earlier run on this machine.
        cpus = settings.ray_num_cpus
        if cpus is None and min_cpus:
            cpus = max(os.cpu_count() or 1, min_cpus)
        ray.init(address="local", num_cpus=cpus, **kwargs)

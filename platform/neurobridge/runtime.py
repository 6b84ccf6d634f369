"""Starting or joining Ray: ``RAY_ADDRESS`` decides, the code is the same on a laptop and a cluster."""

from __future__ import annotations

import logging
import os

from .config import Settings


def ensure_ray(settings: Settings) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs = {"logging_level": logging.WARNING, "include_dashboard": False}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        # address="local": never attach to a stale cluster file left by an earlier run on this machine.
        ray.init(address="local", num_cpus=settings.ray_num_cpus, **kwargs)

"""Facts about the Ray task or cluster this code runs in, for fault handling and job preflight checks."""

from __future__ import annotations

import os
import sys


def task_attempt() -> int:
    """0 on a task's first run, n on its n-th retry (Ray retries a task whose worker process died); 0 outside Ray.

    Ray has no public call for this yet; the core worker's counter is read defensively.
    """
    ray = sys.modules.get("ray")  # never import Ray just to ask: plain processes (benchmarks) stay light
    if ray is None:
        return 0
    try:
        if not ray.is_initialized():
            return 0
        worker = ray._private.worker.global_worker
        return int(worker.core_worker.get_current_task_attempt_number())
    except Exception:  # an API move must never break ingest; callers then see every run as a first attempt
        return 0


def worker_origin(timeout_s: float = 300.0) -> str:
    """Where a Ray worker imports neurobridge from, asked before any real work is scheduled.

    On a cluster this shows that the job's code reached the workers (runtime_env ``py_modules``) and not some older
    installed copy; a worker that cannot import the package fails here, with Ray's reason, instead of in the middle
    of an ingest. ``num_cpus=0``: it may run on a head node that schedules no work.
    """
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import neurobridge

        return os.path.dirname(neurobridge.__file__)

    return ray.get(where.remote(), timeout=timeout_s)

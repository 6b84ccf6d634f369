"""One benchmark measurement in a fresh interpreter: its wall time and that process's own peak memory.

A fresh process per measurement is what makes memory figures comparable (no allocator state or caches carried
over from the driver or a previous measurement), and the reference runs the same way as the code it is held
against. Imports named in ``warm`` happen before the clock starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ONE_THREAD_EVERYWHERE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "ARROW_NUM_THREADS": "1"}


def peak_rss() -> int:
    """Peak resident bytes of this process image.

    ``/proc/self/status`` VmHWM belongs to the current address space; ``ru_maxrss`` survives ``exec`` on Linux
    and so can report the size of the parent that spawned the worker (seen here: a 1.9x 'growth' that was the
    benchmark driver's own memory).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(module: str, fn: str, *args: str, warm: tuple[str, ...] = (), threads: dict | None = None) -> dict:
    """``module.fn(*args)`` (string arguments, a JSON-able result) in a fresh interpreter:
    ``{"seconds", "rss", "out"}``."""
    code = (
        "import importlib,json,sys,time\n"
        "from neurobridge.bench.worker import peak_rss\n"
        f"f=getattr(importlib.import_module({module!r}),{fn!r})\n"
        f"for m in {list(warm)!r}: importlib.import_module(m)\n"
        "t=time.perf_counter(); out=f(*sys.argv[1:]); dt=time.perf_counter()-t\n"
        "print(json.dumps({'seconds':dt,'rss':peak_rss(),'out':out}))\n"
    )
    env = {**os.environ, **(ONE_THREAD if threads is None else threads)}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker {module}.{fn} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])

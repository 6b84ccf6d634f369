"""What the attention and matmul replays of `bench model` share: FLOP formulas that also note the calls they count,
and timing that reads finished device work."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def recording(formula, note: Callable[..., None]):
    """``formula`` (a FlopCounterMode entry taking the op's tensors) that first hands those tensors to ``note``: one
    counted step then says which calls it made, with their shapes and layouts, for a replay of each alone."""

    def record(*args, out_val=None, **kwargs):
        note(*args, **kwargs)
        return formula(*args, out_val=out_val, **kwargs)

    record._get_raw = True  # FlopCounterMode hands it the tensors, not their shapes
    return record


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """The median time of ``reps`` calls of ``fn`` after two warm-up calls, each timed to finished device work."""
    times = []
    for i in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's kernels run asynchronously), so a clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""What the dense matmuls of a training step cost alone, and the MFU a step without overhead would reach.

The attention replay (``bench.attention``) bounds what work outside attention can gain, if all of it ran at the
matmul peak. But a small model's other FLOPs are thin projections ([tokens × 64] @ [64 × 192]) that no CPU runs
at the peak of a square matmul, and between them run copies, norms, gathers and element-wise ops that count no
FLOPs at all. Recording the step's mm / addmm / bmm / baddbmm calls (forward and backward: autograd's matmuls
dispatch the same ops) and replaying each alone at its shapes, strides and dtype splits the step's time three
ways: attention, matmuls, and the rest (``overhead``). Then

    MFU without overhead = FLOPs / (attention time + matmul time) / peak

is the MFU the step would reach if every op that counts no FLOPs took no time: a target above it needs faster
kernels, not less Python or fewer copies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch

from neurobridge.bench.replay import median_seconds, recording

OPS = ("mm", "addmm", "bmm", "baddbmm")


@dataclass(frozen=True)
class Operand:
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # a transposed weight reads differently from a contiguous one: replayed as it was

    @classmethod
    def of(cls, t: torch.Tensor) -> Operand:
        return cls(tuple(t.shape), tuple(t.stride()))

    def make(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Random values laid out with these strides (a broadcast operand's zero strides included)."""
        size = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride, strict=True)) if all(self.shape) else 0
        return torch.randn(size, dtype=dtype, device=device).as_strided(self.shape, self.stride)


@dataclass(frozen=True)
class MatmulCall:
    """One matmul of a step: the op, its operands (the addend first for addmm / baddbmm) and their dtype."""

    op: str
    operands: tuple[Operand, ...]
    dtype: torch.dtype = torch.float32


class MatmulRecorder:
    """Wraps torch's FLOP formulas of the matmul ops so that counting a step's FLOPs also records its matmuls."""

    def __init__(self) -> None:
        self.calls: Counter[MatmulCall] = Counter()

    def mapping(self) -> dict:
        """Entries for FlopCounterMode's ``custom_mapping`` (they count exactly what torch's own entries count)."""
        from torch.utils.flop_counter import flop_registry

        aten = torch.ops.aten
        return {getattr(aten, op): self._recording(op, flop_registry[getattr(aten, op)]) for op in OPS}

    def _recording(self, op: str, formula):
        n_operands = 3 if op in ("addmm", "baddbmm") else 2

        def note(*args, **kwargs) -> None:
            operands = tuple(Operand.of(a) for a in args[:n_operands])
            self.calls[MatmulCall(op, operands, args[n_operands - 1].dtype)] += 1

        return recording(formula, note)


def matmul_flops(counts: dict) -> int:
    """The matmul share of FlopCounterMode's ``get_flop_counts()``."""
    names = {str(getattr(torch.ops.aten, op)) for op in OPS}
    return sum(n for op, n in counts.get("Global", {}).items() if str(op) in names)


def time_calls(calls: Counter[MatmulCall], device: torch.device, reps: int = 5) -> float:
    """Seconds per step that the recorded matmuls take alone: each call timed ``reps`` times (median, after two
    warm-up runs) at its shapes, strides and dtype, times how often the step made it."""
    total = 0.0
    for call, n in calls.items():
        fn = getattr(torch, call.op)
        args = [o.make(call.dtype, device) for o in call.operands]
        total += n * median_seconds(partial(fn, *args), device, reps)
    return total


def mfu_without_overhead(flops: float, kernel_s: float, peak_flops_per_s: float) -> float:
    """The MFU of a step that takes only its kernels' time alone (attention and matmuls), nothing between them."""
    return flops / kernel_s / peak_flops_per_s if kernel_s > 0 else float("nan")

"""What attention alone costs in a training step, and the MFU ceiling that sets (`neurobridge bench model`).

MFU says how far a step is from the matmul peak, not why. A small model's step is mostly attention over a few hundred
tokens with narrow heads, and the fused SDPA kernels run such shapes far below the peak of a dense matmul. So the
step's SDPA calls are recorded while its FLOPs are counted, then replayed alone (forward + backward, the same
shapes, dtype and mask), which gives the best time attention can take on this device. If everything else in the
step ran at the matmul peak, the step could reach at most

    ceiling = FLOPs / (attention time + other FLOPs / peak) / peak,

and a target above that ceiling cannot be reached by work outside the attention kernel.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from neurobridge.bench.replay import median_seconds, recording

# The forward SDPA kernels a training step may dispatch to; each is followed by its backward in the same step.
FORWARD_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)


@dataclass(frozen=True)
class Call:
    """One SDPA call of a step: q, k, v shapes [B, H, L, D], their dtype and the mask's shape, if it had one."""

    q: tuple[int, ...]
    k: tuple[int, ...]
    v: tuple[int, ...]
    mask: tuple[int, ...] | None
    dtype: torch.dtype = torch.float32


class Recorder:
    """Wraps the FLOP formulas of the forward SDPA ops so that counting a step's FLOPs also records its calls."""

    def __init__(self) -> None:
        self.calls: Counter[Call] = Counter()

    def mapping(self) -> dict:
        """FlopCounterMode's ``custom_mapping``: the CPU flash formulas and the forward SDPA ops recording."""
        from torch.utils.flop_counter import flop_registry, shape_wrapper

        aten = torch.ops.aten
        formulas = cpu_flash_formulas()
        out = dict(formulas)
        for name in FORWARD_OPS:
            op = getattr(aten, name, None)
            if op in formulas:  # ours take shapes
                out[op] = recording(shape_wrapper(formulas[op]), self._note)
            elif op is not None and op in flop_registry:  # torch's own are registered taking the tensors
                out[op] = recording(flop_registry[op], self._note)
        return out

    def _note(self, *args, **kwargs) -> None:
        q, k, v = (tuple(a.shape) for a in args[:3])
        mask = kwargs.get("attn_mask")
        if mask is None:  # the memory-efficient kernel takes its bias positionally
            mask = next((a for a in args[3:] if isinstance(a, torch.Tensor)), None)
        if mask is not None:  # a broadcast mask (stride 0) is replayed broadcast, not materialised
            mask = tuple(1 if st == 0 else n for n, st in zip(mask.shape, mask.stride(), strict=True))
        self.calls[Call(q, k, v, mask, args[0].dtype)] += 1


def cpu_flash_formulas() -> dict:
    """FlopCounterMode entries for the SDPA kernels it does not know (CPU flash), by torch's own formulas: without
    them half a small model's work would go uncounted."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:  # FlopCounterMode passes shapes
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    names = {"_scaled_dot_product_flash_attention_for_cpu": fwd}
    names["_scaled_dot_product_flash_attention_for_cpu_backward"] = bwd
    return {getattr(aten, n): fn for n, fn in names.items() if hasattr(aten, n)}


def attention_flops(counts: dict) -> int:
    """The SDPA share of FlopCounterMode's ``get_flop_counts()`` (forward and backward kernels)."""
    return sum(n for op, n in counts.get("Global", {}).items() if "scaled_dot_product" in str(op))


def time_calls(calls: Counter[Call], device: torch.device, reps: int = 5) -> float:
    """Seconds per step that the recorded calls take alone: each call's forward + backward timed ``reps`` times
    (median) at its shapes and dtype, times how often the step made it."""
    total = 0.0
    for call, n in calls.items():
        q, k, v = (
            torch.randn(s, device=device, dtype=call.dtype, requires_grad=True) for s in (call.q, call.k, call.v)
        )
        mask = None if call.mask is None else torch.ones(call.mask, dtype=torch.bool, device=device)
        grad = torch.randn(*call.q[:-1], call.v[-1], device=device, dtype=call.dtype)  # no loss ops in the timing
        total += n * median_seconds(partial(_forward_backward, q, k, v, mask, grad), device, reps)
    return total


def _forward_backward(q, k, v, mask, grad) -> None:
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)


def ceiling(flops: float, attention_flops: float, attention_s: float, peak_flops_per_s: float) -> float:
    """The MFU of a step whose attention takes ``attention_s`` and whose other FLOPs all run at the peak."""
    best_s = attention_s + (flops - attention_flops) / peak_flops_per_s
    return flops / best_s / peak_flops_per_s if best_s > 0 else float("nan")

"""Model-only training-step throughput against the device's own matmul roofline (`neurobridge bench model`, or
`python -m neurobridge.bench.model --device cuda` where only torch, numpy and pydantic are installed).

Synthetic windows of a fixed shape go through the real collate, masking and MAE training step (the loop's path:
heads on target tokens only). FLOPs of one step are counted by torch's FlopCounterMode, with attention counted by
the SDPA formulas torch uses (its counter has no entry for the CPU flash kernel, which would leave half the work
uncounted). In the same process the dense matmul rate of the device is measured at the same precision: the
practical peak (before and after the timed steps, the better kept). MFU = counted FLOP/s ÷ that peak. This isolates
the model from the data path (``bench train``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import collate
from neurobridge.models.vocab import Vocabularies

SIZES = {
    "small": {"d_model": 64, "depth": 2, "decoder_d_model": 48, "decoder_depth": 1},  # heads 4 × 16, 1 × 48
    "base": {"d_model": 256, "depth": 6, "heads": 8, "decoder_d_model": 128, "decoder_depth": 2, "decoder_heads": 4},
    "large": {"d_model": 512, "depth": 8, "heads": 8, "decoder_d_model": 256, "decoder_depth": 2, "decoder_heads": 8},
}


@dataclass(frozen=True)
class Shape:
    """A training step's windows: ``batch`` windows of ``units`` units × ``bins`` bins (the demo's: 32 × 96 × 50)."""

    batch: int = 32
    units: int = 96
    bins: int = 50


def synthetic_rows(n: int, units: int, bins: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    regions = np.array(["VISp", "CA1", "LP", "MOs"])[np.sort(rng.integers(0, 4, units))]
    return [
        {
            "counts": rng.poisson(0.3, units * bins).astype(np.uint16),
            "n_units": units,
            "n_bins": bins,
            "unit_regions": list(regions),
            "session": f"s{i % 8}",
            "subject": "m",
            "task": "t",
            "heldout": rng.random(units) < 0.25,
            "sample_id": f"w{i}",
        }
        for i in range(n)
    ]


def use_bf16(device: torch.device, precision: str) -> bool:
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, bf16: bool, seconds: float = 1.0) -> dict:
    """The device's practical peak: the best dense square-matmul rate over a few sizes, at the step's precision."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    best = {"tflops_per_s": 0.0, "n": 0}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
            if device.type == "cuda" and reps % 10 == 0:
                _sync(device)
        _sync(device)
        rate = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
        if rate > best["tflops_per_s"]:
            best = {"tflops_per_s": rate, "n": n}
    return best


def _attention_flops() -> dict:
    """FlopCounterMode entries for the SDPA kernels it does not know (CPU flash), by torch's own formulas."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:  # FlopCounterMode passes shapes
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    names = {"_scaled_dot_product_flash_attention_for_cpu": fwd}
    names["_scaled_dot_product_flash_attention_for_cpu_backward"] = bwd
    return {getattr(aten, n): fn for n, fn in names.items() if hasattr(aten, n)}


def run(size: str = "small", device: str = "cpu", shape: Shape = Shape(), steps: int = 20, precision: str = "auto"):
    """One size's training-step rate and MFU against the same-run matmul peak (a dict, JSON-ready)."""
    from torch.utils.flop_counter import FlopCounterMode

    from neurobridge.train.batches import Collated
    from neurobridge.train.config import PretrainConfig
    from neurobridge.train.loop import Loop, Placement

    dev = torch.device(device)
    bf16 = use_bf16(dev, precision)
    vocabs = Vocabularies.from_rows(synthetic_rows(8, shape.units, shape.bins))
    cfg = PretrainConfig.model_validate(
        {"mode": "random", "model": SIZES[size], "optim": {"precision": "bf16" if bf16 else "fp32", "warmup_steps": 0}}
    )
    model = MaskedNeuralModel(cfg.model, vocabs).to(dev)
    loop = Loop(cfg, model, Placement(dev), None)
    rows = synthetic_rows(shape.batch, shape.units, shape.bins)
    item = Collated([collate(rows, vocabs, cfg.model.neurons_per_token).to(dev)], [r["sample_id"] for r in rows], [])
    with FlopCounterMode(display=False, custom_mapping=_attention_flops()) as counter:
        loop.train_step(item)
    flops = counter.get_total_flops()
    for _ in range(3):
        loop.train_step(item)
    before = matmul_peak(dev, bf16)  # on either side of the steps, the better one: a shared machine that slows
    _sync(dev)  # down for one second must not lower the peak and flatter the MFU
    t0 = time.perf_counter()
    for _ in range(steps):
        loop.train_step(item)
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    peak = max(before, matmul_peak(dev, bf16), key=lambda m: m["tflops_per_s"])
    out = {
        "size": size,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        **asdict(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": item.n_tokens,
        "step_s": dt,
        "tokens_per_s": item.n_tokens / dt,
        "tflops_per_s": flops / dt / 1e12,
        "matmul_peak_tflops_per_s": peak["tflops_per_s"],
        "matmul_peak_n": peak["n"],
    }
    out["mfu"] = out["tflops_per_s"] / peak["tflops_per_s"]
    if dev.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="small", choices=[*SIZES, "all"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=Shape.batch)
    p.add_argument("--units", type=int, default=Shape.units)
    p.add_argument("--bins", type=int, default=Shape.bins)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    a = p.parse_args()
    for size in SIZES if a.size == "all" else [a.size]:
        print(json.dumps(run(size, a.device, Shape(a.batch, a.units, a.bins), a.steps, a.precision)))


if __name__ == "__main__":
    main()

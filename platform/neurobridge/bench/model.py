"""Model-only training-step throughput and MFU on any device (`neurobridge bench model`, or
`python -m neurobridge.bench.model --device cuda` where only torch, numpy and pydantic are installed).

Synthetic windows with realistic shapes go through the real collate, masking and MAE step; FLOPs are counted by
torch's FlopCounterMode on one step (matmuls and attention, forward and backward), so MFU = counted FLOP/s over the
device's peak. This isolates the model from the data path, which ``bench train`` measures.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.patching import collate
from neurobridge.models.vocab import Vocabularies

SIZES = {
    "small": {"d_model": 64, "depth": 2, "heads": 4, "decoder_d_model": 48, "decoder_depth": 1},
    "base": {"d_model": 256, "depth": 6, "heads": 8, "decoder_d_model": 128, "decoder_depth": 2, "decoder_heads": 4},
    "large": {"d_model": 512, "depth": 8, "heads": 8, "decoder_d_model": 256, "decoder_depth": 2, "decoder_heads": 8},
}


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


@dataclass
class ModelBenchConfig:
    """The model measured, where, and on what batches."""

    size: str = "small"  # one of SIZES
    device: str = "cpu"
    batch: int = 64  # windows per step
    units: int = 128  # units per synthetic window
    bins: int = 50  # bins per synthetic window
    steps: int = 20  # timed steps (after one counted and three warm-up steps)
    peak_tflops: float | None = None  # the device's peak, for MFU
    precision: str = "auto"  # bf16, or auto: bf16 on a CUDA device that supports it; anything else: fp32


def run(bench: ModelBenchConfig | None = None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    bench = bench or ModelBenchConfig()
    size, device, batch, units, bins = bench.size, bench.device, bench.batch, bench.units, bench.bins
    steps, peak_tflops, precision = bench.steps, bench.peak_tflops, bench.precision
    dev = torch.device(device)
    vocabs = Vocabularies.from_rows(synthetic_rows(8, units, bins))
    cfg = ModelConfig(**SIZES[size])
    model = MaskedNeuralModel(cfg, vocabs).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = collate(synthetic_rows(batch, units, bins), vocabs, cfg.neurons_per_token).to(dev)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    gen = torch.Generator(device=dev).manual_seed(0)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(b, mode="random", generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    tokens = int(b.token_valid.sum())
    out = {
        "size": size,
        "device": str(dev),
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": tokens,
        "step_s": dt,
        "tokens_per_s": tokens / dt,
        "tflops_per_s": flops / dt / 1e12,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    if peak_tflops:
        out["mfu"] = out["tflops_per_s"] / peak_tflops
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="small", choices=list(SIZES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--units", type=int, default=128)
    p.add_argument("--bins", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (e.g. 989 for H100 SXM dense bf16)")
    a = p.parse_args()
    bench = ModelBenchConfig(
        size=a.size,
        device=a.device,
        batch=a.batch,
        units=a.units,
        bins=a.bins,
        steps=a.steps,
        peak_tflops=a.peak_tflops,
    )
    print(json.dumps(run(bench)))


if __name__ == "__main__":
    main()

"""Model-only training-step throughput against the device's own matmul roofline (`neurobridge bench model`, or
`python -m neurobridge.bench.model --device cuda` where only torch, numpy and pydantic are installed).

Synthetic windows of a fixed shape go through the real collate, masking and MAE training step (the loop's path:
heads on target tokens only). FLOPs of one step are counted by torch's FlopCounterMode, with attention counted by
the SDPA formulas torch uses (its counter has no entry for the CPU flash kernel, which would leave half the work
uncounted). In the same process the dense matmul rate of the device is measured at the same precision: the
practical peak (before and after the timed steps, the better kept). MFU = counted FLOP/s ÷ that peak. The step's
attention calls are then replayed alone (``bench.attention``), and so are its matmuls (``bench.matmuls``): their
shares of the step say whether a gap to the peak lies in the attention kernel, in the matmuls, or in the ops between
them that count no FLOPs (the overhead). This isolates the model from the data path (``bench train``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from neurobridge.bench import attention, matmuls, replay
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


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware: a GPU that supports it, or a CPU with AMX tiles or AVX512-BF16
    (where oneDNN runs bf16 matmuls several times faster than fp32; elsewhere bf16 is emulated and only slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def precisions(device: torch.device, precision: str) -> list[str]:
    """What ``--precision`` measures. ``auto``: bf16 on a GPU that has it (what training uses there); on a CPU fp32,
    the training default, and bf16 beside it where the CPU has it natively, so both rooflines are on record."""
    if precision != "auto":
        return [precision]
    if device.type == "cuda":
        return ["bf16" if native_bf16(device) else "fp32"]
    return ["fp32", "bf16"] if native_bf16(device) else ["fp32"]


def device_name(device: torch.device) -> str:
    """The device in words, so figures from different machines are never compared blind: the GPU's name, or the
    CPU's model with the vector ISA torch dispatches to and whether it has AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    amx = " + AMX" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else ""
    return f"{model} ({torch.backends.cpu.get_cpu_capability()}{amx})"


def matmul_peak(device: torch.device, bf16: bool, seconds: float = 1.0) -> dict:
    """The device's practical peak: the best dense square-matmul rate over a few sizes, at the step's precision."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    best = {"tflops_per_s": 0.0, "n": 0}
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        replay.sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
            if device.type == "cuda" and reps % 10 == 0:
                replay.sync(device)
        replay.sync(device)
        rate = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
        if rate > best["tflops_per_s"]:
            best = {"tflops_per_s": rate, "n": n}
    return best


def run(
    size: str = "small",
    device: str = "cpu",
    shape: Shape = Shape(),
    steps: int = 20,
    precision: str = "fp32",
    peak_seconds: float = 1.0,
) -> dict:
    """One size's training-step rate at one precision (fp32 | bf16) and its MFU against the same-run matmul peak
    at that precision (a dict, JSON-ready)."""
    from torch.utils.flop_counter import FlopCounterMode

    from neurobridge.train.batches import Collated
    from neurobridge.train.config import PretrainConfig
    from neurobridge.train.loop import Loop, Placement

    dev = torch.device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: fp32 or bf16 (``precisions`` resolves auto)")
    bf16 = precision == "bf16"
    vocabs = Vocabularies.from_rows(synthetic_rows(8, shape.units, shape.bins))
    cfg = PretrainConfig.model_validate(
        {"mode": "random", "model": SIZES[size], "optim": {"precision": "bf16" if bf16 else "fp32", "warmup_steps": 0}}
    )
    model = MaskedNeuralModel(cfg.model, vocabs).to(dev)
    loop = Loop(cfg, model, Placement(dev), None)
    rows = synthetic_rows(shape.batch, shape.units, shape.bins)
    item = Collated([collate(rows, vocabs, cfg.model.neurons_per_token).to(dev)], [r["sample_id"] for r in rows], [])
    recorder, mm_recorder = attention.Recorder(), matmuls.MatmulRecorder()
    with FlopCounterMode(display=False, custom_mapping=recorder.mapping() | mm_recorder.mapping()) as counter:
        loop.train_step(item)
    flops, attn_flops = counter.get_total_flops(), attention.attention_flops(counter.get_flop_counts())
    mm_flops = matmuls.matmul_flops(counter.get_flop_counts())
    for _ in range(3):
        loop.train_step(item)
    # The peak on either side of the steps, the better one: a shared machine that slows down for one second must
    # not lower the peak and flatter the MFU.
    before = matmul_peak(dev, bf16, peak_seconds)
    replay.sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loop.train_step(item)
    replay.sync(dev)
    dt = (time.perf_counter() - t0) / steps
    peak = max(before, matmul_peak(dev, bf16, peak_seconds), key=lambda m: m["tflops_per_s"])
    attn_s = attention.time_calls(recorder.calls, dev)
    mm_s = matmuls.time_calls(mm_recorder.calls, dev)
    out = {
        "size": size,
        "device": device_name(dev),
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
    out |= {
        "attention_flops_share": attn_flops / flops,
        "attention_s_alone": attn_s,  # the step's SDPA calls replayed alone, forward + backward
        "attention_tflops_per_s": attn_flops / attn_s / 1e12 if attn_s else float("nan"),
        # the rest of the step's rate, taking attention's time in the step to be its time alone
        "other_tflops_per_s": (flops - attn_flops) / (dt - attn_s) / 1e12 if dt > attn_s else float("nan"),
        "mfu_ceiling": attention.ceiling(flops, attn_flops, attn_s, peak["tflops_per_s"] * 1e12),
        "matmul_flops_share": mm_flops / flops,
        "matmul_s_alone": mm_s,  # the step's mm / addmm / bmm calls (forward and backward) replayed alone
        "matmul_tflops_per_s": mm_flops / mm_s / 1e12 if mm_s else float("nan"),
        # the step's time in neither kernel: copies, norms, gathers, element-wise ops, the optimizer, Python
        "overhead_s": dt - attn_s - mm_s,
        "mfu_without_overhead": matmuls.mfu_without_overhead(flops, attn_s + mm_s, peak["tflops_per_s"] * 1e12),
    }
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
        for prec in precisions(torch.device(a.device), a.precision):
            print(json.dumps(run(size, a.device, Shape(a.batch, a.units, a.bins), a.steps, prec)))


if __name__ == "__main__":
    main()

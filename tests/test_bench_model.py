"""`neurobridge bench model` times the real training step and divides its counted FLOP/s by a matmul peak measured
in the same run at the same precision; which precisions it measures depends on what the device does natively, and
every figure names the device it came from (the numbers themselves are measured by running it, not asserted)."""

from __future__ import annotations

import pytest
import torch
from neurobridge.bench.model import Shape, device_name, native_bf16, precisions, run

CPU = torch.device("cpu")


def test_auto_measures_fp32_on_a_cpu_and_bf16_beside_it_only_where_the_cpu_has_it():
    assert precisions(CPU, "auto") == (["fp32", "bf16"] if native_bf16(CPU) else ["fp32"])
    assert precisions(CPU, "fp32") == ["fp32"] and precisions(CPU, "bf16") == ["bf16"]


def test_a_cpu_is_named_with_the_vector_isa_torch_dispatches_to():
    assert torch.backends.cpu.get_cpu_capability() in device_name(CPU)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_reports_its_rate_and_mfu_against_the_same_precision_peak(precision):
    r = run("small", "cpu", Shape(batch=4, units=16, bins=10), steps=1, precision=precision, peak_seconds=0.05)
    assert r["precision"] == precision and r["device"] == device_name(CPU)
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s"])
    assert r["mfu"] == pytest.approx(r["tflops_per_s"] / r["matmul_peak_tflops_per_s"]) and r["mfu"] > 0
    assert r["matmul_peak_n"] in (512, 1024, 2048)


def test_auto_is_resolved_before_a_step_is_timed():
    with pytest.raises(ValueError, match="precisions"):
        run("small", "cpu", Shape(batch=2, units=8, bins=5), steps=1, precision="auto", peak_seconds=0.01)

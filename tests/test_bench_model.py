"""`neurobridge bench model` times the real training step and divides its counted FLOP/s by a matmul peak measured
in the same run at the same precision; which precisions it measures depends on what the device does natively, and
every figure names the device it came from (the numbers themselves are measured by running it, not asserted)."""

from __future__ import annotations

import re

import pytest
import torch
from neurobridge.bench.attention import Recorder, attention_flops, ceiling
from neurobridge.bench.matmuls import MatmulRecorder, Operand, matmul_flops, mfu_without_overhead
from neurobridge.bench.model import Shape, device_name, native_bf16, precisions, run
from torch.utils.flop_counter import FlopCounterMode

CPU = torch.device("cpu")


def _small_step(windows: int):
    """The small model's config, and one forward + backward of it on ``windows`` windows of 40 units × 6 bins."""
    from neurobridge.bench.model import SIZES, synthetic_rows
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.models.patching import collate
    from neurobridge.models.vocab import Vocabularies
    from neurobridge.train.config import PretrainConfig

    rows = synthetic_rows(windows, 40, 6)
    vocabs = Vocabularies.from_rows(rows)
    cfg = PretrainConfig.model_validate({"mode": "random", "model": SIZES["small"]})
    model = MaskedNeuralModel(cfg.model, vocabs)
    batch = collate(rows, vocabs, cfg.model.neurons_per_token)
    return cfg, lambda: model(batch).loss.backward()


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


def test_a_step_reports_what_attention_alone_costs_and_the_mfu_ceiling_it_sets():
    r = run("small", "cpu", Shape(batch=4, units=16, bins=10), steps=1, precision="fp32", peak_seconds=0.05)
    assert 0 < r["attention_flops_share"] < 1 and r["attention_s_alone"] > 0
    flops = r["tflops_per_s"] * 1e12 * r["step_s"]
    attn = r["attention_flops_share"] * flops
    assert r["attention_tflops_per_s"] == pytest.approx(attn / r["attention_s_alone"] / 1e12)
    peak = r["matmul_peak_tflops_per_s"] * 1e12
    assert r["mfu_ceiling"] == pytest.approx(ceiling(flops, attn, r["attention_s_alone"], peak))


def test_the_ceiling_is_one_when_attention_is_free_and_its_own_rate_when_it_is_all_the_work():
    assert ceiling(1e12, 0.0, 0.0, 1e12) == pytest.approx(1.0)
    assert ceiling(1e12, 1e12, 2.0, 1e12) == pytest.approx(0.5)  # attention at half the peak, nothing else
    assert ceiling(1e12, 5e11, 1.0, 1e12) == pytest.approx(1 / 1.5)  # half the work at half the peak


def test_the_recorder_sees_every_attention_call_of_the_model_with_its_shapes():
    cfg, step = _small_step(windows=3)
    recorder = Recorder()
    with FlopCounterMode(display=False, custom_mapping=recorder.mapping()):
        step()
    heads = {call.q[1:2] + call.q[3:] for call in recorder.calls}  # (heads, head width) of each call
    assert heads == {(cfg.model.heads, cfg.model.d_model // cfg.model.heads), (1, cfg.model.decoder_d_model)}
    assert sum(recorder.calls.values()) == cfg.model.depth + cfg.model.decoder_depth
    assert all(call.q[0] == 3 and call.dtype == torch.float32 for call in recorder.calls)


def test_a_step_splits_its_time_into_attention_matmuls_and_overhead():
    r = run("small", "cpu", Shape(batch=4, units=16, bins=10), steps=1, precision="fp32", peak_seconds=0.05)
    assert 0 < r["matmul_flops_share"] < 1 and r["matmul_s_alone"] > 0
    flops = r["tflops_per_s"] * 1e12 * r["step_s"]
    assert r["matmul_tflops_per_s"] == pytest.approx(r["matmul_flops_share"] * flops / r["matmul_s_alone"] / 1e12)
    assert r["overhead_s"] == pytest.approx(r["step_s"] - r["attention_s_alone"] - r["matmul_s_alone"])
    kernels = r["attention_s_alone"] + r["matmul_s_alone"]
    peak = r["matmul_peak_tflops_per_s"] * 1e12
    assert r["mfu_without_overhead"] == pytest.approx(mfu_without_overhead(flops, kernels, peak))


def test_every_flop_the_model_counts_is_attention_or_a_recorded_matmul():
    """So the step's time outside the two replays is work that counts no FLOPs: overhead by definition."""
    cfg, step = _small_step(windows=3)
    attn, mm = Recorder(), MatmulRecorder()
    with FlopCounterMode(display=False, custom_mapping=attn.mapping() | mm.mapping()) as counter:
        step()
    counts = counter.get_flop_counts()
    assert attention_flops(counts) + matmul_flops(counts) == counter.get_total_flops() > 0
    # each of the blocks' four projections runs forward (addmm) and twice backward (mm: input and weight grads)
    ops = {call.op for call in mm.calls}
    assert {"addmm", "mm"} <= ops and sum(mm.calls.values()) >= 3 * 4 * (cfg.model.depth + cfg.model.decoder_depth)


@pytest.mark.parametrize(
    "operand",
    [Operand((3, 5), (5, 1)), Operand((3, 5), (1, 3)), Operand((4, 3, 5), (0, 5, 1)), Operand((2, 0), (1, 1))],
    ids=["contiguous", "transposed", "broadcast", "empty"],
)
def test_a_replayed_operand_has_the_recorded_layout(operand):
    t = operand.make(torch.float32, CPU)
    assert Operand.of(t) == operand


def test_without_overhead_a_step_at_the_peak_has_mfu_one():
    assert mfu_without_overhead(1e12, 1.0, 1e12) == pytest.approx(1.0)
    assert mfu_without_overhead(1e12, 4.0, 1e12) == pytest.approx(0.25)


def test_the_cli_table_shows_each_share_of_the_step(monkeypatch):
    from neurobridge.bench import model as bench_model
    from neurobridge.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COLUMNS", "250")
    real_peak = bench_model.matmul_peak  # a 20 ms peak instead of 1 s: the table is under test, not the figure
    monkeypatch.setattr(bench_model, "matmul_peak", lambda dev, bf16, seconds=1.0: real_peak(dev, bf16, 0.02))
    out = CliRunner().invoke(
        app, ["bench", "model", "--batch", "2", "--units", "8", "--bins", "5", "--steps", "1", "--precision", "fp32"]
    )
    assert out.exit_code == 0, out.output
    for column in ("attention alone", "matmuls alone", "overhead", "MFU w/o overhead"):
        assert column in out.output
    assert len(re.findall(r"\d+% of the step", out.output)) == 3  # attention, matmuls, overhead: one row

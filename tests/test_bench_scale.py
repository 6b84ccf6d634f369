"""`neurobridge bench ingest --workers 1,2` runs the real Ray Data ingest per setting and reports figures that agree
with the store it wrote (the numbers themselves are measured by running it, not asserted here)."""

from __future__ import annotations

import pytest
from neurobridge.bench.scale import bench_scaling


def test_scaling_bench_reports_consistent_figures(ray_cluster, tmp_path):
    lines: list[str] = []
    f = bench_scaling([1, 2], items=2, n_units=8, minutes=0.2, repeats=1, workdir=str(tmp_path), echo=lines.append)
    assert f["items"] == 2 and f["spikes"] > 0 and f["tokens"] == f["rows"] * 8 * 50  # 8 units × 50 bins per window
    assert f["store_bytes_per_token"] == pytest.approx(f["store_bytes"] / f["tokens"])
    assert f["w2_speedup"] == pytest.approx(f["w1_seconds"] / f["w2_seconds"])
    assert f["w1_spikes_per_s"] == pytest.approx(f["spikes"] / f["w1_seconds"])
    assert 0 < f["w1_concurrency"] <= 1.05  # one worker never has two items in flight
    assert 0 < f["w1_cpu_share"] <= 1.5  # CPU seconds of the items over their wall seconds (threads may add)
    assert any(line.startswith("speedup_2_vs_1_workers:") for line in lines)


def test_scaling_bench_refuses_more_workers_than_the_cluster_has_cpus(ray_cluster, tmp_path):
    cpus = int(ray_cluster.cluster_resources()["CPU"])
    with pytest.raises(RuntimeError, match=f"has {cpus} CPUs; cannot run {cpus + 1} workers"):
        bench_scaling(
            [1, cpus + 1], items=1, n_units=4, minutes=0.1, repeats=1, workdir=str(tmp_path), echo=lambda _: None
        )
    with pytest.raises(ValueError, match="distinct counts"):
        bench_scaling([2, 2], items=1, workdir=str(tmp_path), echo=lambda _: None)

"""evaluate/report (run by evaluate/run): a model scored beside the mean-rate, smoothing and oracle baselines on
the same sessions, cells and split, per region and for behaviour, pooled per dataset and tracked."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.train import small_cfg, train_locally


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


def test_evaluate_reports_model_beside_mean_smoothing_and_oracle_on_the_same_cells(store, tmp_path):
    from neurobridge.evaluate.report import EvalConfig
    from neurobridge.evaluate.run import evaluate
    from neurobridge.models.checkpoint import save_checkpoint

    cfg = small_cfg(**{"optim.max_steps": 6})
    _, _, model, vocabs = train_locally(store, cfg)
    save_checkpoint(str(tmp_path / "model.pt"), model, vocabs, {})
    report = evaluate(
        str(tmp_path / "model.pt"),
        ["t_nwb"],
        truth_dir=f"{store.raw_root}/truth",
        cfg=EvalConfig(split="train"),
        settings=store,
        track=True,
    )
    rows = report.table()
    assert {r["session"] for r in rows} == {"monkey00_s00", "monkey00_s01"}
    for r in rows:
        assert r["co_bps_mean_rate"] == 0.0  # the NLB null scores exactly zero: alignment sanity
        assert r["co_bps_oracle"] > r["co_bps_smoothing"] > 0  # the truth beats smoothing, smoothing beats the mean
        assert np.isfinite(r["co_bps"]) and np.isfinite(r["fp_bps"]) and "co_bps_readout" not in r  # opt-in
        assert set(k for k in r if k.startswith("region_bps.")) == {"region_bps.M1", "region_bps.PMd"}
        assert -1.0 < r["behavior_r2_smoothing"] <= 1.0  # hand velocity is decodable from smoothed spikes
    pooled = report.pooled["t_nwb"]
    assert pooled["sessions"] == 2 and pooled["co_bps_oracle"] > 0
    assert report.run_id is not None

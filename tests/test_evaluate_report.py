"""evaluate/report (run by evaluate/run): a model scored beside the mean-rate, smoothing and oracle baselines on
the same sessions, cells and split, per region and for behaviour, pooled per dataset and tracked. The smoothing
baseline's kernel (in ms) and penalty are searched and reported, a baseline at the mean rate is flagged, fp-bps is
only a forecast for forecasters, every unit's rate is predicted while masked, and behaviour is decoded from the
model and from smoothed spikes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.train import small_cfg, train_locally
from neurobridge.evaluate import baselines
from neurobridge.evaluate.behaviour import BehaviorConfig
from neurobridge.evaluate.readout import all_unit_rates
from neurobridge.evaluate.report import EvalConfig, evaluate_session, features, session_behaviour
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies
from neurobridge.store.rows import SessionRows
from neurobridge.store.splits import HeldoutSplit

SMALL = {"d_model": 16, "heads": 2, "decoder_d_model": 16, "decoder_heads": 2, "neurons_per_token": 4}


def session(seed: int, windows=40, units=12, bins=20, bin_ms=20.0, signal=1.0, behaviour=True) -> SessionRows:
    """Windows of one session driven by a slow 2-D latent (``signal`` 0: independent Poisson noise), with the
    latent itself as behaviour."""
    g = np.random.default_rng(seed)
    load = g.normal(0, 0.8, (2, units))
    rows = []
    for w in range(windows):
        phase = g.uniform(0, 2 * np.pi, 2)
        t = np.arange(bins) * bin_ms / 1000.0
        z = np.sin(2 * np.pi * 1.5 * t[:, None] + phase)
        rates = np.exp(np.log(0.8) + signal * z @ load).T  # [units, bins]
        rows.append(
            {
                "dataset": "d",
                "session": "s",
                "subject": "m",
                "task": "reach",
                "sample_id": f"s/{w:03d}",
                "split": "test" if w % 4 == 0 else "train",
                "t_start": float(w),
                "bin_ms": bin_ms,
                "n_units": units,
                "n_bins": bins,
                "counts": g.poisson(rates).astype(np.uint16).ravel(),
                "unit_ids": [f"s/{u}" for u in range(units)],
                "unit_regions": ["M1"] * units,
                "behavior": None if behaviour is False else z.astype(np.float32).ravel(),
                "behavior_names": ["pos.x", "pos.y"],
            }
        )
    return SessionRows("d", "s", {"train": [r for r in rows if r["split"] == "train"], "test": rows[::4]})


def model_for(sess: SessionRows, **cfg) -> tuple[MaskedNeuralModel, Vocabularies]:
    vocabs = Vocabularies.from_rows(sess.split("train"))
    torch.manual_seed(0)
    return MaskedNeuralModel(ModelConfig(**SMALL, **cfg), vocabs), vocabs


def test_the_smoothing_baseline_reports_its_ms_kernel_and_penalty_and_forecasts_are_labelled():
    sess = session(0)
    model, vocabs = model_for(sess)
    cfg = EvalConfig(
        smoothing_ms=[20.0, 60.0, 200.0],
        glm_l2=[1e-4, 1e-1],
        forecast=False,
        behavior=BehaviorConfig(smoothing_ms=[20.0, 100.0]),
    )
    r = evaluate_session(model, vocabs, sess, HeldoutSplit(None, 0.25), cfg)
    m = r.metrics
    assert m["smoothing_sigma_ms"] in (20.0, 60.0, 200.0) and m["smoothing_l2"] in (1e-4, 1e-1)
    assert m["co_bps_smoothing"] > 0.05 and not r.warnings  # a slow latent: the baseline uses its inputs
    assert "fp_bps" not in m and np.isfinite(m["fp_bps_not_trained"])  # not trained to forecast: labelled
    assert -1 < m["behavior_r2"] <= 1 and m["behavior_r2_smoothing"] > 0.3 and m["behavior_smoothing_ms"] > 0
    forecaster = evaluate_session(
        model, vocabs, sess, HeldoutSplit(None, 0.25), cfg.model_copy(update={"forecast": True})
    )
    assert forecaster.metrics["fp_bps"] == m["fp_bps_not_trained"]


def test_a_baseline_at_the_mean_rate_is_flagged():
    sess = session(
        1, windows=200, signal=0.0, behaviour=False
    )  # held-out units independent of held-in ones: nothing to smooth from
    model, vocabs = model_for(sess)
    cfg = EvalConfig(smoothing_ms=[50.0], glm_l2=[1e-3, 1.0], forecast=False)
    r = evaluate_session(model, vocabs, sess, HeldoutSplit(None, 0.25), cfg)
    assert abs(r.metrics["co_bps_smoothing"]) < 0.005
    assert len(r.warnings) == 1 and "about the mean rate" in r.warnings[0] and "kernel" in r.warnings[0]


def test_the_kernel_search_works_in_ms_whatever_the_bin_width():
    g = np.random.default_rng(4)
    found = {}
    for bin_ms in (10.0, 20.0):
        n = int(8000 / bin_ms)
        t = np.arange(n) * bin_ms / 1000.0
        drive = np.sin(2 * np.pi * 0.8 * t)[None, :, None] + np.zeros((40, 1, 1))
        heldin = g.poisson(np.exp(drive + np.log([2.0, 3.0, 1.5, 2.5]) + np.log(bin_ms / 20))).astype(float)
        heldout = g.poisson(np.exp(0.8 * drive[..., :1] + np.log(bin_ms / 20))).astype(float)
        _, choice = baselines.smoothing_search(heldin[:30], heldout[:30], heldin[30:], bin_ms, (10.0, 80.0, 300.0))
        found[bin_ms] = choice.sigma_ms
    assert found[10.0] == found[20.0] != 10.0  # the same kernel in ms at either bin width


def test_every_units_rate_is_predicted_without_its_own_count():
    sess = session(2, windows=4)
    model, vocabs = model_for(sess)
    rows = sess.split("test")
    rates = all_unit_rates(model, vocabs, rows)
    assert rates.shape == (1, 20, 12) and (rates > 0).all()
    changed = [dict(r) for r in rows]
    c = np.asarray(changed[0]["counts"]).reshape(12, 20).copy()
    c[5, 7] += 9  # one cell's own count
    changed[0]["counts"] = c.ravel()
    again = all_unit_rates(model, vocabs, changed)
    assert again[0, 7, 5] == pytest.approx(rates[0, 7, 5])  # its own prediction never saw it
    assert not np.allclose(again, rates)  # its neighbours' did


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


def test_patch_latents_keep_each_patch_whose_mean_is_the_per_bin_latent():
    sess = session(5, windows=8, units=10)  # neurons_per_token 4: patches of 4, 4 and 2 units
    model, vocabs = model_for(sess)
    rows = sess.split("train")
    per_bin = features(model, vocabs, rows, "latents", 4)
    per_patch = features(model, vocabs, rows, "patch_latents", 4)
    d = model.cfg.d_model
    assert per_bin.shape == (len(rows), 20, d) and per_patch.shape == (len(rows), 20, 3 * d)
    np.testing.assert_allclose(per_patch.reshape(len(rows), 20, 3, d).mean(axis=2), per_bin, atol=1e-5)
    assert not np.allclose(per_patch[..., :d], per_patch[..., d : 2 * d])  # patches are not copies of each other


def test_feature_sets_compared_on_one_session_score_as_each_alone_in_the_full_report():
    sess = session(6, windows=24)
    model, vocabs = model_for(sess)
    split = HeldoutSplit(None, 0.25)
    decoders = {
        "rates": BehaviorConfig(smoothing_ms=[40.0, 100.0]),
        "rates_smoothed": BehaviorConfig(smoothing_ms=[40.0, 100.0], feature_smoothing_ms=[0.0, 60.0]),
        "patch_latents": BehaviorConfig(features="patch_latents", smoothing_ms=[40.0, 100.0], lag_ms=20.0),
    }
    got = session_behaviour(model, vocabs, sess, split, decoders)
    fixed = {"smoothing_ms": [60.0], "glm_l2": [1e-2]}  # the co-smoothing baseline's search is not compared here
    for label, b in decoders.items():
        full = evaluate_session(model, vocabs, sess, split, EvalConfig(behavior=b, **fixed)).metrics
        alone = {k: v for k, v in full.items() if k.startswith("behavior_")}
        assert got[label] == pytest.approx(alone) and "behavior_r2_smoothing" in alone


def test_evaluate_reports_model_beside_mean_smoothing_and_oracle_on_the_same_cells(store, tmp_path):
    from neurobridge.evaluate.run import EvalData, evaluate
    from neurobridge.models.checkpoint import save_checkpoint

    cfg = small_cfg(**{"optim.max_steps": 6})
    _, _, model, vocabs = train_locally(store, cfg)
    save_checkpoint(str(tmp_path / "model.pt"), model, vocabs, {})
    report = evaluate(
        str(tmp_path / "model.pt"),
        EvalData(["t_nwb"], truth_dir=f"{store.raw_root}/truth"),
        cfg=EvalConfig(split="train"),
        settings=store,
        track=True,
    )
    rows = report.table()
    assert {r["session"] for r in rows} == {"monkey00_s00", "monkey00_s01"}
    for r in rows:
        assert r["co_bps_mean_rate"] == 0.0  # the NLB null scores exactly zero: alignment sanity
        assert r["co_bps_oracle"] > r["co_bps_smoothing"] > 0  # the truth beats smoothing, smoothing beats the mean
        assert np.isfinite(r["co_bps"]) and "co_bps_readout" not in r  # the latent read-out is opt-in
        # the checkpoint does not say it trained to forecast: fp-bps is labelled, never reported as a forecast
        assert np.isfinite(r["fp_bps_not_trained"]) and "fp_bps" not in r
        assert r["smoothing_sigma_ms"] in EvalConfig().smoothing_ms and r["smoothing_l2"] in EvalConfig().glm_l2
        assert set(k for k in r if k.startswith("region_bps.")) == {"region_bps.M1", "region_bps.PMd"}
        assert -1.0 < r["behavior_r2_smoothing"] <= 1.0  # hand velocity is decodable from smoothed spikes
    pooled = report.pooled["t_nwb"]
    assert pooled["sessions"] == 2 and pooled["co_bps_oracle"] > 0
    assert report.run_id is not None

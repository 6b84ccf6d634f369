"""NLB'21 submissions: the layout the writer produces, and scores computed with NLB's formulas against target files
the tests write in the structure of NLB's ``eval_data_test.h5``; malformed submissions are named precisely."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import MC_MAZE, needs_real_data
from helpers.train import small_cfg, train_locally
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.evaluate.baselines import smoothing_baseline
from neurobridge.evaluate.nlb import (
    OFFICIAL_TARGET,
    SubmissionError,
    SubmissionGroup,
    bits_per_spike,
    group_name,
    model_group,
    resample,
    score_submission,
    with_withheld_units,
    write_submission,
)
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies
from neurobridge.store.read import sources
from neurobridge.store.splits import HeldoutSplit, heldout_flags, with_heldout
from scipy.special import gammaln

N_TRAIN, N_EVAL, BINS, N_IN, N_OUT, N_FWD = 60, 20, 35, 8, 4, 10


def world(seed: int = 0):
    """True rates of a session with a 2-D 'hand velocity' read out of them, in NLB's 20 ms layout."""
    g = np.random.default_rng(seed)
    cond = g.integers(0, 4, N_TRAIN + N_EVAL)
    t = np.arange(BINS + N_FWD) / 10.0
    latent = np.stack([np.sin(t + c) for c in cond])[..., None] * np.array([1.0, -0.5])  # [trials, bins, 2]
    load = g.normal(0, 0.7, (2, N_IN + N_OUT))
    rates = np.exp(latent @ load - 0.5)
    spikes = g.poisson(rates).astype(float)
    velocity = latent + g.normal(0, 0.1, latent.shape)  # read out of the latent, as hand velocity is of M1
    return cond, rates, spikes, velocity


def target_file(path, cond, spikes, velocity) -> str:
    """A target in the structure of NLB's eval_data_test.h5 (group mc_maze_20)."""
    ev = slice(N_TRAIN, None)
    psth = np.concatenate([spikes[:N_TRAIN][cond[:N_TRAIN] == c, :BINS].mean(0) for c in cond[ev]])
    with h5py.File(path, "w") as f:
        g = f.create_group("mc_maze_20")
        g["eval_spikes_heldout"] = spikes[ev, :BINS, N_IN:]
        g["train_behavior"] = velocity[:N_TRAIN, :BINS]
        g["eval_behavior"] = velocity[ev, :BINS]
        g["psth"] = psth
        g["eval_spikes_heldin_forward"] = spikes[ev, BINS:, :N_IN]
        g["eval_spikes_heldout_forward"] = spikes[ev, BINS:, N_IN:]
    return str(path)


def submission(rates) -> SubmissionGroup:
    tr, ev = rates[:N_TRAIN, :BINS], rates[N_TRAIN:, :BINS]
    return SubmissionGroup(
        "mc_maze_20",
        {
            "train_rates_heldin": tr[..., :N_IN],
            "train_rates_heldout": tr[..., N_IN:],
            "eval_rates_heldin": ev[..., :N_IN],
            "eval_rates_heldout": ev[..., N_IN:],
            "eval_rates_heldin_forward": rates[N_TRAIN:, BINS:, :N_IN],
            "eval_rates_heldout_forward": rates[N_TRAIN:, BINS:, N_IN:],
        },
    )


def test_scores_follow_nlbs_formulas(tmp_path):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV

    cond, rates, spikes, velocity = world()
    target = target_file(tmp_path / "target.h5", cond, spikes, velocity)
    truth = score_submission(write_submission(tmp_path / "truth.h5", [submission(rates)]), target)
    flat = np.broadcast_to(spikes[:N_TRAIN, :BINS].mean((0, 1)), rates.shape)  # each unit's mean rate
    null = score_submission(write_submission(tmp_path / "null.h5", [submission(flat)]), target)
    t, n = truth["datasets"]["mc_maze_20"], null["datasets"]["mc_maze_20"]
    assert t["co-bps"] > 0.1 and abs(n["co-bps"]) < 0.02 and t["fp-bps"] > 0.1
    ev_rates = rates[N_TRAIN:, :BINS].astype(np.float32).astype(float)  # the file stores float32
    ev_spikes = spikes[N_TRAIN:, :BINS, N_IN:]
    mean = np.nanmean(ev_spikes, axis=(0, 1), keepdims=True)

    def nll(r):  # nlb_tools.evaluation.neg_log_likelihood
        return np.sum(r - ev_spikes * np.log(r) + gammaln(ev_spikes + 1))

    want = (nll(np.broadcast_to(mean, ev_spikes.shape)) - nll(ev_rates[..., N_IN:])) / ev_spikes.sum() / np.log(2)
    assert t["co-bps"] == pytest.approx(want, rel=1e-9)
    tr_rates = rates[:N_TRAIN, :BINS].astype(np.float32).astype(float)
    gscv = GridSearchCV(Ridge(), {"alpha": np.logspace(-4, 0, 9)})
    gscv.fit(tr_rates.reshape(-1, N_IN + N_OUT), velocity[:N_TRAIN, :BINS].reshape(-1, 2))
    vel = gscv.score(ev_rates.reshape(-1, N_IN + N_OUT), velocity[N_TRAIN:, :BINS].reshape(-1, 2))
    assert t["vel R2"] == pytest.approx(vel, abs=1e-6) and t["vel R2"] > 0.5
    with h5py.File(target) as f:
        psth = f["mc_maze_20/psth"][()]
    assert t["psth R2"] == pytest.approx(r2_score(psth, ev_rates.reshape(-1, N_IN + N_OUT)), abs=1e-9)
    assert not truth["official_target"]  # a test file, not NLB's


def test_missing_groups_and_wrong_shapes_are_named(tmp_path):
    cond, rates, spikes, velocity = world()
    target = target_file(tmp_path / "target.h5", cond, spikes, velocity)
    sub = submission(rates)
    del sub.arrays["eval_rates_heldout"]
    with pytest.raises(SubmissionError, match="group /mc_maze_20/eval_rates_heldout is missing"):
        score_submission(write_submission(tmp_path / "a.h5", [sub]), target)
    sub = submission(rates)
    sub.arrays["eval_rates_heldout"] = sub.arrays["eval_rates_heldout"][:, :-1]
    shapes = r"mc_maze_20/eval_rates_heldout: expected shape \(20, 35, 4\), found \(20, 34, 4\)"
    with pytest.raises(SubmissionError, match=shapes):
        score_submission(write_submission(tmp_path / "b.h5", [sub]), target)
    with pytest.raises(SubmissionError, match="no dataset group also in"):
        score_submission(write_submission(tmp_path / "c.h5", [SubmissionGroup("mc_rtt", sub.arrays)]), target)


def test_a_target_without_behaviour_scores_what_it_holds_and_still_checks_the_units(tmp_path):
    cond, rates, spikes, velocity = world()
    target = target_file(tmp_path / "target.h5", cond, spikes, velocity)
    with h5py.File(target, "a") as f:  # a target with held-out spikes only, as one written from a recording
        for key in ("train_behavior", "eval_behavior", "psth"):
            del f[f"mc_maze_20/{key}"]
    scores = score_submission(write_submission(tmp_path / "s.h5", [submission(rates)]), target)["datasets"]
    assert set(scores["mc_maze_20"]) == {"co-bps", "fp-bps"} and scores["mc_maze_20"]["co-bps"] > 0.1
    sub = submission(rates)
    sub.arrays["train_rates_heldout"] = sub.arrays["train_rates_heldout"][..., :-1]
    with pytest.raises(SubmissionError, match=r"train_rates_heldout: expected shape \(60, 4\), found \(60, 3\)"):
        score_submission(write_submission(tmp_path / "t.h5", [sub]), target)


def test_rates_move_between_bin_widths_as_a_piecewise_constant_rate_that_keeps_every_count():
    r = np.random.default_rng(0).gamma(2.0, size=(3, 14, 5))
    five = resample(r, 50.0, 5.0)  # a 50 ms model: each bin's expected count spread evenly over ten 5 ms bins
    assert five.shape == (3, 140, 5) and np.allclose(five.reshape(3, 14, 10, 5).sum(2), r)
    assert np.allclose(resample(five, 5.0, 50.0), r)
    twenty = resample(r, 50.0, 20.0)  # through 10 ms: a 20 ms bin straddling two 50 ms bins takes 10 ms of each
    assert twenty.shape == (3, 35, 5)
    assert np.allclose(twenty[:, :2], 0.4 * r[:, :1]) and np.allclose(twenty[:, 2], 0.2 * (r[:, 0] + r[:, 1]))
    assert np.allclose(twenty.reshape(3, 7, 5, 5).sum(2), r.reshape(3, 7, 2, 5).sum(2))  # every 100 ms keeps its count
    with pytest.raises(SubmissionError, match="13 bins of 50 ms is not a whole number of 20 ms bins"):
        resample(r[:, :13], 50.0, 20.0)
    with pytest.raises(SubmissionError, match="whole microseconds"):
        resample(r, 50.0, 1e-5)
    assert group_name("mc_maze", 5.0) == "mc_maze" and group_name("mc_maze", 20.0) == "mc_maze_20"
    assert OFFICIAL_TARGET["bytes"] == 105_927_616 and len(OFFICIAL_TARGET["sha256"]) == 64
    assert bits_per_spike(np.full((2, 3, 1), 1.0), np.ones((2, 3, 1))) == pytest.approx(0.0)


def fifty_ms_session():
    """Twelve 700 ms windows at 50 ms of 12 units (8 train, 4 test, stored out of time order), held-out flags by
    hash, and an untrained model of them."""
    g = np.random.default_rng(1)
    rows = []
    for w in range(12):
        rows.append(
            {
                "dataset": "d",
                "session": "s",
                "subject": "m",
                "task": "t",
                "sample_id": f"w{w}",
                "t_start": float(11 - w),  # stored out of time order
                "bin_ms": 50.0,
                "n_units": 12,
                "n_bins": 14,
                "counts": g.poisson(1.0, 12 * 14).astype(np.uint16),
                "unit_ids": [f"s/{u}" for u in range(12)],
                "unit_regions": ["M1"] * 12,
                "split": "train" if w < 8 else "test",
            }
        )
    vocabs = Vocabularies.from_rows(rows)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, heads=2, decoder_d_model=16, decoder_heads=2, neurons_per_token=4)
    return with_heldout(rows, HeldoutSplit(None, 0.25)), MaskedNeuralModel(cfg, vocabs), vocabs


def test_a_models_submission_has_nlbs_layout_in_time_order():
    flagged, model, vocabs = fifty_ms_session()
    held = np.asarray(flagged[0]["heldout"])
    group = model_group(model, vocabs, flagged[:8], flagged[8:], "mc_maze_medium", 5.0, forecast=True)
    a = group.arrays
    assert group.name == "mc_maze_medium"
    assert a["train_rates_heldin"].shape == (8, 140, int((~held).sum()))
    assert a["eval_rates_heldout"].shape == (4, 140, int(held.sum()))
    assert a["eval_rates_heldin_forward"].shape == (4, 40, int((~held).sum()))  # 200 ms at 5 ms
    assert all((v > 0).all() for v in a.values())
    late_first = model_group(model, vocabs, flagged[:8], flagged[8:][::-1], "mc_maze_medium", 5.0, forecast=False)
    assert np.allclose(late_first.arrays["eval_rates_heldout"], a["eval_rates_heldout"])  # time order either way
    assert "eval_rates_heldin_forward" not in late_first.arrays  # no forecast from a model not trained for it
    twenty = model_group(model, vocabs, flagged[:8], flagged[8:], "mc_maze_medium", 20.0, forecast=True).arrays
    assert twenty["eval_rates_heldout"].shape == (4, 35, int(held.sum()))  # NLB's 20 ms bins from a 50 ms model
    assert twenty["eval_rates_heldin_forward"].shape == (4, 10, int((~held).sum()))
    assert np.allclose(twenty["eval_rates_heldout"].sum(1), a["eval_rates_heldout"].sum(1))


@pytest.fixture(scope="module")
def store(pretrain_store):
    """Simulated reaching sessions pinned as mixture 'tiny' (conftest): a submission from a trained model."""
    return pretrain_store


def test_evaluate_writes_an_nlb_submission_that_nlb_score_scores(store, tmp_path, monkeypatch):
    import h5py
    from neurobridge.cli import app
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.store.rows import session_rows, stack_behavior, stack_counts
    from neurobridge.store.splits import with_heldout
    from typer.testing import CliRunner

    cfg = small_cfg(**{"optim.max_steps": 4})
    _, _, model, vocabs = train_locally(store, cfg)
    save_checkpoint(str(tmp_path / "model.pt"), model, vocabs, {"trained_modes": ["forward", "random"]})
    for var, value in (("NB_STORE", store.store), ("NB_RAW", store.raw_root), ("NB_MLFLOW_URI", store.mlflow_uri)):
        monkeypatch.setenv(var, value)
    sub = tmp_path / "sub.h5"
    args = ["evaluate", str(tmp_path / "model.pt"), "--dataset", "t_nwb", "--session", "monkey00_s00", "--no-track"]
    args += ["--smoothing-ms", "40", "--glm-l2", "0.01", "--behavior-lag-ms", "40", "--out", str(tmp_path / "r.json")]
    args += ["--behavior-from", "patch_latents", "--behavior-smoothing-ms", "0", "--behavior-smoothing-ms", "60"]
    args += ["--behavior-alpha", "0.1", "--behavior-alpha", "1000"]
    args += ["--nlb-out", str(sub), "--nlb-name", "mc_maze", "--nlb-bin-ms", "20"]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "NLB submission (mc_maze_20)" in shown.output  # and the baseline's choice (a table cell may wrap)
    assert "40 ms," in shown.output and "L2 0.01" in shown.output
    m = json.loads((tmp_path / "r.json").read_text())["sessions"][0]
    assert m["behavior_feature_smoothing_ms"] in (0.0, 60.0) and m["behavior_alpha"] in (0.1, 1000.0)
    # a target in NLB's structure from the same windows (time order), held-out units by the same split
    sess = session_rows(store, sources(store, ["t_nwb"])[0], ("train", "val", "test"), {"monkey00_s00"})[0]

    def order(rows):
        return sorted(rows, key=lambda r: r["t_start"])

    split = HeldoutSplit(heldout_flags(store, sources(store, ["t_nwb"])), cfg.data.heldout_fraction)  # as evaluate
    test = with_heldout(order(sess.split("test")), split)
    train = order(sess.split("train") + sess.split("val"))
    held = np.asarray(test[0]["heldout"], dtype=bool)
    with h5py.File(tmp_path / "target.h5", "w") as f:
        g = f.create_group("mc_maze_20")
        g["eval_spikes_heldout"] = stack_counts(test)[..., held]
        g["train_behavior"] = stack_behavior(train)
        g["eval_behavior"] = stack_behavior(test)
    scored = CliRunner().invoke(app, ["nlb-score", str(sub), "--target", str(tmp_path / "target.h5")])
    assert scored.exit_code == 0, scored.output
    assert "mc_maze_20: co-bps" in scored.output and "vel R2" in scored.output and "not NLB's official" in scored.output
    with h5py.File(sub) as f:
        assert f["mc_maze_20/eval_rates_heldout"].shape == (len(test), 30, int(held.sum()))  # 0.6 s chunks
        assert f["mc_maze_20/eval_rates_heldin_forward"].shape == (len(test), 10, int((~held).sum()))  # 200 ms


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), factor=st.sampled_from([2, 4, 10]))
def test_spreading_a_models_bins_evenly_leaves_its_bits_per_spike_unchanged(seed, factor):
    """Why a coarse model may be scored at NLB's finer bins: under a piecewise-constant rate the Poisson likelihoods
    of the model and of the mean-rate null both gain the same rate-free term, so co-bps is that of the coarse bins."""
    g = np.random.default_rng(seed)
    rates = g.gamma(2.0, 0.5, size=(4, 6, 3)) + 0.05
    fine_spikes = g.poisson(np.repeat(rates / factor, factor, axis=1) * g.uniform(0.5, 1.5, (4, 6 * factor, 3)))
    coarse_spikes = fine_spikes.reshape(4, 6, factor, 3).sum(2)
    fine = bits_per_spike(resample(rates, 10.0 * factor, 10.0), fine_spikes)
    assert fine == pytest.approx(bits_per_spike(rates, coarse_spikes), abs=1e-9)


@pytest.mark.slow
@needs_real_data
def test_a_50_ms_prediction_of_real_held_out_units_scores_alike_at_nlbs_20_ms_bins():
    """On MC_Maze_Medium's spikes, NLB's smoothing GLM fitted at 50 ms: its rates written at 20 ms (bins that
    straddle two of the model's) score within 0.005 bits/spike of the 50 ms score, so a model at Stevenson's 50 ms
    is not handicapped on NLB's 20 ms leaderboard by its bin width."""
    with h5py.File(MC_MAZE, "r") as f:
        times, ends = f["units/spike_times"][:], f["units/spike_times_index"][:].astype(int)
        starts = f["intervals/trials/start_time"][:]
    counts = np.zeros((len(starts), 70, len(ends)))  # 10 ms bins of the 700 ms windows
    for u, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends, strict=True)):
        trial = np.searchsorted(starts, times[a:b], side="right") - 1
        rel = times[a:b] - starts[np.maximum(trial, 0)]
        keep = (trial >= 0) & (rel < 0.7)
        np.add.at(counts, (trial[keep], (rel[keep] / 0.01).astype(int), u), 1)
    held = np.zeros(counts.shape[2], bool)
    held[np.random.default_rng(0).choice(held.size, 28, replace=False)] = True
    fit, ev = np.arange(len(starts)) % 5 != 0, np.arange(len(starts)) % 5 == 0
    at = {ms: counts.reshape(len(starts), -1, ms // 10, held.size).sum(2) for ms in (20, 50)}
    x = at[50]
    pred = smoothing_baseline(x[fit][..., ~held], x[fit][..., held], x[ev][..., ~held], sigma_bins=1.0, l2=0.1)
    at_50 = bits_per_spike(pred, x[ev][..., held])
    at_20 = bits_per_spike(resample(pred, 50.0, 20.0), at[20][ev][..., held])
    print(f"co-bps of a 50 ms smoothing GLM: {at_50:.4f} at 50 ms, {at_20:.4f} at NLB's 20 ms")
    assert at_50 > 0.05 and abs(at_20 - at_50) < 0.005


def test_eval_windows_without_the_held_out_units_are_predicted_as_if_the_units_were_there():
    """NLB's test file has the held-in units only: the withheld ones are added as zero rows in the training
    windows' layout, and since held-out cells are only ever predicted, the submission is the one the model gives
    when the units (and their spikes) are present."""
    flagged, model, vocabs = fifty_ms_session()
    train, test = flagged[:8], flagged[8:]
    held = np.asarray(train[0]["heldout"])

    def heldin_only(r):
        c = np.asarray(r["counts"]).reshape(12, 14)[~held]
        ids = [u for u, h in zip(r["unit_ids"], held, strict=True) if not h]
        return r | {"counts": c.ravel(), "n_units": len(ids), "unit_ids": ids, "unit_regions": ["M1"] * len(ids)}

    stripped = [heldin_only(r) | {"heldout": np.zeros(int((~held).sum()), bool)} for r in test]
    completed = with_withheld_units(stripped, train, "d/s")
    assert all(np.asarray(r["counts"]).reshape(12, 14)[held].sum() == 0 for r in completed)
    assert with_withheld_units(test, train, "d/s") == test  # windows already in the layout pass unchanged
    whole = model_group(model, vocabs, train, test, "mc_maze", 5.0, forecast=False).arrays
    withheld = model_group(model, vocabs, train, completed, "mc_maze", 5.0, forecast=False).arrays
    for key in ("eval_rates_heldout", "eval_rates_heldin"):
        assert np.allclose(withheld[key], whole[key]), key
    stray = [stripped[0] | {"unit_ids": ["s/99", *stripped[0]["unit_ids"][1:]]}]
    with pytest.raises(SubmissionError, match=r"d/s: eval window w8 has units \['s/99'\] that no training window"):
        with_withheld_units(stray, train, "d/s")
    lacking = [stripped[0] | {"unit_ids": stripped[0]["unit_ids"][:-1] + [train[0]["unit_ids"][int(np.argmax(held))]]}]
    with pytest.raises(SubmissionError, match=r"w8 lacks held-in units \['s/\d+'\], so its held-out units cannot"):
        with_withheld_units(lacking, train, "d/s")

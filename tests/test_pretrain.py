"""Pretraining: typed config errors, data mixing, reproducible resume, NaN stops, Ray Train + MLflow end to end.

The end-to-end test trains on a real local Ray cluster from an ingested simulator store, kills the training worker
process mid-run (a real ``os._exit``), and checks that FailureConfig resumed from the last checkpoint and that the
resumed loss curve is the one an uninterrupted run produces.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from neurobridge.models.checkpoint import CheckpointError, load_checkpoint
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.storage import StoreError
from neurobridge.store.read import epoch_plan, iter_local, mixing_weights, repeats, sources
from neurobridge.store.rows import ROW_COLUMNS
from neurobridge.store.splits import HeldoutSplit
from neurobridge.tracking import mlflow_run
from neurobridge.train.batches import CollateWindows, crop_rows
from neurobridge.train.components import load_state, save_state
from neurobridge.train.config import ConfigError, load_config
from neurobridge.train.loop import NonFiniteLoss, run_steps, val_loss
from neurobridge.train.pretrain import pretrain, vocabularies

SMALL_MODEL = {
    "d_model": 32,
    "heads": 2,
    "decoder_d_model": 32,
    "decoder_heads": 2,
    "depth": 1,
    "neurons_per_token": 16,
    "dropout": 0.0,
}


@pytest.fixture(scope="module")
def store(reaching_store):
    """Two simulated reaching sessions and one decision session, ingested and pinned as mixture 'tiny'."""
    return reaching_store("pretrain", "tiny", units=(20, 30), minutes=0.75)


def small_cfg(**over):
    base = {
        "model": SMALL_MODEL,
        "data.mixture": "tiny",
        "optim.batch_size": 8,
        "optim.warmup_steps": 2,
        "optim.max_steps": 12,
        "checkpoint_every": 4,
        "log_every": 2,
        "seed": 3,
    }
    base.update(over)
    model = base.pop("model")
    return load_config(None, {**{f"model.{k}": v for k, v in model.items()}, **base})


# ---------------------------------------------------------------- config and data errors


def test_unknown_config_key_names_the_nearest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.max_step'.*did you mean 'max_steps'"):
        load_config(None, {"optim.max_step": 5})
    bad = tmp_path / "cfg.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="warmup"):
        load_config(bad)


def test_missing_version_and_missing_card_are_clear_errors(store):
    with pytest.raises(StoreError, match="t_nwb"):
        sources(store, ["t_nwb@v-doesnotexist"])
    with pytest.raises(StoreError):
        sources(store, ["no_such_dataset"])


def test_sqrt_mixing_weights_and_deterministic_repeats():
    w = mixing_weights({"big": 10_000, "small": 100}, "sqrt")
    assert w["big"] / w["small"] == pytest.approx(10.0)
    assert mixing_weights({"a": 30, "b": 10}, "proportional")["a"] == pytest.approx(0.75)
    plan = epoch_plan({"big": 10_000, "small": 100}, "sqrt")
    assert plan["small"] > 1 > plan["big"]  # the small dataset repeats, the big one is subsampled
    ids = [f"s{i}" for i in range(20_000)]
    r = repeats(ids, 2.3, seed=1)
    assert set(np.unique(r)) == {2, 3} and abs(r.mean() - 2.3) < 0.02
    np.testing.assert_array_equal(r, repeats(ids, 2.3, seed=1))


def test_long_windows_are_cropped_deterministically():
    rows = [{"sample_id": "w1", "n_units": 2, "n_bins": 10, "counts": np.arange(20), "mua": None}]
    out = crop_rows([dict(rows[0])], 4, seed=0)[0]
    assert out["n_bins"] == 4 and out["counts"].size == 8
    offset = int(out["counts"][0])
    np.testing.assert_array_equal(out["counts"], np.r_[offset : offset + 4, 10 + offset : 14 + offset])
    again = crop_rows([dict(rows[0])], 4, seed=0)[0]
    np.testing.assert_array_equal(out["counts"], again["counts"])


def test_heldout_split_is_stable_and_prefers_official_flags():
    split = HeldoutSplit({"nlb": {"a": True, "b": False}})
    np.testing.assert_array_equal(split.flags("nlb", ["a", "b"]), [True, False])
    units = [f"u{i}" for i in range(400)]
    flags = HeldoutSplit().flags("sess", units)
    assert 0.18 < flags.mean() < 0.32
    np.testing.assert_array_equal(HeldoutSplit().flags("sess", units[::-1]), flags[::-1])  # order-free


# ---------------------------------------------------------------- the loop (no Ray)


def local_batches(store, cfg, vocabs):
    srcs = sources(store, [], "tiny")
    table = pa.concat_tables(
        [pa.Table.from_batches([b]) for s in srcs for b in iter_local(store, s, "train", ROW_COLUMNS)]
    )
    collate = CollateWindows(vocabs, cfg.model.neurons_per_token, HeldoutSplit(), crop_bins=cfg.data.crop_bins)
    bs = cfg.optim.batch_size

    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(table.num_rows)
        for i in range(0, table.num_rows - bs + 1, bs):
            yield collate(table.take(order[i : i + bs]))

    return batches


def train_locally(store, cfg, state=None, model=None):
    vocabs = vocabularies(sources(store, [], "tiny"))
    torch.manual_seed(cfg.seed)
    model = model or MaskedNeuralModel(cfg.model, vocabs)
    log, states = [], {}

    def report(m, st):
        log.append((m["step"], m["loss"]))
        if st is not None:  # state_dict() tensors are live references: snapshot them as a checkpoint write does
            states[m["step"]] = copy.deepcopy(st)

    run_steps(cfg, model, local_batches(store, cfg, vocabs), report=report, state=state)
    return dict(log), states, model, vocabs


def test_resuming_from_a_checkpoint_retraces_the_loss_curve(store, tmp_path):
    cfg = small_cfg(**{"optim.max_steps": 10, "checkpoint_every": 4, "log_every": 1})
    full, states, _, vocabs = train_locally(store, cfg)
    save_state(states[4], tmp_path, vocabs, cfg)
    resumed, _, _, _ = train_locally(store, cfg, state=load_state(tmp_path, cfg))
    assert sorted(resumed) == list(range(5, 11))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-5, abs=1e-6)
    assert full[10] < full[1]  # and it learns


def test_checkpoint_from_another_model_config_is_refused(store, tmp_path):
    cfg = small_cfg(**{"optim.max_steps": 4})
    _, states, _, vocabs = train_locally(store, cfg)
    save_state(states[4], tmp_path, vocabs, cfg)
    other = small_cfg(**{"optim.max_steps": 4, "model": {**SMALL_MODEL, "d_model": 48}})
    with pytest.raises(CheckpointError, match="d_model"):
        load_state(tmp_path, other)


def test_nan_loss_stops_naming_the_step_and_windows(store):
    cfg = small_cfg(**{"optim.max_steps": 3})
    vocabs = vocabularies(sources(store, [], "tiny"))
    model = MaskedNeuralModel(cfg.model, vocabs)
    with torch.no_grad():
        model.count_head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"at step 0 .*windows: \['"):
        run_steps(cfg, model, local_batches(store, cfg, vocabs), report=lambda m, s: None)


def test_validation_keeps_the_best_weights_and_patience_ends_the_run(store):
    cfg = small_cfg(
        **{
            "optim.max_steps": 40,
            "validation.every": 2,
            "validation.patience": 2,
            "checkpoint_every": 100,
            "log_every": 100,
        }
    )
    vocabs = vocabularies(sources(store, [], "tiny"))
    torch.manual_seed(cfg.seed)
    model = MaskedNeuralModel(cfg.model, vocabs)
    scores = iter([5.0, 3.0, 4.0, 4.5, 0.1])  # best at the 2nd pass (step 4), two passes without a new best
    seen, reports = {}, []

    def validate(m):
        step = 2 * (len(seen) + 1)
        seen[step] = copy.deepcopy(m.state_dict())
        return next(scores)

    last = run_steps(
        cfg,
        model,
        local_batches(store, cfg, vocabs),
        report=lambda m, st: reports.append((dict(m), st and copy.deepcopy(st))),
        validate=validate,
    )
    assert last["step"] == 8  # stopped by patience, not at max_steps
    assert last["best"]["step"] == 4 and last["best"]["val_loss"] == 3.0
    torch.testing.assert_close(last["best"]["model"], seen[4])  # the weights as they were when validated
    assert [m["val_loss"] for m, _ in reports] == [5.0, 3.0, 4.0, 4.5]  # every pass is reported
    final = reports[-1][1]
    assert final is not None and final["step"] == 8 and final["best"]["step"] == 4  # checkpointed at the stop


def test_val_loss_uses_fixed_masks_so_passes_are_comparable(store):
    cfg = small_cfg()
    vocabs = vocabularies(sources(store, [], "tiny"))
    torch.manual_seed(0)
    model = MaskedNeuralModel(cfg.model, vocabs)
    fixed = list(local_batches(store, cfg, vocabs)(0))[:3]
    first = val_loss(model, fixed, "all", 0, torch.device("cpu"))
    assert val_loss(model, fixed, "all", 0, torch.device("cpu")) == first
    assert val_loss(model, fixed, "all", 1, torch.device("cpu")) != first  # the masks come from the seed
    assert model.training  # left as it was found


# ---------------------------------------------------------------- Ray Train end to end


def test_ray_train_resumes_after_a_worker_is_killed_and_mlflow_holds_the_run(store, tmp_path):
    cfg = small_cfg(name="killed", **{"validation.every": 4})
    drill = store.model_copy(update={"train_fault": f"6:{tmp_path / 'killed.marker'}"})  # NB_FAULT_KILL_WORKER_AT_STEP
    result = pretrain(cfg, drill)
    assert (tmp_path / "killed.marker").read_text().startswith("killed at step 6")  # the worker really died
    assert result.metrics["step"] == 12

    clean = pretrain(small_cfg(name="clean", **{"validation.every": 4}), store)
    killed_hist = dict(mlflow_run.metric_history(store.mlflow_uri, result.run_id, "loss"))
    clean_hist = dict(mlflow_run.metric_history(store.mlflow_uri, clean.run_id, "loss"))
    for step in (8, 10, 12):  # after the restart from the step-4 checkpoint: the same curve as a clean run
        assert killed_hist[step] == pytest.approx(clean_hist[step], rel=1e-4)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset.t_nwb"].startswith("v-") and run.data.tags["git_commit"]
    assert run.data.params["optim.max_steps"] == "12"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for d in ("plots", "model") for a in client.list_artifacts(result.run_id, d)
    }
    assert {"config.json", "plots/loss.png", "model/model.pt"} <= artifacts
    val = dict(mlflow_run.metric_history(store.mlflow_uri, clean.run_id, "val_loss"))
    assert sorted(val) == [4, 8, 12] and all(np.isfinite(v) for v in val.values())  # val passes on rank 0
    exported = torch.load(client.download_artifacts(clean.run_id, "model/model.pt", str(tmp_path)), weights_only=True)
    assert exported["extra"]["step"] == min(val, key=val.get)  # the model of the best val pass is the one exported
    assert exported["extra"]["last_step"] == 12


# ---------------------------------------------------------------- evaluation and fine-tuning


def test_evaluate_reports_model_beside_mean_smoothing_and_oracle_on_the_same_cells(store, tmp_path):
    from neurobridge.evaluate.report import EvalConfig
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
    args += ["--smoothing-ms", "40", "--glm-l2", "0.01", "--behavior-lag-ms", "40"]
    args += ["--nlb-out", str(sub), "--nlb-name", "mc_maze", "--nlb-bin-ms", "20"]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "NLB submission (mc_maze_20)" in shown.output and "40 ms, L2 0.01" in shown.output
    # a target in NLB's structure from the same windows (time order), held-out units by the same split
    sess = session_rows(store, sources(store, ["t_nwb"])[0], ("train", "val", "test"), {"monkey00_s00"})[0]

    def order(rows):
        return sorted(rows, key=lambda r: r["t_start"])

    split = HeldoutSplit(None, cfg.data.heldout_fraction)
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


def test_latent_readout_never_sees_heldout_spikes_and_recovers_a_glm_of_the_latents(store):
    from neurobridge.evaluate import baselines, metrics
    from neurobridge.evaluate.readout import ReadoutFit, heldout_latents, latent_readout
    from neurobridge.store.rows import session_rows, stack_counts
    from neurobridge.store.splits import with_heldout

    cfg = small_cfg()
    vocabs = vocabularies(sources(store, [], "tiny"), [])
    torch.manual_seed(0)
    model = MaskedNeuralModel(cfg.model, vocabs)
    sess = session_rows(store, sources(store, ["t_nwb"])[0], ("train",), {"monkey00_s00"})[0]
    rows = with_heldout(sess.split("train"), HeldoutSplit(None, 0.25))
    n = len(rows) * 3 // 4
    held = np.asarray(rows[0]["heldout"], dtype=bool)
    assert 0 < held.sum() < len(held)
    lat = heldout_latents(model, vocabs, rows)

    def altered(which: np.ndarray) -> list[dict]:
        out = []
        for r in rows:
            c = np.asarray(r["counts"], dtype=np.float32).reshape(int(r["n_units"]), int(r["n_bins"])).copy()
            c[which] = c[which] * 3 + 1
            out.append({**r, "counts": c.ravel()})
        return out

    assert np.array_equal(heldout_latents(model, vocabs, altered(held)), lat)  # held-out spikes never reach them
    assert not np.allclose(heldout_latents(model, vocabs, altered(~held)), lat)  # held-in spikes do
    # held-out spikes drawn from a Poisson GLM of the latents: the read-out recovers near-oracle rates on new windows
    g = np.random.default_rng(0)
    w = g.normal(0, 0.6 / np.sqrt(lat.shape[-1]), (lat.shape[-1], 3))
    smooth = baselines.smooth_spikes(lat, 2.5)  # what the read-out reads: latents under the baseline's kernel
    rates = np.exp(((smooth - smooth.mean((0, 1))) / smooth.std((0, 1))) @ w + 0.5)
    spikes = g.poisson(rates).astype(np.float64)
    pred = latent_readout(model, vocabs, rows[:n], spikes[:n], rows[n:], ReadoutFit([1e-4, 1e-2, 1.0], sigma_bins=2.5))
    oracle, got = metrics.bits_per_spike(rates[n:], spikes[n:]), metrics.bits_per_spike(pred, spikes[n:])
    assert oracle > 0.05 and got > 0.9 * oracle
    assert pred.shape == (len(rows) - n, stack_counts(rows).shape[1], 3)


def test_cross_validation_folds_partition_the_windows_and_val_never_touches_test():
    from neurobridge.evaluate.crossval import fold_windows

    rows = [{"sample_id": f"w{i:03d}"} for i in range(53)]
    folds = fold_windows(rows, 5, 0.1)
    ids = lambda part: {r["sample_id"] for r in part}  # noqa: E731
    tests = [ids(test) for _, _, test in folds]
    assert set().union(*tests) == ids(rows) and sum(map(len, tests)) == 53  # every window tested exactly once
    for train, val, test in folds:
        assert not (ids(train) & ids(val)) and not (ids(train) | ids(val)) & ids(test)
        assert len(train) + len(val) + len(test) == 53 and len(val) == round(0.1 * (53 - len(test)))
    assert [ids(t) for _, _, t in fold_windows(list(reversed(rows)), 5, 0.1)] == tests  # store order is irrelevant
    with pytest.raises(ValueError, match="at least 5 windows"):
        fold_windows(rows[:3], 5, 0.1)


def test_cross_validated_finetuning_scores_every_window_beside_smoothing(store, tmp_path, monkeypatch):
    from neurobridge.evaluate.crossval import CrossvalOptions, crossval_finetune
    from neurobridge.evaluate.report import EvalConfig
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.train.finetune import FinetuneConfig

    cfg = small_cfg(**{"data.holdout_sessions": ["monkey00_s01"]})
    vocabs = vocabularies(sources(store, [], "tiny"), ["monkey00_s01"])
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "pre.pt"), MaskedNeuralModel(cfg.model, vocabs), vocabs, {})
    ft = FinetuneConfig(
        dataset="t_nwb",
        session="monkey00_s01",
        trials=None,
        steps=4,
        batch_size=8,
        freeze_backbone=True,
        mode="heldout",
        val_every=2,
        unit_weight_decay=5.0,
    )
    seen = []
    opts = CrossvalOptions(folds=3, smoothing_ms=(20.0, 50.0))
    cv = crossval_finetune(ft, str(tmp_path / "pre.pt"), store, opts, progress=seen.append)
    assert len(seen) == 3 and len(cv["per_fold"]) == 3
    assert sum(f["test_windows"] for f in cv["per_fold"]) == cv["windows"]  # all of the session's windows
    assert all(f["selected_step"] in (2, 4) for f in cv["per_fold"])  # each fold chose on its own val windows
    d = cv["minus_smoothing"]
    assert d["bps"] == pytest.approx(cv["co_bps"] - cv["co_bps_smoothing"], abs=1e-9)
    assert d["ci_low"] <= d["bps"] <= d["ci_high"] and d["trials"] == cv["windows"]
    r = cv["readout_minus_smoothing"]  # the latent GLM read-out, judged the same way on the same trials
    assert r["bps"] == pytest.approx(cv["co_bps_readout"] - cv["co_bps_smoothing"], abs=1e-9)
    assert all(np.isfinite(f["co_bps_readout"]) and np.isfinite(f["co_bps_readout_untrained"]) for f in cv["per_fold"])
    c = cv["readout_minus_untrained"]  # the read-out's control: the same GLM on an untrained encoder's latents
    assert c["bps"] == pytest.approx(cv["co_bps_readout"] - cv["co_bps_readout_untrained"], abs=1e-9)
    grid = EvalConfig().smoothing_ms  # each fold's baseline searched its kernel and says which it chose
    assert all(f["smoothing_sigma_ms"] in grid and f["smoothing_l2"] > 0 for f in cv["per_fold"])
    best = cv["minus_best_smoothing"]  # against the kernel that scored best on the test folds
    assert best["bps"] == pytest.approx(cv["co_bps"] - max(cv["smoothing_by_sigma"].values()), abs=1e-9)
    from neurobridge.cli import app
    from typer.testing import CliRunner

    for var, value in (("NB_STORE", store.store), ("NB_RAW", store.raw_root), ("NB_MLFLOW_URI", store.mlflow_uri)):
        monkeypatch.setenv(var, value)
    args = [
        "finetune",
        "--scratch",
        "--dataset",
        "t_nwb",
        "--session",
        "monkey00_s01",
        "--trials",
        "0",
        "--steps",
        "3",
        "--mode",
        "heldout",
        "--val-every",
        "1",
        "--cv",
        "3",
        "--cv-repeats",
        "2",
        "--out",
        str(tmp_path / "cv.json"),
    ]
    (tmp_path / "arch.yaml").write_text(json.dumps({"model": SMALL_MODEL}))  # a pretraining config's model section
    args += ["--model-config", str(tmp_path / "arch.yaml"), "--batch-size", "4", "--val-patience", "1"]
    args += ["--smoothing-ms", "40", "--smoothing-ms", "80"]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "2 x 3-fold CV over" in shown.output and "vs smoothing" in shown.output and "untrained" in shown.output
    assert "best smoothing kernel in hindsight" in shown.output
    scratch = json.loads((tmp_path / "cv.json").read_text())
    assert scratch["windows"] == cv["windows"] and scratch["repeats"] == 2 and len(scratch["per_fold"]) == 6
    assert [f["repeat"] for f in scratch["per_fold"]] == [0, 0, 0, 1, 1, 1]
    assert all(f["selected_step"] in (1, 2) for f in scratch["per_fold"])  # patience 1: stops after 2 passes at most
    assert set(scratch["smoothing_by_sigma"]) == {"40.0", "80.0"}
    first = scratch["per_fold"][:3]  # the first repeat has the single run's folds, so the same smoothing scores
    assert [f["co_bps_smoothing"] for f in first] == pytest.approx([f["co_bps_smoothing"] for f in cv["per_fold"]])
    d = scratch["minus_smoothing"]  # repeats averaged per trial: the interval is over the session's distinct trials
    assert d["trials"] == cv["windows"] and d["bps"] == pytest.approx(scratch["co_bps"] - scratch["co_bps_smoothing"])


def test_finetuning_extends_vocabularies_and_uses_the_same_k_windows_as_scratch(store, tmp_path):
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.train.finetune import FinetuneConfig, finetune, pick_windows, save

    cfg = small_cfg(**{"optim.max_steps": 4, "data.holdout_sessions": ["monkey00_s01"]})
    vocabs = vocabularies(sources(store, [], "tiny"), ["monkey00_s01"])
    assert "monkey00_s01" not in vocabs.session  # held out of pretraining entirely
    torch.manual_seed(0)
    model = MaskedNeuralModel(cfg.model, vocabs)
    save_checkpoint(str(tmp_path / "pre.pt"), model, vocabs, {})
    ft = FinetuneConfig(dataset="t_nwb", session="monkey00_s01", trials=5, steps=3, batch_size=4)
    pre = finetune(ft, str(tmp_path / "pre.pt"), store)
    scratch = finetune(ft, None, store, scratch_model=cfg.model)
    assert "monkey00_s01" in pre.vocabs.session
    assert pre.windows == scratch.windows and len(pre.windows) == 5
    assert pre.model.ctx_emb["session"].weight.shape[0] == len(pre.vocabs.session)  # the table grew with it
    frozen = finetune(ft.model_copy(update={"freeze_backbone": True}), str(tmp_path / "pre.pt"), store)
    reloaded = MaskedNeuralModel(cfg.model, vocabs)
    reloaded.load_state_dict(torch.load(tmp_path / "pre.pt", weights_only=True)["state"])
    torch.testing.assert_close(frozen.model.encoder.state_dict(), reloaded.encoder.state_dict())  # backbone kept
    torch.testing.assert_close(frozen.model.decoder.state_dict(), reloaded.decoder.state_dict())  # decoder too
    partly = finetune(
        ft.model_copy(update={"freeze_backbone": True, "train_decoder": True}), str(tmp_path / "pre.pt"), store
    )
    torch.testing.assert_close(partly.model.encoder.state_dict(), reloaded.encoder.state_dict())  # encoder kept
    assert not torch.equal(partly.model.decoder.layers[0].linear1.weight, reloaded.decoder.layers[0].linear1.weight)
    with pytest.raises(ValueError, match="train_decoder needs freeze_backbone"):
        FinetuneConfig(**(ft.model_dump() | {"train_decoder": True}))
    rows = [{"sample_id": f"w{i}"} for i in range(50)]
    assert pick_windows(rows, 5, 0) == pick_windows(list(reversed(rows)), 5, 0)
    chosen = finetune(ft.model_copy(update={"val_every": 1}), str(tmp_path / "pre.pt"), store)
    losses = {h["step"]: h["val_loss"] for h in chosen.last["history"] if "val_loss" in h}
    assert sorted(losses) == [1, 2, 3] and chosen.last["selected_step"] == min(losses, key=losses.get)
    smooth = finetune(ft.model_copy(update={"output_smoothing_ms": 40.0}), str(tmp_path / "pre.pt"), store)
    assert smooth.model.cfg.output_smoothing == 2.0 and cfg.model.output_smoothing == 0.0  # the source is untouched
    back, _, _ = load_checkpoint(save(smooth, str(tmp_path / "smooth.pt"), ft))
    assert back.cfg.output_smoothing == 2.0  # the fine-tuned model keeps its output prior

"""The real-data transfer protocol as one job, shrunk to seconds: real excerpts ingested at one bin width, a model
pretrained per corpus on Ray Train, and the held-out recording judged fold by fold with every arm on the same
windows; results in MLflow and the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MC_MAZE, SHARED_DATA

pytestmark = pytest.mark.skipif(
    not (MC_MAZE.exists() and (SHARED_DATA / "stevenson_2011").exists()), reason="shared real-data excerpts not present"
)

SHRUNK = [
    "corpora=[{name: real, datasets: [stevenson_s1_local]}]",
    "pretrain_overrides={optim.max_steps: 4, optim.batch_size: 8, validation.every: 2, checkpoint_every: 4}",
    "finetune.steps=3",
    "finetune.val_every=1",
    "finetune.batch_size=4",
    "ks=[5, null]",
    "folds=2",
    "repeats=1",
    "behavior={dataset: stevenson_s1_local, corpus: real, lag_ms: 50, feature_smoothing_ms: [0, 100]}",
    "variants=[{name: frozen, finetune: {freeze_backbone: true}, alone: true}]",
    "targets.variant=frozen",
]


def test_the_protocol_runs_from_its_config_and_scores_every_trial_in_every_arm(ray_cluster, tmp_path, monkeypatch):
    from neurobridge.config import get_settings, parse_overrides
    from neurobridge.evaluate.kshot import difference
    from neurobridge.tracking import mlflow_run
    from neurobridge.workflows.transfer import load_transfer, run_transfer

    monkeypatch.setenv("NB_HOME", str(tmp_path))
    monkeypatch.setenv("NB_SHARED_DATA", str(SHARED_DATA))
    cfg = load_transfer("jobs/configs/transfer_mc_maze_medium.yaml", parse_overrides(SHRUNK))
    lines: list[str] = []
    got = run_transfer(cfg, "jobs/configs", str(tmp_path / "transfer.json"), echo=lines.append)
    assert json.loads((tmp_path / "transfer.json").read_text())["targets"] == got["targets"]
    assert got["new_session"]["windows"] == 100  # every MC_Maze_Medium trial, at 50 ms
    assert set(got["kshot"]) == {"5", "all"}
    for k, res in got["kshot"].items():
        assert set(res["co_bps"]) == {"finetuned:real", "alone", "smoothing", "finetuned:real+frozen", "alone+frozen"}
        assert sum(f["test_windows"] for f in res["per_fold"]) == 100  # each trial a test trial once
        if k == "5":
            assert all(f["train_windows"] == 5 for f in res["per_fold"])
        for pair, d in res["differences"].items():
            a, b = pair.split(" - ")
            assert d["bps"] == pytest.approx(res["co_bps"][a] - res["co_bps"][b], abs=1e-9)
            assert d["ci_low"] <= d["bps"] <= d["ci_high"] and d["trials"] == 100
        assert all(f["smoothing_sigma_ms"] > 0 and np.isfinite(f["smoothing"]) for f in res["per_fold"])
        assert set(res["picked_last_step"]) == set(res["co_bps"]) - {"smoothing"}  # every arm picks on val
        for arm, share in res["picked_last_step"].items():  # 3 steps, val every step: often still improving
            last = [f[f"{arm}_selected_step"] == 3 for f in res["per_fold"]]  # no fold stops early at patience 6
            assert share == pytest.approx(np.mean(last))
            assert (f"k={k}: {arm} picked its last step in {share:.0%} of folds" in "\n".join(lines)) == (share >= 0.5)
    assert "k5_beats_smoothing" in got["targets"] and "k5_beats_alone_by_0.02" not in got["targets"]
    judged = got["targets"]["judged_arm"]
    assert judged == "finetuned:real+frozen"  # the variant the targets name, not the shared recipe
    d = difference(got["kshot"]["5"], judged, "alone")  # the summary a user reads after the folds
    s = difference(got["kshot"]["5"], judged, "smoothing")
    assert d["bps"] == pytest.approx(got["kshot"]["5"]["co_bps"][judged] - got["kshot"]["5"]["co_bps"]["alone"])
    assert d["ci_low"] <= d["bps"] <= d["ci_high"]  # stored as alone − judged (arm order): flipped whole
    stored = got["kshot"]["5"]["differences"][f"alone - {judged}"]
    assert (d["ci_low"], d["prob_positive"]) == (-stored["ci_high"], pytest.approx(1 - stored["prob_positive"]))
    assert got["targets"]["k5_minus_smoothing"] == s["bps"] and got["targets"]["k5_minus_alone"] == d["bps"]
    k5 = next(line for line in lines if line.startswith("k=5: ") and " - alone " in line)
    assert f"{judged} - alone {d['bps']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" in k5
    assert f"- smoothing {s['bps']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]" in k5
    missed = [t for t, v in got["targets"].items() if v is False]
    assert got["targets"]["not_run"] == ["k25"]  # the config's target k is not among this run's ks
    verdict = [f"targets missed: {', '.join(missed)}"] if missed else []
    assert lines[-len(verdict) - 1 :] == verdict + ["targets not run (their k is not in ks): k25"]
    features = {"rates", "latents", "patch_latents", "rates_smoothed", "patch_latents_smoothed"}
    assert set(got["behavior"]) == features  # S1 velocity from every feature set, beside smoothed spikes
    for r in got["behavior"].values():
        assert -1 < r["behavior_r2"] <= 1 and r["behavior_r2_smoothing"] > 0.1 and r["behavior_lag_ms"] == 50
    assert {f"behavior_{f}_minus_smoothing" for f in features} <= set(got["targets"])
    settings = get_settings()
    history = dict(mlflow_run.metric_history(settings.mlflow_uri, got["run_id"], "k5.co_bps.finetuned_real"))
    assert history[0] == pytest.approx(got["kshot"]["5"]["co_bps"]["finetuned:real"])
    variant = dict(mlflow_run.metric_history(settings.mlflow_uri, got["run_id"], "k5.co_bps.finetuned_real_frozen"))
    assert variant[0] == pytest.approx(got["kshot"]["5"]["co_bps"]["finetuned:real+frozen"])  # "+": no valid name


@pytest.mark.parametrize(
    "name",
    [
        "transfer_mc_maze_medium.yaml",
        "transfer_mc_maze_medium_variants.yaml",
        "transfer_mc_maze_medium_freezing.yaml",
        "transfer_mc_maze.yaml",
    ],
)
def test_the_shipped_configs_name_catalog_entries_and_hold_their_session_out(name):
    from neurobridge.catalog import resolve
    from neurobridge.config import ConfigError
    from neurobridge.train.config import load_config
    from neurobridge.workflows.transfer import load_transfer

    cfg = load_transfer(f"jobs/configs/{name}")
    known = {e.name for e in resolve(cfg.catalog)}
    for corpus in cfg.corpora:
        assert set(corpus.datasets) <= known and cfg.new_session not in corpus.datasets  # never pretrained on
    assert cfg.new_session in known and load_config(f"jobs/configs/{cfg.pretrain}").model.output_smoothing_ms == 50
    with pytest.raises(ConfigError, match="repeat"):
        load_transfer(f"jobs/configs/{name}", {"repeat": 2})


def test_every_arm_recipe_is_checked_when_the_config_loads_not_after_pretraining():
    from neurobridge.config import ConfigError
    from neurobridge.workflows.transfer import load_transfer

    path = "jobs/configs/transfer_mc_maze_medium_freezing.yaml"
    with pytest.raises(
        ConfigError, match="variant 'x': unknown field 'freez_backbone'; did you mean 'freeze_backbone'"
    ):
        load_transfer(path, {"variants": [{"name": "x", "finetune": {"freez_backbone": True}}]})
    with pytest.raises(ConfigError, match="variant 'y': unfreeze_after needs freeze_backbone"):
        load_transfer(path, {"variants": [{"name": "y", "finetune": {"unfreeze_after": 60}}]})
    with pytest.raises(ConfigError, match="finetune: field 'lr'"):
        load_transfer(path, {"finetune.lr": -1.0})


def test_the_judged_variant_must_fine_tune_the_first_corpus():
    from neurobridge.config import ConfigError
    from neurobridge.workflows.transfer import load_transfer

    path = "jobs/configs/transfer_mc_maze_medium.yaml"
    assert load_transfer(path).judged_arm() == "finetuned:real+frozen_backbone"
    assert load_transfer(path, {"targets.variant": None}).judged_arm() == "finetuned:real"
    with pytest.raises(ConfigError, match=r"targets.variant 'frozen_backbone' names no variant .*variants: x\)"):
        load_transfer(path, {"variants": [{"name": "x", "finetune": {"lr": 3e-3}}]})
    only_sim = [{"name": "frozen_backbone", "finetune": {"freeze_backbone": True}, "corpora": ["real_sim"]}]
    with pytest.raises(ConfigError, match="fine-tunes corpus 'real'"):
        load_transfer(path, {"variants": only_sim})


def test_arms_still_improving_when_their_budget_ran_out_are_named():
    from neurobridge.workflows.transfer import budget_warnings

    kshot = {"25": {"picked_last_step": {"alone": 0.2, "finetuned:real+frozen": 1.0}}, "all": {}}
    assert budget_warnings(kshot) == [
        "k=25: finetuned:real+frozen picked its last step in 100% of folds (val loss still falling): it may be "
        "under-trained"
    ]


def test_a_target_whose_k_was_not_run_is_reported_as_not_run_never_as_met():
    from neurobridge.workflows.transfer import TransferConfig, missed_targets, summary, targets

    cfg = TransferConfig.model_validate(
        {"name": "t", "new_session": "s", "corpora": [{"name": "real", "datasets": ["a"]}], "pretrain": "p.yaml"}
        | {"ks": [25, None], "targets": {"k": [25, 100]}}
    )
    diff = {"bps": 0.03, "ci_low": 0.01, "ci_high": 0.05}
    res = {"co_bps": {"finetuned:real": 0.2, "alone": 0.17, "smoothing": 0.15}}
    res["differences"] = {"finetuned:real - alone": diff, "finetuned:real - smoothing": diff}
    results = {"kshot": {"25": res, "all": res}}
    results["targets"] = targets(cfg, results)
    assert results["targets"]["k25_beats_alone_by_0.02"] is True and results["targets"]["not_run"] == ["k100"]
    assert missed_targets(results["targets"]) == []
    assert summary(cfg, results)[-1] == "targets not run (their k is not in ks): k100"
    assert "targets: all met" not in summary(cfg, results)

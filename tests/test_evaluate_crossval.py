"""evaluate/crossval: k-fold cross-validated fine-tuning. Folds partition a session's windows and validation never
touches test; every window is scored beside smoothing and the read-out's controls (also via `finetune --cv`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.train import SMALL_MODEL, small_cfg
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.store.read import sources
from neurobridge.train.pretrain import vocabularies


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


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
    wrong = CliRunner().invoke(app, [*args, "--unfreeze-after", "2"])  # contradicting options: a message
    assert wrong.exit_code != 0 and "unfreeze_after needs freeze_backbone" in wrong.output
    assert wrong.exception is None or isinstance(wrong.exception, SystemExit)  # not a traceback
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "2 x 3-fold CV over" in shown.output and "vs smoothing" in shown.output and "untrained" in shown.output
    assert "best smoothing kernel in hindsight" in shown.output
    scratch = json.loads((tmp_path / "cv.json").read_text())
    assert scratch["windows"] == cv["windows"] and scratch["repeats"] == 2 and len(scratch["per_fold"]) == 6
    assert [f["repeat"] for f in scratch["per_fold"]] == [0, 0, 0, 1, 1, 1]
    # each fold kept one of its val passes (how patience ends a run: tests/test_train_loop.py)
    assert all(f["selected_step"] in (1, 2, 3) for f in scratch["per_fold"]), scratch["per_fold"]
    assert set(scratch["smoothing_by_sigma"]) == {"40.0", "80.0"}
    first = scratch["per_fold"][:3]  # the first repeat has the single run's folds, so the same smoothing scores
    assert [f["co_bps_smoothing"] for f in first] == pytest.approx([f["co_bps_smoothing"] for f in cv["per_fold"]])
    d = scratch["minus_smoothing"]  # repeats averaged per trial: the interval is over the session's distinct trials
    assert d["trials"] == cv["windows"] and d["bps"] == pytest.approx(scratch["co_bps"] - scratch["co_bps_smoothing"])

"""A pretrained model fine-tuned on NLB's train file and scored on the test file's withheld units, beside the
smoothing baseline of the same windows: the path a user with NLB's files and target takes (docs/evaluation.md),
on a session written in DANDI:000128's two-file layout (tests/helpers/nlb_pair.py)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import SHARED_DATA, ingest_here
from helpers.nlb_pair import SESSION, WINDOW, write_nlb_pair
from helpers.train import small_cfg, train_locally
from neurobridge.catalog import CatalogEntry
from neurobridge.cli import app
from neurobridge.config import get_settings
from neurobridge.models.checkpoint import save_checkpoint
from typer.testing import CliRunner


def test_a_model_fine_tuned_on_the_train_file_predicts_the_units_the_test_file_withholds(
    pretrain_store, tmp_path, monkeypatch
):
    pair = write_nlb_pair(tmp_path / "raw" / "nlb")
    settings = get_settings(
        store=str(tmp_path / "store"), raw_root=str(tmp_path / "raw"), mlflow_uri=f"sqlite:///{tmp_path}/m.db"
    )
    ingest = {"bin_ms": 20, "window": WINDOW, "split": {"rule": "column"}}
    done = ingest_here(CatalogEntry.of(name="nlb_pair", kind="nwb", uri=str(pair.folder), ingest=ingest), settings)
    assert done.ok, done.failed
    _, _, model, vocabs = train_locally(pretrain_store, small_cfg(**{"optim.max_steps": 4}))  # another "corpus"
    save_checkpoint(str(tmp_path / "pre.pt"), model, vocabs, {"trained_modes": ["heldout", "random"]})
    for var, value in (
        ("NB_STORE", settings.store),
        ("NB_RAW", settings.raw_root),
        ("NB_MLFLOW_URI", settings.mlflow_uri),
    ):
        monkeypatch.setenv(var, value)
    cli = CliRunner()
    where = ["--dataset", "nlb_pair", "--session", SESSION]
    tuned = cli.invoke(
        app,
        ["finetune", "--model", str(tmp_path / "pre.pt"), *where, "--trials", "0", "--steps", "40"]
        + ["--mode", "heldout", "--batch-size", "8", "--val-every", "20", "--out", str(tmp_path / "ft.pt")],
    )
    assert tuned.exit_code == 0, tuned.output
    assert "picked on val" in " ".join(tuned.output.split())  # the train file's val trials chose the weights
    sub, smooth = tmp_path / "sub.h5", tmp_path / "smooth.h5"
    shown = cli.invoke(
        app,
        ["evaluate", str(tmp_path / "ft.pt"), *where, "--split", "test", "--no-track", "--nlb-out", str(sub)]
        + ["--nlb-smoothing-out", str(smooth), "--nlb-name", "mc_maze", "--nlb-bin-ms", "20"]
        + ["--smoothing-ms", "40", "--smoothing-ms", "80", "--glm-l2", "0.01", "--glm-l2", "1"],
    )
    assert shown.exit_code == 0, shown.output
    assert "held-out units only in NLB's target file" in " ".join(shown.output.split())  # no number made up
    assert "pooled per dataset" not in shown.output  # and no empty table where a number would be
    with h5py.File(tmp_path / "target.h5", "w") as f:  # what NLB's eval_data_test.h5 holds for this session
        g = f.create_group("mc_maze_20")
        g["eval_spikes_heldout"] = pair.eval_spikes_heldout
        g["train_behavior"], g["eval_behavior"] = pair.train_behavior, pair.eval_behavior
    scores = {}
    for name, path in (("model", sub), ("smoothing", smooth)):
        with h5py.File(path) as f:
            rates = f["mc_maze_20/eval_rates_heldout"][()]
            assert rates.shape == (12, 35, 6) and f["mc_maze_20/train_rates_heldin"].shape == (48, 35, 18)
            assert rates.std(axis=0).mean() > 0  # predicted from each test trial's own held-in spikes
        out = tmp_path / f"{name}.json"
        scored = cli.invoke(app, ["nlb-score", str(path), "--target", str(tmp_path / "target.h5"), "--out", str(out)])
        assert scored.exit_code == 0, scored.output
        scores[name] = json.loads(out.read_text())["datasets"]["mc_maze_20"]
    print(scores)
    assert scores["smoothing"]["co-bps"] > 0.1  # the withheld units' tuning is recoverable from the held-in ones
    assert np.isfinite(scores["model"]["co-bps"]) and np.isfinite(scores["model"]["vel R2"])


MC_MAZE_FULL = SHARED_DATA / "nlb_mc_maze" / "sub-Jenkins_ses-full_desc-test_ecephys.nwb"


@pytest.mark.skipif(not MC_MAZE_FULL.exists(), reason="shared real-data excerpts not present")
def test_the_rehearsal_script_makes_nlbs_two_files_and_target_from_a_real_recording(tmp_path):
    """docs/scripts/nlb_pair_from_test_split.py, which results.md's real-spike rehearsal of this path uses."""
    import subprocess
    import sys

    import pynwb

    script = "docs/scripts/nlb_pair_from_test_split.py"
    done = subprocess.run(
        [sys.executable, script, str(tmp_path), "--nwb", str(MC_MAZE_FULL)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "sub-Jenkins").glob("*.nwb"))
    with pynwb.NWBHDF5IO(files[1], "r") as io:  # train file: every unit, the withheld ones flagged
        train = io.read()
        held = np.asarray(train.units["heldout"][:], dtype=bool)
        assert len(held) == 137 and held.sum() == 35
        assert sorted(set(train.trials["split"][:])) == ["train", "val"] and len(train.trials) == 460
    with pynwb.NWBHDF5IO(files[0], "r") as io:  # test file: held-in units only
        test = io.read()
        assert len(test.units) == 102 and set(test.trials["split"][:]) == {"test"} and len(test.trials) == 114
    with h5py.File(tmp_path / "target.h5") as f:
        target = f["mc_maze_20/eval_spikes_heldout"][()]
    assert target.shape == (114, 35, 35) and target.sum() > 0

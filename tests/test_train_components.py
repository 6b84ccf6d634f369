"""train/components: training-state checkpoints. A run resumed from one retraces the uninterrupted loss curve; a
state written under another model config is refused."""

from __future__ import annotations

import pytest
from helpers.train import SMALL_MODEL, small_cfg, train_locally
from neurobridge.models.checkpoint import CheckpointError
from neurobridge.train.components import load_state, save_state


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


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

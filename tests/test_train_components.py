"""train/components: training-state checkpoints and reporting. A run resumed from one retraces the uninterrupted
loss curve; a state written under another model config is refused; Ray Train hears only the checkpoints."""

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


class _Logger:
    def __init__(self):
        self.logged: list[tuple[dict, int]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))


@pytest.mark.parametrize("rank", [0, 1])
def test_a_checkpoints_only_reporter_sends_only_checkpoint_reports_and_logs_every_one(rank):
    """Ray Train holds one unconsumed report per worker and drains it every 2 s: metric-only reports would stall
    training, and every rank must skip the same ones (its reports synchronise ranks)."""
    from neurobridge.train.components import Reporter, ray_train_backend

    sent: list[tuple[dict, bool]] = []
    logger = _Logger()
    reporter = Reporter(
        lambda m, d: sent.append((m, d is not None)),
        lambda state, d: None,
        logger=logger,
        rank=rank,
        checkpoints_only=True,
    )
    reporter({"step": 5, "loss": 1.0})
    reporter({"step": 10, "loss": 0.9}, {"model": {}})
    assert sent == [({"step": 10, "loss": 0.9}, rank == 0)]  # rank 0 with the checkpoint, the others without
    assert [step for _, step in logger.logged] == [5, 10]
    ray = Reporter.ray_train(rank=rank)  # what every Ray Train worker (pretraining, alignment, decoding) uses
    assert ray.checkpoints_only and ray.backend is ray_train_backend
    every = Reporter(lambda m, d: sent.append((m, d is not None)), rank=rank)  # Tune: every report counts (ASHA)
    every({"step": 15, "loss": 0.8})
    assert sent[-1] == ({"step": 15, "loss": 0.8}, False)

"""train/finetune: fine-tuning to a session held out of pretraining extends the vocabularies, freezes what it is
told to, trains on the same k windows as a scratch model, selects on validation and keeps its output prior."""

from __future__ import annotations

import pytest
import torch
from helpers.train import small_cfg
from neurobridge.models.checkpoint import load_checkpoint
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.store.read import sources
from neurobridge.train.pretrain import vocabularies


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


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
    dropping = finetune(ft.model_copy(update={"unit_row_dropout": 0.3}), str(tmp_path / "pre.pt"), store)
    assert dropping.model.cfg.unit_row_dropout == 0.3 and smooth.model.cfg.unit_row_dropout == 0.0  # else kept


def test_a_freezing_schedule_holds_the_backbone_until_its_step_then_trains_everything(store, tmp_path):
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.train.finetune import FinetuneConfig, finetune

    cfg = small_cfg(**{"data.holdout_sessions": ["monkey00_s01"]})
    vocabs = vocabularies(sources(store, [], "tiny"), ["monkey00_s01"])
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "pre.pt"), MaskedNeuralModel(cfg.model, vocabs), vocabs, {})
    pre = torch.load(tmp_path / "pre.pt", weights_only=True)["state"]
    encoder = {k.removeprefix("encoder."): v for k, v in pre.items() if k.startswith("encoder.")}
    sched = FinetuneConfig(
        dataset="t_nwb", session="monkey00_s01", trials=5, batch_size=4, freeze_backbone=True, unfreeze_after=2
    )
    held = finetune(sched.model_copy(update={"steps": 2}), str(tmp_path / "pre.pt"), store)
    torch.testing.assert_close(held.model.encoder.state_dict(), encoder)  # steps 1-2: the backbone stays put
    released = finetune(sched.model_copy(update={"steps": 3}), str(tmp_path / "pre.pt"), store)
    assert not torch.equal(released.model.encoder.layers[0].linear1.weight, encoder["layers.0.linear1.weight"])
    assert all(p.requires_grad for p in released.model.parameters())
    with pytest.raises(ValueError, match="unfreeze_after needs freeze_backbone"):
        FinetuneConfig(**(sched.model_dump() | {"freeze_backbone": False}))
    with pytest.raises(ValueError, match="a frozen backbone has no lr"):
        FinetuneConfig(**(sched.model_dump() | {"unfreeze_after": None, "backbone_lr_scale": 0.1}))

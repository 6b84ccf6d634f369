"""models/checkpoint: weights-only checkpoints round-trip exactly, refuse another model config naming the keys
that differ, and never unpickle code."""

from __future__ import annotations

import io

import pytest
import torch
from helpers.models import SMALL, latent_rows, small_model
from neurobridge.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neurobridge.models.config import ModelConfig
from neurobridge.models.masking import sample_mask
from neurobridge.models.patching import collate
from neurobridge.models.vocab import Vocabularies


@pytest.fixture(scope="module")
def rows():
    return latent_rows(0, trials=8, mua_session=True)


def test_checkpoint_round_trip_with_weights_only(tmp_path, rows):
    vocabs = Vocabularies.from_rows(rows)
    model = small_model(vocabs).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, vocabs, extra={"step": 12})
    loaded, v2, extra = load_checkpoint(path, expected=model.cfg)
    assert extra == {"step": 12} and v2.to_dict() == vocabs.to_dict()
    b = collate(rows, vocabs, 8)
    mask = sample_mask(b, "temporal", generator=torch.Generator().manual_seed(3))
    assert torch.equal(model(b, mask=mask).log_rate, loaded.eval()(b, mask=mask).log_rate)


def test_checkpoint_from_a_different_config_is_refused_with_the_keys_named(tmp_path, rows):
    vocabs = Vocabularies.from_rows(rows)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_model(vocabs), vocabs)
    other = ModelConfig(neurons_per_token=16, **{**SMALL, "depth": 3})
    with pytest.raises(CheckpointError, match=r"depth: checkpoint 2 vs expected 3.*neurons_per_token: checkpoint 8"):
        load_checkpoint(path, expected=other)


def test_checkpoint_loader_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"format": "neurobridge.masked_model/1", "config": Evil()}, buf)
    with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint"):
        load_checkpoint(buf.getvalue())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")

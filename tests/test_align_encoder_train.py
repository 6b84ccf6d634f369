"""align/encoder_train: an encoder trained with its projector on the raw stimulus windows (its last layers, or all
of it from scratch): exactly the weights meant to train move, the loss falls, and it saves weights-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.align import config
from neurobridge.align.dataset import build_alignment_data
from neurobridge.align.encoder_train import build_encoder_projector, load_aligned_model, session_specs
from neurobridge.align.projector import fit_projector, project

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encoder_fit(visual, train: str, regions=None, epochs: int = 6):
    st_ = visual["settings"]
    cfg = config(
        visual,
        data={"encoder": {"checkpoint": str(visual["model"]), "train": train, "device": "cpu"}},
        projector={"epochs": epochs, "patience": None, "batch_size": 64},
    )
    data = build_alignment_data(cfg.data, st_).select_regions(regions)
    model = build_encoder_projector(
        data.train,
        session_specs(data, data.train),
        data.dim,
        cfg.data.encoder,
        cfg.projector,
        visual["model"].read_bytes(),
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    fit = fit_projector(data.train, data.val, cfg.projector, device="cpu", model=model)
    after = model.encoder.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    return data, fit, before, moved


def test_last_layers_moves_only_the_last_encoder_layer_and_the_loss_falls(visual):
    data, fit, _, moved = _encoder_fit(visual, "last_layers")
    (session,) = data.sessions.values()
    n_units = len(session.unit_regions)
    assert data.train.blocks[0].x.shape[1] == n_units * session.context["n_bins"]  # raw windows, not pooled
    assert moved and all(k.startswith(("encoder.layers.1.", "enc_norm.")) for k in moved)
    assert not any(k.startswith(("encoder.layers.0.", "in_proj.", "region_emb.")) for k in moved)
    losses = [h["loss"] for h in fit.history]
    assert losses[-1] < losses[0]


def test_each_unit_enters_the_encoder_with_its_own_pretrained_row_as_in_pretraining(visual, tmp_path):
    """The trained path builds its token layout from a template row: it must name the units, or every unit would
    fall to the unknown row and a pretrained model would lose the read-in rows it learned for them."""
    from neurobridge.models.checkpoint import load_checkpoint, save_checkpoint
    from neurobridge.models.vocab import UNK, unit_key

    cfg = config(visual, data={"encoder": {"checkpoint": str(visual["model"]), "train": "last_layers"}})
    data = build_alignment_data(cfg.data, visual["settings"])
    specs = session_specs(data, data.train)
    (session, spec), *_ = specs.items()
    keys = [unit_key(spec["context"]["session"], u) for u in spec["unit_ids"]]
    assert len(keys) == len(spec["unit_regions"]) > 0
    encoder, vocabs, _ = load_checkpoint(str(visual["model"]))
    encoder.extend_vocab(vocabs, "unit", keys)  # a model pretrained on this session knows its units
    save_checkpoint(str(tmp_path / "knows_units.pt"), encoder, vocabs)
    model = build_encoder_projector(
        data.train, specs, data.dim, cfg.data.encoder, cfg.projector, (tmp_path / "knows_units.pt").read_bytes()
    )
    template = model.layouts[session].template
    slots = set(template.token_unit[0][template.token_cells[0]].tolist())  # the unit row of every real cell
    assert UNK not in slots and slots == set(vocabs.unit.lookup(keys).tolist())


def test_scratch_starts_from_a_random_init_and_trains_the_whole_encoder_but_not_the_decoder(visual):
    from neurobridge.models.checkpoint import load_checkpoint

    _, fit, before, moved = _encoder_fit(visual, "scratch", regions=["IT"], epochs=4)
    pretrained, _, _ = load_checkpoint(str(visual["model"]))
    assert not torch.equal(before["in_proj.weight"], pretrained.state_dict()["in_proj.weight"])
    assert {"in_proj.weight", "encoder.layers.0.linear1.weight", "encoder.layers.1.linear1.weight"} <= moved
    assert not any(k.startswith(("decoder.", "count_head.", "mua_head.")) for k in moved)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]


def test_an_encoder_trained_with_its_projector_saves_weights_only_and_reloads_identically(visual, tmp_path):
    from neurobridge.align.encoder_train import save_encoder_projector

    data, fit, _, _ = _encoder_fit(visual, "last_layers", regions=["V4", "IT"], epochs=1)
    save_encoder_projector(fit.model, str(tmp_path / "m.pt"))
    again = load_aligned_model(str(tmp_path / "m.pt"))
    assert np.allclose(project(again, data.test)[0], project(fit.model, data.test)[0], atol=1e-5)

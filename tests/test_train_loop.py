"""train/loop: the training loop, run here without Ray. A NaN loss stops naming the step and windows, validation
keeps the best weights and patience ends the run, val loss uses fixed masks, per-unit rows get their own decay,
a scaled backbone learning rate moves the shared weights that share of a step."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import latent_rows, small_model
from helpers.train import local_batches, small_cfg
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies, unit_key
from neurobridge.store.read import sources
from neurobridge.train.loop import CompiledOrEager, Loop, NonFiniteLoss, Placement, run_steps, val_loss
from neurobridge.train.pretrain import vocabularies


@pytest.fixture(scope="module")
def store(pretrain_store):
    """This file's store: simulated reaching sessions pinned as mixture 'tiny' (conftest)."""
    return pretrain_store


@pytest.fixture(scope="module")
def rows():
    return latent_rows(0, trials=8, mua_session=True)


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


def test_per_unit_rows_get_their_own_weight_decay_only_when_asked(rows):
    from neurobridge.train.config import OptimConfig
    from neurobridge.train.loop import make_optimizer

    rows = [{**r, "unit_ids": [f"u{i}" for i in range(r["n_units"])]} for r in rows]
    vocabs = Vocabularies.from_rows(rows)
    vocabs.unit.add([unit_key(r["session"], u) for r in rows for u in r["unit_ids"]])
    model = small_model(vocabs)
    unit = {id(model.unit_embed_in.weight), id(model.unit_embed_out.weight)}
    plain, _ = make_optimizer(model, OptimConfig())
    assert [g["weight_decay"] for g in plain.param_groups] == [0.01, 0.0]  # embeddings undecayed, as before
    assert unit <= {id(p) for p in plain.param_groups[1]["params"]}
    opt, _ = make_optimizer(model, OptimConfig(unit_weight_decay=20.0))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 20.0]
    assert {id(p) for p in opt.param_groups[2]["params"]} == unit
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = model.unit_embed_out.weight.detach().clone()
    with torch.no_grad():
        before.normal_()
        model.unit_embed_out.weight.copy_(before)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled decay moves the rows, toward zero (= the shared model)
    assert model.unit_embed_out.weight.norm() < before.norm()


def test_a_scaled_backbone_moves_that_share_of_a_step_while_session_parts_take_the_full_one(rows):
    from neurobridge.models.ndt import SESSION_PARTS
    from neurobridge.train.config import OptimConfig
    from neurobridge.train.loop import make_optimizer

    model = small_model(Vocabularies.from_rows(rows))

    def moved(scale: float) -> dict[str, float]:
        m = copy.deepcopy(model)
        opt, _ = make_optimizer(m, OptimConfig(backbone_lr_scale=scale, weight_decay=0.0, warmup_steps=0))
        assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(id(p) for p in m.parameters())
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        for p in m.parameters():
            p.grad = torch.ones_like(p)  # Adam's first step moves every weight by lr, whatever the gradient's size
        opt.step()
        return {n: (p.detach() - before[n]).abs().max().item() for n, p in m.named_parameters()}

    full, tenth = moved(1.0), moved(0.1)
    own = [n for n in full if n.split(".")[0] in SESSION_PARTS]
    shared = [n for n in full if n not in own]
    assert own and shared
    assert {n: tenth[n] for n in own} == pytest.approx({n: full[n] for n in own}, rel=1e-2)  # fp32 steps on ~1
    assert {n: tenth[n] for n in shared} == pytest.approx({n: 0.1 * full[n] for n in shared}, rel=1e-2)


@pytest.mark.slow
def test_compiled_steps_match_eager_steps(store):
    """``optim.compile`` (torch.compile, dynamic shapes) is a speed-up only: the same seed gives the same losses as
    eager steps; where compilation fails the loop trains eagerly and keeps the reason."""
    cfg = small_cfg(**{"optim.max_steps": 3})
    vocabs = vocabularies(sources(store, [], "tiny"))
    items = list(local_batches(store, cfg, vocabs)(0))[:3]
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        run = small_cfg(**{"optim.max_steps": 3, "optim.compile": compiled})
        loop = Loop(run, MaskedNeuralModel(run.model, vocabs), Placement(), None)
        losses[compiled] = [loop.train_step(item).loss for item in items]
        if compiled:
            assert isinstance(loop.net, CompiledOrEager)
            if loop.net.failure is not None:  # trained eagerly: the reason is kept, not swallowed
                assert ":" in loop.net.failure
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_tokens_per_second_counts_the_time_between_steps_as_well(monkeypatch):
    """Reporting, MLflow logging, validation and checkpoints happen between steps; a rate that left them out would
    flatter a loop that reports often (the Ray worker) against one timed by the wall clock (the plain loop)."""
    from neurobridge.train import loop

    now = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])

    def batches():
        for _ in range(2):
            now[0] += 1.0  # waiting for the batch
            yield "batch"

    clock, rates = loop._Clock(), {}
    for i, _ in enumerate(clock.timed(batches())):
        now[0] += 2.0  # the step
        clock.step_done(tokens=100)
        if i == 1:  # run_steps reads the rates just before it reports
            rates = clock.rates()
        now[0] += 4.0  # reporting
    assert rates["time_data_wait_s"] == 1.0 and rates["time_step_s"] == 2.0
    assert rates["time_other_s"] == 2.0  # the first report's 4 s; the second lands in the next interval
    assert rates["tokens_per_s"] == pytest.approx(200 / (2 + 4 + 4))

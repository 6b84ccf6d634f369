"""The pretraining loop that runs in each Ray Train worker (and, with ``report`` swapped, in a plain process).

Reproducible by construction: the data order is fixed by the seed and epoch, and every step reseeds masking and
dropout from (seed, step, rank), so a run resumed from a checkpoint retraces the loss curve of one that never
stopped. A non-finite loss stops the run naming the step and the windows, and the last good checkpoint stays.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterable

import torch

from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies
from neurobridge.train.batches import Collated
from neurobridge.train.config import PretrainConfig


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the message names the step and the windows of the batch."""


def make_optimizer(model: torch.nn.Module, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW groups: decayed weights, undecayed norms/biases/embeddings, and (when asked) the per-unit rows.

    Per-unit read-in/read-out rows grow with the number of units, not with the data: on a small recording they are
    what overfits first, so they get their own (usually much stronger) decay toward the shared model.
    """
    decay, no_decay, unit = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("unit_embed") and cfg.unit_weight_decay > 0:
            unit.append(p)
        elif p.ndim < 2 or "norm" in name or "embed" in name.split(".")[-2:][0]:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if unit:  # a third group only when asked for: optimizer states saved without it still load
        groups.append({"params": unit, "weight_decay": cfg.unit_weight_decay})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))

    def schedule(step: int) -> float:  # linear warmup, then cosine to 10 % of the peak
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _autocast(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def run_steps(
    cfg: PretrainConfig,
    model: MaskedNeuralModel,
    vocabs: Vocabularies,
    batches: Callable[[int], Iterable[Collated]],
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    state: dict | None = None,
    report: Callable[[dict, dict | None], None],
    ddp_model: torch.nn.Module | None = None,
    validate: Callable[[MaskedNeuralModel], float] | None = None,
) -> dict:
    """Train until ``cfg.optim.max_steps``. ``batches(epoch)`` yields collated windows in a fixed order;
    ``report(metrics, state_or_None)`` is called every ``log_every`` steps, with the full state at checkpoints.

    With ``validate`` (a val loss of the model; rank 0 only) every ``cfg.validation.every`` steps, the best weights so
    far travel in the state (``best``), so a resumed run keeps them, and ``patience`` passes without a new best
    end the run early (with a final checkpoint)."""
    net = ddp_model or model
    opt, sched = make_optimizer(model, cfg.optim)
    step, epoch, skip = 0, 0, 0
    best: dict | None = None
    stale = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch, skip = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        best, stale = state.get("best"), int(state.get("stale", 0))
    val_every = cfg.validation.every if validate is not None else None
    last = {}
    clock = _Clock()
    while step < cfg.optim.max_steps:
        seen = 0
        for item in clock.timed(batches(epoch)):
            if seen < skip:  # resuming mid-epoch: replay the order, skip what was already trained on
                seen += 1
                continue
            seen += 1
            batch = item.batch.to(device)
            seed = (cfg.seed * 1_000_003 + step) * max(world, 1) + rank
            torch.manual_seed(seed)
            gen = torch.Generator(device=device).manual_seed(seed)
            net.train()
            with _autocast(cfg.optim.precision, device):
                out = net(batch, mode=cfg.mode, generator=gen)
            if not torch.isfinite(out.loss):
                ids = item.sample_ids[:8]
                raise NonFiniteLoss(f"loss is {out.loss.item()} at step {step} (epoch {epoch}); windows: {ids}")
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
            opt.step()
            sched.step()
            step += 1
            clock.step_done(int(batch.token_valid.sum()))
            last = {
                "step": step,
                "epoch": epoch,
                "loss": float(out.loss.detach()),
                "poisson_nll": float(out.poisson_nll.detach()),
                "mse": float(out.mse.detach()),
                "lr": sched.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens": int(batch.token_valid.sum()),
                "cells": int(batch.token_cells.sum()),
            }
            stop = step >= cfg.optim.max_steps
            validated = val_every is not None and (step % val_every == 0 or stop)
            if validated:
                last["val_loss"] = float(validate(model))
                if best is None or last["val_loss"] < best["val_loss"]:
                    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    best, stale = {"step": step, "val_loss": last["val_loss"], "model": weights}, 0
                else:
                    stale += 1
                last["best_val_loss"], last["best_step"] = best["val_loss"], best["step"]
                patience = cfg.validation.patience
                stop = stop or (patience is not None and stale >= patience)
            at_ckpt = step % cfg.checkpoint_every == 0 or stop
            if at_ckpt or validated or step % cfg.log_every == 0:
                last.update(clock.rates())
            if at_ckpt:
                full = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batch_in_epoch": seen,
                    "stale": stale,
                }
                if best is not None:
                    full["best"] = best
                report(last, full)
            elif validated or step % cfg.log_every == 0:
                report(last, None)
            if stop:
                break
        else:
            epoch, skip = epoch + 1, 0
            if seen == 0:
                raise RuntimeError("the training data yielded no batch (empty split or batch larger than the data)")
            continue
        break
    return last if best is None else {**last, "best": best}  # a new dict: Ray may still hold the reported one


class _Clock:
    """Where the time goes: waiting for the next batch (data path) vs computing the step (model)."""

    def __init__(self):
        self.wait = self.compute = 0.0
        self.tokens = self.steps = 0
        self._t = time.perf_counter()

    def timed(self, items: Iterable):
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self._t = time.perf_counter()
            self.wait += self._t - t0
            yield item

    def step_done(self, tokens: int) -> None:
        self.compute += time.perf_counter() - self._t
        self.tokens += tokens
        self.steps += 1

    def rates(self) -> dict:
        """Averages since the last call: seconds per step waiting and computing, tokens per second of compute."""
        n = max(self.steps, 1)
        out = {
            "time_data_wait_s": self.wait / n,
            "time_step_s": self.compute / n,
            "tokens_per_s": self.tokens / max(self.wait + self.compute, 1e-9),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        }
        self.wait = self.compute = 0.0
        self.tokens = self.steps = 0
        return out


@torch.no_grad()
def val_loss(model: MaskedNeuralModel, batches: list[Collated], mode: str, seed: int, device: torch.device) -> float:
    """Mean masked loss over fixed val batches with fixed masks (a seed per batch): comparable across steps."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i, item in enumerate(batches):
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7_919 * (i + 1))
        total += float(model(item.batch.to(device), mode=mode, generator=gen).loss)
    model.train(was_training)
    return total / max(len(batches), 1)

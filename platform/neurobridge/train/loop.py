"""The pretraining loop that runs in each Ray Train worker (and, with ``report`` swapped, in a plain process).

Reproducible by construction: the data order is fixed by the seed and epoch, and every step reseeds masking and
dropout from (seed, step, rank), so a run resumed from a checkpoint retraces the loss curve of one that never
stopped. A non-finite loss stops the run naming the step and the windows, and the last good checkpoint stays.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch

from neurobridge.models.masking import choose_mode, sample_mask
from neurobridge.models.ndt import SESSION_PARTS, MaskedNeuralModel
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
    if cfg.backbone_lr_scale != 1.0:
        groups = _backbone_groups(model, groups, cfg.lr * cfg.backbone_lr_scale)
    opt = _adamw(groups, cfg)

    def schedule(step: int) -> float:  # linear warmup, then cosine to 10 % of the peak
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _backbone_groups(model: torch.nn.Module, groups: list[dict], lr: float) -> list[dict]:
    """Each group split in two: the session's own parameters (context, unit rows, heads) at the optimizer's lr and
    the shared backbone's at ``lr``; the schedule scales both alike. The usual middle ground between freezing the
    backbone and a full fine-tune; on real recordings no share beat both ends (docs/results.md), so it is a knob to
    measure with, not a default."""
    own = {id(p) for n, p in model.named_parameters() if n.split(".")[0] in SESSION_PARTS}
    out = []
    for g in groups:
        out.append({**g, "params": [p for p in g["params"] if id(p) in own]})
        out.append({**g, "params": [p for p in g["params"] if id(p) not in own], "lr": lr})
    return [g for g in out if g["params"]]


def _adamw(groups: list[dict], cfg) -> torch.optim.AdamW:
    """AdamW updating all parameters in one fused kernel where torch has it for their device (CPU and CUDA), else
    one multi-tensor call: the default per-tensor loop was ~10 % of a small model's step (`bench model`)."""
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=True)


def _autocast(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


@dataclass
class Placement:
    """Where a loop runs: its device, its rank among ``world`` data-parallel workers, and the DDP wrapper."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1
    ddp_model: torch.nn.Module | None = None


@dataclass
class StepResult:
    loss: float
    poisson_nll: float
    mse: float
    grad_norm: float
    tokens: int
    cells: int


def masked_loss(net, model: MaskedNeuralModel, item: Collated, mode: str, gen: torch.Generator, train=None, world=1):
    """(loss, poisson_nll, mse) of ``item``'s parts as one mean per cell kind (Poisson over count cells, MSE over
    MUA cells), one masking mode for the whole step; None when a part's loss is not finite.

    ``train``: a context factory for the forward (autocast); each part's share is then back-propagated as soon as
    it is computed (one part's graph in memory at a time) and DDP syncs gradients once, on the last part.
    With ``world`` > 1 data-parallel workers the means run over every worker's cells (counts and sums are
    all-reduced, shares scaled by ``world`` against DDP's averaging): W workers × B windows train exactly like one
    worker with W·B windows, and every rank reports the same, global loss."""
    mode = choose_mode(mode, model.cfg.modes, gen, model.cfg.mode_weights)
    masks = [sample_mask(p, mode, model.cfg.mask, model.cfg.modes, gen) for p in item.parts]
    counts = [sum(_cells(p, m, kind) for p, m in zip(item.parts, masks, strict=True)) for kind in (True, False)]
    n_c, n_m = _all_sum(counts, world)
    scale = float(world)
    nll = se = 0.0
    for i, (part, mask) in enumerate(zip(item.parts, masks, strict=True)):
        sync = i == len(item.parts) - 1 or not hasattr(net, "no_sync")
        with nullcontext() if sync else net.no_sync(), (train or nullcontext)():
            out = net(part, mask=mask)
            share = (out.nll_sum / max(n_c, 1) + out.se_sum / max(n_m, 1)) * scale
        if train is not None:
            if not torch.isfinite(share):
                return None
            share.backward()
        nll, se = nll + float(out.nll_sum.detach()), se + float(out.se_sum.detach())
    nll, se = _all_sum([nll, se], world)
    poisson, mse = nll / max(n_c, 1), se / max(n_m, 1)
    return poisson + mse, poisson, mse


def _all_sum(values: list[float], world: int) -> list[float]:
    """The sums of ``values`` over every data-parallel worker (themselves on one worker)."""
    if world <= 1 or not torch.distributed.is_initialized():
        return values
    nccl = torch.distributed.get_backend() == "nccl"  # NCCL reduces device tensors only
    t = torch.tensor(values, dtype=torch.float64, device=f"cuda:{torch.cuda.current_device()}" if nccl else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


def _cells(part, mask, counts: bool) -> int:
    kind = part.is_counts if counts else ~part.is_counts
    return int(((mask.target & part.token_valid)[:, :, None] & part.token_cells & kind[:, None, None]).sum())


class CompiledOrEager:
    """``torch.compile(module)`` that falls back to the module itself, once and for good, when compilation fails
    (a missing compiler, an unsupported op): a training run never dies of an optional speed-up. Attributes
    (``train``, ``parameters``, DDP's ``no_sync``) are the module's."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.compiled = module, torch.compile(module, dynamic=True)
        self.failure: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failure is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # torch.compile raises many kinds; eager is always correct
                self.failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                logging.getLogger(__name__).warning("torch.compile failed, training eagerly: %s", self.failure)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


class Loop:
    """The state of one training run between steps: optimizer, schedule, position in the data, best weights."""

    def __init__(self, cfg: PretrainConfig, model: MaskedNeuralModel, place: Placement, state: dict | None):
        self.cfg, self.model, self.place = cfg, model, place
        self.net = place.ddp_model or model
        if cfg.optim.compile:
            self.net = CompiledOrEager(self.net)
        self.opt, self.sched = make_optimizer(model, cfg.optim)
        self.step = self.epoch = self.skip = self.stale = 0
        self.best: dict | None = None
        if state is not None:  # resume: weights, optimizer, schedule and the place in the epoch's data order
            model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.step, self.epoch, self.skip = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
            self.best, self.stale = state.get("best"), int(state.get("stale", 0))

    def train_step(self, item: Collated) -> StepResult:
        cfg, place = self.cfg, self.place
        seed = (cfg.seed * 1_000_003 + self.step) * max(place.world, 1) + place.rank
        torch.manual_seed(seed)
        gen = torch.Generator(device=place.device).manual_seed(seed)  # masks are drawn where the step runs
        item = item.to(place.device)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        precision = partial(_autocast, cfg.optim.precision, place.device)
        got = masked_loss(self.net, self.model, item, cfg.mode, gen, precision, place.world)
        if got is None or not math.isfinite(got[0]):
            raise NonFiniteLoss(
                f"loss is not finite at step {self.step} (epoch {self.epoch}); windows: {item.sample_ids[:8]}"
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        cells = sum(int(p.token_cells.sum()) for p in item.parts)
        return StepResult(*got, float(grad_norm), item.n_tokens, cells)

    def validate(self, validate: Callable[[MaskedNeuralModel], float], last: dict) -> bool:
        """Score the model on val; keep the best weights; True when patience ran out."""
        last["val_loss"] = float(validate(self.model))
        if self.best is None or last["val_loss"] < self.best["val_loss"]:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best, self.stale = {"step": self.step, "val_loss": last["val_loss"], "model": weights}, 0
        else:
            self.stale += 1
        last["best_val_loss"], last["best_step"] = self.best["val_loss"], self.best["step"]
        patience = self.cfg.validation.patience
        return patience is not None and self.stale >= patience

    def full_state(self, seen: int) -> dict:
        full = {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": seen,
            "stale": self.stale,
        }
        if self.best is not None:
            full["best"] = self.best
        return full


def run_steps(
    cfg: PretrainConfig,
    model: MaskedNeuralModel,
    batches: Callable[[int], Iterable[Collated]],
    *,
    report: Callable[[dict, dict | None], None],
    place: Placement | None = None,
    state: dict | None = None,
    validate: Callable[[MaskedNeuralModel], float] | None = None,
) -> dict:
    """Train until ``cfg.optim.max_steps``. ``batches(epoch)`` yields collated windows in a fixed order;
    ``report(metrics, state_or_None)`` is called every ``log_every`` steps, with the full state at checkpoints.

    With ``validate`` (a val loss of the model; rank 0 only) every ``cfg.validation.every`` steps, the best weights so
    far travel in the state (``best``), so a resumed run keeps them, and ``patience`` passes without a new best
    end the run early (with a final checkpoint)."""
    loop = Loop(cfg, model, place or Placement(), state)
    val_every = cfg.validation.every if validate is not None else None
    last: dict = {}
    clock = _Clock()
    while loop.step < cfg.optim.max_steps:
        seen = 0
        for item in clock.timed(batches(loop.epoch)):
            seen += 1
            if seen <= loop.skip:  # resuming mid-epoch: replay the order, skip what was already trained on
                continue
            r = loop.train_step(item)
            clock.step_done(r.tokens)
            last = {"step": loop.step, "epoch": loop.epoch, "lr": loop.sched.get_last_lr()[0], **r.__dict__}
            stop = loop.step >= cfg.optim.max_steps
            validated = val_every is not None and (loop.step % val_every == 0 or stop)
            if validated:
                stop = loop.validate(validate, last) or stop
            at_ckpt = loop.step % cfg.checkpoint_every == 0 or stop
            if at_ckpt or validated or loop.step % cfg.log_every == 0:
                last.update(clock.rates())
                report(last, loop.full_state(seen) if at_ckpt else None)
            if stop:
                return last if loop.best is None else {**last, "best": loop.best}  # a new dict: Ray may hold last
        if seen == 0:
            raise RuntimeError("the training data yielded no batch (empty split or batch larger than the data)")
        loop.epoch, loop.skip = loop.epoch + 1, 0
    return last if loop.best is None else {**last, "best": loop.best}


class _Clock:
    """Where the time goes: waiting for the next batch (data path), computing the step (model), and everything
    between a step and the next fetch (reporting, MLflow logging, validation, checkpoints). tokens/s is over all
    three, i.e. wall-clock throughput, the way a plain loop timed by the wall clock is measured."""

    def __init__(self):
        self.wait = self.compute = self.other = 0.0
        self.tokens = self.steps = 0
        self._t = time.perf_counter()
        self._done: float | None = None

    def timed(self, items: Iterable):
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            if self._done is not None:
                self.other += t0 - self._done
            try:
                item = next(it)
            except StopIteration:
                return
            self._t = time.perf_counter()
            self.wait += self._t - t0
            yield item

    def step_done(self, tokens: int) -> None:
        self._done = time.perf_counter()
        self.compute += self._done - self._t
        self.tokens += tokens
        self.steps += 1

    def rates(self) -> dict:
        """Averages since the last call: seconds per step waiting, computing and in between; tokens per second of
        the three (the in-between time of the step just reported lands in the next interval)."""
        n = max(self.steps, 1)
        out = {
            "time_data_wait_s": self.wait / n,
            "time_step_s": self.compute / n,
            "time_other_s": self.other / n,
            "tokens_per_s": self.tokens / max(self.wait + self.compute + self.other, 1e-9),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        }
        self.wait = self.compute = self.other = 0.0
        self.tokens = self.steps = 0
        return out


@torch.no_grad()
def val_loss(model: MaskedNeuralModel, batches: list[Collated], mode: str, seed: int, device: torch.device) -> float:
    """Mean masked loss over fixed val batches with fixed masks (a seed per batch): comparable across steps."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i, item in enumerate(batches):
        gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + 7_919 * (i + 1))
        total += masked_loss(model, model, item.to(device), mode, gen)[0]
    model.train(was_training)
    return total / max(len(batches), 1)

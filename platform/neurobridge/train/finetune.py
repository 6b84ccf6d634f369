"""Fine-tuning to a new session: extend the vocabularies, optionally freeze the backbone, train on k windows.

Few-shot data (tens of windows) fits in one process, so this runs the same step function as pretraining in a plain
loop; the from-scratch comparison trains an identically configured fresh model on exactly the same windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurobridge.config import Settings, get_settings
from neurobridge.models.checkpoint import load_checkpoint, save_checkpoint
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import SESSION_PARTS, MaskedNeuralModel
from neurobridge.models.patching import CONTEXT
from neurobridge.models.vocab import Vocabularies, unit_key
from neurobridge.storage import StoreError
from neurobridge.store.read import sources
from neurobridge.store.rows import session_rows
from neurobridge.store.splits import HeldoutSplit, heldout_flags
from neurobridge.train.batches import CollateWindows
from neurobridge.train.components import Reporter
from neurobridge.train.config import DataConfig, OptimConfig, PretrainConfig, ValidationConfig
from neurobridge.train.loop import run_steps, val_loss

# with train_decoder, the lighter decoder adapts too (the encoder's representation stays as pretrained)
DECODER = ("enc_to_dec", "dec_pos", "mask_token", "decoder", "dec_norm", "bin_proj")


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="dataset ref holding the new session (name or name@version)")
    session: str
    trials: int | None = Field(20, ge=1, description="training windows used (k-shot); null: all")
    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    freeze_backbone: bool = Field(False, description="train only context embeddings and output heads")
    train_decoder: bool = Field(False, description="with freeze_backbone: the decoder trains too (encoder frozen)")
    unfreeze_after: int | None = Field(
        None,
        ge=1,
        description="with freeze_backbone: every parameter trains from this step on (the new session's rows settle "
        "on the fixed backbone first, then the backbone adapts)",
    )
    backbone_lr_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="learning rate of the shared backbone as a share of lr; the session's context, unit rows and "
        "heads keep lr (between a frozen backbone and a full fine-tune)",
    )
    mode: str = "all"
    seed: int = 0
    heldout_fraction: float = Field(0.25, gt=0, lt=1)
    val_every: int | None = Field(
        None, ge=1, description="score the session's val windows every this many steps and keep the best weights"
    )
    val_patience: int | None = Field(
        None, ge=1, description="with val_every: stop after this many passes without a new best"
    )
    unit_weight_decay: float = Field(
        0.0,
        ge=0,
        description="AdamW decay of the per-unit rows toward the shared read-out (small recordings); "
        "decoupled decay shrinks every session's rows, so the result is a model for the new session",
    )
    output_smoothing_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="set the model's output smoothing (Gaussian s.d., ms; converted with the session's bin width) "
        "for fine-tuning and after; null: keep the model's own (its ms setting, if any, at this bin width)",
    )
    unit_row_dropout: float | None = Field(
        None, ge=0, lt=1, description="set the model's read-in row dropout while fine-tuning; null: keep the model's"
    )

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.train_decoder and not self.freeze_backbone:
            raise ValueError("train_decoder needs freeze_backbone (without it every part trains anyway)")
        if self.unfreeze_after is not None and not self.freeze_backbone:
            raise ValueError("unfreeze_after needs freeze_backbone (there is nothing frozen to release)")
        if self.freeze_backbone and self.backbone_lr_scale != 1.0 and self.unfreeze_after is None:
            raise ValueError(
                "backbone_lr_scale with freeze_backbone needs unfreeze_after (a frozen backbone has no lr)"
            )
        return self


@dataclass
class FinetuneResult:
    model: MaskedNeuralModel
    vocabs: Vocabularies
    windows: list[str]
    last: dict


def pick_windows(rows: list[dict], k: int | None, seed: int | str) -> list[dict]:
    """k training windows chosen by a hash of their ids: the same k for pretrained and scratch, on any machine.

    A string seed salts the order for another use of the same windows (cross-validation folds).
    """
    ranked = sorted(rows, key=lambda r: hashlib.blake2b(f"{seed}\x1f{r['sample_id']}".encode()).digest())
    return ranked if k is None else ranked[:k]


def finetune(
    cfg: FinetuneConfig,
    model_file: str | None,
    settings: Settings | None = None,
    scratch_model: ModelConfig | None = None,
    windows: tuple[list[dict], list[dict]] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model_file`` (or, with ``model_file=None``, train a fresh ``scratch_model``) on the session.

    ``windows`` = (train, val) rows of the session replaces its stored train/val splits (cross-validation folds).
    """
    settings = settings or get_settings()
    srcs = sources(settings, [cfg.dataset])
    if windows is None:
        found = session_rows(settings, srcs[0], ("train", "val"), {cfg.session})
        windows = (found[0].split("train"), found[0].split("val")) if found else ([], [])
    if not windows[0]:
        raise StoreError(f"{cfg.dataset}: no training windows for session {cfg.session!r}")
    rows = pick_windows(windows[0], cfg.trials, cfg.seed)
    model, vocabs = _base_model(cfg, model_file, scratch_model, float(rows[0]["bin_ms"]))
    _adopt_session(model, vocabs, rows, cfg.session, srcs[0].name)
    _freeze(model, cfg)
    collate_fn = CollateWindows(
        vocabs, model.cfg.neurons_per_token, HeldoutSplit(heldout_flags(settings, srcs), cfg.heldout_fraction)
    )
    bs = min(cfg.batch_size, len(rows))
    batches = _Batches(rows, bs, cfg.seed, collate_fn, model, cfg.unfreeze_after)
    pcfg = _step_config(cfg, model.cfg, bs)
    validate = None
    if cfg.val_every is not None:
        val = windows[1][: pcfg.validation.max_windows]
        if not val:
            raise StoreError(f"{cfg.dataset}: val_every is set but session {cfg.session!r} has no val windows")
        fixed = [collate_fn.collate_rows(val[i : i + bs]) for i in range(0, len(val), bs)]

        def validate(m) -> float:
            return val_loss(m, fixed, cfg.mode, cfg.seed, torch.device("cpu"))

    history: list[dict] = []
    last = run_steps(pcfg, model, batches, report=Reporter(lambda m, _d: history.append(dict(m))), validate=validate)
    best = last.pop("best", None)
    if best is not None:
        model.load_state_dict(best["model"])
        last["selected_step"] = best["step"]
    for p in model.parameters():
        p.requires_grad = True
    return FinetuneResult(model, vocabs, [r["sample_id"] for r in rows], {**last, "history": history})


def _freeze(model: MaskedNeuralModel, cfg: FinetuneConfig) -> None:
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.split(".")[0] in SESSION_PARTS + (DECODER if cfg.train_decoder else ())


@dataclass
class _Batches:
    """The k windows in a fresh order each epoch (``batches(epoch)`` for the loop), and the freezing schedule: a
    fine-tune never resumes, so the n-th batch served is trained at step n + 1."""

    rows: list[dict]
    batch_size: int
    seed: int
    collate: CollateWindows
    model: MaskedNeuralModel
    unfreeze_after: int | None
    served: int = 0

    def __call__(self, epoch: int):
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        order = torch.randperm(len(self.rows), generator=g).tolist()
        bs = self.batch_size
        for i in range(0, len(order) - bs + 1, bs):
            if self.served == self.unfreeze_after:  # AdamW skipped the frozen weights (no grads) until now
                self.model.requires_grad_(True)
            self.served += 1
            yield self.collate.collate_rows([self.rows[j] for j in order[i : i + bs]])


def _base_model(
    cfg: FinetuneConfig, model_file: str | None, scratch_model: ModelConfig | None, bin_ms: float
) -> tuple[MaskedNeuralModel, Vocabularies]:
    """The pretrained model (or a fresh one of ``scratch_model``), its output smoothing at the session's bin width
    (the kernel asked for, else the model's own ms setting)."""
    if model_file is not None:
        model, vocabs, _ = load_checkpoint(model_file)
    else:
        torch.manual_seed(cfg.seed)
        vocabs = Vocabularies()
        model = MaskedNeuralModel(scratch_model or ModelConfig(), vocabs)
    if cfg.output_smoothing_ms is not None:  # no parameters of its own: the checkpoint saves the new config
        model.cfg = model.cfg.model_copy(update={"output_smoothing_ms": cfg.output_smoothing_ms})
    if cfg.unit_row_dropout is not None:
        model.cfg = model.cfg.model_copy(update={"unit_row_dropout": cfg.unit_row_dropout})
    model.cfg = model.cfg.at_bin_width(bin_ms)
    return model, vocabs


def _adopt_session(model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], session: str, dataset: str):
    """New session (and subject/task/dataset/regions when unseen) → grown tables; its units get their own rows."""
    first = rows[0]
    for name in CONTEXT:
        key = first.get(name) if name != "dataset" else dataset
        if key:
            model.extend_vocab(vocabs, name, [key])
    model.extend_vocab(vocabs, "region", sorted({r for row in rows for r in row["unit_regions"]}))
    if first.get("unit_ids") is not None:
        model.extend_vocab(vocabs, "unit", [unit_key(session, u) for u in first["unit_ids"]])


def _step_config(cfg: FinetuneConfig, model: ModelConfig, batch_size: int) -> PretrainConfig:
    """The training loop's config for a fine-tune: short warm-up, logging ten times, validation as asked."""
    return PretrainConfig(
        name="finetune",
        seed=cfg.seed,
        mode=cfg.mode,
        model=model,
        data=DataConfig(mixture=None),
        optim=OptimConfig(
            lr=cfg.lr,
            max_steps=cfg.steps,
            batch_size=batch_size,
            warmup_steps=min(20, cfg.steps // 10),
            unit_weight_decay=cfg.unit_weight_decay,
            backbone_lr_scale=cfg.backbone_lr_scale,
        ),
        log_every=max(1, cfg.steps // 10),
        checkpoint_every=cfg.steps,
        validation=ValidationConfig(every=cfg.val_every, patience=cfg.val_patience),
    )


def save(result: FinetuneResult, path: str, cfg: FinetuneConfig) -> str:
    extra = {
        "finetuned_on": cfg.session,
        "trials": cfg.trials or 0,
        "heldout_fraction": cfg.heldout_fraction,
        "trained_modes": result.model.cfg.trained_modes(cfg.mode),  # what the new session's weights learnt
    }
    save_checkpoint(path, result.model, result.vocabs, extra)
    return path

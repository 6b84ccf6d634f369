"""Typed pretraining config: every field has a default that trains on a laptop; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from neurobridge.config import load_yaml
from neurobridge.models.config import ModelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    datasets: list[str] = Field(default_factory=list, description="dataset refs: name or name@version")
    mixture: str | None = Field("demo", description="a mixture written by `neurobridge ingest --mixture`")
    mixing: Literal["sqrt", "proportional", "uniform"] = "sqrt"
    epoch_rows: int | None = Field(None, ge=1, description="rows per epoch of the mixture (default: all rows)")
    min_epoch_steps: int = Field(
        50,
        ge=1,
        description="smaller data repeats within an epoch to fill this many steps (each epoch restarts the read)",
    )
    cache_mb: float = Field(
        1024,
        ge=0,
        description="an epoch of at most this many MB of cells is read once and kept in Ray's object store: later "
        "epochs replay it instead of restarting the read (epochs are the same rows anyway; 0: never)",
    )
    holdout_sessions: list[str] = Field(
        default_factory=list, description="sessions never trained on (evaluation / fine-tuning targets)"
    )
    train_fraction: dict[str, float] = Field(
        default_factory=dict,
        description="dataset name → share of its train rows to train on (chosen by a hash of each window's id, so a "
        "smaller share keeps a subset of a larger one's): data-scaling curves. Val rows stay whole",
    )
    max_units: int | None = Field(None, ge=1, description="refuse windows wider than this")
    crop_bins: int | None = Field(
        50, ge=2, description="train on random spans of at most this many bins (attention cost ∝ bins²); null: whole"
    )
    heldout_fraction: float = Field(
        0.25, gt=0, lt=1, description="held-out units per session (by hash) where the data has no official split"
    )
    allow_partial: bool = Field(
        False, description="train on dataset versions with failed items (refused by default; the run records them)"
    )

    @field_validator("train_fraction")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: f for k, f in v.items() if not 0 < f <= 1}
        if bad:
            raise ValueError(f"train_fraction shares must lie in (0, 1]: {bad}")
        return v


class OptimConfig(_Strict):
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    unit_weight_decay: float = Field(
        0.0, ge=0, description="AdamW decay of the per-unit read-in/read-out rows (0: none, like other embeddings)"
    )
    backbone_lr_scale: float = Field(
        1.0, gt=0, le=1, description="the shared backbone's learning rate as a share of lr (fine-tuning; 1: all alike)"
    )
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(50, ge=0)
    max_steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1, description="windows per worker per step")
    grad_clip: float = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPUs that have it")
    compile: bool = Field(
        False, description="torch.compile the model (dynamic shapes); falls back to eager, saying why, if it fails"
    )


class ScalingConfig(_Strict):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (2 on a laptop, N GPUs on a cluster)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)


class ValidationConfig(_Strict):
    """Model selection on the ``val`` split: small data overfits long before ``max_steps`` (MC_Maze: 84 trials)."""

    every: int | None = Field(None, ge=1, description="steps between validation passes (null: no validation)")
    max_windows: int = Field(256, ge=1, description="val windows scored each pass (the same ones every time)")
    keep_best: bool = Field(True, description="export the weights of the lowest val loss instead of the last")
    patience: int | None = Field(
        None, ge=1, description="stop after this many passes without a new best (null: train to max_steps)"
    )


class PretrainConfig(_Strict):
    name: str = Field("pretrain", description="run name in MLflow and under <store>/runs/")
    experiment: str = "neurobridge-pretrain"
    seed: int = 0
    mode: str = Field("all", description="masking mode per batch: one of the model's modes, or all")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    validation: ValidationConfig = ValidationConfig()
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="worker failures tolerated; each resumes from the last checkpoint")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> PretrainConfig:
    """The config file (or the defaults) with ``--set`` overrides; a misspelt override is named as one."""
    return load_yaml(PretrainConfig, path, overrides)

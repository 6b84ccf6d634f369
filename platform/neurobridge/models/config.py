"""Typed model configuration; the defaults train on a CPU in seconds on small data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# "heldout" may also be trained on (NLB-style co-smoothing: held-out units of training windows predicted from held-in)
Mode = Literal["random", "temporal", "neuron", "intra_region", "inter_region", "forward", "heldout"]
MODES: tuple[str, ...] = ("random", "temporal", "neuron", "intra_region", "inter_region", "forward")
# Evaluation-only prompts: "heldout" (co-smoothing masks the held-out patches), "none" (encode, nothing masked).
EVAL_MODES: tuple[str, ...] = ("heldout", "none")
ALL_PROMPTS: tuple[str, ...] = MODES + EVAL_MODES
# The decoder's default head width. Attention is most of a small model's step (its sequences, hundreds of tokens,
# are far longer than its width), and the decoder attends over every token of a window. On CPU PyTorch's fused
# attention runs 12-dim heads at ~30 % of the matmul peak and 48-dim ones at ~60 %: one 48-dim head took the small
# size from 0.30 to 0.36 MFU (`neurobridge bench model`) with the demo's co-bps unchanged (0.682 vs 0.683).
HEAD_DIM = 32


def default_heads(width: int) -> int:
    """The most heads of at least HEAD_DIM dims that divide ``width`` (one head for narrower models)."""
    heads = max(1, width // HEAD_DIM)
    while width % heads:
        heads -= 1
    return heads


class MaskConfig(BaseModel):
    """Fraction masked per mode (of tokens, bins, patches or a region's patches); see masking.py for definitions."""

    model_config = ConfigDict(extra="forbid")

    random: float = Field(0.3, gt=0, lt=1)
    temporal: float = Field(0.3, gt=0, lt=1)
    neuron: float = Field(0.3, gt=0, lt=1)
    intra_region: float = Field(0.3, gt=0, lt=1)
    forward: float = Field(0.2, gt=0, lt=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    neurons_per_token: int = Field(32, ge=1, le=1024)
    d_model: int = Field(64, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)  # 2 × 32 dims run faster on CPU but cost the demo 0.05 co-bps (docs/results.md)
    decoder_d_model: int = Field(48, ge=8)
    decoder_depth: int = Field(1, ge=1)
    decoder_heads: int | None = Field(
        None, ge=1, description="None: the most heads of at least HEAD_DIM dims (one for the default 48-wide decoder)"
    )
    ff_mult: int = Field(2, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)  # MAE convention: masking regularises; >0 also drops attention
    # weights, which forces PyTorch off its fused attention kernel (about 2x slower on CPU)
    max_bins: int = Field(256, ge=1)  # learned time embedding rows
    max_patches: int = Field(256, ge=1)  # learned patch-position embedding rows
    modes: list[Mode] = Field(default_factory=lambda: [*MODES, "heldout"])  # heldout: NLB co-smoothing as a task
    mode_weights: dict[Mode, float] = Field(
        default_factory=dict, description="relative odds of each mode under 'all' (missing: 1); e.g. {heldout: 3}"
    )
    mask: MaskConfig = Field(default_factory=MaskConfig)
    count_input: Literal["log1p", "raw"] = "log1p"  # counts enter the embedding as log1p(n): tames bursts
    max_log_rate: float = Field(10.0, gt=0)  # Poisson head: log-rate clamped to [-max, max] before exp
    bin_summary: bool = True  # decoder tokens also get the mean of their bin's visible tokens: see models/ndt.py
    unit_embedding: bool = True  # per-unit read-in/read-out rows keyed by (session, unit id): see models/ndt.py
    unit_row_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="in training, the share of (window, unit) read-in rows zeroed: the encoder learns to use units "
        "it has no row for, which is what every unit of a new session is when fine-tuning starts",
    )
    output_smoothing: float = Field(
        0.0, ge=0, le=32, description="Gaussian kernel width (bins) applied along time to predicted log-rates; 0: off"
    )
    output_smoothing_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="the same kernel in milliseconds, what configs should give: training converts it to "
        "output_smoothing with the data's bin width (2.5 bins is 50 ms at 20 ms bins, 125 ms at 50 ms); None: "
        "output_smoothing as given",
    )

    def at_bin_width(self, bin_ms: float) -> ModelConfig:
        """This config for data of ``bin_ms`` bins: ``output_smoothing_ms`` converted to bins (when set)."""
        if self.output_smoothing_ms is None:
            return self
        return self.model_copy(update={"output_smoothing": self.output_smoothing_ms / bin_ms})

    def trained_modes(self, mode: str) -> list[str]:
        """The masking modes a run with top-level ``mode`` trains (``all``: every mode with non-zero odds)."""
        if mode != "all":
            return [mode]
        return [m for m in self.modes if self.mode_weights.get(m, 1.0) > 0]

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.decoder_heads is None:
            self.decoder_heads = default_heads(self.decoder_d_model)
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by heads={self.heads}")
        if self.decoder_d_model % self.decoder_heads:
            raise ValueError(
                f"decoder_d_model={self.decoder_d_model} is not divisible by decoder_heads={self.decoder_heads}"
            )
        if not self.modes:
            raise ValueError("modes must list at least one masking mode")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes has duplicates: {self.modes}")
        if set(self.mode_weights) - set(self.modes):
            raise ValueError(
                f"mode_weights names modes not in modes: {sorted(set(self.mode_weights) - set(self.modes))}"
            )
        if any(w < 0 for w in self.mode_weights.values()) or (
            self.mode_weights and sum(self.mode_weights.get(m, 1.0) for m in self.modes) <= 0
        ):
            raise ValueError(f"mode_weights must be >= 0 with a positive total, got {self.mode_weights}")
        return self

"""Options every catalog entry shares, whatever its kind: how windows are cut, split, selected and reached."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must never be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class WindowConfig(Strict):
    """How a session is cut into sample windows."""

    mode: Literal["auto", "intervals", "chunks"] = Field(
        "auto", description="auto: aligned to `intervals` when the session has that table, else fixed chunks"
    )
    intervals: str = Field("trials", description="intervals table (NWB) or ALF object holding the events")
    align: str = Field("start_time", description="column with the alignment time of each interval")
    pre_s: float = Field(0.0, ge=0, description="seconds before the alignment time")
    post_s: float | None = Field(None, gt=0, description="seconds after; None: shortest interval duration")
    chunk_s: float = Field(1.0, gt=0, description="length of fixed chunks when there are no intervals")
    stimulus_column: str | None = Field(None, description="interval column identifying the stimulus")
    stimulus_prefix: str | None = Field(None, description="namespace for stimulus ids, e.g. allen_ns")
    exclude: dict[str, list[float | str]] = Field(
        default_factory=dict,
        description="interval column → values whose intervals are dropped (counted), e.g. {frame: [-1]} (blanks)",
    )


class SplitConfig(Strict):
    """Deterministic train/val/test assignment."""

    rule: Literal["auto", "column", "hash"] = Field(
        "auto", description="auto: the file's `split` column when it holds 2+ of train/val/test, else hash"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    salt: str = "neurobridge"

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class UnitRule(Strict):
    """Keep a unit only when its value in one units-table column passes every bound given (NaN fails)."""

    min: float | None = Field(None, description="keep units with value >= min")
    max: float | None = Field(None, description="keep units with value <= max")
    one_of: list[str | float] | None = Field(None, description="keep units whose value is one of these")
    optional: bool = Field(False, description="skip this rule (and say so in the item record) if the column is absent")

    @model_validator(mode="after")
    def _some_bound(self) -> UnitRule:
        if self.min is None and self.max is None and self.one_of is None:
            raise ValueError("a unit rule needs at least one of min, max, one_of")
        return self


class IngestConfig(Strict):
    bin_ms: float = Field(20.0, gt=0, le=10_000)
    window: WindowConfig = WindowConfig()
    split: SplitConfig = SplitConfig()
    good_units_only: bool = Field(False, description="keep only units labelled good (ALF quality label)")
    good_label_min: float = Field(
        1.0, ge=0, le=1, description="IBL label = fraction of quality metrics passed; 'good' means ≥ this"
    )
    chunk_spikes: int = Field(2_000_000, ge=10_000, description="spikes held in memory at once per worker")
    behavior: list[str] | None = Field(
        None, description="continuous behaviour series to bin (e.g. hand_vel, wheel.velocity); None: all found"
    )
    trial_behavior: list[str] = Field(
        default_factory=lambda: ["choice", "feedbackType", "contrastLeft", "contrastRight", "probabilityLeft"],
        description="per-trial columns of the aligned intervals table, repeated over each window's bins",
    )
    unit_filter: dict[str, UnitRule] = Field(
        default_factory=dict,
        description="units-table column → rule; e.g. allensdk's defaults {isi_violations: {max: 0.5}, ...}",
    )


class SourceStorage(Strict):
    """How to reach the entry's raw URI on S3; credentials never go here (they come from the provider chain)."""

    anon: bool = Field(False, description="unsigned requests: public buckets (Allen, DANDI, IBL open data)")
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for this entry; 'aws' forces AWS even when NB_S3_ENDPOINT is set"
    )
    requester_pays: bool = False


class Selection(Strict):
    include: list[str] = Field(default_factory=list, description="glob patterns below uri (kind default if empty)")
    exclude: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1, description="take only the first N items (sorted)")

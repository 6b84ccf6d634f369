"""What the simulator simulates: the typed config, the session plan and the random streams.

Every session draws from its own streams (a seed plus a spawn key), so any one session can be regenerated alone
and adding a session never changes the others.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT = Literal["nwb", "alf", "visual"]
SCHEMA_VERSION = 1
MAX_RATE_HZ = 200.0
# The ingest window that cuts the simulated visual sessions into image presentations (the intervals table and
# stimulus column the writers give them): one place for every catalog entry, bench and test that reads them.
VISUAL_WINDOW = {
    "mode": "intervals",
    "intervals": "natural_scenes_presentations",
    "align": "start_time",
    "pre_s": 0.0,
    "post_s": 0.25,
    "stimulus_column": "frame",
    "stimulus_prefix": "sim_ns",
}
LOADING_SD = 1.0  # s.d. of C x per unit for a unit-variance latent
INIT_RMS = 1.5  # r.m.s. per latent dimension of the condition-dependent trial start state
CHUNK_CELLS = 2_000_000  # units × steps generated at once (bounds memory per chunk)
SPECIES = {"nwb": "Macaca mulatta", "alf": "Mus musculus", "visual": "Mus musculus"}
TASKS = {"nwb": "sim_reach", "alf": "sim_decision", "visual": "sim_natural_scenes"}
FORMAT_CODE = {"nwb": 1, "alf": 2, "visual": 3, "images": 4, "bench": 5}
# Namespace of the deterministic NWB identifiers and ONE ids (version-3 UUIDs: ONE accepts only versions 3 and 4)
ID_NAMESPACE = uuid.UUID("6f1c2a7e-3b0d-4e59-9a51-5d1f0c8b7e21")
START_DATE = date(2024, 1, 1)
U_MAX = 1.0 - 2.0**-20  # spike offsets within a step stay below 1 so ``cell + u`` never rounds up a cell


class SimConfig(BaseModel):
    """What to simulate. Defaults give a small demo (~10 sessions of 2 minutes) in a few seconds."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    nwb_subjects: int = Field(2, ge=0)
    nwb_sessions_per_subject: int = Field(2, ge=0)
    alf_subjects: int = Field(1, ge=0)
    alf_sessions_per_subject: int = Field(2, ge=0)
    visual_sessions: int = Field(1, ge=0)
    units_min: int = Field(40, ge=1)
    units_max: int = Field(80, ge=1)
    minutes: float = Field(2.0, gt=0)
    truth_bin_ms: float = Field(10.0, gt=0, le=100)
    latent_dim: int = Field(4, ge=1)
    rate_hz: tuple[float, float] = Field((2.0, 20.0), description="range of the units' baseline rates (uniform)")
    n_images: int = Field(32, ge=1)
    embedding_dim: int = Field(16, ge=1)
    image_repeats: int = Field(5, ge=1)
    write_images: bool = True
    write_truth: bool = True

    nwb_regions: list[str] = Field(default_factory=lambda: ["M1", "PMd"], min_length=1)
    alf_regions: list[str] = Field(default_factory=lambda: ["VISp", "CA1", "LP", "MOs"], min_length=1)
    visual_regions: list[str] = Field(default_factory=lambda: ["VISp", "VISl", "VISal", "VISam"], min_length=1)
    visual_latency_ms: list[float] = Field(default_factory=lambda: [40.0, 60.0, 80.0, 100.0])
    visual_gain: tuple[float, float] = (0.7, 1.5)  # first → last region, linear along the hierarchy
    response_ms: float = Field(150.0, gt=0)
    image_on_ms: float = Field(250.0, gt=0)
    image_off_ms: float = Field(250.0, ge=0)
    n_conditions: int = Field(8, ge=1)
    lab: str = "simlab"
    tvsd: bool = Field(False, description="also write a scaled-down TVSD DataLad dataset in tvsd/ (local out only)")
    pile: bool = Field(False, description="also write Neural Pile-style shards in pile/data/ (train and test)")

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.units_max < self.units_min:
            raise ValueError(f"units_max ({self.units_max}) must be >= units_min ({self.units_min})")
        if len(self.visual_latency_ms) != len(self.visual_regions):
            raise ValueError(
                f"visual_latency_ms has {len(self.visual_latency_ms)} values for {len(self.visual_regions)} "
                "visual_regions; give one latency per region"
            )
        for name in (*self.nwb_regions, *self.alf_regions, *self.visual_regions, self.lab):
            if not name or "/" in name or name.strip() != name:
                raise ValueError(f"{name!r} is not a usable region/lab name")
        return self


# ----------------------------------------------------------------------------------------------------------------
# Session plan and generative model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    fmt: FORMAT
    subject: str
    session_id: str
    regions: list[str]
    n_units: int
    key: tuple[int, ...]  # spawn key of this session's random streams
    rel_path: str  # recording path relative to the output root
    start: datetime
    alf_parts: tuple[str, str, str, str] | None = None  # lab, subject, date, number


def random_stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def plan_sessions(cfg: SimConfig) -> list[Spec]:
    specs: list[Spec] = []
    t0 = datetime(START_DATE.year, START_DATE.month, START_DATE.day, 9, 0, tzinfo=timezone.utc)

    def n_units(key: tuple[int, ...]) -> int:
        return int(random_stream(cfg.seed, *key, 0).integers(cfg.units_min, cfg.units_max + 1))

    for i in range(cfg.nwb_subjects):
        subject = f"monkey{i:02d}"
        for j in range(cfg.nwb_sessions_per_subject):
            key = (FORMAT_CODE["nwb"], i, j)
            sid = f"{subject}_s{j:02d}"
            specs.append(
                Spec(
                    "nwb",
                    subject,
                    sid,
                    list(cfg.nwb_regions),
                    n_units(key),
                    key,
                    f"nwb/sub-{subject}_ses-s{j:02d}.nwb",
                    t0 + timedelta(days=j),
                )
            )
    for i in range(cfg.alf_subjects):
        subject = f"mouse{i:02d}"
        for j in range(cfg.alf_sessions_per_subject):
            key = (FORMAT_CODE["alf"], i, j)
            day = (START_DATE + timedelta(days=j)).isoformat()
            parts = (cfg.lab, subject, day, "001")
            specs.append(
                Spec(
                    "alf",
                    subject,
                    f"{subject}_{day}_001_probe00",
                    list(cfg.alf_regions),
                    n_units(key),
                    key,
                    f"alf/{cfg.lab}/Subjects/{subject}/{day}/001/alf/probe00",
                    t0 + timedelta(days=j),
                    parts,
                )
            )
    for k in range(cfg.visual_sessions):
        subject = f"vismouse{k:02d}"
        key = (FORMAT_CODE["visual"], k, 0)
        specs.append(
            Spec(
                "visual",
                subject,
                f"{subject}_s00",
                list(cfg.visual_regions),
                n_units(key),
                key,
                f"visual/sub-{subject}_ses-s00.nwb",
                t0,
            )
        )
    return specs


def alf_rel(parts: tuple[str, str, str, str]) -> str:
    lab, subject, day, number = parts
    return f"{lab}/Subjects/{subject}/{day}/{number}"

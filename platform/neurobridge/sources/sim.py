"""Ground-truth simulator: multi-session, multi-subject, multi-region spiking recordings in the real raw formats.

Generative model (per session, time step ``dt = truth_bin_ms``):

* every region has a latent state of ``latent_dim`` dimensions following a stable linear dynamical system
  (2-D rotations at 1-3 Hz with decay, plus Gaussian noise); region ``r`` drives region ``r + 1`` through a small
  random coupling matrix. In trial-structured sessions the latents are reset to a condition-dependent state at
  each trial's go time, so trial-aligned activity is structured and predictable from other neurons;
* units (count random per session) belong to one region and load only on that region's latents:
  ``log rate = log(U(2, 20) Hz) + C x (+ stimulus drive)``, clipped to 200 Hz. There is no private slow noise:
  the only private variability is Poisson;
* visual sessions add a stimulus-locked drive ``gain_r · W_r @ embedding`` (plus a non-specific onset response)
  starting at each region's latency and lasting ``response_ms``; the gain grows along the hierarchy;
* spikes are exact inhomogeneous Poisson for the piecewise-constant rates: counts per step ~ Poisson(rate·dt),
  times uniform within the step. Generation runs in time chunks, so memory is bounded by the chunk size plus the
  final spike arrays.

Formats written under ``out`` (a local path or any fsspec URI; remote outputs are built in a local temp dir and
uploaded with ``fs.put``): NWB (NLB/DANDI style) in ``nwb/``, ALF sessions plus ONE cache tables in ``alf/``,
Allen-style visual NWB files and the image set in ``visual/``, true rates in ``truth/<session_id>/`` and an index
``simulation.json`` (written last: its presence marks a complete simulation).
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurobridge.storage import filesystem, is_local_fs, write_json_atomic

FORMAT = Literal["nwb", "alf", "visual"]
SCHEMA_VERSION = 1
MAX_RATE_HZ = 200.0
LOADING_SD = 1.0  # s.d. of C x per unit for a unit-variance latent
INIT_RMS = 1.5  # r.m.s. per latent dimension of the condition-dependent trial start state
CHUNK_CELLS = 2_000_000  # units × steps generated at once (bounds memory per chunk)
SPECIES = {"nwb": "Macaca mulatta", "alf": "Mus musculus", "visual": "Mus musculus"}
TASKS = {"nwb": "sim_reach", "alf": "sim_decision", "visual": "sim_natural_scenes"}
_FORMAT_CODE = {"nwb": 1, "alf": 2, "visual": 3, "images": 4, "bench": 5}
# Namespace of the deterministic NWB identifiers and ONE ids (version-3 UUIDs: ONE accepts only versions 3 and 4)
_ID_NAMESPACE = uuid.UUID("6f1c2a7e-3b0d-4e59-9a51-5d1f0c8b7e21")
_START_DATE = date(2024, 1, 1)
_U_MAX = 1.0 - 2.0**-20  # spike offsets within a step stay below 1 so ``cell + u`` never rounds up a cell


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
class _Spec:
    fmt: FORMAT
    subject: str
    session_id: str
    regions: list[str]
    n_units: int
    key: tuple[int, ...]  # spawn key of this session's random streams
    rel_path: str  # recording path relative to the output root
    start: datetime
    alf_parts: tuple[str, str, str, str] | None = None  # lab, subject, date, number


@dataclass
class _Model:
    dt: float
    n_steps: int
    A: np.ndarray  # [D, D] latent transition (all regions stacked)
    noise_sd: np.ndarray  # [D]
    x0: np.ndarray  # [D] initial latent state
    C: np.ndarray  # [U, D] loadings, zero outside each unit's region
    log_base: np.ndarray  # [U]
    unit_region: np.ndarray  # [U] region index
    reset_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # increasing
    reset_states: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [K, D]
    stim_units: np.ndarray | None = None  # [U, n_images] log-rate drive at the response peak
    stim_image: np.ndarray | None = None  # [R, n_steps] int32 image shown (−1: none) for each region's response
    stim_profile: np.ndarray | None = None  # [R, n_steps] float32 response profile (0..1)
    behavior_readout: np.ndarray | None = None  # [K, D] behaviour = readout of the latents (decodable by design)
    behavior_out: list = field(default_factory=list)  # filled by _generate: [steps, K] chunks


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _plan(cfg: SimConfig) -> list[_Spec]:
    specs: list[_Spec] = []
    t0 = datetime(_START_DATE.year, _START_DATE.month, _START_DATE.day, 9, 0, tzinfo=timezone.utc)

    def n_units(key: tuple[int, ...]) -> int:
        return int(_rng(cfg.seed, *key, 0).integers(cfg.units_min, cfg.units_max + 1))

    for i in range(cfg.nwb_subjects):
        subject = f"monkey{i:02d}"
        for j in range(cfg.nwb_sessions_per_subject):
            key = (_FORMAT_CODE["nwb"], i, j)
            sid = f"{subject}_s{j:02d}"
            specs.append(
                _Spec(
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
            key = (_FORMAT_CODE["alf"], i, j)
            day = (_START_DATE + timedelta(days=j)).isoformat()
            parts = (cfg.lab, subject, day, "001")
            specs.append(
                _Spec(
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
        key = (_FORMAT_CODE["visual"], k, 0)
        specs.append(
            _Spec(
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


def _alf_rel(parts: tuple[str, str, str, str]) -> str:
    lab, subject, day, number = parts
    return f"{lab}/Subjects/{subject}/{day}/{number}"


def _assign_regions(rng: np.random.Generator, n_units: int, n_regions: int) -> np.ndarray:
    """Each region gets at least one unit when there are enough; the rest follow random proportions."""
    first = np.arange(min(n_units, n_regions))
    p = rng.dirichlet(np.full(n_regions, 4.0))
    rest = rng.choice(n_regions, size=n_units - len(first), p=p)
    return rng.permutation(np.concatenate([first, rest])).astype(np.int64)


def _dynamics(rng: np.random.Generator, n_regions: int, d: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Stacked transition matrix (rotations with decay per region, coupling r → r+1) and per-dim noise s.d."""
    D = n_regions * d
    A = np.zeros((D, D))
    noise = np.zeros(D)
    stationary_sd = 0.7
    for r in range(n_regions):
        tau = rng.uniform(0.5, 1.0)
        rho = np.exp(-dt / tau)
        block = np.zeros((d, d))
        for b in range(0, d - 1, 2):
            omega = 2 * np.pi * rng.uniform(1.0, 3.0) * dt
            c, s = np.cos(omega), np.sin(omega)
            block[b : b + 2, b : b + 2] = [[c, -s], [s, c]]
        if d % 2:
            block[d - 1, d - 1] = 1.0
        sl = slice(r * d, (r + 1) * d)
        A[sl, sl] = rho * block
        noise[sl] = stationary_sd * np.sqrt(1 - rho**2)
        if r > 0:  # the previous region drives this one; steady-state gain ≈ 0.5 whatever the time constant
            coupling = rng.standard_normal((d, d)) / np.sqrt(d)
            A[sl, (r - 1) * d : r * d] = 0.5 * (1 - rho) * coupling
    return A, noise


def _build_model(cfg: SimConfig, spec: _Spec, duration: float, *, trials_reset=None, visual=None) -> _Model:
    """Random parameters of one session (``trials_reset``: (steps, condition) of the latent resets)."""
    rng = _rng(cfg.seed, *spec.key, 1)
    dt = cfg.truth_bin_ms / 1000.0
    n_steps = int(np.ceil(duration / dt - 1e-9))
    R, d, U = len(spec.regions), cfg.latent_dim, spec.n_units
    A, noise_sd = _dynamics(rng, R, d, dt)
    unit_region = _assign_regions(rng, U, R)
    C = np.zeros((U, R * d))
    loading_sd = LOADING_SD / np.sqrt(d)
    for r in range(R):
        members = np.flatnonzero(unit_region == r)
        C[members, r * d : (r + 1) * d] = rng.normal(0.0, loading_sd, size=(len(members), d))
    log_base = np.log(rng.uniform(cfg.rate_hz[0], cfg.rate_hz[1], size=U))
    model = _Model(dt, n_steps, A, noise_sd, rng.normal(0, 0.7, R * d), C, log_base, unit_region)
    if trials_reset is not None:
        steps, conditions = trials_reset
        init = rng.normal(size=(cfg.n_conditions, R * d))
        init *= INIT_RMS * np.sqrt(d) / np.linalg.norm(init.reshape(cfg.n_conditions, R, d), axis=2).repeat(d, axis=1)
        model.reset_steps = np.asarray(steps, dtype=np.int64)
        model.reset_states = init[np.asarray(conditions, dtype=np.int64)]
    if visual is not None:
        embeddings, onsets, frames = visual
        gains = np.linspace(cfg.visual_gain[0], cfg.visual_gain[1], R) if R > 1 else np.array([cfg.visual_gain[1]])
        W = rng.standard_normal((U, embeddings.shape[1]))
        onset = rng.normal(0.3, 0.3, size=U)
        model.stim_units = gains[unit_region][:, None] * (W @ embeddings.T.astype(np.float64) + onset[:, None])
        image = np.full((R, n_steps), -1, dtype=np.int32)
        profile = np.zeros((R, n_steps), dtype=np.float32)
        n_resp = max(1, int(round(cfg.response_ms / cfg.truth_bin_ms)))
        shape = np.sin(np.pi * (np.arange(n_resp) + 0.5) / n_resp).astype(np.float32)
        for r in range(R):
            first = np.floor((onsets + cfg.visual_latency_ms[r] / 1000.0) / dt + 1e-9).astype(np.int64)
            steps = first[:, None] + np.arange(n_resp)[None, :]
            ok = steps < n_steps
            image[r, steps[ok]] = np.broadcast_to(frames[:, None], steps.shape)[ok]
            profile[r, steps[ok]] = np.broadcast_to(shape[None, :], steps.shape)[ok]
        model.stim_image, model.stim_profile = image, profile
    return model


def _latents(model: _Model, a: int, b: int, x: np.ndarray, rng: np.random.Generator, k: int):
    """Latent states for steps ``a:b`` from state ``x`` (after step ``a - 1``); ``k`` = next reset index."""
    n = b - a
    noise = rng.standard_normal((n, len(x))) * model.noise_sd
    X = np.empty((n, len(x)))
    At = model.A.T.copy()
    resets = model.reset_steps
    next_reset = resets[k] if k < len(resets) else -1
    for t in range(n):
        if a + t == next_reset:
            x = model.reset_states[k]
            k += 1
            next_reset = resets[k] if k < len(resets) else -1
        else:
            x = x @ At + noise[t]
        X[t] = x
    return X, x, k


def _chunk_rates(model: _Model, a: int, X: np.ndarray) -> np.ndarray:
    """True rates (Hz, float32 [units, steps]) for the chunk starting at step ``a`` with latents ``X``."""
    log_rate = model.C.astype(np.float32) @ X.T.astype(np.float32)
    log_rate += model.log_base.astype(np.float32)[:, None]
    if model.stim_units is not None:
        b = a + X.shape[0]
        for r in range(model.stim_image.shape[0]):
            members = np.flatnonzero(model.unit_region == r)
            img = model.stim_image[r, a:b]
            cols = np.flatnonzero(img >= 0)
            if len(members) and len(cols):
                drive = model.stim_units[np.ix_(members, img[cols])] * model.stim_profile[r, a:b][cols]
                log_rate[np.ix_(members, cols)] += drive
    np.exp(log_rate, out=log_rate)
    return np.minimum(log_rate, np.float32(MAX_RATE_HZ), out=log_rate)


def _generate(model: _Model, seed: int, key: tuple[int, ...], order: str, truth_path: Path | None):
    """Run the model and draw spikes chunk by chunk.

    ``order="unit"`` returns ``(times, counts_per_unit)`` with times grouped by unit and sorted within each unit
    (NWB's ragged layout); ``order="time"`` returns ``(times, units)`` sorted by time (ALF). The true rates go to
    ``truth_path`` (float32 [units, steps], memory-mapped) when given.
    """
    U, T = model.C.shape[0], model.n_steps
    lat_rng, spk_rng = _rng(seed, *key, 2), _rng(seed, *key, 3)
    chunk = max(64, CHUNK_CELLS // max(U, 1))
    truth = None
    if truth_path is not None:
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        truth = np.lib.format.open_memmap(truth_path, mode="w+", dtype=np.float32, shape=(U, T))
    x, k = model.x0.copy(), 0
    parts_t: list[np.ndarray] = []
    parts_u: list[np.ndarray] = []  # per chunk: unit of each spike (time order) or counts per unit (unit order)
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        X, x, k = _latents(model, a, b, x, lat_rng, k)
        if model.behavior_readout is not None:
            model.behavior_out.append((X @ model.behavior_readout.T).astype(np.float32))
        rates = _chunk_rates(model, a, X)
        if truth is not None:
            truth[:, a:b] = rates
        counts = spk_rng.poisson(rates * model.dt)
        n = b - a
        flat = counts.ravel() if order == "unit" else counts.T.ravel()
        cells = np.flatnonzero(flat)
        cell = np.repeat(cells, flat[cells])
        u = np.minimum(spk_rng.random(len(cell)), _U_MAX)
        if order == "unit":  # cell = unit * n + step: sorting cell + u orders spikes within each unit
            key_ = np.sort(cell + u)
            cell = key_.astype(np.int64)
            unit = cell // n
            parts_t.append((a + (key_ - unit * n)) * model.dt)
            parts_u.append(counts.sum(axis=1))
        else:  # cell = step * U + unit: sort by time within the chunk (chunks are already in time order)
            t_local = cell // U + u
            perm = np.argsort(t_local, kind="stable")
            parts_t.append((a + t_local[perm]) * model.dt)
            parts_u.append((cell % U)[perm])
        del counts, rates, flat
    if truth is not None:
        truth.flush()
        del truth
    if order == "time":
        times = np.concatenate(parts_t) if parts_t else np.zeros(0)
        units = np.concatenate(parts_u).astype(np.int64) if parts_u else np.zeros(0, np.int64)
        return times, units
    per_chunk = np.array(parts_u, dtype=np.int64).reshape(len(parts_u), U)
    totals = per_chunk.sum(axis=0)
    unit_start = np.concatenate([[0], np.cumsum(totals)[:-1]])
    before = np.cumsum(per_chunk, axis=0) - per_chunk  # spikes of each unit in earlier chunks
    times = np.empty(int(totals.sum()), dtype=np.float64)
    for c, part in enumerate(parts_t):
        chunk_start = np.concatenate([[0], np.cumsum(per_chunk[c])[:-1]])
        dest = np.repeat(unit_start + before[c] - chunk_start, per_chunk[c]) + np.arange(len(part))
        times[dest] = part
        parts_t[c] = None  # free as we go
    return times, totals


# ----------------------------------------------------------------------------------------------------------------
# Events: trials and stimulus presentations
# ----------------------------------------------------------------------------------------------------------------


def _nlb_trials(rng: np.random.Generator, duration: float, n_conditions: int) -> dict[str, np.ndarray]:
    """~700 ms trials with ~100 ms gaps covering the session; go (latent reset) 250 ms before move onset."""
    starts, t = [], 0.1
    while True:
        length = rng.uniform(0.65, 0.75)
        if t + length > duration - 0.05:
            break
        starts.append((t, t + length))
        t += length + rng.uniform(0.08, 0.12)
    n = len(starts)
    se = np.array(starts, dtype=np.float64).reshape(n, 2)
    move = se[:, 0] + rng.uniform(0.2, 0.3, n)
    go = np.maximum(se[:, 0], move - 0.25)
    split = np.empty(n, dtype="<U5")
    order = rng.permutation(n)
    n_train, n_val = int(round(0.8 * n)), int(round(0.1 * n))
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    return {
        "start_time": se[:, 0],
        "stop_time": se[:, 1],
        "move_onset_time": move,
        "go_time": go,
        "condition": rng.integers(0, n_conditions, n),
        "split": split,
    }


def _ibl_trials(rng: np.random.Generator, duration: float, n_conditions: int) -> dict[str, np.ndarray]:
    """Trials ~2.5 s apart; latents reset at stimulus onset; choice follows the condition's side."""
    stim_on = []
    t = 1.0 + rng.uniform(0.0, 0.2)
    while t + 1.6 < duration:
        stim_on.append(t)
        t += 2.5 + rng.uniform(-0.1, 0.1)
    stim = np.array(stim_on, dtype=np.float64)
    n = len(stim)
    condition = rng.integers(0, n_conditions, n)
    side = np.where(condition < max(1, n_conditions // 2), -1, 1)
    correct = rng.random(n) < 0.8
    choice = np.where(correct, side, -side).astype(np.int64)
    feedback = stim + rng.uniform(0.2, 0.8, n)
    intervals = np.stack([stim - rng.uniform(0.3, 0.45, n), feedback + rng.uniform(0.4, 0.6, n)], axis=1)
    return {
        "stimOn_times": stim,
        "intervals": intervals,
        "choice": choice,
        "feedbackType": np.where(correct, 1, -1).astype(np.int64),
        "feedback_times": feedback,
        "condition": condition,
    }


def _presentations(rng: np.random.Generator, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image ``image_repeats`` times, every repeat in a fresh shuffled order; starts at 1 s."""
    frames = np.concatenate([rng.permutation(cfg.n_images) for _ in range(cfg.image_repeats)]).astype(np.int64)
    period = (cfg.image_on_ms + cfg.image_off_ms) / 1000.0
    start = 1.0 + period * np.arange(len(frames))
    return start, start + cfg.image_on_ms / 1000.0, frames


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def image_embeddings(cfg: SimConfig) -> np.ndarray:
    """The known image embeddings [n_images, embedding_dim] (float32, unit norm), deterministic by seed."""
    e = _rng(cfg.seed, _FORMAT_CODE["images"]).standard_normal((cfg.n_images, cfg.embedding_dim))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def render_image(embedding: np.ndarray, size: int = 32) -> np.ndarray:
    """A small RGB image (uint8 [size, size, 3]) rendered linearly from an embedding: a sum of coloured
    gratings, one per embedding dimension, so image content and embedding carry the same information."""
    dim = len(embedding)
    basis_rng = np.random.default_rng(12345)  # fixed gratings and colours, shared by every image
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = basis_rng.uniform(0, np.pi, dim)
    freq = basis_rng.uniform(1.0, 4.0, dim)
    phase = basis_rng.uniform(0, 2 * np.pi, dim)
    colour = basis_rng.normal(size=(dim, 3))
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    gratings = np.cos(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])  # [dim, H, W]
    img = np.einsum("k,khw,kc->hwc", np.asarray(embedding, dtype=np.float64), gratings, colour)
    return np.clip(128 + 127 * np.tanh(1.5 * img), 0, 255).astype(np.uint8)


def _write_images(root: Path, cfg: SimConfig, embeddings: np.ndarray) -> None:
    folder = root / "visual" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", embeddings)
    if cfg.write_images:
        from PIL import Image

        for i, e in enumerate(embeddings):
            Image.fromarray(render_image(e)).save(folder / f"frame_{i:03d}.png")


# ----------------------------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------------------------


def _write_nwb(
    path: Path,
    spec: _Spec,
    species: str,
    unit_ids: np.ndarray,
    unit_region: np.ndarray,
    times: np.ndarray,
    counts: np.ndarray,
    heldout: np.ndarray,
    rng: np.random.Generator,
    trials: dict | None = None,
    presentations: tuple | None = None,
    behavior: np.ndarray | None = None,
    dt: float = 0.01,
) -> None:
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    nwb = NWBFile(
        session_description=f"NeuroBridge simulation ({TASKS[spec.fmt]})",
        identifier=str(uuid.uuid3(_ID_NAMESPACE, f"{spec.key}/{spec.session_id}")),
        session_start_time=spec.start,
        file_create_date=spec.start,
        session_id=spec.session_id,
        subject=Subject(subject_id=spec.subject, species=species, description="simulated subject"),
        institution="NeuroBridge simulator",
    )
    device = nwb.create_device(name="probe" if spec.fmt == "visual" else "array", description="simulated")
    per_region = 16
    for region in spec.regions:
        group = nwb.create_electrode_group(
            name=f"group_{region}", description=f"electrodes in {region}", location=region, device=device
        )
        for _ in range(per_region):
            nwb.add_electrode(group=group, location=region)
    rows = unit_region * per_region + rng.integers(0, per_region, len(unit_region))
    spike_times = VectorData(name="spike_times", description="spike times (s)", data=times)
    columns = [
        spike_times,
        VectorIndex(name="spike_times_index", data=np.cumsum(counts).astype(np.int64), target=spike_times),
    ]
    electrodes = DynamicTableRegion(
        name="electrodes", description="electrode of each unit", data=rows.astype(np.int64), table=nwb.electrodes
    )
    columns += [
        electrodes,
        VectorIndex(name="electrodes_index", data=np.arange(1, len(rows) + 1, dtype=np.int64), target=electrodes),
        VectorData(name="heldout", description="held-out unit for co-smoothing", data=heldout.astype(bool)),
    ]
    nwb.units = Units(name="units", description="simulated units", id=unit_ids.astype(np.int64), columns=columns)
    if trials is not None:
        nwb.add_trial_column(name="move_onset_time", description="movement onset (s)")
        nwb.add_trial_column(name="split", description="train / val / test")
        for i in range(len(trials["start_time"])):
            nwb.add_trial(
                start_time=float(trials["start_time"][i]),
                stop_time=float(trials["stop_time"][i]),
                move_onset_time=float(trials["move_onset_time"][i]),
                split=str(trials["split"][i]),
            )
    if presentations is not None:
        table = TimeIntervals(name="natural_scenes_presentations", description="natural scene presentations")
        table.add_column(name="frame", description="image index")
        for s, e, f in zip(*presentations, strict=True):
            table.add_interval(start_time=float(s), stop_time=float(e), frame=int(f))
        nwb.add_time_intervals(table)
    if behavior is not None:  # NLB layout: processing/behavior/hand_vel with explicit timestamps
        from pynwb import TimeSeries

        module = nwb.create_processing_module(name="behavior", description="simulated hand kinematics")
        stamps = (np.arange(len(behavior)) + 0.5) * dt
        module.add(
            TimeSeries(
                name="hand_vel",
                data=behavior,
                timestamps=stamps,
                unit="a.u.",
                description="hand velocity: a fixed linear readout of the latent state",
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def _write_alf(
    folder: Path,
    unit_region: np.ndarray,
    regions: list[str],
    times: np.ndarray,
    units: np.ndarray,
    rng: np.random.Generator,
    trials: dict,
) -> None:
    """``folder`` is the probe collection (``<session>/alf/probe00``); trials go to its parent ``alf``."""
    folder.mkdir(parents=True, exist_ok=True)
    U, R = len(unit_region), len(regions)
    np.save(folder / "spikes.times.npy", times.astype(np.float64))
    np.save(folder / "spikes.clusters.npy", units.astype(np.int64))
    np.save(folder / "clusters.brainLocationAcronyms_ccf_2017.npy", np.array(regions)[unit_region].astype(str))
    label = np.where(rng.random(U) < 0.7, 1.0, rng.choice([1 / 3, 2 / 3], U))
    np.save(folder / "clusters.label.npy", label.astype(np.float64))
    band = 3800.0 / R  # µm along the probe; the first region is the most superficial (largest depth)
    depths = 200.0 + (R - 1 - unit_region + rng.random(U)) * band
    np.save(folder / "clusters.depths.npy", depths.astype(np.float64))
    alf = folder.parent
    for name in ("stimOn_times", "intervals", "choice", "feedbackType", "feedback_times"):
        np.save(alf / f"trials.{name}.npy", trials[name])


def _write_wheel(folder: Path, velocity: np.ndarray, dt: float, rng: np.random.Generator, trials: dict) -> None:
    """IBL-style ``wheel.position``/``wheel.timestamps`` (irregular samples) and the trial contrasts."""
    alf = folder.parent
    t = (np.arange(len(velocity)) + 0.5) * dt
    keep = np.sort(rng.choice(len(t), size=max(2, len(t) // 2), replace=False))  # encoder-like irregular sampling
    position = np.cumsum(velocity.astype(np.float64)) * dt
    np.save(alf / "wheel.position.npy", position[keep])
    np.save(alf / "wheel.timestamps.npy", t[keep])
    n = len(trials["stimOn_times"])
    contrast = rng.choice([0.0, 0.0625, 0.125, 0.25, 1.0], n)
    left = trials["condition"] < np.median(trials["condition"])
    np.save(alf / "trials.contrastLeft.npy", np.where(left, contrast, np.nan))
    np.save(alf / "trials.contrastRight.npy", np.where(left, np.nan, contrast))
    np.save(alf / "trials.probabilityLeft.npy", np.full(n, 0.5))


def _write_truth(
    root: Path, spec: _Spec, unit_ids: np.ndarray, regions: list[str], unit_region: np.ndarray, dt_ms: float
) -> None:
    folder = root / "truth" / spec.session_id
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "unit_ids": [int(u) for u in unit_ids],
        "regions": [regions[r] for r in unit_region],
        "bin_ms": dt_ms,
        "t0": 0.0,
        "format": spec.fmt,
        "path": spec.rel_path,
    }
    (folder / "units.json").write_text(json.dumps(info, indent=1))


def _simulate_one(
    root: Path, cfg: SimConfig, spec: _Spec, embeddings: np.ndarray | None, write_truth: bool
) -> dict[str, Any]:
    """Generate and write one session under the local directory ``root``; returns its index record."""
    ev_rng = _rng(cfg.seed, *spec.key, 4)
    duration = cfg.minutes * 60.0
    dt = cfg.truth_bin_ms / 1000.0
    record: dict[str, Any] = {}
    if spec.fmt == "nwb":
        trials = _nlb_trials(ev_rng, duration, cfg.n_conditions)
        steps = np.floor(trials["go_time"] / dt + 1e-9).astype(np.int64)
        model = _build_model(cfg, spec, duration, trials_reset=(steps, trials["condition"]))
        record["n_trials"] = len(steps)
    elif spec.fmt == "alf":
        trials = _ibl_trials(ev_rng, duration, cfg.n_conditions)
        steps = np.floor(trials["stimOn_times"] / dt + 1e-9).astype(np.int64)
        model = _build_model(cfg, spec, duration, trials_reset=(steps, trials["condition"]))
        record["n_trials"] = len(steps)
    else:
        start, stop, frames = _presentations(ev_rng, cfg)
        duration = max(duration, float(stop[-1]) + 1.0)
        model = _build_model(cfg, spec, duration, visual=(embeddings, start, frames))
        record["n_presentations"] = len(frames)
    truth_path = root / "truth" / spec.session_id / "rates.npy" if write_truth else None
    if spec.fmt in ("nwb", "alf"):  # hand velocity (2-D) or wheel velocity (1-D) read out from the latents
        readout = _rng(cfg.seed, *spec.key, 5).normal(size=(2 if spec.fmt == "nwb" else 1, model.A.shape[0]))
        model.behavior_readout = readout / np.linalg.norm(readout, axis=1, keepdims=True)
    U = spec.n_units
    if spec.fmt == "alf":
        times, units = _generate(model, cfg.seed, spec.key, "time", truth_path)
        unit_ids = np.arange(U)
        _write_alf(root / spec.rel_path, model.unit_region, spec.regions, times, units, ev_rng, trials)
        _write_wheel(root / spec.rel_path, np.concatenate(model.behavior_out)[:, 0], dt, ev_rng, trials)
    else:
        times, counts = _generate(model, cfg.seed, spec.key, "unit", truth_path)
        if spec.fmt == "visual":  # Allen-style large unit ids
            unit_ids = np.sort(ev_rng.choice(np.arange(950_000_000, 951_000_000), U, replace=False))
        else:
            unit_ids = np.arange(U)
        heldout = np.zeros(U, dtype=bool)
        heldout[ev_rng.permutation(U)[: int(round(0.25 * U))]] = True
        _write_nwb(
            root / spec.rel_path,
            spec,
            SPECIES[spec.fmt],
            unit_ids,
            model.unit_region,
            times,
            counts,
            heldout,
            ev_rng,
            trials=trials if spec.fmt == "nwb" else None,
            presentations=(start, stop, frames) if spec.fmt == "visual" else None,
            behavior=np.concatenate(model.behavior_out) if model.behavior_out else None,
            dt=dt,
        )
    if write_truth:
        _write_truth(root, spec, unit_ids, spec.regions, model.unit_region, cfg.truth_bin_ms)
    return {
        "session_id": spec.session_id,
        "subject": spec.subject,
        "species": SPECIES[spec.fmt],
        "task": TASKS[spec.fmt],
        "format": spec.fmt,
        "path": spec.rel_path,
        "regions": spec.regions,
        "n_units": U,
        "n_spikes": int(len(times)),
        "duration_s": model.n_steps * dt,
        "truth": f"truth/{spec.session_id}" if write_truth else None,
        **record,
    }


# ----------------------------------------------------------------------------------------------------------------
# ONE cache
# ----------------------------------------------------------------------------------------------------------------


def build_one_cache(alf_root: Path) -> dict[str, str]:
    """Index an ALF tree (``<lab>/Subjects/<subject>/<date>/<number>/...``) into ONE's ``sessions.pqt`` and
    ``datasets.pqt`` at ``alf_root`` so that ``ONE(mode='local', cache_dir=alf_root)`` finds it.

    ``make_parquet_db`` derives its UUIDs from a time-based namespace (a new eid on every run): the ids are
    re-derived here from the session and dataset paths, so they are stable across runs. It also stores an empty
    string as the hash, which makes ONE md5 every file on every load (iblutil allocates a 256 MB buffer per file)
    and then log "local md5 mismatch"; a null hash skips that check. Returns {session path: eid}.
    """
    import pandas as pd
    from iblutil.io import parquet
    from one.alf.cache import make_parquet_db

    fn_ses, fn_dsets = make_parquet_db(alf_root, hash_ids=True, hash_files=False)
    sessions, meta_s = parquet.load(fn_ses)
    datasets, meta_d = parquet.load(fn_dsets)
    if sessions.empty:
        return {}
    if "id" in sessions.columns:
        sessions = sessions.set_index("id")
    if "eid" in datasets.columns:
        datasets = datasets.set_index(["eid", "id"])
    rel = {
        old: f"{row.lab}/Subjects/{row.subject}/{row.date}/{int(row.number):03d}"
        if row.lab
        else f"{row.subject}/{row.date}/{int(row.number):03d}"
        for old, row in sessions.iterrows()
    }
    new_eid = {old: str(uuid.uuid3(_ID_NAMESPACE, path)) for old, path in rel.items()}
    sessions.index = sessions.index.map(new_eid).rename("id")
    old_eids = datasets.index.get_level_values(0)
    ds_ids = [
        str(uuid.uuid3(_ID_NAMESPACE, f"{rel[e]}/{p}")) for e, p in zip(old_eids, datasets["rel_path"], strict=True)
    ]
    datasets.index = pd.MultiIndex.from_arrays([old_eids.map(new_eid), ds_ids], names=["eid", "id"])
    datasets["hash"] = None
    datasets["default_revision"] = True  # one revision per dataset: silences ONE's "no default revision" warning
    parquet.save(fn_ses, sessions.sort_index(), meta_s)
    parquet.save(fn_dsets, datasets.sort_index(), meta_d)
    return {rel[old]: new_eid[old] for old in rel}


# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------


def _publish(local: Path, fs, dest: str) -> None:
    """Upload the contents of the local folder ``local`` into ``dest`` on ``fs``."""
    fs.put(str(local).rstrip("/") + "/", dest.rstrip("/") + "/", recursive=True)


def simulate(out: str, cfg: SimConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Write every session of ``cfg`` under ``out`` (local path or fsspec URI); returns the index, which is also
    written to ``out/simulation.json`` last."""
    cfg = cfg or SimConfig()
    fs, path = filesystem(out)
    local_fs = is_local_fs(fs)
    tmp = None if local_fs else tempfile.mkdtemp(prefix="nb-sim-")
    root = Path(path) if local_fs else Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        specs = _plan(cfg)
        embeddings = image_embeddings(cfg) if cfg.visual_sessions else None
        if embeddings is not None:
            _write_images(root, cfg, embeddings)
        sessions = []
        with _progress(progress) as bar:
            task = bar.add_task("simulating", total=len(specs)) if bar else None
            for spec in specs:
                if bar:
                    bar.update(task, description=f"{spec.fmt} {spec.session_id}")
                sessions.append(_simulate_one(root, cfg, spec, embeddings, cfg.write_truth))
                if bar:
                    bar.advance(task)
        if any(s.fmt == "alf" for s in specs):
            eids = build_one_cache(root / "alf")
            for rec, spec in zip(sessions, specs, strict=True):
                if spec.alf_parts is not None:
                    rec["eid"] = eids.get(_alf_rel(spec.alf_parts))
                    rec["collection"] = "alf/probe00"
        tvsd = _simulate_tvsd(root, cfg, local_fs) if cfg.tvsd else None
        if cfg.pile:
            from neurobridge.sources.pile_sim import write_demo_shards

            shards = write_demo_shards(str(root / "pile"), seed=cfg.seed)  # names hold data/train-*, data/test-*
        index = {
            "schema_version": SCHEMA_VERSION,
            "config": cfg.model_dump(mode="json"),
            "sessions": sessions,
            "images": None
            if embeddings is None
            else {
                "n_images": cfg.n_images,
                "embedding_dim": cfg.embedding_dim,
                "embeddings": "visual/images/embeddings.npy",
                "frames": "visual/images/frame_{:03d}.png" if cfg.write_images else None,
                "stimulus_ids": [f"frame_{i:03d}" for i in range(cfg.n_images)],
            },
            **({"tvsd": tvsd} if cfg.tvsd else {}),
            **({"pile": {"shards": sorted(f"pile/{n}" for n in shards)}} if cfg.pile else {}),
        }
        if tmp is not None:
            _publish(root, fs, path)
        write_json_atomic(fs, posixpath.join(path.rstrip("/"), "simulation.json"), index)
        return index
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def simulate_session_file(
    path: str,
    fmt: Literal["nwb", "alf"],
    n_units: int,
    minutes: float,
    seed: int,
    write_truth: bool = False,
    cfg: SimConfig | None = None,
) -> dict[str, Any]:
    """One (big) session for benchmarks.

    ``fmt="nwb"``: ``path`` is the ``.nwb`` file to write (or a folder, which gets ``sub-bench_ses-sNN.nwb``).
    ``fmt="alf"``: ``path`` is the ONE cache root; the session goes to ``<lab>/Subjects/bench/<date>/001`` with
    the spikes in collection ``alf/probe00`` and the cache tables at the root. Truth (optional) goes to
    ``truth/<session_id>/`` beside the file (nwb) or under the root (alf). Returns the session record, with the
    recording's URI in ``uri`` and the wall time in ``seconds``.
    """
    if fmt not in ("nwb", "alf"):
        raise ValueError(f"fmt must be 'nwb' or 'alf', not {fmt!r}")
    tic = time.perf_counter()
    base = SimConfig.model_validate({**(cfg or SimConfig()).model_dump(), "seed": seed, "minutes": minutes})
    fs, target = filesystem(path)
    is_file = fmt == "nwb" and target.endswith(".nwb")
    out_dir = posixpath.dirname(target) if is_file else target
    key = (_FORMAT_CODE["bench"], _FORMAT_CODE[fmt], n_units)
    start = datetime(_START_DATE.year, _START_DATE.month, _START_DATE.day, 9, 0, tzinfo=timezone.utc)
    if fmt == "nwb":
        name = posixpath.basename(target) if is_file else f"sub-bench_ses-s{seed:02d}.nwb"
        spec = _Spec("nwb", "bench", f"bench_s{seed:02d}", list(base.nwb_regions), n_units, key, name, start)
    else:
        day = _START_DATE.isoformat()
        spec = _Spec(
            "alf",
            "bench",
            f"bench_{day}_001_probe00",
            list(base.alf_regions),
            n_units,
            key,
            f"{base.lab}/Subjects/bench/{day}/001/alf/probe00",
            start,
            (base.lab, "bench", day, "001"),
        )
    local_fs = is_local_fs(fs)
    tmp = None if local_fs else tempfile.mkdtemp(prefix="nb-sim-")
    root = Path(out_dir) if local_fs else Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        record = _simulate_one(root, base, spec, None, write_truth)
        if fmt == "alf":
            eids = build_one_cache(root)
            record["eid"] = eids.get(_alf_rel(spec.alf_parts))
            record["collection"] = "alf/probe00"
        if tmp is not None:
            _publish(root, fs, out_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    record["uri"] = path if is_file else posixpath.join(path.rstrip("/"), spec.rel_path)
    record["seconds"] = round(time.perf_counter() - tic, 3)
    return record


def _simulate_tvsd(root: Path, cfg: SimConfig, local: bool) -> dict[str, Any]:
    """The TVSD-style DataLad dataset in ``<root>/tvsd`` (see sim_tvsd); DataLad cannot live on object stores."""
    if not local:
        return {"skipped": "a DataLad dataset needs a local path; simulate to a local out for tvsd"}
    from neurobridge.sources.sim_tvsd import TvsdSimConfig, simulate_tvsd

    return simulate_tvsd(root / "tvsd", TvsdSimConfig(seed=cfg.seed))


class _progress:  # noqa: N801 - a context manager like rich's Progress, or nothing when disabled
    def __init__(self, enabled: bool):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self._bar

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


__all__ = ["SimConfig", "build_one_cache", "image_embeddings", "render_image", "simulate", "simulate_session_file"]


# Allen Visual Coding look-alikes (peak channels, quality metrics, blanks, the EcephysProjectCache tree) live in
# sim_allen.py, which builds on this module; resolved lazily here so the simulator has one entry point.
def __getattr__(name: str):
    if name in ("AllenSimConfig", "simulate_allen_cache", "write_allen_session"):
        from neurobridge.sources import sim_allen

        return getattr(sim_allen, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

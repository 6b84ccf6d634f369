"""The generative model: region latents with linear dynamics and coupling, unit loadings, Poisson spikes.

Generation runs in time chunks, so memory is bounded by the chunk size plus the final spike arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurobridge.sim.config import CHUNK_CELLS, INIT_RMS, LOADING_SD, MAX_RATE_HZ, U_MAX, SimConfig, Spec, random_stream


@dataclass
class Model:
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
    behavior_out: list = field(default_factory=list)  # filled by generate: [steps, K] chunks


def assign_regions(rng: np.random.Generator, n_units: int, n_regions: int) -> np.ndarray:
    """Each region gets at least one unit when there are enough; the rest follow random proportions."""
    first = np.arange(min(n_units, n_regions))
    p = rng.dirichlet(np.full(n_regions, 4.0))
    rest = rng.choice(n_regions, size=n_units - len(first), p=p)
    return rng.permutation(np.concatenate([first, rest])).astype(np.int64)


def region_dynamics(rng: np.random.Generator, n_regions: int, d: int, dt: float) -> tuple[np.ndarray, np.ndarray]:
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


def build_model(cfg: SimConfig, spec: Spec, duration: float, *, trials_reset=None, visual=None) -> Model:
    """Random parameters of one session (``trials_reset``: (steps, condition) of the latent resets)."""
    rng = random_stream(cfg.seed, *spec.key, 1)
    dt = cfg.truth_bin_ms / 1000.0
    n_steps = int(np.ceil(duration / dt - 1e-9))
    R, d, U = len(spec.regions), cfg.latent_dim, spec.n_units
    A, noise_sd = region_dynamics(rng, R, d, dt)
    unit_region = assign_regions(rng, U, R)
    C = np.zeros((U, R * d))
    loading_sd = LOADING_SD / np.sqrt(d)
    for r in range(R):
        members = np.flatnonzero(unit_region == r)
        C[members, r * d : (r + 1) * d] = rng.normal(0.0, loading_sd, size=(len(members), d))
    log_base = np.log(rng.uniform(cfg.rate_hz[0], cfg.rate_hz[1], size=U))
    model = Model(dt, n_steps, A, noise_sd, rng.normal(0, 0.7, R * d), C, log_base, unit_region)
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


def latents(model: Model, a: int, b: int, x: np.ndarray, rng: np.random.Generator, k: int):
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


def chunk_rates(model: Model, a: int, X: np.ndarray) -> np.ndarray:
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


def generate(model: Model, seed: int, key: tuple[int, ...], order: str, truth_path: Path | None):
    """Run the model and draw spikes chunk by chunk.

    ``order="unit"`` returns ``(times, counts_per_unit)`` with times grouped by unit and sorted within each unit
    (NWB's ragged layout); ``order="time"`` returns ``(times, units)`` sorted by time (ALF). The true rates go to
    ``truth_path`` (float32 [units, steps], memory-mapped) when given.
    """
    U, T = model.C.shape[0], model.n_steps
    lat_rng, spk_rng = random_stream(seed, *key, 2), random_stream(seed, *key, 3)
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
        X, x, k = latents(model, a, b, x, lat_rng, k)
        if model.behavior_readout is not None:
            model.behavior_out.append((X @ model.behavior_readout.T).astype(np.float32))
        rates = chunk_rates(model, a, X)
        if truth is not None:
            truth[:, a:b] = rates
        counts = spk_rng.poisson(rates * model.dt)
        n = b - a
        flat = counts.ravel() if order == "unit" else counts.T.ravel()
        cells = np.flatnonzero(flat)
        cell = np.repeat(cells, flat[cells])
        u = np.minimum(spk_rng.random(len(cell)), U_MAX)
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

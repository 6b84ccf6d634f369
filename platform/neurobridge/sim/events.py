"""Trial and stimulus timing (NLB-style reaches, IBL-style decisions, image presentations) and the images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurobridge.sim.config import FORMAT_CODE, SimConfig, random_stream

# ----------------------------------------------------------------------------------------------------------------
# Events: trials and stimulus presentations
# ----------------------------------------------------------------------------------------------------------------


def nlb_trials(rng: np.random.Generator, duration: float, n_conditions: int) -> dict[str, np.ndarray]:
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


def ibl_trials(rng: np.random.Generator, duration: float, n_conditions: int) -> dict[str, np.ndarray]:
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


def presentations(rng: np.random.Generator, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    e = random_stream(cfg.seed, FORMAT_CODE["images"]).standard_normal((cfg.n_images, cfg.embedding_dim))
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


def write_images(root: Path, cfg: SimConfig, embeddings: np.ndarray) -> None:
    folder = root / "visual" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", embeddings)
    if cfg.write_images:
        from PIL import Image

        for i, e in enumerate(embeddings):
            Image.fromarray(render_image(e)).save(folder / f"frame_{i:03d}.png")

"""A scaled-down TVSD in a real DataLad dataset: same variables, dtypes, transposed layouts and image logs.

Per monkey folder: ``THINGS_MUA_trials.mat`` (ALLMUA, tb, ALLMAT), ``THINGS_normMUA.mat`` (train_MUA, test_MUA,
test_MUA_reps, reliab, SNR, lats, oracle), ``_logs/things_imgs.mat`` (struct arrays of THINGS-style paths) and
an annexed dummy raw recording under ``RAW/`` that ingest must never fetch. MUA follows the simulator's visual
model: each image has a known unit-norm embedding; a channel responds with ``gain_region · (w · embedding +
onset)`` shaped by a half-sine that starts at its region's latency (IT carries the embedding most), plus noise.
The embeddings and image ids go to ``truth/`` beside the dataset, not into it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neurobridge.sources.io import matv73

_TVSD_CODE = 6  # random-stream namespace of this simulator (see sim._FORMAT_CODE)

# The scaled-down array-to-area maps (64 channels, the real proportions); catalog/demo.yaml repeats them.
SIM_REGIONS = {
    "monkeyN": [(1, 32, "V1"), (33, 48, "V4"), (49, 64, "IT")],
    "monkeyF": [(1, 32, "V1"), (33, 52, "IT"), (53, 64, "V4")],
}


class TvsdSimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    monkeys: dict[str, list[tuple[int, int, str]]] = Field(default_factory=lambda: dict(SIM_REGIONS))
    n_train: int = Field(96, ge=1)
    n_test: int = Field(8, ge=1)
    test_repeats: int = Field(10, ge=2)
    incorrect_fraction: float = Field(0.05, ge=0, lt=1)
    tb_ms: tuple[int, int] = (-100, 300)  # tb = first..last-1 ms at 1 kHz
    embedding_dim: int = Field(16, ge=1)
    latency_ms: dict[str, float] = Field(default_factory=lambda: {"V1": 40.0, "V4": 60.0, "IT": 80.0})
    gain: dict[str, float] = Field(default_factory=lambda: {"V1": 0.4, "V4": 0.7, "IT": 1.2})
    response_ms: float = Field(120.0, gt=0)
    noise: float = Field(0.3, ge=0)
    raw_kb: int = Field(256, ge=1, description="size of the dummy RAW recording per monkey")
    normalized: bool = True
    chunk_trials: int = Field(256, ge=1)


def image_paths(cfg: TvsdSimConfig) -> tuple[list[str], list[str]]:
    train = [f"simthing{i:04d}/simthing{i:04d}_01b.jpg" for i in range(cfg.n_train)]
    test = [f"simtest{i:03d}/simtest{i:03d}_01s.jpg" for i in range(cfg.n_test)]
    return train, test


def embeddings(cfg: TvsdSimConfig) -> np.ndarray:
    """Known image embeddings [train + test, dim] (float32, unit norm)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_TVSD_CODE, 0)))
    e = rng.standard_normal((cfg.n_train + cfg.n_test, cfg.embedding_dim))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def _allmat(cfg: TvsdSimConfig, rng: np.random.Generator) -> np.ndarray:
    """[trials, 7]: every training image once, every test image ``test_repeats`` times, plus failed trials."""
    img = np.concatenate([np.arange(cfg.n_train), np.repeat(cfg.n_train + np.arange(cfg.n_test), cfg.test_repeats)])
    n_bad = int(round(cfg.incorrect_fraction * len(img)))
    img = np.concatenate([img, rng.integers(0, cfg.n_train, n_bad)])  # failed trials: training images
    correct = np.concatenate([np.ones(len(img) - n_bad), np.zeros(n_bad)])
    order = rng.permutation(len(img))
    img, correct = img[order], correct[order]
    n = len(img)
    is_test = img >= cfg.n_train
    rep = np.zeros(n)
    for im in np.unique(img):  # 1-based presentation count of each image, in trial order
        where = np.flatnonzero(img == im)
        rep[where] = np.arange(1, len(where) + 1)
    m = np.zeros((n, 7))
    m[:, 0] = np.arange(1, n + 1)
    m[:, 1] = np.where(is_test, 0, img + 1)
    m[:, 2] = np.where(is_test, img - cfg.n_train + 1, 0)
    m[:, 3] = rep
    m[:, 4] = np.arange(1, n + 1)
    m[:, 5] = correct
    m[:, 6] = 1 + np.arange(n) // 100
    return m


def write_monkey(
    folder: Path,
    cfg: TvsdSimConfig,
    monkey: str,
    index: int,
    images: tuple[list[str], list[str], np.ndarray] | None = None,
) -> dict:
    """One monkey folder (plain files). Returns a summary record. ``images``: (train paths, test paths, their
    embeddings in that order) to show another image set (e.g. the THINGS-fMRI look-alike's) instead of the own."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_TVSD_CODE, 1, index)))
    ranges = cfg.monkeys[monkey]
    n_ch = max(b for _, b, _ in ranges)
    region = np.empty(n_ch, dtype=object)
    for a, b, r in ranges:
        region[a - 1 : b] = r
    emb = embeddings(cfg) if images is None else np.asarray(images[2], dtype=np.float32)
    if len(emb) != cfg.n_train + cfg.n_test:
        raise ValueError(f"{len(emb)} image embeddings for n_train + n_test = {cfg.n_train + cfg.n_test} images")
    tb = np.arange(*cfg.tb_ms, dtype=np.float64)
    allmat = _allmat(cfg, rng)
    n_trials = len(allmat)
    img = np.where(allmat[:, 2] > 0, cfg.n_train + allmat[:, 2] - 1, allmat[:, 1] - 1).astype(np.int64)
    w = rng.standard_normal((n_ch, emb.shape[1]))
    onset = rng.normal(0.5, 0.3, n_ch)
    gain = np.array([cfg.gain[r] for r in region])
    drive = (gain[:, None] * (w @ emb.T.astype(np.float64) + onset[:, None])).astype(np.float32)  # [ch, images]
    baseline = rng.uniform(0.5, 2.0, n_ch).astype(np.float32)
    t_rel = tb[:, None] - np.array([cfg.latency_ms[r] for r in region])[None, :]  # [time, ch]
    profile = np.where((t_rel >= 0) & (t_rel < cfg.response_ms), np.sin(np.pi * t_rel / cfg.response_ms), 0.0)
    profile = profile.astype(np.float32)

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "THINGS_MUA_trials.mat"
    with matv73.create(path) as f:
        ds = f.create_dataset("ALLMUA", shape=(len(tb), n_trials, n_ch), dtype=np.float32)  # [ch, trial, t]ᵀ
        ds.attrs["MATLAB_class"] = np.bytes_("single")
        for a in range(0, n_trials, cfg.chunk_trials):
            b = min(a + cfg.chunk_trials, n_trials)
            x = profile[:, None, :] * drive[:, img[a:b]].T[None, :, :] + baseline[None, None, :]
            x += cfg.noise * rng.standard_normal(x.shape, dtype=np.float32)
            ds[:, a:b, :] = x
        matv73.write_matlab(f, "tb", tb, "double")
        matv73.write_matlab(f, "ALLMAT", allmat, "double")
    matv73.stamp(path)

    train, test = image_paths(cfg) if images is None else (list(images[0]), list(images[1]))
    logs = folder / "_logs"
    logs.mkdir(exist_ok=True)
    with matv73.create(logs / "things_imgs.mat") as f:
        for name, paths in (("train_imgs", train), ("test_imgs", test)):
            matv73.write_char_struct(f, name, {"class": [p.split("/")[0] for p in paths], "things_path": paths})
    matv73.stamp(logs / "things_imgs.mat")

    if cfg.normalized:
        _write_normalized(folder / "THINGS_normMUA.mat", cfg, path, allmat, img, region, rng)
    raw = folder / "RAW"
    raw.mkdir(exist_ok=True)
    (raw / f"{monkey}_raw_dummy.ns6").write_bytes(rng.bytes(cfg.raw_kb * 1024))
    return {
        "monkey": monkey,
        "channels": n_ch,
        "trials": n_trials,
        "regions": {r: int((region == r).sum()) for r in sorted(set(region))},
    }


def _write_normalized(path: Path, cfg, mua_path: Path, allmat, img, region, rng) -> None:
    """Per-image responses as the authors normalise them: each channel's mean MUA in its region's window,
    minus its baseline (-100..0 ms) mean, divided by the s.d. of those responses over correct trials."""
    import h5py

    windows = {"V1": (25, 125), "V4": (50, 150), "IT": (75, 175)}
    with h5py.File(mua_path, "r") as f:
        tb = f["tb"][()].ravel()
        mua = f["ALLMUA"][()]  # small: the simulator's own files
    n_ch = mua.shape[2]
    resp = np.empty((mua.shape[1], n_ch))
    base = mua[(tb >= -100) & (tb < 0)].mean(axis=0)
    for r, (lo, hi) in windows.items():
        ch = np.flatnonzero(region == r)
        resp[:, ch] = mua[(tb >= lo) & (tb < hi)][:, :, ch].mean(axis=0) - base[:, ch]
    ok = allmat[:, 5] == 1
    z = (resp - resp[ok].mean(axis=0)) / resp[ok].std(axis=0)
    n_img = cfg.n_train + cfg.n_test
    sums = np.zeros((n_img, n_ch))
    np.add.at(sums, img[ok], z[ok])
    counts = np.bincount(img[ok], minlength=n_img)[:, None]
    mean = sums / np.maximum(counts, 1)
    reps = np.full((cfg.n_test, cfg.test_repeats, n_ch), np.nan)
    test_ok = ok & (allmat[:, 2] > 0)
    reps[allmat[test_ok, 2].astype(int) - 1, allmat[test_ok, 3].astype(int) - 1] = z[test_ok]
    half = np.nanmean(reps[:, ::2], axis=1), np.nanmean(reps[:, 1::2], axis=1)
    reliab = np.array([np.corrcoef(half[0][:, c], half[1][:, c])[0, 1] for c in range(n_ch)])
    lats = np.array([{"V1": 40.0, "V4": 60.0, "IT": 80.0}.get(r, 50.0) for r in region]) + rng.normal(0, 3, n_ch)
    with matv73.create(path) as f:
        matv73.write_matlab(f, "train_MUA", mean[: cfg.n_train].T.astype(np.float32), "single")  # [ch, images]
        matv73.write_matlab(f, "test_MUA", mean[cfg.n_train :].T.astype(np.float32), "single")
        matv73.write_matlab(f, "test_MUA_reps", reps.transpose(2, 0, 1).astype(np.float32), "single")
        matv73.write_matlab(f, "reliab", reliab[:, None], "double")  # [ch, 1]
        matv73.write_matlab(f, "SNR", np.stack([np.abs(mean).max(axis=0), np.abs(mean).mean(axis=0)], 1), "double")
        matv73.write_matlab(f, "lats", lats[:, None], "double")
        matv73.write_matlab(f, "oracle", np.sqrt(np.clip(reliab, 0, 1))[:, None], "double")
    matv73.stamp(path)


def write_files(out: Path, cfg: TvsdSimConfig) -> dict:
    """All monkey folders as plain files under ``out`` (no DataLad), plus the truth beside it."""
    out.mkdir(parents=True, exist_ok=True)
    monkeys = [write_monkey(out / m, cfg, m, i) for i, m in enumerate(cfg.monkeys)]
    train, test = image_paths(cfg)
    truth = out.parent / "truth" / out.name
    truth.mkdir(parents=True, exist_ok=True)
    np.save(truth / "embeddings.npy", embeddings(cfg))
    (truth / "stimulus_ids.json").write_text(json.dumps([f"things/{p}" for p in train + test]))
    return {"path": str(out), "monkeys": monkeys, "truth": str(truth)}


def make_dataset(out: Path, message: str = "NeuroBridge simulated TVSD") -> None:
    """Turn a folder into a DataLad dataset with every file annexed (as the .mat files are on GIN)."""
    import datalad.api as dl

    dl.create(path=str(out), force=True, annex=True, result_renderer="disabled")
    dl.save(dataset=str(out), message=message, result_renderer="disabled")


def remove_tree(path: Path) -> None:
    """rmtree that also removes git-annex's write-protected object folders."""

    def unprotect(func, p, _exc):
        Path(p).parent.chmod(0o755)
        if Path(p).is_dir() and not Path(p).is_symlink():
            Path(p).chmod(0o755)
        func(p)

    shutil.rmtree(path, onerror=unprotect)


def simulate_tvsd(out: str | Path, cfg: TvsdSimConfig | None = None) -> dict:
    """Write the scaled-down TVSD under ``out`` as a fresh DataLad dataset (an old one there is replaced)."""
    cfg = cfg or TvsdSimConfig()
    out = Path(out)
    if out.exists():
        remove_tree(out)
    summary = write_files(out, cfg)
    make_dataset(out)
    return summary

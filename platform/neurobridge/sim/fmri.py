"""THINGS-fMRI look-alikes with known answers: single-trial betas of ROIs that carry set signals at set ceilings.

The subject sees the images of ``sim/things.py`` (training images once, each test image once per session, as in
THINGS-fMRI). A voxel's beta for image ``i`` of concept ``c`` is ``μ_v + a_v·e_i + b_v·p_c + ε``: ``e_i`` the
image's embedding, ``p_c`` the concept's true property values, ``ε`` Gaussian noise. Per ROI, ``a_v`` and ``b_v``
are scaled so that the embedding and the properties explain set signal variances (``embedding``, ``properties``;
``focus`` restricts the property loadings), and the noise is scaled so the voxel's test-set noise ceiling is what
the config sets: ``nc = 100·ncsnr²/(ncsnr² + 1/n)`` with ``ncsnr = σ_signal/σ_noise`` and ``n`` test repeats, the
formula THINGS-data and NSD use. Voxels outside every ROI carry a weak embedding signal at a low ceiling.

The same betas are written in both layouts (``sim/fmri_writers.py``): the table (pandas HDF + the two CSVs) and the
volumes (a NIfTI per run + conditions, on the brain mask's grid), so both must ingest to identical rows. The truth
(``truth/fmri/<subject>.json``) holds each ROI's voxels, ceilings, signal shares, and the *oracle* R² per property:
the linear-Gaussian posterior mean of the property given the ROI's test responses (averaged over repeats), under
the true model, scored against the mean ratings: what no linear decoder can beat on average.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neurobridge.sim.things import ImageSet, ThingsSimConfig

_FMRI_CODE = 9  # random-stream namespace of this simulator


class RoiSim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    voxels: int = Field(100, ge=1)
    noise_ceiling: float = Field(30.0, gt=0, lt=100, description="mean test-set noise ceiling of its voxels (%)")
    embedding: float = Field(1.0, ge=0, description="signal variance from the image embedding")
    properties: float = Field(0.0, ge=0, description="signal variance from the concept's properties")
    focus: list[str] = Field(default_factory=list, description="properties it carries (empty: all)")
    centre: tuple[float, float, float] = (0.5, 0.5, 0.5)
    member_of: list[str] = Field(default_factory=list, description="other ROI columns that also hold its voxels")


def default_rois() -> list[RoiSim]:
    return [
        RoiSim(name="V1", voxels=120, noise_ceiling=8, embedding=1.0, centre=(0.5, 0.12, 0.45)),
        RoiSim(name="hV4", voxels=120, noise_ceiling=12, embedding=0.9, properties=0.1, centre=(0.5, 0.35, 0.35)),
        RoiSim(
            name="lFFA",
            voxels=100,
            noise_ceiling=22,
            embedding=0.3,
            properties=0.7,
            focus=["size", "liveliness", "manmadeness"],
            centre=(0.28, 0.6, 0.3),
            member_of=["IT"],
        ),
        RoiSim(name="IT", voxels=160, noise_ceiling=28, embedding=0.8, properties=0.2, centre=(0.68, 0.62, 0.3)),
    ]


class FmriSimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    subjects: int = Field(1, ge=1)
    grid: tuple[int, int, int] = (18, 22, 16)
    voxel_mm: float = Field(2.0, gt=0)
    sessions: int = Field(6, ge=1, description="each test image is shown once per session")
    runs_per_session: int = Field(4, ge=1)
    rois: list[RoiSim] = Field(default_factory=default_rois)
    other_noise_ceiling: float = Field(2.0, gt=0, lt=100, description="voxels outside every ROI")
    nc_spread: float = Field(0.5, ge=0, lt=1, description="voxel ceilings spread uniformly ±this fraction")
    smoothness: float = Field(1.0, ge=0, description="s.d. (voxels) of the Gaussian that smooths tuning in space")
    nan_fraction: float = Field(0.0, ge=0, lt=1, description="share of beta cells written as NaN")
    block_trials: int = Field(256, ge=1, description="trials generated at once (bounds memory)")
    things: ThingsSimConfig = ThingsSimConfig()
    volumes: bool = True
    oracle: bool = True


@dataclass
class Layout:
    """Where a subject's voxels are: mask, coordinates (C order: the table's row order), ROI membership."""

    mask: np.ndarray  # [X, Y, Z] bool
    xyz: np.ndarray  # [V, 3] int
    voxel_id: np.ndarray  # [V] int64
    roi: np.ndarray  # [V] int: index into cfg.rois, -1 outside every ROI
    affine: np.ndarray


def layout(cfg: FmriSimConfig) -> Layout:
    """An ellipsoid mask; each ROI takes the free mask voxels nearest its centre."""
    shape = np.asarray(cfg.grid)
    axes = [(np.arange(n) + 0.5) / n - 0.5 for n in shape]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    mask = (gx / 0.48) ** 2 + (gy / 0.48) ** 2 + (gz / 0.48) ** 2 <= 1.0
    xyz = np.argwhere(mask)
    need = sum(r.voxels for r in cfg.rois)
    if need > len(xyz):
        raise ValueError(f"the ROIs need {need} voxels but the {cfg.grid} mask holds {len(xyz)}; enlarge grid")
    roi = np.full(len(xyz), -1)
    frac = (xyz + 0.5) / shape
    for i, r in enumerate(cfg.rois):
        free = np.flatnonzero(roi < 0)
        d = np.linalg.norm(frac[free] - np.asarray(r.centre), axis=1)
        roi[free[np.argsort(d, kind="stable")[: r.voxels]]] = i
    affine = np.diag([cfg.voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -shape * cfg.voxel_mm / 2
    return Layout(mask, xyz, np.ravel_multi_index(tuple(xyz.T), tuple(shape)).astype(np.int64), roi, affine)


@dataclass
class Trials:
    """The subject's trial plan, in trial_id order: session, run, image index (into the image set)."""

    session: np.ndarray
    run: np.ndarray
    image: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def plan_trials(cfg: FmriSimConfig, images: ImageSet, rng: np.random.Generator) -> Trials:
    train, test = rng.permutation(images.split(False)), images.split(True)
    ses, run, img = [], [], []
    for s, part in enumerate(np.array_split(train, cfg.sessions)):
        shown = rng.permutation(np.concatenate([part, test]))
        for r, chunk in enumerate(np.array_split(shown, cfg.runs_per_session)):
            ses.append(np.full(len(chunk), s + 1))
            run.append(np.full(len(chunk), r + 1))
            img.append(chunk)
    return Trials(np.concatenate(ses), np.concatenate(run), np.concatenate(img))


def ceiling_snr(nc: np.ndarray, n: int) -> np.ndarray:
    """ncsnr giving noise ceiling ``nc`` (%) for the mean of ``n`` trials."""
    f = np.asarray(nc, dtype=np.float64) / 100.0
    return np.sqrt(f / (n * (1.0 - f)))


@dataclass
class VoxelModel:
    """Per voxel: loadings on the embedding (``a``, [D, V]) and properties (``b``, [P, V]), baseline, noise."""

    a: np.ndarray
    b: np.ndarray
    baseline: np.ndarray
    noise: np.ndarray
    nc_test: np.ndarray
    nc_single: np.ndarray
    signal_cov: np.ndarray  # [D + P, D + P] covariance of (embedding, properties) over images


def voxel_model(cfg: FmriSimConfig, lay: Layout, images: ImageSet, rng: np.random.Generator) -> VoxelModel:
    d, p, n_vox = images.embeddings.shape[1], images.properties.shape[1], len(lay.xyz)
    joint = np.concatenate([images.embeddings, images.properties[images.image_concept]], axis=1)
    cov = np.cov(joint, rowvar=False)
    emb_var = np.full(n_vox, 0.3)
    prop_var = np.zeros(n_vox)
    nc = np.full(n_vox, cfg.other_noise_ceiling)
    prop_w = np.ones((p, n_vox))
    for i, r in enumerate(cfg.rois):
        sel = lay.roi == i
        emb_var[sel], prop_var[sel], nc[sel] = r.embedding, r.properties, r.noise_ceiling
        if r.focus:
            unknown = sorted(set(r.focus) - set(images.property_names))
            if unknown:
                raise ValueError(f"ROI {r.name}: focus names unknown properties {unknown}")
            prop_w[:, sel] = np.isin(images.property_names, r.focus)[:, None]
    a = _smooth(rng.standard_normal((d, n_vox)), lay, cfg.smoothness)
    b = _smooth(rng.standard_normal((p, n_vox)), lay, cfg.smoothness) * prop_w
    a *= np.sqrt(emb_var / _var(a, cov[:d, :d]))
    b *= np.sqrt(prop_var / np.maximum(_var(b, cov[d:, d:]), 1e-12))
    signal_sd = np.sqrt(_var(np.concatenate([a, b]), cov))
    nc = np.clip(nc * rng.uniform(1 - cfg.nc_spread, 1 + cfg.nc_spread, n_vox), 0.5, 95.0)
    snr = ceiling_snr(nc, cfg.sessions)
    nc_single = 100 * snr**2 / (snr**2 + 1)
    baseline = rng.normal(0.0, 0.3, n_vox)
    return VoxelModel(a, b, baseline, signal_sd / snr, nc, nc_single, cov)


def _smooth(w: np.ndarray, lay: Layout, sigma: float) -> np.ndarray:
    """Loadings [K, V] smoothed over the grid inside the mask (neighbouring voxels share tuning, as in fMRI)."""
    if sigma <= 0:
        return w
    from scipy.ndimage import gaussian_filter

    idx = tuple(lay.xyz.T)
    vol = np.zeros((len(w), *lay.mask.shape))
    vol[(slice(None), *idx)] = w
    weight = gaussian_filter(lay.mask.astype(np.float64), sigma)
    out = gaussian_filter(vol, (0, sigma, sigma, sigma))[(slice(None), *idx)] / weight[idx]
    return out / out.std(axis=1, keepdims=True)


def _var(w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Variance over images of ``x·w`` for each column of ``w`` (``x`` with covariance ``cov``)."""
    return np.einsum("iv,ij,jv->v", w, cov, w)


def trial_blocks(
    cfg: FmriSimConfig, subject: int, trials: Trials, images: ImageSet, model: VoxelModel
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(trial indices, betas [trials, voxels] float32), run by run and at most ``block_trials`` at a time."""
    key = np.stack([trials.session, trials.run], axis=1)
    starts = np.flatnonzero(np.r_[True, (np.diff(key, axis=0) != 0).any(axis=1)])
    bounds = list(zip(starts, np.r_[starts[1:], len(trials)], strict=True))
    for j, (s, e) in enumerate(bounds):
        for k, a in enumerate(range(s, e, cfg.block_trials)):
            rows = np.arange(a, min(a + cfg.block_trials, e))
            rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_FMRI_CODE, 1, subject, j, k)))
            img = trials.image[rows]
            x = images.embeddings[img] @ model.a + images.properties[images.image_concept[img]] @ model.b
            x += model.baseline + model.noise * rng.standard_normal(x.shape)
            if cfg.nan_fraction:
                x[rng.random(x.shape) < cfg.nan_fraction] = np.nan
            yield rows, x.astype(np.float32)


def oracle_r2(
    cfg: FmriSimConfig,
    lay: Layout,
    images: ImageSet,
    model: VoxelModel,
    test_means: dict[int, np.ndarray],
    repeats: int = 1,
) -> dict:
    """Per ROI and property: R² of the true model's posterior-mean rating given the ROI's test responses (the mean
    over each test image's repeats), against the mean ratings; ``test_means``: image → betas averaged.

    ``repeats``: the trials the estimator assumes are averaged in its input. ``cfg.sessions`` gives the Bayes
    estimator for the averaged test responses; 1 gives what a linear decoder trained on single trials converges to
    with unlimited training data (its weights fit single-trial noise), the ceiling of the decoders here."""
    d = images.embeddings.shape[1]
    ids = np.array(sorted(test_means))
    xbar = np.stack([test_means[i] for i in ids])  # [images, V]
    ratings = images.ratings[images.image_concept[ids]]  # [images, P]
    joint_mean = np.concatenate([images.embeddings.mean(0), images.properties[images.image_concept].mean(0)])
    out = {}
    for i, r in enumerate(cfg.rois):
        sel = np.flatnonzero(lay.roi == i)
        w = np.concatenate([model.a[:, sel], model.b[:, sel]])  # [D + P, Vr]
        cov_x = w.T @ model.signal_cov @ w + np.diag(model.noise[sel] ** 2 / repeats)
        gain = np.linalg.solve(cov_x, (model.signal_cov[d:] @ w).T)  # [Vr, P]
        expected = model.baseline[sel] + joint_mean @ w
        p_hat = joint_mean[d:] + (xbar[:, sel] - expected) @ gain
        pred = p_hat + (images.ratings - images.properties).mean(0)  # ratings = offset + true value + rater noise
        sse = ((ratings - pred) ** 2).sum(0)
        sst = ((ratings - ratings.mean(0)) ** 2).sum(0)
        out[r.name] = dict(zip(images.property_names, (1 - sse / sst).round(4).tolist(), strict=True))
    return out

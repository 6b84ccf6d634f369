"""Writers of the THINGS-fMRI look-alike: both layouts of each subject, the THINGSplus-style TSVs, the truth, and a
TVSD-style MUA dataset of the same images (for cross-modal comparisons).

Layout under ``out``: ``fmri/sub-0X_ResponseData.h5`` (pandas fixed format, key ``ResponseData``: a ``voxel_id``
column and one float32 column per trial id, written as pandas writes it), ``fmri/sub-0X_VoxelMetadata.csv``,
``fmri/sub-0X_StimulusMetadata.csv``, ``fmri/betas_vol/sub-0X/ses-thingsNN/sub-0X_ses-thingsNN_run-NN_betas.nii.gz``
(+ ``_conditions.tsv``), ``fmri/brainmasks/sub-0X_space-T1w_brainmask.nii.gz``; ``things/*.tsv``; ``mua/monkeyN``
(TVSD files); ``truth/things`` and ``truth/fmri/sub-0X.json``.

The table is written without holding it: pandas writes a one-row frame with every column label (its exact group
layout and attributes), then PyTables swaps in full-size row datasets and fills them one block of trials at a time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from neurobridge.sim.fmri import FmriSimConfig, Layout, Trials, layout, oracle_r2, plan_trials, trial_blocks
from neurobridge.sim.fmri import voxel_model as make_voxel_model
from neurobridge.sim.things import ImageSet, write_things

_FMRI_CODE = 9
TABLE_KEY = "ResponseData"


class ResponseTableWriter:
    """``sub-0X_ResponseData.h5`` as ``DataFrame.to_hdf`` lays it out, filled by blocks of trial columns."""

    def __init__(self, path: Path, voxel_ids: np.ndarray, trial_ids: np.ndarray):
        import tables

        skeleton = pd.DataFrame(np.zeros((1, len(trial_ids)), np.float32), columns=trial_ids.tolist())
        skeleton.insert(0, "voxel_id", np.zeros(1, np.int64))
        with warnings.catch_warnings():  # mixed column labels are stored pickled, as pandas always does
            warnings.simplefilter("ignore")
            skeleton.to_hdf(path, key=TABLE_KEY, mode="w")
        self.h5 = tables.open_file(str(path), "a")
        group = self.h5.get_node(f"/{TABLE_KEY}")
        n = len(voxel_ids)
        self._replace(group, "axis1", tables.Int64Atom(), (n,))[:] = np.arange(n)
        self.values = None
        for i in range(int(group._v_attrs.nblocks)):
            old = group._f_get_child(f"block{i}_values")
            if old.atom.kind == "float":
                self.values = self._replace(group, old.name, tables.Float32Atom(), (n, len(trial_ids)))
            else:
                self._replace(group, old.name, tables.Int64Atom(), (n, 1))[:] = voxel_ids[:, None]

    def _replace(self, group, name: str, atom, shape):
        old = group._f_get_child(name)
        attrs = {k: old._v_attrs[k] for k in old._v_attrs._f_list("user")}
        old._f_remove()
        new = self.h5.create_array(group, name, atom=atom, shape=shape)
        for k, v in attrs.items():
            new._v_attrs[k] = v
        return new

    def write(self, start: int, values: np.ndarray) -> None:
        """Trial columns ``start:start + len(values)`` from ``values`` [trials, voxels]."""
        self.values[:, start : start + len(values)] = values.T

    def close(self) -> None:
        self.h5.close()


def voxel_metadata(cfg: FmriSimConfig, lay: Layout, model, rng: np.random.Generator) -> pd.DataFrame:
    """THINGS VoxelMetadata columns: ids, coordinates, ceilings, pRF facts, dummy-coded ROIs and parcels."""
    n = len(lay.xyz)
    df = pd.DataFrame({"voxel_id": lay.voxel_id, **{f"voxel_{a}": lay.xyz[:, i] for i, a in enumerate("xyz")}})
    df["nc_singletrial"] = model.nc_single.round(4)
    df["nc_testset"] = model.nc_test.round(4)
    early = np.isin(lay.roi, [i for i, r in enumerate(cfg.rois) if r.name in ("V1", "V2", "V3", "hV4")])
    for col, scale in (("prf-eccentricity", 8.0), ("prf-polarangle", 360.0), ("prf-rsquared", 1.0), ("prf-size", 3.0)):
        df[col] = np.where(early, rng.uniform(0, scale, n), np.nan).round(4)
    for i, r in enumerate(cfg.rois):
        df[r.name] = (lay.roi == i).astype(np.int8)
    for i, r in enumerate(cfg.rois):
        for other in r.member_of:
            df[other] = (df.get(other, 0) + (lay.roi == i)).clip(0, 1).astype(np.int8)
    for i, r in enumerate(cfg.rois):
        df[f"glasser-{r.name}"] = (lay.roi == i).astype(np.int8)
    df["glasser-MST"] = ((lay.roi < 0) & (rng.random(n) < 0.1)).astype(np.int8)
    return df


def stimulus_metadata(trials: Trials, images: ImageSet, subject: str) -> pd.DataFrame:
    concept = np.asarray(images.concepts)[images.image_concept[trials.image]]
    return pd.DataFrame(
        {
            "trial_type": np.where(images.is_test[trials.image], "test", "train"),
            "session": trials.session,
            "run": trials.run,
            "subject_id": subject,
            "trial_id": np.arange(len(trials)),
            "stimulus": images.images[trials.image],
            "concept": concept,
        }
    )


class VolumeWriter:
    """One 4-D NIfTI (a volume per trial) + conditions per run, and the brain mask."""

    def __init__(self, root: Path, subject: str, lay: Layout, images: ImageSet, trials: Trials):
        import nibabel as nib

        self.nib, self.root, self.subject, self.lay, self.images, self.trials = nib, root, subject, lay, images, trials
        mask_dir = root / "brainmasks"
        mask_dir.mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(lay.mask.astype(np.uint8), lay.affine), mask_dir / f"{subject}_space-T1w_brainmask.nii.gz"
        )
        self.run, self.rows, self.data = None, [], None

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        key = (int(self.trials.session[rows[0]]), int(self.trials.run[rows[0]]))
        if key != self.run:
            self.flush()
            self.run = key
        self.rows.append(rows)
        vol = np.zeros((*self.lay.mask.shape, len(rows)), np.float32)
        vol[tuple(self.lay.xyz.T)] = values.T
        self.data = vol if self.data is None else np.concatenate([self.data, vol], axis=3)

    def flush(self) -> None:
        if self.run is None:
            return
        ses, run = self.run
        folder = self.root / "betas_vol" / self.subject / f"ses-things{ses:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.subject}_ses-things{ses:02d}_run-{run:02d}"
        img = self.nib.Nifti1Image(self.data, self.lay.affine)
        img.header.set_data_dtype(np.float32)
        self.nib.save(img, folder / f"{stem}_betas.nii.gz")
        rows = np.concatenate(self.rows)
        img_idx = self.trials.image[rows]
        pd.DataFrame(
            {
                "image_filename": np.char.add("images/", self.images.images[img_idx]),
                "trial_type": np.where(self.images.is_test[img_idx], "test", "train"),
            }
        ).to_csv(folder / f"{stem}_conditions.tsv", sep="\t", index=False)
        self.run, self.rows, self.data = None, [], None


def write_subject(out: Path, cfg: FmriSimConfig, images: ImageSet, index: int) -> dict:
    """Both layouts of one subject (the same betas) and its truth; returns the truth record."""
    subject = f"sub-{index + 1:02d}"
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_FMRI_CODE, 0, index)))
    lay = layout(cfg)
    trials = plan_trials(cfg, images, rng)
    model = make_voxel_model(cfg, lay, images, rng)
    root = out / "fmri"
    root.mkdir(parents=True, exist_ok=True)
    voxel_metadata(cfg, lay, model, rng).to_csv(root / f"{subject}_VoxelMetadata.csv", index=False)
    stimulus_metadata(trials, images, subject).to_csv(root / f"{subject}_StimulusMetadata.csv", index=False)
    table = ResponseTableWriter(root / f"{subject}_ResponseData.h5", lay.voxel_id, np.arange(len(trials)))
    volumes = VolumeWriter(root, subject, lay, images, trials) if cfg.volumes else None
    sums: dict[int, np.ndarray] = {}
    try:
        for rows, x in trial_blocks(cfg, index, trials, images, model):
            table.write(int(rows[0]), x)
            if volumes is not None:
                volumes.add(rows, x)
            for r in np.flatnonzero(images.is_test[trials.image[rows]]) if cfg.oracle else ():
                img = int(trials.image[rows[r]])
                sums[img] = sums.get(img, 0.0) + x[r].astype(np.float64) / cfg.sessions
        if volumes is not None:
            volumes.flush()
    finally:
        table.close()
    return _truth(cfg, lay, images, model, sums, subject, len(trials))


def _truth(cfg: FmriSimConfig, lay: Layout, images: ImageSet, model, sums: dict, subject: str, n_trials: int) -> dict:
    rois = {
        r.name: {
            "voxels": int((lay.roi == i).sum()),
            "mean_nc_testset": float(model.nc_test[lay.roi == i].mean()),
            "embedding": r.embedding,
            "properties": r.properties,
            "focus": r.focus,
        }
        for i, r in enumerate(cfg.rois)
    }
    exact = cfg.oracle and not cfg.nan_fraction
    oracle = oracle_r2(cfg, lay, images, model, sums, 1) if exact else None
    bayes = oracle_r2(cfg, lay, images, model, sums, cfg.sessions) if exact else None
    return {
        "subject": subject,
        "voxels": len(lay.xyz),
        "trials": n_trials,
        "test_repeats": cfg.sessions,
        "concepts": len(images.concepts),
        "rois": rois,
        "oracle_r2": oracle,  # a linear decoder trained on single trials, unlimited data: the decoders' ceiling
        "bayes_r2": bayes,  # the posterior mean given the averaged test responses (knows the averaging)
        "reliability": dict(zip(images.property_names, images.reliability.round(4).tolist(), strict=True)),
    }


def write_mua(out: Path, images: ImageSet, seed: int, per_concept: int = 2, repeats: int = 4) -> dict:
    """A TVSD-style monkey folder (plain files, no DataLad) showing every test image (``repeats`` times) and the
    first ``per_concept`` training images of each concept once (1 kHz MUA is large: a subset keeps it small)."""
    from neurobridge.sim.tvsd import SIM_REGIONS, TvsdSimConfig, write_monkey

    train = images.split(False)
    number = np.array([int(name.rsplit("_", 1)[1][:2]) for name in images.images[train]])
    train, test = train[number <= per_concept], images.split(True)
    cfg = TvsdSimConfig(
        seed=seed,
        monkeys={"monkeyN": SIM_REGIONS["monkeyN"]},
        n_train=len(train),
        n_test=len(test),
        test_repeats=repeats,
        embedding_dim=images.embeddings.shape[1],
        tb_ms=(-50, 250),
        raw_kb=1,
    )
    paths = images.paths
    chosen = (paths[train].tolist(), paths[test].tolist(), images.embeddings[np.concatenate([train, test])])
    return write_monkey(out / "mua" / "monkeyN", cfg, "monkeyN", 0, images=chosen)


def simulate_fmri(out: str | Path, cfg: FmriSimConfig | None = None, mua: bool = True) -> dict:
    """Every subject in both layouts, the image set's TSVs and truth, and (``mua``) the MUA of the same images."""
    cfg = cfg or FmriSimConfig()
    out = Path(out)
    images = write_things(out, cfg.things)
    subjects = [write_subject(out, cfg, images, i) for i in range(cfg.subjects)]
    truth = out / "truth" / "fmri"
    truth.mkdir(parents=True, exist_ok=True)
    for rec in subjects:
        (truth / f"{rec['subject']}.json").write_text(json.dumps(rec, indent=1))
    summary = {"path": str(out), "subjects": subjects, "images": len(images.images)}
    if mua:
        summary["mua"] = write_mua(out, images, cfg.seed)
    (out / "simulation_fmri.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary

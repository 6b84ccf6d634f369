"""One entry model per source kind, each with the options of its reader; ``kind`` picks the model.

A new kind is one subclass here (its options, and which of them change rows) plus one reader file in ``sources/``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from neurobridge.catalog.entry import CatalogEntry
from neurobridge.catalog.options import Strict
from neurobridge.config import Settings


class OneConfig(Strict):
    """ONE-api access for IBL: remote (Alyx) for users, local mode on a cache directory for tests.

    The public database (openalyx) is read with the public login IBL documents for it; another database takes a
    ``username`` here and its password from ``NB_ONE_PASSWORD`` (never from a catalog file, never logged)."""

    mode: Literal["local", "remote"] = "remote"
    base_url: str | None = "https://openalyx.internationalbrainlab.org"
    username: str | None = Field(
        None,
        description="Alyx login (NB_ONE_USERNAME overrides it); default: IBL's public login on the public database",
    )
    collection: str | None = Field(
        None, description="probe collection or glob, e.g. alf/probe00/pykilosort or alf/probe0?/pykilosort"
    )
    search: dict[str, str | list[str]] = Field(default_factory=dict, description="ONE.search filters")


class DandiConfig(Strict):
    """A dandiset version resolved through the DANDI API (assets read from the public bucket by range)."""

    dandiset: str = Field(description="six-digit dandiset id, e.g. 000128")
    version: str = Field("draft", description="published version, e.g. 0.220113.0400 (draft changes)")
    glob: str = Field("*.nwb", description="asset path glob, e.g. sub-Jenkins/*.nwb")
    resolve: Literal["api", "mirror"] = Field(
        "api", description="api: list assets online with the dandi client; mirror: read `uri`, a local/S3 copy"
    )


class PileConfig(Strict):
    """Neural Pile reading options (kind ``pile``)."""

    species_map: dict[str, str] = Field(
        default_factory=dict, description="source_dataset value → species; rows of other datasets get `species`"
    )
    val_unit: Literal["segment", "session"] = Field(
        "segment",
        description="what the val hash keeps together: a whole segment (like the publisher's test split) or every "
        "segment of a session (stricter: no session is seen in both train and val)",
    )
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail", description="fail: a bad row fails its shard; skip: drop the row and count it in the item record"
    )
    block_cells: int = Field(2_000_000, ge=1_000, description="cells [windows × units × bins] per window block")


class ChannelRange(Strict):
    """Channels ``first``..``last`` (1-based, inclusive, MATLAB numbering) recorded in ``region``."""

    first: int = Field(ge=1)
    last: int = Field(ge=1)
    region: str = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> ChannelRange:
        if self.last < self.first:
            raise ValueError(f"channel range {self.first}-{self.last} ends before it starts")
        return self


def _tvsd_regions() -> dict[str, list[ChannelRange]]:
    """The published TVSD array-to-area assignment (Papale et al. 2025)."""
    spans = {
        "monkeyN": [(1, 512, "V1"), (513, 768, "V4"), (769, 1024, "IT")],
        "monkeyF": [(1, 512, "V1"), (513, 832, "IT"), (833, 1024, "V4")],
    }
    return {m: [ChannelRange(first=a, last=b, region=r) for a, b, r in s] for m, s in spans.items()}


class DataladSource(Strict):
    """Where a DataLad dataset is cloned from; only the files an entry needs are ever fetched (``datalad get``)."""

    url: str | None = Field(
        "https://gin.g-node.org/paolo_papale/TVSD",
        description="clone source (URL, or a path; relative paths resolve under NB_RAW); None: uri holds plain files",
    )


class TvsdFiles(Strict):
    """File names inside each monkey folder; exactly these are fetched, never the raw recordings."""

    mua: str = "THINGS_MUA_trials.mat"
    normalized: str = "THINGS_normMUA.mat"
    images: str = "_logs/things_imgs.mat"


class TvsdConfig(Strict):
    """TVSD reading: the DataLad source, per-monkey channel → region ranges, trial filtering, side outputs."""

    datalad: DataladSource = DataladSource()
    files: TvsdFiles = TvsdFiles()
    regions: dict[str, list[ChannelRange]] = Field(
        default_factory=_tvsd_regions, description="monkey folder → channel ranges; every channel must be covered"
    )
    correct_only: bool = Field(True, description="keep only trials with ALLMAT correct == 1 (fixation held)")
    responses: bool = Field(True, description="also write the normalised per-image responses (THINGS_normMUA.mat)")
    chunk_mb: float = Field(64.0, gt=0, le=4096, description="raw MUA read per block (bounds worker memory)")

    @field_validator("regions")
    @classmethod
    def _no_overlap(cls, v: dict[str, list[ChannelRange]]) -> dict[str, list[ChannelRange]]:
        for monkey, ranges in v.items():
            spans = sorted((r.first, r.last) for r in ranges)
            for (a0, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
                if b0 <= a1:
                    raise ValueError(f"{monkey}: channel ranges {a0}-{a1} and {b0}-{b1} overlap")
        return v


class EcephysCache(Strict):
    """An allensdk EcephysProjectCache tree: a sessions CSV at the root, one NWB per session below it."""

    sessions_table: str = Field("sessions.csv", description="CSV with an `id` column, relative to the entry uri")
    session_path: str = Field("session_{id}/session_{id}.nwb", description="session NWB path; {id} is the session id")
    session_types: list[str] = Field(
        default_factory=list, description="list only sessions whose session_type is one of these (empty: all)"
    )
    metadata: list[str] = Field(
        default_factory=lambda: ["session_type", "specimen_id", "age_in_days", "sex", "full_genotype"],
        description="sessions-table columns carried into each item's record",
    )
    manifest: str | None = Field(
        None, description="allensdk manifest.json: sessions are listed by allensdk in its own environment"
    )
    allensdk_python: str | None = Field(
        None, description="interpreter of the allensdk environment (default: $NB_ALLENSDK_PYTHON)"
    )


class NwbOptions(Strict):
    """Where an NWB file keeps what the reader needs; defaults fit DANDI/NLB and the Allen Visual Coding files."""

    region_columns: list[str] = Field(
        default_factory=lambda: ["ecephys_structure_acronym", "location", "brain_area", "region"],
        description="region label columns, first present wins (units table, then electrodes table)",
    )
    peak_channel_column: str = Field(
        "peak_channel_id", description="units column holding the electrodes-table id of each unit's peak channel"
    )
    cache: EcephysCache | None = Field(None, description="list sessions from an EcephysProjectCache layout")


class NwbEntry(CatalogEntry):
    """NWB files (DANDI, NLB, Allen Visual Coding), read lazily with h5py."""

    KIND: ClassVar[str] = "nwb"
    kind: Literal["nwb"]
    nwb: NwbOptions | None = None
    dandi: DandiConfig | None = None

    def accepts_unit_filter(self) -> bool:
        return True

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        if self.nwb is not None:  # only when set, so versions of entries without NWB options keep their hash
            spec["nwb"] = self.nwb.model_dump(exclude={"cache": {"allensdk_python"}})
        return spec

    def settings_for(self, settings: Settings) -> Settings:
        settings = super().settings_for(settings)
        if self.dandi is not None and self.dandi.resolve == "api":  # DANDI's bucket is public
            opts = self.storage.model_dump(exclude_defaults=True)
            settings = settings.with_source("s3://dandiarchive/", {"anon": True, "endpoint_url": "aws", **opts})
        return settings


class AlfEntry(CatalogEntry):
    """IBL ALF sessions through ONE (Alyx online, or ONE's local mode on a cache directory)."""

    KIND: ClassVar[str] = "alf"
    kind: Literal["alf"]
    one: OneConfig | None = None

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        # the login decides who reads, not what is read: versions keep their hash whoever logs in
        spec["entry"]["one"] = self.one.model_dump(exclude={"username"}) if self.one is not None else None
        return spec


class TvsdEntry(CatalogEntry):
    """The THINGS Ventral Stream Spiking Dataset (DataLad, MATLAB v7.3)."""

    KIND: ClassVar[str] = "tvsd"
    kind: Literal["tvsd"]
    tvsd: TvsdConfig | None = Field(None, description="TVSD reader settings; defaults: the GIN dataset")

    @property
    def options(self) -> TvsdConfig:
        return self.tvsd or TvsdConfig()

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        if self.tvsd is not None:  # TVSD settings change rows (regions, trial filter); the clone source does not
            spec["tvsd"] = self.tvsd.model_dump(exclude={"datalad"})
        return spec


class PileEntry(CatalogEntry):
    """Neural Pile shards (Parquet rows of binned counts)."""

    KIND: ClassVar[str] = "pile"
    kind: Literal["pile"]
    pile: PileConfig | None = Field(None, description="Neural Pile options; defaults when absent")

    @property
    def options(self) -> PileConfig:
        return self.pile or PileConfig()

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        if self.pile is not None:  # only when set, so other entries keep their versions
            spec["pile"] = self.pile.model_dump()
        return spec


class FmriFiles(Strict):
    """Where a subject's files are, below the entry's uri (``{subject}``: sub-01 …); defaults: THINGS-data's."""

    responses: str = Field("{subject}_ResponseData.h5", description="table layout: pandas HDF, voxels × trials")
    voxels: str = Field("{subject}_VoxelMetadata.csv", description="voxel_id, voxel_x/y/z, noise ceilings, ROIs")
    stimuli: str = Field("{subject}_StimulusMetadata.csv", description="one row per trial: trial_id, stimulus, …")
    table_key: str | None = Field(None, description="HDF5 group of the response table; None: the file's only group")
    betas: str = Field("betas_vol/{subject}", description="volume layout: ses-*/…_betas.nii.gz + _conditions.tsv")
    brainmask: str = Field("brainmasks/{subject}_space-T1w_brainmask.nii.gz", description="volume layout: the mask")


class NoiseCeilingRule(Strict):
    """Keep voxels whose noise ceiling (a VoxelMetadata column, in percent) is at least ``min``; NaN fails."""

    column: str = Field("nc_testset", description="e.g. nc_testset (test-set average) or nc_singletrial")
    min: float | None = Field(None, description="None: keep every voxel")


class FmriConfig(Strict):
    """THINGS-fMRI reading: which layout, subjects, ROIs and voxels, and how NaN betas are handled."""

    layout: Literal["table", "volume"] = Field(
        "table", description="table: ResponseData.h5 streamed by trial columns; volume: betas_vol NIfTI per run"
    )
    subjects: list[str] = Field(default_factory=list, description="subject ids (sub-01, …); empty: every one found")
    rois: list[str] | None = Field(
        None,
        description="ROI columns of the voxel metadata, in priority order (a voxel in several gets the first as its "
        "region); None: every voxel, with the first non-parcel ROI column holding it as region (else 'other')",
    )
    noise_ceiling: NoiseCeilingRule = NoiseCeilingRule()
    files: FmriFiles = FmriFiles()
    max_nan_fraction: float = Field(
        0.01, ge=0, le=1, description="the item fails when more of its selected beta cells are NaN (all are counted)"
    )
    nan_fill: float = Field(0.0, description="what NaN betas below that fraction are written as")
    chunk_mb: float = Field(64.0, gt=0, le=4096, description="raw betas read, and rows built, per block")


class FmriEntry(CatalogEntry):
    """THINGS-fMRI single-trial responses (Hebart et al. 2023): the table or the volume layout."""

    KIND: ClassVar[str] = "fmri"
    kind: Literal["fmri"]
    fmri: FmriConfig | None = Field(None, description="fMRI reader settings; defaults: THINGS-data, table layout")

    @property
    def options(self) -> FmriConfig:
        return self.fmri or FmriConfig()

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        if self.fmri is not None:  # every option changes rows except how much is read at once
            spec["fmri"] = self.fmri.model_dump(exclude={"chunk_mb"})
        return spec


class BehaviorArray(Strict):
    """One behaviour array of a binned file: its name in the file, its axis order and a name per column."""

    array: str = Field(min_length=1, description="array name in the file (MATLAB variable, NPZ key, HDF5 path)")
    names: list[str] = Field(min_length=1, description="one name per column, e.g. [x, y]; stored as <array>.<name>")
    axes: Literal["bins_channels", "channels_bins"] = Field(
        "bins_channels", description="axis order: [bins × channels] or [channels × bins] (MATLAB's row vectors)"
    )


class TrialTable(Strict):
    """Windows from a trial table in the file instead of fixed chunks: one window per trial."""

    start: str = Field(description="array of trial starts, in native bins (0-based) or seconds (``in_seconds``)")
    split: str | None = Field(None, description="array of official split labels per trial (train/val/test)")
    in_seconds: bool = Field(False, description="starts are seconds on the ``time`` array's clock, not bin indices")


class BinnedOptions(Strict):
    """Binned count matrices with behaviour (Stevenson et al., Glaser's Neural_Decoding sets, NLB tensors).

    Formats by suffix: ``.mat`` (MATLAB v5 through scipy.io, v7.3 through h5py: sniffed), ``.npy`` (the counts
    alone), ``.npz``, ``.h5``/``.hdf5``. Windows are fixed chunks of ``ingest.window.chunk_s`` (or one per trial of
    ``trials``, ``ingest.window.post_s`` long); ``ingest.bin_ms`` must be a whole multiple of ``bin_ms`` (bins are
    summed exactly).
    """

    counts: str = Field("spikes", description="array holding the spike counts")
    axes: Literal["units_bins", "bins_units"] = Field(
        "units_bins", description="axis order of the counts: [units × bins] or [bins × units]"
    )
    bin_ms: float = Field(gt=0, le=10_000, description="native bin width of the arrays (ms)")
    behavior: list[BehaviorArray] = Field(default_factory=list, description="behaviour arrays, binned like counts")
    time: str | None = Field(None, description="array of bin times in seconds (window t_start); None: bin × width")
    trials: TrialTable | None = Field(None, description="one window per trial (None: fixed chunks)")
    region: str = Field("unknown", description="region label of every unit (when the file has no per-unit labels)")
    regions: str | None = Field(None, description="array of per-unit region labels (overrides ``region``)")
    unit_ids: str | None = Field(None, description="array of unit ids (None: the unit's index)")
    split_block_s: float | None = Field(
        None,
        gt=0,
        description="chunks: windows of the same block of this many seconds share a split (adjacent chunks of a "
        "continuous recording are correlated); None: each window is hashed on its own",
    )
    block_cells: int = Field(2_000_000, ge=1_000, description="cells [windows × units × bins] per window block")

    @model_validator(mode="after")
    def _unique(self) -> BinnedOptions:
        names = [f"{b.array}.{n}" for b in self.behavior for n in b.names]
        if len(set(names)) != len(names):
            raise ValueError(f"behaviour names repeat: {names}")
        return self


class BinnedEntry(CatalogEntry):
    """Binned count matrices (with behaviour) in MATLAB, NumPy or HDF5 files, from any fsspec URI."""

    KIND: ClassVar[str] = "binned"
    kind: Literal["binned"]
    binned: BinnedOptions

    def version_spec(self) -> dict[str, Any]:
        spec = super().version_spec()
        spec["binned"] = self.binned.model_dump(exclude={"block_cells"})  # every other option changes rows
        return spec

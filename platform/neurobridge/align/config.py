"""Typed configs for image embedding and neural → image alignment; unknown keys are errors that name the key."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Response windows per region (ms after stimulus onset). TVSD: the windows the dataset's authors use; the simulator
# presets follow its latencies (response_ms 150 from each region's latency).
WINDOW_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "tvsd": {"V1": (25.0, 125.0), "V4": (50.0, 150.0), "IT": (75.0, 175.0)},
    "sim_tvsd": {"V1": (25.0, 125.0), "V4": (50.0, 150.0), "IT": (75.0, 175.0)},
    "sim_visual": {"VISp": (40.0, 190.0), "VISl": (60.0, 210.0), "VISal": (80.0, 230.0), "VISam": (100.0, 250.0)},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedConfig(_Strict):
    """`neurobridge embed-images`: images under a URI → ``<store>/embeddings/<name>/``."""

    name: str = Field(description="output folder under <store>/embeddings/")
    images: str = Field(description="root of the images: a local path or any fsspec URI (s3://…)")
    model: str = Field(description="CLIP vision model: a local directory, an fsspec URI of one, or a hub id")
    processor: str | None = Field(None, description="image processor location (default: the model's)")
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    id_prefix: str | None = Field(None, description="stimulus_id = '<prefix>/<path relative to images>'")
    strip_extension: bool = Field(False, description="drop the file extension from the stimulus id")
    mapping: str | None = Field(
        None,
        description="JSON object or CSV (path,stimulus_id) mapping relative paths to stimulus ids; "
        "files it does not list are skipped and counted",
    )
    batch_size: int = Field(32, ge=1, description="images per model call")
    decode_workers: int = Field(2, ge=1, description="most CPU actors decoding and preprocessing images")
    embed_workers: int = Field(1, ge=1, description="model actors (one per GPU on a cluster)")
    decode_cpus: float = Field(1.0, gt=0, description="logical CPUs per decode actor")
    embed_cpus: float = Field(1.0, gt=0, description="logical CPUs per model actor")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a GPU when the cluster has one")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="autocast dtype on GPUs")
    normalize: bool = Field(True, description="L2-normalise embeddings (CLIP compares by cosine)")
    rows_per_part: int = Field(8192, ge=1, description="embeddings per Parquet part")
    max_failed_fraction: float = Field(0.5, ge=0, le=1, description="fail the job when more images fail to decode")

    @field_validator("extensions")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one file extension")
        return [e.lower() if e.startswith(".") else f".{e.lower()}" for e in v]


class SplitSpec(_Strict):
    """How stimuli are split; always by stimulus id, so no image is in two splits."""

    rule: Literal["store", "hash"] = Field(
        "store", description="store: the token store's split column (official TVSD test set); hash: re-split here"
    )
    n_test: int | None = Field(None, ge=1, description="hash: exactly this many test stimuli (smallest hashes)")
    n_val: int | None = Field(None, ge=0, description="hash: exactly this many validation stimuli")
    test_fraction: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    salt: str = "neurobridge-align"


class EmbeddingSource(_Strict):
    """Where the target embeddings come from: an `embed-images` output or arrays with known ids (simulator)."""

    name: str | None = Field(None, description="<store>/embeddings/<name> written by embed-images")
    npy: str | None = Field(None, description="a .npy [stimuli, dim] (e.g. the simulator's embeddings.npy)")
    ids: str | list[str] | None = Field(
        None, description="stimulus ids of the .npy rows: a list, or a JSON file holding one"
    )
    id_prefix: str | None = Field(None, description="prefix added to the ids of the .npy rows")
    simulation: str | None = Field(
        None, description="a simulator output (relative: under NB_RAW, e.g. sim): its images' known embeddings"
    )

    @model_validator(mode="after")
    def _one(self) -> EmbeddingSource:
        if sum(v is not None for v in (self.name, self.npy, self.simulation)) != 1:
            raise ValueError("give exactly one of name (embed-images output), npy (+ ids) or simulation")
        if self.npy is not None and self.ids is None:
            raise ValueError("npy needs ids (a list or a JSON file of stimulus ids, one per row)")
        return self


class EncoderSpec(_Strict):
    """A masked model between the responses and the projector: frozen (features computed once), its last layers
    fine-tuned, or the same architecture trained from scratch end to end with the projector."""

    checkpoint: str = Field(
        description="URI of a model checkpoint (models.checkpoint format, e.g. pretrain's model.pt)"
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the same architecture untrained (the control for what pretraining adds)"
    )
    seed: int = 0
    batch_rows: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    train: Literal["frozen", "last_layers", "scratch"] = Field(
        "frozen",
        description="frozen: precomputed features; last_layers: unfreeze the last `unfreeze_layers` "
        "transformer layers; scratch: random init, every encoder weight trained (both run the encoder per step)",
    )
    unfreeze_layers: int = Field(1, ge=1, description="last_layers: transformer layers trained (+ the final norm)")
    lr: float = Field(3e-4, gt=0, description="learning rate of the trained encoder weights")

    @model_validator(mode="after")
    def _scratch_is_random(self) -> EncoderSpec:
        if self.train == "scratch" and self.init == "pretrained":
            self.init = "random"
        return self

    @property
    def trainable(self) -> bool:
        return self.train != "frozen"


class AlignDataConfig(_Strict):
    datasets: list[str] = Field(min_length=1, description="token-store dataset refs: name or name@version")
    embeddings: EmbeddingSource
    windows: dict[str, tuple[float, float]] | None = Field(
        None, description="region → (start_ms, stop_ms) after onset; default: the dataset's preset"
    )
    default_window: tuple[float, float] | None = Field(
        None, description="window for regions not in `windows`; None: such regions are left out"
    )
    regions: list[str] | None = Field(None, description="region subset (e.g. [IT]); None: all")
    pool: Literal["mean", "bins"] = Field("mean", description="mean over each region's window bins, or every bin")
    encoder: EncoderSpec | None = Field(
        None, description="pool a frozen pretrained encoder's latents per region window instead of the responses"
    )
    transform: Literal["none", "sqrt", "log1p"] = Field("sqrt", description="applied to counts (not MUA)")
    train_average_repeats: bool = Field(False, description="average repeats in train too (default: each one)")
    split: SplitSpec = SplitSpec()
    max_missing_fraction: float = Field(0.05, ge=0, le=1, description="stop when more of the stimuli have no embedding")
    expected_dim: int | None = Field(None, ge=1, description="refuse an embedding table of another dimension")
    batch_rows: int = Field(512, ge=1, description="token-store rows read at once")
    allow_partial: bool = Field(
        False, description="align dataset versions with failed items (refused by default; the run records them)"
    )

    @field_validator("windows")
    @classmethod
    def _ordered(cls, v):
        for region, (a, b) in (v or {}).items():
            if not b > a:
                raise ValueError(f"window for {region!r} must end after it starts, got ({a}, {b})")
        return v


class ProjectorConfig(_Strict):
    hidden: int = Field(256, ge=1)
    depth: int = Field(2, ge=1, description="hidden layers of the shared MLP")
    dropout: float = Field(0.1, ge=0, lt=1)
    input_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the responses (unit dropout)")
    temperature: float = Field(0.07, gt=0, description="initial InfoNCE temperature (learned)")
    learn_temperature: bool = True
    mse_weight: float = Field(0.0, ge=0, description="weight of the MSE to the target embedding")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(60, ge=1)
    patience: int | None = Field(15, ge=1, description="stop after this many epochs without a better val top-1")
    seed: int = 0
    log_every: int = Field(1, ge=1, description="epochs between reports")


class AlignScaling(_Strict):
    """Where the projector trains: Ray Train (``TorchTrainer``, the CLI's and jobs' default) or in this process
    (tests and the demo skip Ray Train's per-trainer start-up; the loop is the same function)."""

    backend: Literal["ray", "local"] = "ray"
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP when > 1)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(1, ge=0, description="worker failures Ray Train restarts from before giving up")


class AlignConfig(_Strict):
    name: str = "align"
    experiment: str = "neurobridge-align"
    data: AlignDataConfig
    projector: ProjectorConfig = ProjectorConfig()
    scaling: AlignScaling = AlignScaling()
    region_sets: dict[str, list[str] | None] = Field(
        default_factory=lambda: {"all": None},
        description="name → regions; one projector per set, reported side by side (e.g. {all: null, IT: [IT]})",
    )
    subset_candidates: list[int] = Field(default_factory=lambda: [50], description="MindEye-style candidate N")
    subset_draws: int = Field(200, ge=1)
    figure_queries: int = Field(6, ge=1)

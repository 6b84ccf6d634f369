"""Typed config of semantic decoding (`neurobridge decode`); unknown keys are errors that name the key.

The data part is alignment's (``align.config.AlignDataConfig``: datasets, response windows, region subsets,
pooling, split by stimulus id), with the embeddings optional: concept and property decoding need none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurobridge.align.config import (
    AlignDataConfig,
    AlignScaling,
    EmbeddingSource,
    EncoderSpec,
    ProjectorConfig,
)
from neurobridge.config import load_yaml

TASKS = ("concept", "properties", "retrieval")
DECODERS = ("ridge", "mlp", "encoder", "cnn3d", "vit3d")
VOLUME_DECODERS = ("cnn3d", "vit3d")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodeDataConfig(AlignDataConfig):
    embeddings: EmbeddingSource | None = Field(None, description="image embeddings: needed by the retrieval task")


class LabelsConfig(_Strict):
    """What is decoded: each stimulus's concept, each concept's property ratings and their reliability."""

    concepts: str = Field(
        "auto",
        description="auto: the store's `stimuli` side table, else the THINGS path (<prefix>/<concept>/<file>), "
        "else the stimulus itself; or a TSV with stimulus_id and concept columns",
    )
    properties: str | None = Field(None, description="TSV: a concept column (concept_column) + one column per property")
    concept_column: str = Field("uniqueID", description="the concept id column of the properties TSV")
    reliability: str | None = Field(None, description="TSV: property, split_half_r (the ceiling of each property)")
    property_names: list[str] | None = Field(None, description="decode only these properties (default: all)")
    min_class_examples: int = Field(1, ge=1, description="concepts with fewer training examples are not classes")


class LinearConfig(_Strict):
    """The baselines: ridge regression (properties, embeddings) and multinomial logistic regression (concepts), with
    the penalty picked on the validation split."""

    alphas: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0, 10000.0], min_length=1)
    logistic_decays: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2], min_length=1)
    logistic_steps: int = Field(100, ge=1, description="L-BFGS iterations per fit")


class NetConfig(_Strict):
    """Training of the torch decoders (MLP, the encoder's head, the 3-D CNN and ViT)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    batch_size: int = Field(64, ge=2)
    epochs: int = Field(60, ge=1)
    patience: int | None = Field(12, ge=1, description="stop after this many epochs without a better val score")
    loss: Literal["mse", "huber"] = Field("mse", description="regression loss (properties, embeddings)")
    huber_delta: float = Field(1.0, gt=0)
    seed: int = 0


class VolumeConfig(_Strict):
    """The volume decoders: a small 3-D CNN and a 3-D ViT (strided Conv3d patches, CLS token)."""

    cnn_channels: list[int] = Field(default_factory=lambda: [8, 16], min_length=1)
    patch: int = Field(3, ge=1, description="ViT patch edge in voxels (Conv3d kernel = stride)")
    embed_dim: int = Field(48, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    margin: int = Field(1, ge=0, description="voxels of empty border around the selected voxels' bounding box")

    @model_validator(mode="after")
    def _heads(self) -> VolumeConfig:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of heads {self.heads}")
        return self


class DecodeConfig(_Strict):
    name: str = "decode"
    experiment: str = "neurobridge-decode"
    data: DecodeDataConfig
    labels: LabelsConfig = LabelsConfig()
    tasks: list[Literal["concept", "properties", "retrieval"]] = Field(default_factory=lambda: list(TASKS))
    decoders: list[Literal["ridge", "mlp", "encoder", "cnn3d", "vit3d"]] = Field(
        default_factory=lambda: ["ridge", "mlp"]
    )
    region_sets: dict[str, list[str] | None] = Field(
        default_factory=lambda: {"all": None}, description="name → regions; every decoder per set, side by side"
    )
    encoder: EncoderSpec | None = Field(None, description="the masked model of the `encoder` decoder (frozen or tuned)")
    linear: LinearConfig = LinearConfig()
    net: NetConfig = NetConfig()
    projector: ProjectorConfig = ProjectorConfig(epochs=60, patience=12)
    volume: VolumeConfig = VolumeConfig()
    scaling: AlignScaling = AlignScaling()
    topk: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    subset_candidates: list[int] = Field(default_factory=lambda: [50])
    subset_draws: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DecodeConfig:
        if "retrieval" in self.tasks and self.data.embeddings is None:
            raise ValueError("the retrieval task needs data.embeddings (an embed-images table or known arrays)")
        if "properties" in self.tasks and self.labels.properties is None:
            raise ValueError("the properties task needs labels.properties (a TSV of ratings per concept)")
        if "encoder" in self.decoders and self.encoder is None:
            raise ValueError("the encoder decoder needs encoder.checkpoint (a masked model checkpoint)")
        if self.data.encoder is not None:
            raise ValueError("set the encoder under `encoder:` (decoders choose it), not data.encoder")
        if not self.tasks or not self.decoders:
            raise ValueError("give at least one task and one decoder")
        return self


def load_decode_config(path: str | Path | None, overrides: dict | None = None) -> DecodeConfig:
    """A decode config from YAML plus dotted overrides; errors name the file and the key."""
    return load_yaml(DecodeConfig, path, overrides)


__all__ = ["DECODERS", "TASKS", "VOLUME_DECODERS", "DecodeConfig", "load_decode_config"]

"""A THINGS-like image set with known answers: concepts, images, image embeddings, property ratings.

Every image belongs to a concept; its embedding is the concept's prototype plus an image-specific deviation (unit
norm), so concept identity is decodable from anything that carries the embedding. Each concept has true values of
THINGSplus-style properties (size, manmadeness, …), partly predictable from its prototype (``embedding_share``) as
real properties are from CLIP embeddings; raters see them through rater noise of a set size per property, so each
property's split-half reliability is known. The fMRI and MUA look-alikes (``sim/fmri.py``) show these same images,
so decoding from either modality has one set of answers.

Files (THINGSplus-style TSVs under ``<out>/things/``): ``concepts.tsv`` (uniqueID, Word), ``images.tsv``
(stimulus_id, image, concept, split), ``properties.tsv`` (uniqueID + one mean rating per property),
``property_reliability.tsv`` (property, split-half reliability, Spearman-Brown corrected); truth beside them in
``<out>/truth/things/`` (embeddings.npy + stimulus_ids.json, true property values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

_THINGS_CODE = 8  # random-stream namespace of this simulator (see sim.config.FORMAT_CODE)

# THINGSplus property names; the value is the rater noise s.d. (in units of the property's s.d.): the larger, the
# less reliable the mean rating of ``raters`` raters.
PROPERTIES = {
    "size": 1.0,
    "manmadeness": 1.5,
    "preciousness": 3.0,
    "liveliness": 1.2,
    "heaviness": 2.0,
    "naturalness": 1.8,
    "movement": 2.5,
    "graspability": 3.5,
    "holdability": 4.0,
    "pleasantness": 5.0,
    "arousal": 6.0,
}


class ThingsSimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    concepts: int = Field(720, ge=2)
    train_images: int = Field(8, ge=1, description="training images per concept")
    test_concepts: int = Field(100, ge=1, description="concepts with one held-out test image each")
    embedding_dim: int = Field(32, ge=2)
    within_concept: float = Field(0.6, ge=0, description="norm of an image's deviation from its concept prototype")
    properties: dict[str, float] = Field(default_factory=lambda: dict(PROPERTIES), description="name → rater noise")
    embedding_share: float = Field(0.5, ge=0, le=1, description="share of property variance the prototype predicts")
    raters: int = Field(20, ge=2)
    prefix: str = "things"


@dataclass
class ImageSet:
    concepts: list[str]  # concept ids (uniqueID)
    images: np.ndarray  # [N] file names
    image_concept: np.ndarray  # [N] concept index
    is_test: np.ndarray  # [N] bool
    embeddings: np.ndarray  # [N, D] float32, unit norm
    properties: np.ndarray  # [C, P] true values (unit variance)
    ratings: np.ndarray  # [C, P] mean ratings
    reliability: np.ndarray  # [P] split-half (Spearman-Brown)
    property_names: list[str]
    prefix: str

    @property
    def paths(self) -> np.ndarray:
        """THINGS-style relative paths ``<concept>/<file>``."""
        return np.char.add(np.char.add(np.asarray(self.concepts)[self.image_concept], "/"), self.images)

    @property
    def stimulus_ids(self) -> np.ndarray:
        return np.char.add(f"{self.prefix}/", self.paths)

    def split(self, test: bool) -> np.ndarray:
        return np.flatnonzero(self.is_test == test)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_images(cfg: ThingsSimConfig) -> ImageSet:
    """The image set (deterministic in ``cfg``)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_THINGS_CODE,)))
    if cfg.test_concepts > cfg.concepts:
        raise ValueError(f"test_concepts {cfg.test_concepts} exceeds concepts {cfg.concepts}")
    concepts = [f"concept{c:04d}" for c in range(cfg.concepts)]
    proto = _unit(rng.standard_normal((cfg.concepts, cfg.embedding_dim)))
    train_c = np.repeat(np.arange(cfg.concepts), cfg.train_images)
    test_c = np.sort(rng.choice(cfg.concepts, cfg.test_concepts, replace=False))
    img_c = np.concatenate([train_c, test_c])
    is_test = np.concatenate([np.zeros(len(train_c), bool), np.ones(len(test_c), bool)])
    number = np.concatenate([np.tile(np.arange(1, cfg.train_images + 1), cfg.concepts), np.full(len(test_c), 99)])
    kind = np.where(is_test, "s", "b")
    images = np.array([f"{concepts[c]}_{n:02d}{k}.jpg" for c, n, k in zip(img_c, number, kind, strict=True)])
    dev = _unit(rng.standard_normal((len(img_c), cfg.embedding_dim)))
    emb = _unit(proto[img_c] + cfg.within_concept * dev).astype(np.float32)
    names = list(cfg.properties)
    mix = rng.standard_normal((cfg.embedding_dim, len(names)))
    from_proto = _standardize(proto @ mix)
    own = rng.standard_normal((cfg.concepts, len(names)))
    true = _standardize(np.sqrt(cfg.embedding_share) * from_proto + np.sqrt(1 - cfg.embedding_share) * own)
    noise = np.array([cfg.properties[n] for n in names])
    raters = 4.0 + true[:, None, :] + noise[None, None, :] * rng.standard_normal((cfg.concepts, cfg.raters, len(names)))
    half_a, half_b = raters[:, 0::2].mean(axis=1), raters[:, 1::2].mean(axis=1)
    r = np.array([np.corrcoef(half_a[:, p], half_b[:, p])[0, 1] for p in range(len(names))])
    return ImageSet(
        concepts, images, img_c, is_test, emb, true, raters.mean(axis=1), 2 * r / (1 + r), names, cfg.prefix
    )


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0)


def write_things(out: Path, cfg: ThingsSimConfig) -> ImageSet:
    """The TSVs under ``out/things`` and the truth under ``out/truth/things``; returns the image set."""
    s = make_images(cfg)
    d = out / "things"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"uniqueID": s.concepts, "Word": [c.replace("concept", "concept ") for c in s.concepts]}).to_csv(
        d / "concepts.tsv", sep="\t", index=False
    )
    pd.DataFrame(
        {
            "stimulus_id": s.stimulus_ids,
            "image": s.images,
            "concept": np.asarray(s.concepts)[s.image_concept],
            "split": np.where(s.is_test, "test", "train"),
        }
    ).to_csv(d / "images.tsv", sep="\t", index=False)
    ratings = pd.DataFrame(s.ratings, columns=s.property_names)
    ratings.insert(0, "uniqueID", s.concepts)
    ratings.to_csv(d / "properties.tsv", sep="\t", index=False, float_format="%.5f")
    pd.DataFrame({"property": s.property_names, "split_half_r": s.reliability, "raters": cfg.raters}).to_csv(
        d / "property_reliability.tsv", sep="\t", index=False, float_format="%.5f"
    )
    truth = out / "truth" / "things"
    truth.mkdir(parents=True, exist_ok=True)
    np.save(truth / "embeddings.npy", s.embeddings)
    (truth / "stimulus_ids.json").write_text(json.dumps(s.stimulus_ids.tolist()))
    np.save(truth / "properties_true.npy", s.properties.astype(np.float32))
    return s

"""What alignment trains and tests on: per-session blocks of examples (response features, target embedding,
stimulus id), grouped in train/val/test splits, and the errors that say why the store or the embeddings cannot
make them. ``align/dataset.py`` builds these from the token store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neurobridge.align.embeddings import EmbeddingTable


class AlignDataError(ValueError):
    """The token store or the embeddings cannot make alignment examples; the message names what and where."""


class LeakageError(AlignDataError):
    """A stimulus would be in more than one split (an image seen in training would be tested on)."""


class MissingEmbeddings(AlignDataError):
    """More stimuli than allowed have no embedding."""


class DimensionMismatch(AlignDataError):
    """The embedding table's dimension is not the one expected (by the config or a trained projector)."""


@dataclass
class SessionInfo:
    key: str  # "<dataset>/<session>"
    unit_ids: np.ndarray  # selected units, in feature order
    feature_regions: np.ndarray  # region of each feature
    windows: dict[str, tuple[float, float]]  # region → window used (ms)
    cells: int  # token-grid cells (units × bins) read per presentation
    cells_by_region: dict[str, int] = field(default_factory=dict)
    unit_regions: np.ndarray | None = None  # region of each selected unit
    bins: dict[str, np.ndarray] = field(default_factory=dict)  # region → bin indices of its window
    context: dict | None = None  # raw mode: session/subject/task/dataset, n_bins, is_counts (encoder input rows)

    @property
    def n_features(self) -> int:
        return len(self.feature_regions)


@dataclass
class Block:
    """One session's examples of one split."""

    session: str
    x: np.ndarray  # [n, features] float32
    y: np.ndarray  # [n, dim] float32 target embeddings
    stimulus_id: np.ndarray  # [n]
    n_repeats: np.ndarray  # [n] presentations averaged into each example
    cells: int = 0  # token-grid cells behind one presentation (for tokens/s)

    def __len__(self) -> int:
        return len(self.stimulus_id)


@dataclass
class AlignmentSplit:
    name: str
    blocks: list[Block]

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    @property
    def stimuli(self) -> set[str]:
        return {s for b in self.blocks for s in b.stimulus_id.tolist()}


@dataclass
class AlignmentData:
    train: AlignmentSplit
    val: AlignmentSplit
    test: AlignmentSplit
    sessions: dict[str, SessionInfo]
    embeddings: EmbeddingTable
    regions: list[str] | None
    counts: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.embeddings.dim

    def split(self, name: str) -> AlignmentSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def select_regions(self, regions: list[str] | None) -> AlignmentData:
        """The same examples restricted to the features of ``regions`` (None: all); sessions without any
        unit there are left out. Lets one read of the store serve every region subset."""
        if regions is None:
            return self
        keep: dict[str, np.ndarray] = {}
        sessions = {}
        for k, info in self.sessions.items():
            mask = np.isin(info.feature_regions, regions)
            if mask.any():
                keep[k] = mask
                units = np.isin(info.unit_regions, regions)
                cells = sum(n for r, n in info.cells_by_region.items() if r in regions)
                sessions[k] = SessionInfo(
                    k,
                    info.unit_ids[units],
                    info.feature_regions[mask],
                    {r: w for r, w in info.windows.items() if r in regions},
                    cells,
                    {r: n for r, n in info.cells_by_region.items() if r in regions},
                    info.unit_regions[units],
                    {r: b for r, b in info.bins.items() if r in regions},
                    info.context,
                )
        if not keep:
            raise AlignDataError(f"no session has units in regions {regions}")

        def sub(sp: AlignmentSplit) -> AlignmentSplit:
            return AlignmentSplit(
                sp.name,
                [
                    Block(
                        b.session, b.x[:, keep[b.session]], b.y, b.stimulus_id, b.n_repeats, sessions[b.session].cells
                    )
                    for b in sp.blocks
                    if b.session in keep
                ],
            )

        return AlignmentData(
            sub(self.train),
            sub(self.val),
            sub(self.test),
            sessions,
            self.embeddings,
            regions,
            {**self.counts, "regions": regions},
        )

"""Arrow batches (or row dicts) of windows → patched model batches.

``CollateWindows`` runs in the training thread between steps (``train.epochs`` says why not on a prefetch thread);
its per-session lookups are remembered, so a batch costs a few milliseconds. The held-out unit split it applies is
the one evaluation uses: NLB's official ``heldout`` flags where a session has them, else a deterministic hash of
(session, unit id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from neurobridge.models.patching import Batch, collate
from neurobridge.models.vocab import Vocabularies
from neurobridge.store.rows import table_rows
from neurobridge.store.splits import HeldoutSplit, hash_fraction, with_heldout


def crop_rows(rows: list[dict], max_bins: int | None, seed: int) -> list[dict]:
    """Windows longer than ``max_bins`` → one span of ``max_bins`` bins at an offset fixed by (seed, sample id).

    Attention cost grows with the square of the tokens per window; long chunks (IBL's 2 s trials, Pile segments)
    train as sub-windows, as NDT2/POYO train on short contexts. Deterministic, so resumed runs see the same data.
    """
    if max_bins is None:
        return rows
    for r in rows:
        nb, nu = int(r["n_bins"]), int(r["n_units"])
        if nb <= max_bins:
            continue
        offset = int(hash_fraction(str(seed), str(r.get("sample_id"))) * (nb - max_bins + 1))
        for key in ("counts", "mua"):
            if r.get(key) is not None:
                r[key] = np.asarray(r[key]).reshape(nu, nb)[:, offset : offset + max_bins].reshape(-1)
        r["n_bins"] = max_bins
    return rows


@dataclass
class Collated:
    """One training step's windows: patched batches (``parts``) plus the windows' ids for error messages.

    A step's windows are split into a few parts of similar size (``size_groups``): attention costs the square of
    a row's tokens, so padding a 100-token window to the 400 tokens of the widest session in the batch would cost
    16 times its own attention. The step's loss is one mean over all parts' cells, as if they were one batch.
    """

    parts: list[Batch]
    sample_ids: list[str]
    sessions: list[str]

    @property
    def n_tokens(self) -> int:
        return sum(int(p.token_valid.sum()) for p in self.parts)

    def to(self, device) -> Collated:
        return Collated([p.to(device) for p in self.parts], self.sample_ids, self.sessions)


GROUP_RATIO = 0.7  # a window joins a part while its tokens are at least this fraction of the part's widest
MAX_PARTS = 4  # more parts cost more per-step overhead than their padding saves


def size_groups(sizes: list[int], ratio: float = GROUP_RATIO, max_parts: int = MAX_PARTS) -> list[list[int]]:
    """Indices of ``sizes`` (tokens per window) in groups of similar size, widest first; deterministic."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (sizes[i] >= ratio * sizes[groups[-1][0]] or len(groups) == max_parts):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class CollateWindows:
    """Arrow table of store rows → ``Collated`` (patched parts of similar size plus the rows' ids)."""

    def __init__(
        self,
        vocabs: Vocabularies,
        neurons_per_token: int,
        split: HeldoutSplit | None = None,
        max_units: int | None = None,
        crop_bins: int | None = None,
        seed: int = 0,
    ):
        self.vocabs, self.k, self.split, self.max_units = vocabs, neurons_per_token, split, max_units
        self.crop_bins, self.seed = crop_bins, seed

    @classmethod
    def for_pretraining(cls, cfg, vocabs: Vocabularies, split: HeldoutSplit) -> CollateWindows:
        """The collate a pretraining config implies (``cfg``: a ``PretrainConfig``): one construction for the Ray
        worker, the in-process Tune trial and ``bench train``, so none trains on differently cut windows."""
        return cls(vocabs, cfg.model.neurons_per_token, split, cfg.data.max_units, cfg.data.crop_bins, cfg.seed)

    def __call__(self, table: pa.Table) -> Collated:
        return self.collate_rows(table_rows(table))

    def collate_rows(self, rows: list[dict]) -> Collated:
        """The same, from row dicts (copied: held-out flags and crops are set on the copies)."""
        rows = crop_rows(with_heldout([dict(r) for r in rows], self.split), self.crop_bins, self.seed)
        sizes = [-(-int(r["n_units"]) // self.k) * int(r["n_bins"]) for r in rows]
        groups = [[rows[i] for i in g] for g in size_groups(sizes)]
        return Collated(
            parts=[collate(g, self.vocabs, self.k, self.max_units) for g in groups],
            sample_ids=[str(r.get("sample_id")) for g in groups for r in g],
            sessions=[str(r.get("session")) for g in groups for r in g],
        )

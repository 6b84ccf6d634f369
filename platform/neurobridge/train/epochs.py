"""A worker's training batches, epoch after epoch: permuted in memory when the epoch is cached, streamed otherwise.

When the driver materialised the epoch (it fits ``data.cache_mb``), every epoch holds the same rows, so the worker
reads its shard once, keeps the rows as references into the Arrow blocks, and draws each epoch's order as one seeded
permutation over all of them: a better shuffle than a 256-row buffer, and no per-batch ``take``. Streamed epochs keep
Ray Data's local shuffle buffer, the only shuffle that works when an epoch does not fit in memory.

Collation runs in the training thread, between steps. On Ray's prefetch thread it overlapped in principle, but in
practice it fought the step for the GIL: `neurobridge bench train` on the demo (2 cores) measured the Ray Train
worker at 17–19 k tokens/s with collation (and the shuffle buffer) on Ray's thread, 25–26 k with collation inline
(~5 ms a step), a plain loop on the same model and prepared batches 24–26 k.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from neurobridge.store.rows import table_rows
from neurobridge.train.batches import Collated, CollateWindows

SHUFFLE_BUFFER = 256  # rows in Ray Data's local shuffle buffer (streamed epochs)
PREFETCH = 2  # blocks Ray Data fetches ahead


def permuted(
    rows: Sequence[dict], batch_size: int, collate: CollateWindows, seed: int, epoch: int
) -> Iterator[Collated]:
    """One epoch of whole batches of ``rows`` in a seeded permutation: the order depends only on (seed, epoch), so a
    resumed run replays it and skips what it had trained on."""
    order = np.random.default_rng([seed, epoch]).permutation(len(rows))
    for i in range(0, len(rows) - batch_size + 1, batch_size):
        yield collate.collate_rows([rows[j] for j in order[i : i + batch_size]])


class ShardBatches:
    """``batches(epoch)`` for the training loop: collated, shuffled windows of one worker's shard (or a dataset).

    ``cached``: the driver materialised the epoch (the same rows every epoch) → read once, permute in memory.
    """

    def __init__(self, shard, collate: CollateWindows, batch_size: int, seed: int, cached: bool):
        self.shard, self.collate, self.batch_size, self.seed, self.cached = shard, collate, batch_size, seed, cached
        self._rows: list[dict] | None = None

    def __call__(self, epoch: int) -> Iterator[Collated]:
        if self.cached:
            return permuted(self.rows(), self.batch_size, self.collate, self.seed, epoch)
        tables = self.shard.iter_batches(
            batch_size=self.batch_size,
            batch_format="pyarrow",
            drop_last=True,
            prefetch_batches=PREFETCH,
            local_shuffle_buffer_size=SHUFFLE_BUFFER,
            local_shuffle_seed=self.seed + epoch,
        )
        return (self.collate(t) for t in tables)

    def rows(self) -> list[dict]:
        """The shard's rows, read once (whole blocks, in the dataset's order)."""
        if self._rows is None:
            rows: list[dict] = []
            for table in self.shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=PREFETCH):
                rows.extend(table_rows(table))
            self._rows = rows
        return self._rows

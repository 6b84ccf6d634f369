"""Splits by stimulus id: an image is in exactly one of train, val and test, across sessions and datasets.

The store's own split is taken as is (and a stimulus labelled differently in different rows is refused), or the
stimuli are re-split by a salted hash of their id. A stimulus that would land in two splits is refused, never
silently reassigned. Evaluation averages the repeats of each stimulus (``average_repeats``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from neurobridge.align.config import AlignDataConfig
from neurobridge.align.examples import AlignDataError, AlignmentSplit, LeakageError

SPLITS = ("train", "val", "test")


def _hash_unit(ids: np.ndarray, salt: str) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}|{s}".encode(), digest_size=8).digest(), "big") / 2**64 for s in ids]
    )


def assign_splits(stimuli: np.ndarray, store_split: dict[str, set[str]], cfg: AlignDataConfig) -> dict[str, str]:
    """stimulus id → split. ``store``: the store's label, refusing ids labelled differently in different rows;
    ``hash``: a salted hash of the id (exact counts with n_test / n_val: the smallest hashes)."""
    spec = cfg.split
    if spec.rule == "store":
        clash = sorted(s for s, labels in store_split.items() if len(labels & set(SPLITS)) > 1)
        if clash:
            raise LeakageError(
                f"{len(clash)} stimuli are in more than one split of the token store (e.g. "
                f"{', '.join(f'{s}: {sorted(store_split[s])}' for s in clash[:3])}); re-split with split.rule: hash"
            )
        return {s: next(iter(labels)) for s, labels in store_split.items()}
    uniq = np.unique(stimuli)
    u = _hash_unit(uniq, spec.salt)
    order = np.argsort(u, kind="stable")
    n = len(uniq)
    n_test = spec.n_test if spec.n_test is not None else int(round(spec.test_fraction * n))
    n_val = spec.n_val if spec.n_val is not None else int(round(spec.val_fraction * n))
    if n_test + n_val >= n:
        raise AlignDataError(f"{n_test} test + {n_val} val stimuli leave none of the {n} stimuli for training")
    labels = np.full(n, "train", dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test : n_test + n_val]] = "val"
    return dict(zip(uniq.tolist(), labels.tolist(), strict=True))


def assert_no_leak(*splits: AlignmentSplit) -> None:
    """Refuse any stimulus id present in two splits (across all sessions and datasets)."""
    seen: dict[str, str] = {}
    for sp in splits:
        for s in sp.stimuli:
            other = seen.setdefault(s, sp.name)
            if other != sp.name:
                raise LeakageError(
                    f"stimulus {s!r} is in both {other} and {sp.name}; an image seen in training "
                    "must never be tested on"
                )


def average_repeats(x: np.ndarray, stim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example per stimulus: the mean of its presentations; returns (means, stimulus ids, repeats)."""
    uniq, inv, counts = np.unique(stim, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), x.shape[1]), dtype=np.float64)
    np.add.at(sums, inv, x)
    return (sums / counts[:, None]).astype(np.float32), uniq, counts

"""store/splits: held-out unit flags are stable, independent of order, and follow a dataset's official flags."""

from __future__ import annotations

import numpy as np
import pytest
from neurobridge.store.splits import HeldoutSplit


def test_heldout_split_is_stable_and_prefers_official_flags():
    split = HeldoutSplit({"nlb": {"a": True, "b": False}})
    np.testing.assert_array_equal(split.flags("nlb", ["a", "b"]), [True, False])
    units = [f"u{i}" for i in range(400)]
    flags = HeldoutSplit().flags("sess", units)
    assert 0.18 < flags.mean() < 0.32
    np.testing.assert_array_equal(HeldoutSplit().flags("sess", units[::-1]), flags[::-1])  # order-free


def test_heldout_flags_are_remembered_per_layout_and_read_only():
    from neurobridge.store.splits import HeldoutSplit

    split = HeldoutSplit(fraction=0.5)
    ids = [f"u{i}" for i in range(40)]
    flags = split.flags("s1", ids)
    assert split.flags("s1", tuple(ids)) is flags  # rows carry lists or tuples: one layout either way
    assert flags.tolist() == HeldoutSplit(fraction=0.5).flags("s1", ids).tolist()  # the rule, not the memo
    assert 0 < flags.sum() < 40
    with pytest.raises(ValueError):
        flags[0] = not flags[0]

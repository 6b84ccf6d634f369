"""store/splits: held-out unit flags are stable, independent of order, and follow a dataset's official flags."""

from __future__ import annotations

import numpy as np
from neurobridge.store.splits import HeldoutSplit


def test_heldout_split_is_stable_and_prefers_official_flags():
    split = HeldoutSplit({"nlb": {"a": True, "b": False}})
    np.testing.assert_array_equal(split.flags("nlb", ["a", "b"]), [True, False])
    units = [f"u{i}" for i in range(400)]
    flags = HeldoutSplit().flags("sess", units)
    assert 0.18 < flags.mean() < 0.32
    np.testing.assert_array_equal(HeldoutSplit().flags("sess", units[::-1]), flags[::-1])  # order-free

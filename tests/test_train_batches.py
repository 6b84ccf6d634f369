"""train/batches: store windows → model batches; windows longer than the crop are cut to it deterministically."""

from __future__ import annotations

import numpy as np
from neurobridge.train.batches import crop_rows


def test_long_windows_are_cropped_deterministically():
    rows = [{"sample_id": "w1", "n_units": 2, "n_bins": 10, "counts": np.arange(20), "mua": None}]
    out = crop_rows([dict(rows[0])], 4, seed=0)[0]
    assert out["n_bins"] == 4 and out["counts"].size == 8
    offset = int(out["counts"][0])
    np.testing.assert_array_equal(out["counts"], np.r_[offset : offset + 4, 10 + offset : 14 + offset])
    again = crop_rows([dict(rows[0])], 4, seed=0)[0]
    np.testing.assert_array_equal(out["counts"], again["counts"])

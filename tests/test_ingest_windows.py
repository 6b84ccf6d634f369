"""ingest/windows: windows around presentations. Excluded values (blanks) are dropped and counted, also when stored
as text; repeats count occurrences of each image; an exclude on a missing column is named."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from neurobridge.catalog import IngestConfig
from neurobridge.ingest.windows import make_windows
from neurobridge.sources import SourceError
from neurobridge.sources.base import Intervals, SessionMeta, SpikeSource


class _Frames(SpikeSource):
    """A real in-memory source: one unit, one presentation table."""

    def __init__(self, frames):
        self.item, self.meta = "mem://frames", SessionMeta("s", "m", "Mus musculus", "t")
        self.unit_ids, self.unit_regions = np.array(["0"]), np.array(["VISp"])
        self.segments, self.segment_units = np.array([0, 0]), np.array([0])
        self._iv = Intervals(
            "natural_scenes_presentations",
            {"start_time": 0.25 * np.arange(len(frames)), "frame": np.asarray(frames, dtype=np.float64)},
        )

    def read_times(self, start, stop):
        return np.zeros(0)

    def intervals(self, name):
        return self._iv if name == self._iv.name else None


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 5), min_size=1, max_size=60))
def test_blank_presentations_are_excluded_and_repeats_count_occurrences(frames):
    window = {
        "mode": "intervals",
        "intervals": "natural_scenes_presentations",
        "post_s": 0.25,
        "stimulus_column": "frame",
        "stimulus_prefix": "allen_ns",
        "exclude": {"frame": [-1]},
    }
    cfg = IngestConfig(window=window)
    w = make_windows(_Frames(frames), cfg)
    shown = [f for f in frames if f != -1]
    assert w.excluded == frames.count(-1) and w.dropped == 0
    assert list(w.stimulus_id) == [f"allen_ns/frame_{f:03d}" for f in shown]
    assert list(w.repeat) == [shown[:i].count(f) for i, f in enumerate(shown)]
    assert np.allclose(w.grid.starts, [0.25 * i for i, f in enumerate(frames) if f != -1])
    assert all(n.startswith("natural_scenes_presentations-") for n in w.names)


def test_exclude_matches_numbers_stored_as_text():
    src = _Frames([0, 1, 2])
    src._iv.columns["frame"] = np.array(["3.0", "-1.0", "blank"])
    window = {
        "mode": "intervals",
        "intervals": "natural_scenes_presentations",
        "post_s": 0.25,
        "exclude": {"frame": [-1, "blank"]},
    }
    w = make_windows(src, IngestConfig(window=window))
    assert w.excluded == 2 and list(w.names) == ["natural_scenes_presentations-00000"]


def test_exclude_on_a_missing_column_names_it():
    cfg = IngestConfig(
        window={
            "mode": "intervals",
            "intervals": "natural_scenes_presentations",
            "post_s": 0.25,
            "exclude": {"image": [-1]},
        }
    )
    with pytest.raises(SourceError, match="window.exclude names column 'image'"):
        make_windows(_Frames([0, 1]), cfg)

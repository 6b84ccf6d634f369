"""workflows/demo_align: the demo's alignment step aligns every region set and prints retrieval beside chance."""

from __future__ import annotations

import pytest
from helpers.align import WINDOWS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(align_store):
    """This file's store: two simulated V1/V4/IT sessions, vis_it and vis_v1 (conftest)."""
    return align_store


def test_the_demo_step_aligns_every_region_and_prints_retrieval_beside_chance(store, tmp_path, monkeypatch):
    from neurobridge.workflows.demo_align import DemoAlignOptions, run_align_demo
    from rich.console import Console

    monkeypatch.chdir(tmp_path)  # MLflow artifacts
    console = Console(record=True, width=140)
    options = DemoAlignOptions(dataset="vis_v1", n_test=40, windows=WINDOWS)
    result = run_align_demo(store["settings"], str(store["v1"]), options, console)
    assert set(result.results) == {"all", "V1", "V4", "IT"}
    text = console.export_text()
    assert "retrieval among 40 test images" in text and "0.025" in text  # chance beside each row

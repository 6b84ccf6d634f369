"""Several catalog entries ingest in one Ray run, each into its own version, and are pinned as a mixture."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.sim import SimConfig, simulate
from neurobridge.sources import SourceError
from neurobridge.storage import StoreError
from neurobridge.store.mixtures import read_mixture
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def mixed_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    cfg = SimConfig(
        nwb_subjects=1,
        nwb_sessions_per_subject=1,
        alf_subjects=1,
        alf_sessions_per_subject=1,
        visual_sessions=0,
        units_min=20,
        units_max=30,
        minutes=0.5,
        write_images=False,
    )
    simulate(str(out), cfg, progress=False)
    return out


def entries(root):
    return [
        {
            "name": "mix_nwb",
            "kind": "nwb",
            "uri": str(root / "nwb"),
            "ingest": {"window": {"mode": "chunks", "chunk_s": 1.0}},
        },
        {
            "name": "mix_alf",
            "kind": "alf",
            "uri": str(root / "alf"),
            "one": {"mode": "local"},
            "ingest": {"window": {"mode": "chunks", "chunk_s": 1.0}},
        },
        {"name": "mix_missing", "kind": "nwb", "uri": str(root / "nowhere")},
    ]


def unreachable_alyx(tmp_path) -> dict:
    """An IBL entry whose Alyx server refuses connections (a port nothing listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "name": "mix_ibl_down",
        "kind": "alf",
        "uri": str(tmp_path / "one_cache"),
        "one": {"mode": "remote", "base_url": f"http://127.0.0.1:{port}"},
    }


def test_entries_share_one_run_and_a_bad_entry_fails_alone(ray_cluster, settings, mixed_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # ONE keeps its login parameters under ~/.one
    monkeypatch.setenv("NB_ONE_USERNAME", "lab-user")  # a login, so the connection itself is what fails
    seen = []
    results = ingest_many(
        [CatalogEntry.of(**e) for e in [*entries(mixed_sim), unreachable_alyx(tmp_path)]],
        settings,
        progress=False,
        on_record=lambda name, _record: seen.append(name),
    )
    nwb, alf, missing, ibl = results
    assert isinstance(ibl, SourceError) and "ONE cannot connect to http://127.0.0.1:" in str(ibl), ibl
    assert "as lab-user" in str(ibl)
    assert nwb.ok and alf.ok and nwb.card.counts.rows == alf.card.counts.rows == 30
    assert nwb.version != alf.version and nwb.path != alf.path
    assert sorted(seen) == ["mix_alf", "mix_nwb"]  # one Ray run carried both entries' items
    assert isinstance(missing, SourceError) and "nowhere" in str(missing)
    again = ingest_many([CatalogEntry.of(**e) for e in entries(mixed_sim)[:2]], settings, progress=False)
    assert [(r.version, r.processed) for r in again] == [(nwb.version, 0), (alf.version, 0)]


def test_the_same_entry_twice_is_refused(settings, mixed_sim):
    e = CatalogEntry.of(**entries(mixed_sim)[0])
    with pytest.raises(SourceError, match="more than once"):
        ingest_many([e, e], settings, progress=False)


def test_cli_pins_the_versions_as_a_named_mixture(ray_cluster, mixed_sim, tmp_path, monkeypatch):
    from neurobridge.cli import app
    from neurobridge.config import get_settings

    catalog = tmp_path / "mix.yaml"
    catalog.write_text(yaml.safe_dump({"entries": entries(mixed_sim)[:2]}))
    monkeypatch.setenv("NB_STORE", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["ingest", str(catalog), "--mixture", "pretrain_small", "--no-progress"])
    assert result.exit_code == 0, result.output
    mix = read_mixture(get_settings(), "pretrain_small")
    assert [d.dataset for d in mix.datasets] == ["mix_nwb", "mix_alf"]
    for d in mix.datasets:
        card = json.loads((tmp_path / "store" / "tokens" / d.dataset / d.version / "_dataset.json").read_text())
        assert card["counts"]["rows"] == d.rows and card["version"] == d.version
    with pytest.raises(StoreError, match="known: pretrain_small"):
        read_mixture(get_settings(), "pretrain_big")

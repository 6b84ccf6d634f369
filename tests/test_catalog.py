"""catalog: catalog files validate, and a mistake gets an error naming the file, the entry, the field and a fix;
kind-specific options are checked where they are declared."""

from __future__ import annotations

import pytest
from conftest import REPO
from neurobridge.catalog import CatalogError, TvsdConfig, load_catalog, load_file, parse_entries, resolve
from pydantic import ValidationError


def test_every_shipped_catalog_file_validates():
    entries = load_catalog(REPO / "catalog")
    assert {"sim_nwb", "sim_alf", "sim_visual"} <= set(entries)
    kinds = {e.kind for e in entries.values()}
    assert kinds == {"nwb", "alf", "tvsd", "pile", "fmri", "binned"}
    assert all(e.license and e.citation for e in entries.values())


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_kind_names_file_entry_and_the_nearest_kind(tmp_path):
    path = write(tmp_path, "name: x\nkind: nwbb\nuri: data\n")
    with pytest.raises(CatalogError) as err:
        load_file(path)
    msg = str(err.value)
    assert str(path) in msg and "entry x" in msg and "'kind'" in msg and "did you mean 'nwb'" in msg


def test_unknown_field_suggests_the_nearest_valid_one(tmp_path):
    path = write(tmp_path, "name: x\nkind: nwb\nuri: d\ningest:\n  bin_msec: 5\n")
    with pytest.raises(CatalogError, match=r"unknown field 'ingest.bin_msec'; did you mean 'bin_ms'"):
        load_file(path)


def test_bad_values_and_missing_fields_are_named(tmp_path):
    path = write(
        tmp_path,
        "entries:\n  - name: a\n    kind: alf\n  - name: b\n    kind: alf\n    uri: u\n    ingest: {bin_ms: -1}\n",
    )
    with pytest.raises(CatalogError) as err:
        load_file(path)
    assert "entry a: field 'uri' is required" in str(err.value)
    assert "entry b: field 'ingest.bin_ms'" in str(err.value)


def test_refs_resolve_to_files_and_entries(monkeypatch):
    monkeypatch.setenv("NB_CATALOG", str(REPO / "catalog"))
    assert [e.name for e in resolve("demo")] == ["sim_nwb", "sim_alf", "sim_visual", "sim_tvsd", "sim_pile"]
    assert [e.name for e in resolve("sim_nwb")] == ["sim_nwb"]
    with pytest.raises(CatalogError, match="did you mean 'demo'"):
        resolve("demoo")


def test_catalog_refuses_unit_rules_that_would_be_ignored_or_empty():
    with pytest.raises(CatalogError, match="ingest.unit_filter applies to kind 'nwb' only"):
        parse_entries({"name": "x", "kind": "alf", "uri": "/x", "ingest": {"unit_filter": {"snr": {"min": 1}}}}, "f")
    with pytest.raises(CatalogError, match="'ingest.unit_filter.snr': a unit rule needs at least one of"):
        parse_entries({"name": "x", "kind": "nwb", "uri": "/x", "ingest": {"unit_filter": {"snr": {}}}}, "f")


def test_overlapping_channel_ranges_are_rejected_with_the_monkey_named():
    with pytest.raises(ValidationError, match="monkeyX: channel ranges 1-10 and 5-20 overlap"):
        TvsdConfig(
            regions={"monkeyX": [{"first": 1, "last": 10, "region": "V1"}, {"first": 5, "last": 20, "region": "V4"}]}
        )


def test_an_entry_at_another_bin_width_keeps_everything_else_and_is_validated_again():
    entry = next(e for e in resolve("nlb_mc_maze") if e.name == "nlb_mc_maze")
    coarse = entry.at_bin_ms(50)
    assert coarse.ingest.bin_ms == 50 and entry.ingest.bin_ms == 20  # a new entry; the catalog's is untouched
    assert coarse.model_dump() == entry.model_dump() | {"ingest": entry.ingest.model_dump() | {"bin_ms": 50.0}}
    with pytest.raises(CatalogError, match="nlb_mc_maze at -5 ms: .*ingest.bin_ms"):
        entry.at_bin_ms(-5)

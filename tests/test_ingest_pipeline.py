"""ingest/pipeline: the ingest plan on Ray Data: entries share one run, each into its own version; a bad entry or an
item whose worker always dies fails alone; a worker killed mid-item is retried and the store ends as a clean run's.

Faults are real process deaths (``os._exit`` in the worker, via ``NB_CHAOS``), on the session's local Ray."""

from __future__ import annotations

import hashlib
import json
import socket

import pyarrow.parquet as pq
import pytest
from helpers.ingest import entries
from helpers.sim import small_sim
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest, ingest_many
from neurobridge.sim import simulate
from neurobridge.sources import SourceError
from neurobridge.storage import filesystem, join, read_json

# ---------------------------------------------------------------- several entries in one run


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


# ---------------------------------------------------------------- worker deaths


VICTIM = "sub-monkey01_ses-s00.nwb"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "sim"
    simulate(str(out), small_sim(nwb=(2, 2), write_truth=False), progress=False)
    return out / "nwb"


def entry(root) -> CatalogEntry:
    return CatalogEntry.of(name="faulty", kind="nwb", uri=str(root), ingest={"window": {"mode": "chunks"}})


def store_digest(report, settings) -> dict:
    """What a reader of the version gets: manifest facts per item, and every row's content hash by sample id."""
    fs, mpath = filesystem(join(report.path, "_manifest.parquet"), settings)
    with fs.open(mpath, "rb") as f:
        manifest = pq.read_table(f).to_pylist()
    rows: dict[str, str] = {}
    n_rows = 0
    for part in report.card.files:
        with fs.open(filesystem(join(report.path, part), settings)[1], "rb") as f:
            table = pq.read_table(f)
        n_rows += table.num_rows
        for row in table.to_pylist():
            rows[row["sample_id"]] = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
    keep = ("item", "status", "error", "rows", "tokens", "spikes", "units", "part", "checksum")
    return {
        "manifest": sorted(tuple(r[k] for k in keep) for r in manifest),
        "n_rows": n_rows,
        "rows": rows,
        "counts": report.card.counts,
    }


def files_left(report, settings) -> list[str]:
    """Every file under the version: a directory reader (`part-*.parquet`) sees whatever is here."""
    fs, path = filesystem(report.path, settings)
    return sorted(p[len(path) + 1 :] for p in fs.find(path))


@pytest.fixture(scope="module")
def clean(ray_cluster, sim, tmp_path_factory):
    settings = get_settings(store=str(tmp_path_factory.mktemp("clean") / "store"))
    report = ingest(entry(sim), settings, progress=False)
    assert report.ok and report.items == 4 and not report.retried
    return report, store_digest(report, settings), settings


def test_worker_killed_mid_write_is_retried_and_the_store_matches_a_clean_run(ray_cluster, sim, clean, tmp_path):
    spec = json.dumps({"kill": f"*{VICTIM}", "attempts": 1, "at": "write"})
    settings = get_settings(store=str(tmp_path / "store"), chaos=spec)
    report = ingest(entry(sim), settings, progress=False)

    assert report.ok, report.failed
    assert report.retried == [VICTIM]  # the kill happened and Ray's retry, not luck, produced the item
    fs, items = filesystem(join(report.path, "_items"), settings)
    attempts = {r["rel"]: r["attempt"] for r in (read_json(fs, p) for p in fs.glob(f"{items}/*.json"))}
    assert attempts == {rel: (2 if rel == VICTIM else 1) for rel in attempts} and len(attempts) == 4

    clean_report, clean_digest, clean_settings = clean
    digest = store_digest(report, settings)
    assert report.version == clean_report.version
    assert digest == clean_digest  # manifest, counts, row count and every row's content hash
    assert digest["n_rows"] == len(digest["rows"]) == clean_report.card.counts.rows  # no duplicates
    assert files_left(report, settings) == files_left(clean_report, clean_settings)  # the killed write left nothing


def test_item_whose_worker_always_dies_fails_alone_and_a_rerun_repairs_it(ray_cluster, sim, clean, tmp_path):
    store = str(tmp_path / "store")
    spec = json.dumps({"kill": f"*{VICTIM}", "attempts": "all", "at": "start"})
    report = ingest(entry(sim), get_settings(store=store, chaos=spec), progress=False, max_retries=1)

    assert [f.rel for f in report.failed] == [VICTIM]
    reason = report.failed[0].error
    assert "no result after 2 attempt(s)" in reason and "worker process" in reason and "retries exhausted" in reason
    c = report.card.counts
    assert (c.items, c.items_ok, c.items_failed) == (4, 3, 1)
    assert report.card.failed[0].error == reason  # the card says why, for `neurobridge inspect`
    _, clean_digest, _ = clean
    settings = get_settings(store=store)
    partial = store_digest(report, settings)["rows"]
    assert partial and all(clean_digest["rows"][sid] == h for sid, h in partial.items())
    assert not any(VICTIM.removesuffix(".nwb") in sid for sid in partial)

    again = ingest(entry(sim), settings, progress=False)  # the fault is gone: only the failed item runs
    assert (again.ok, again.processed, again.skipped) == (True, 1, 3)
    assert store_digest(again, settings) == clean_digest

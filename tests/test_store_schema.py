"""A dataset version describes itself, and a partial one is never used by accident.

The rows carry their own column table (layout, units, when null) as Parquet field and schema metadata; the card
says ``status`` first and repeats the table; docs/store.md prints the same table and its polars + DuckDB example
runs on a real version. A version with failed items is refused by training, alignment and evaluation unless
``allow_partial``, and then the MLflow run records the failed items.

The versions are ingested in this process with the per-item code Ray runs (``conftest.ingest_here``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import REPO, ingest_here
from helpers.sim import small_sim
from neurobridge.catalog import CatalogEntry
from neurobridge.config import get_settings
from neurobridge.sim import simulate
from neurobridge.store.card import CARD, DatasetCard
from neurobridge.store.read import PartialDataError, sources
from neurobridge.store.schema import SAMPLE_COLUMNS, describe, markdown_table
from typer.testing import CliRunner

CHUNKS = {"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 0.6}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``sim_nwb``: two simulated NWB sessions, complete; ``t_partial``: the same two beside a file that is not
    NWB, so one of its three items fails."""
    root = tmp_path_factory.mktemp("schema")
    cfg = small_sim(nwb=(1, 2), units_min=12, units_max=16, minutes=0.3, write_truth=False, tvsd=False, pile=False)
    simulate(str(root / "raw"), cfg, progress=False)
    partial = root / "raw" / "partial"
    shutil.copytree(root / "raw" / "nwb", partial)
    (partial / "sub-x_ses-broken.nwb").write_bytes(b"not an HDF5 file")
    settings = get_settings(store=str(root / "store"), raw_root=str(root / "raw"), mlflow_uri=f"sqlite:///{root}/m.db")
    complete = ingest_here(
        CatalogEntry.of(name="sim_nwb", kind="nwb", uri=str(root / "raw/nwb"), ingest=CHUNKS), settings
    )
    broken = ingest_here(CatalogEntry.of(name="t_partial", kind="nwb", uri=str(partial), ingest=CHUNKS), settings)
    assert complete.ok and len(broken.failed) == 1
    return settings, complete, broken


def test_every_part_carries_its_column_table(store):
    _, complete, _ = store
    schema = pq.read_schema(f"{complete.path}/{complete.card.files[0]}")
    counts = schema.field("counts").metadata
    assert b"u * n_bins + b" in counts[b"layout"] and counts[b"units"] == b"spikes per bin"
    assert counts[b"null"].startswith(b"null for MUA rows")
    assert schema.field("t_start").metadata[b"units"] == b"s"
    assert b"<dataset>/<item key>/<window name>" in schema.field("sample_id").metadata[b"description"]
    assert b"n_bins \xc3\x97 len(behavior_names)" in schema.field("behavior").metadata[b"layout"]
    assert json.loads(schema.metadata[b"neurobridge.columns"]) == describe()
    assert [c.name for c in SAMPLE_COLUMNS] == schema.names


def test_the_card_says_its_status_first_and_describes_each_column(store):
    _, complete, broken = store
    for report, status in ((complete, "complete"), (broken, "partial")):
        with open(f"{report.path}/{CARD}") as f:
            text = json.load(f)
        assert next(iter(text)) == "status" and text["status"] == status
        assert text["card_version"] == 2 and text["schema"]["columns"] == describe()
        assert "counts: list<item: uint16>" in text["schema"]["arrow"]


def test_a_version_1_card_still_reads_and_gets_the_column_table(store):
    _, complete, _ = store
    v1 = complete.card.to_json()
    v1 = {k: v for k, v in v1.items() if k != "status"} | {"card_version": 1, "schema": v1["schema"]["arrow"]}
    card = DatasetCard.model_validate(v1)
    assert card.row_schema.arrow == v1["schema"] and card.row_schema.columns == describe()
    assert card.status == "complete"
    lying = DatasetCard.model_validate({**v1, "status": "complete", "counts": {"items": 3, "items_failed": 2}})
    assert lying.status == "partial"  # derived from the counts, never taken from the file


def test_docs_store_md_prints_the_same_column_table():
    assert markdown_table() in (REPO / "docs" / "store.md").read_text()


def test_the_polars_and_duckdb_example_of_docs_store_md_runs(store):
    pytest.importorskip("duckdb")
    _, complete, _ = store
    doc = (REPO / "docs" / "store.md").read_text()
    block = re.search(r"<!-- example: store-reshape -->\n```python\n(.*?)```", doc, re.S).group(1)
    assert block.startswith("version_dir = ")
    code = f"version_dir = {complete.path!r}\n" + block.split("\n", 1)[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/store.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("flat row-major [n_units × n_bins]") and lines[1] == "b's'"
    assert re.fullmatch(r"sim_nwb/\S+/chunk-\d{6} \(\d+, 30\)", lines[2]), lines[2]


def test_a_partial_version_is_refused_unless_allowed(store):
    settings, _, broken = store
    with pytest.raises(PartialDataError) as err:
        sources(settings, ["t_partial"])
    msg = str(err.value)
    assert f"t_partial@{broken.version}: 1 of 3 items failed" in msg and "sub-x_ses-broken" in msg
    assert "allow_partial: true" in msg and "rerun the ingest" in msg.lower()
    (src,) = sources(settings, ["t_partial"], allow_partial=True)
    assert src.ref.card.partial and src.ref.card.counts.items_ok == 2


def test_pretrain_refuses_a_partial_version_before_any_work(store, monkeypatch):
    from neurobridge.cli import app

    settings, _, _ = store
    monkeypatch.setenv("NB_STORE", settings.store)
    monkeypatch.setenv("NB_MLFLOW_URI", settings.mlflow_uri)
    args = ["pretrain", "--set", "data.datasets=[t_partial]", "--set", "data.mixture=null", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "partial dataset version" in result.output, result.output
    from neurobridge.train.config import load_config

    assert load_config(None, {"data.allow_partial": True}).data.allow_partial  # the way out exists


def test_inspect_says_partial_before_anything_else(store, monkeypatch):
    from neurobridge.cli import app

    settings, _, _ = store
    monkeypatch.setenv("NB_STORE", settings.store)
    result = CliRunner().invoke(app, ["inspect", "t_partial"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("PARTIAL: 1 of 3 items failed"), result.output[:200]
    assert "sub-x_ses-broken" in result.output
    as_json = json.loads(CliRunner().invoke(app, ["inspect", "t_partial", "--json"]).output)
    assert as_json["status"] == "partial"


@pytest.mark.slow  # a new MLflow SQLite store takes ~10 s to create here
def test_a_run_on_a_partial_version_records_the_failed_items(store):
    from mlflow.tracking import MlflowClient
    from neurobridge.tracking import lineage, mlflow_run

    settings, complete, broken = store
    refs = sources(settings, ["sim_nwb", "t_partial"], allow_partial=True)
    run_id = mlflow_run.start_run(settings.mlflow_uri, "neurobridge-pretrain", "partial", {"x": 1}, {})
    lineage.log_dataset_inputs(settings.mlflow_uri, run_id, [s.ref for s in refs])
    run = MlflowClient(settings.mlflow_uri).get_run(run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {n: d.dataset.digest for n, d in inputs.items()} == {
        "sim_nwb": complete.version,
        "t_partial": broken.version,
    }
    assert json.loads(inputs["t_partial"].dataset.source)["uri"] == broken.path
    tags = {t.key: t.value for t in inputs["t_partial"].tags}
    assert tags["status"] == "partial" and tags["items_failed"] == "1" and tags["mlflow.data.context"] == "training"
    assert json.loads(inputs["sim_nwb"].dataset.profile)["rows"] == complete.card.counts.rows
    assert run.data.metrics["data.items_failed"] == 1
    assert run.data.tags["partial.t_partial"] == f"{broken.version}: 1 of 3 items failed"

"""`neurobridge simulate && neurobridge ingest demo` through a moto S3 endpoint: raw data and store on S3."""

from __future__ import annotations

import uuid

import polars as pl
import s3fs
import yaml
from conftest import REPO
from neurobridge.cli import app
from neurobridge.config import get_settings
from neurobridge.storage import filesystem, join
from neurobridge.store.versions import resolve_dataset
from typer.testing import CliRunner


def test_simulate_then_ingest_the_demo_catalog_on_s3(ray_cluster, s3_endpoint, monkeypatch, tmp_path):
    bucket = f"demo-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    # DataLad datasets need POSIX paths, so sim_tvsd cannot live on S3 (tests/test_tvsd.py covers it locally)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    demo = yaml.safe_load((REPO / "catalog" / "demo.yaml").read_text())
    demo["entries"] = [e for e in demo["entries"] if e["kind"] != "tvsd"]
    (catalog / "demo.yaml").write_text(yaml.safe_dump(demo))
    for var, value in {
        "NB_S3_ENDPOINT": s3_endpoint,
        "NB_RAW": f"s3://{bucket}/raw",
        "NB_STORE": f"s3://{bucket}/store",
        "NB_CATALOG": str(catalog),
    }.items():
        monkeypatch.setenv(var, value)
    runner = CliRunner()
    sim = runner.invoke(app, ["simulate", "--minutes", "0.5", "--nwb-subjects", "1", "--sessions-per-subject", "1"])
    assert sim.exit_code == 0, sim.output
    first = runner.invoke(app, ["ingest", "demo", "--no-progress"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["ingest", "demo", "--no-progress"])
    assert again.exit_code == 0 and again.output.count("up to date") == 4, again.output

    settings = get_settings()
    visual = resolve_dataset(settings, "sim_visual")
    fs, path = filesystem(join(visual.path, visual.card.files[0]), settings)
    with fs.open(path, "rb") as f:
        df = pl.read_parquet(f)
    assert df["stimulus_id"].str.starts_with("sim_ns/frame_").all()
    per_image = df.group_by("stimulus_id").agg(pl.col("split").n_unique().alias("n"))
    assert per_image["n"].max() == 1  # an image never lands in two splits
    assert df["repeat"].max() >= 1
    alf = resolve_dataset(settings, "sim_alf")  # ONE local mode on cache tables stored in S3
    assert alf.card.counts.items_ok == alf.card.counts.items >= 1
    assert alf.card.vocabularies.species == ["Mus musculus"]

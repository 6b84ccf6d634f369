"""cli: the `neurobridge` commands. Exit codes and messages on bad input, what validate, ingest, simulate and align
print and leave behind, and `simulate` + `ingest demo` with raw data and store on S3 (moto)."""

from __future__ import annotations

import json
import uuid

import polars as pl
import pytest
import s3fs
import yaml
from conftest import REPO, needs_real_data
from helpers.align import N_TEST, N_VAL, WINDOWS
from helpers.ingest import broken_nwb_folder, entries, entry_for
from neurobridge.cli import app
from neurobridge.config import get_settings
from neurobridge.storage import StoreError, filesystem, join
from neurobridge.store.mixtures import read_mixture
from neurobridge.store.versions import resolve_dataset
from typer.testing import CliRunner


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_cli_validate_exits_non_zero_on_a_bad_file(tmp_path):
    bad = write(tmp_path, "name: x\nkind: zarr\nuri: d\n")
    result = CliRunner().invoke(app, ["catalog", "validate", str(bad)])
    assert result.exit_code == 1 and "unknown kind 'zarr'" in result.output
    ok = CliRunner().invoke(app, ["catalog", "validate", str(REPO / "catalog" / "demo.yaml")])
    assert ok.exit_code == 0, ok.output


@needs_real_data
def test_cli_exits_non_zero_and_says_how_many_failed(ray_cluster, tmp_path, monkeypatch):
    from neurobridge.cli import app

    root = broken_nwb_folder(tmp_path / "raw" / "broken")
    cat = tmp_path / "broken.yaml"
    cat.write_text(yaml.safe_dump(entry_for(root)))
    monkeypatch.setenv("NB_STORE", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["ingest", str(cat), "--no-progress"])
    assert result.exit_code == 1
    assert "5 item(s) failed" in result.output and "_manifest.parquet" in result.output
    assert "truncated.nwb" in result.output


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
    coarse = CliRunner().invoke(app, ["ingest", str(catalog), "--bin-ms", "40", "--mixture", "coarse", "--no-progress"])
    assert coarse.exit_code == 0, coarse.output  # the same entries at a model's bin width: new versions beside
    mix40 = read_mixture(get_settings(), "coarse")
    assert {d.bin_ms for d in mix40.datasets} == {40.0} and not {d.version for d in mix40.datasets} & {
        d.version for d in mix.datasets
    }
    bad = CliRunner().invoke(app, ["ingest", str(catalog), "--bin-ms", "0", "--no-progress"])
    assert bad.exit_code == 2 and "bin_ms" in bad.output  # bad input: the validation message, no traceback


def test_simulate_allen_command_writes_the_cache_layout(tmp_path):
    from neurobridge.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "cache"
    result = CliRunner().invoke(app, ["simulate-allen", "--out", str(out), "--sessions", "1", "--fc-sessions", "0"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.glob("*.csv")} == {"sessions.csv", "probes.csv", "channels.csv", "units.csv"}
    (session,) = out.glob("session_*/session_*.nwb")
    assert len(list(session.parent.glob("probe_*_lfp.nwb"))) == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_the_align_command_prints_retrieval_beside_chance_and_refuses_a_misspelt_key(visual, tmp_path, monkeypatch):
    from neurobridge.cli import app
    from typer.testing import CliRunner

    st_ = visual["settings"]
    for var, value in (
        ("NB_STORE", st_.store),
        ("NB_RAW", str(visual["sim"].parent)),
        ("NB_MLFLOW_URI", st_.mlflow_uri),
    ):
        monkeypatch.setenv(var, value)
    path = tmp_path / "align.yaml"
    path.write_text(
        f"name: cli\ndata:\n  datasets: [vis]\n  embeddings: {{simulation: sim}}\n  windows: {json.dumps(WINDOWS)}\n"
        f"  split: {{rule: hash, n_test: {N_TEST}, n_val: {N_VAL}}}\nregion_sets: {{all: null, IT: [IT]}}\n"
        "subset_candidates: [20]\n"
    )
    runner = CliRunner()
    ok = runner.invoke(
        app, ["align", "--config", str(path), "--set", "scaling.backend=local", "--set", "projector.epochs=10"]
    )
    assert ok.exit_code == 0, ok.output
    assert f"retrieval among {N_TEST} test images" in ok.output and f"{1 / N_TEST:.3f}" in ok.output
    bad = runner.invoke(app, ["align", "--config", str(path), "--set", "projectr.epochs=1"])
    assert bad.exit_code == 2 and "projectr" in bad.output and "projector" in bad.output


def test_simulate_then_ingest_the_demo_catalog_on_s3(ray_cluster, s3_endpoint, monkeypatch, tmp_path):
    bucket = f"demo-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir(bucket)
    # DataLad datasets need POSIX paths, so sim_tvsd cannot live on S3 (tests/test_sources_tvsd.py covers it locally)
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

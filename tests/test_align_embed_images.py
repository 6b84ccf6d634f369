"""align/embed_images: `embed-images` on Ray Data with a tiny random CLIP (transformers) and real image files:
embeddings equal a direct model call, bad images are named and counted, ids match the store's, and S3 works too.

The model is saved by transformers and the images written by PIL; S3 is moto's server over HTTP."""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from neurobridge.align.clip_stages import model_info
from neurobridge.align.config import EmbedConfig
from neurobridge.align.embed_images import embed_images
from neurobridge.align.embeddings import CARD, read_embeddings, simulation_embeddings
from neurobridge.align.image_files import EmbedError, list_images
from neurobridge.config import get_settings
from PIL import Image

transformers = pytest.importorskip("transformers")


CONCEPTS = ("aardvark", "banana", "zebra")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIP vision tower with a projection (hidden 32, 2 layers, 32 px images, 8 px patches, 16-d output)."""
    path = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    size = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    cfg = transformers.CLIPVisionConfig(**size, image_size=32, patch_size=8, projection_dim=16)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def reference_embeddings(model_dir, images: list[Image.Image]) -> np.ndarray:
    """The same model and processor called directly, without Ray: what every row must equal."""
    from neurobridge.align.clip_stages import load_processor

    model = transformers.CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()
    pixels = load_processor(str(model_dir), 32)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return torch.nn.functional.normalize(model(pixel_values=pixels).image_embeds, dim=-1).numpy()


@pytest.fixture()
def things(tmp_path):
    """THINGS layout (<concept>/<concept>_NNb.jpg) of random images of varied sizes, plus one file that is not an
    image, one truncated JPEG, and files the job must ignore."""
    rng = np.random.default_rng(0)
    root = tmp_path / "things"
    for c in CONCEPTS:
        (root / c).mkdir(parents=True)
        for i in range(4):
            size = (int(rng.integers(24, 64)), int(rng.integers(24, 64)), 3)
            Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / c / f"{c}_{i:02d}b.jpg")
    (root / "zebra" / "zebra_09s.jpg").write_bytes(b"this is not a JPEG")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "banana" / "banana_09s.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "README.txt").write_text("not listed: not an image extension")
    (root / "zebra" / ".zebra_00b.jpg").write_bytes(b"hidden resource fork")
    return root


def test_every_decodable_image_is_embedded_as_a_direct_model_call_would_and_bad_ones_are_named(
    ray_cluster, settings, tiny_clip, things
):
    cfg = EmbedConfig(
        name="things",
        images=str(things),
        model=str(tiny_clip),
        id_prefix="things",
        batch_size=5,
        decode_workers=1,
        decode_cpus=0.5,
        embed_cpus=0.5,
        rows_per_part=7,
    )
    table_dir = f"{settings.store}/embeddings/things"
    stale = f"{table_dir}/part-earlier-00000.parquet"  # left by an earlier run: must not survive or be read
    (things.parent / "store" / "embeddings" / "things").mkdir(parents=True)
    with open(stale, "wb") as f:
        f.write(b"stale")
    report = embed_images(cfg, settings, progress=False)
    with open(f"{table_dir}/{CARD}") as f:
        card = json.load(f)
    assert card["counts"] == {"listed": 14, "embedded": 12, "failed": 2, "unmapped": 0, "ignored": 2}
    assert {f["path"]: f["error"].split(":")[0] for f in card["failed"]} == {
        "zebra/zebra_09s.jpg": "decode failed",
        "banana/banana_09s.jpg": "decode failed",
    }
    assert "not an image" in next(f["error"] for f in card["failed"] if f["path"].startswith("zebra"))
    assert card["dim"] == 16 and card["model"]["projection_dim"] == 16 and len(card["files"]) == 2  # 7 + 5 rows
    assert not any(
        p.name == "part-earlier-00000.parquet" for p in (things.parent / "store/embeddings/things").iterdir()
    )
    table = read_embeddings(settings, "things")
    good = sorted(f"{c}/{c}_{i:02d}b.jpg" for c in CONCEPTS for i in range(4))
    assert sorted(table.ids) == [f"things/{p}" for p in good]
    order = [table.lookup([f"things/{p}"])[0][0] for p in good]
    expected = reference_embeddings(tiny_clip, [Image.open(things / p).convert("RGB") for p in good])
    assert np.allclose(table.vectors[order], expected, atol=1e-5)
    assert table.image_uri("things/zebra/zebra_01b.jpg") == f"{things}/zebra/zebra_01b.jpg"
    assert report.images_per_s > 0

    strict = cfg.model_copy(update={"max_failed_fraction": 0.1})  # 2 of 14 failed: too many for this rerun
    with pytest.raises(EmbedError, match=r"2 of 14 images .* failed"):
        embed_images(strict, settings, progress=False)
    again = read_embeddings(settings, "things")  # the failed rerun left the committed table as it was
    assert again.meta["files"] == card["files"] and np.array_equal(again.vectors, table.vectors)
    assert sorted(p.name for p in (things.parent / "store/embeddings/things").iterdir()) == sorted(
        [*card["files"], CARD]
    )


def test_simulator_pngs_from_s3_get_the_token_store_ids_through_the_cli(
    ray_cluster, tiny_clip, tmp_path, s3_endpoint, monkeypatch
):
    import s3fs
    from neurobridge.cli import app
    from neurobridge.sim import SimConfig, simulate
    from typer.testing import CliRunner

    sim = tmp_path / "sim"
    simulate(
        str(sim),
        SimConfig(nwb_subjects=0, alf_subjects=0, visual_sessions=1, n_images=10, minutes=0.2, write_truth=False),
        progress=False,
    )
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    bucket = f"nb-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    fs.put(str(sim / "visual" / "images") + "/", f"{bucket}/sim/images/", recursive=True)
    fs.put(str(tiny_clip) + "/", f"{bucket}/models/tiny_clip/", recursive=True)  # the model is read from S3 too
    monkeypatch.setenv("NB_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("NB_STORE", f"s3://{bucket}/store")
    args = [
        "embed-images",
        "--images",
        f"s3://{bucket}/sim/images",
        "--model",
        f"s3://{bucket}/models/tiny_clip",
        "--name",
        "sim_frames",
        "--id-prefix",
        "sim_ns",
        "--strip-extension",
        "--no-progress",
    ]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "10 of 10 images embedded" in out.output
    st_ = get_settings()
    table = read_embeddings(st_, "sim_frames")
    known = simulation_embeddings(str(sim), st_)  # ids as ingest writes them: sim_ns/frame_000
    assert sorted(table.ids) == sorted(known.ids)
    assert table.meta["counts"]["ignored"] == 1  # embeddings.npy beside the PNGs
    card = json.loads(fs.cat_file(f"{bucket}/store/embeddings/sim_frames/{CARD}"))
    with fs.open(f"{bucket}/store/embeddings/sim_frames/{card['files'][0]}", "rb") as f:
        assert pq.read_schema(f).names == ["stimulus_id", "path", "embedding", "model"]
    frames = [Image.open(sim / "visual/images" / f"frame_{i:03d}.png").convert("RGB") for i in range(10)]
    order = table.lookup([f"sim_ns/frame_{i:03d}" for i in range(10)])[0]
    assert np.allclose(table.vectors[order], reference_embeddings(tiny_clip, frames), atol=1e-5)


def test_a_missing_model_fails_on_the_driver_naming_it(tmp_path, settings):
    cfg = EmbedConfig(name="x", images=str(tmp_path), model=str(tmp_path / "no_such_model"))
    with pytest.raises(EmbedError, match="no_such_model.*neither a directory holding a CLIP config.json"):
        model_info(cfg, settings)


def test_a_model_without_a_projection_is_refused(tmp_path, settings):
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(EmbedError, match="not a CLIP"):
        model_info(EmbedConfig(name="x", images=str(tmp_path), model=str(tmp_path)), settings)


def test_two_files_that_give_one_stimulus_id_are_refused(tmp_path, settings):
    for ext in ("jpg", "png"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"frame_001.{ext}")
    cfg = EmbedConfig(name="x", images=str(tmp_path), model="m", strip_extension=True)
    with pytest.raises(EmbedError, match="frame_001.jpg and frame_001.png both map to stimulus id 'frame_001'"):
        list_images(cfg, settings)


def test_a_mapping_names_the_ids_and_files_it_does_not_list_are_counted(tmp_path, settings):
    """Allen's natural scenes: files named by the template index, ids as ingest writes them (allen_ns/frame_NNN)."""
    images = tmp_path / "scenes"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(images / f"natural_scene_{i}.tiff")
    lines = [
        "path,stimulus_id",
        "natural_scene_0.tiff,allen_ns/frame_000",
        "natural_scene_1.tiff,allen_ns/frame_001",
        "not_there.tiff,allen_ns/frame_117",
    ]
    (tmp_path / "map.csv").write_text("\n".join(lines) + "\n")
    cfg = EmbedConfig(name="x", images=str(images), model="m", mapping=str(tmp_path / "map.csv"))
    rows, left_out = list_images(cfg, settings)
    assert [(r["rel"], r["stimulus_id"]) for r in rows] == [
        ("natural_scene_0.tiff", "allen_ns/frame_000"),
        ("natural_scene_1.tiff", "allen_ns/frame_001"),
    ]
    assert left_out == {"ignored": 0, "unmapped": ["natural_scene_2.tiff"], "mapping_without_file": 1}


def test_the_shipped_job_config_is_a_valid_embed_config():
    from conftest import REPO
    from neurobridge.config import load_yaml

    cfg = load_yaml(EmbedConfig, REPO / "jobs" / "embed_things.yaml")
    assert cfg.id_prefix == "things" and cfg.precision == "fp16"

"""The alignment step of the demo: simulator images → (optionally) `embed-images` → projector per region set →
retrieval with chance beside it, tracked in MLflow. Called by the demo after ingest; usable on its own."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..config import Settings
from ..ingest.manifest import resolve_dataset
from ..storage import join
from .config import AlignConfig
from .embeddings import simulation_embeddings
from .experiment import AlignResult, run_alignment


def run_align_demo(settings: Settings, sim_root: str, dataset: str = "sim_visual", console: Console | None = None,
                   clip_model: str | None = None, n_test: int | None = None,
                   windows: dict | None = None) -> AlignResult:  # fmt: skip
    """Align ``dataset`` (the simulator's visual sessions) to the images' known embeddings, or to CLIP embeddings
    of the simulator's PNGs when ``clip_model`` names a model (then `embed-images` runs first)."""
    console = console or Console()
    known = simulation_embeddings(sim_root, settings)
    n_stimuli = len(known.ids)
    n_test = n_test or max(2, min(100, n_stimuli // 5))
    table = known
    source = {"npy": join(sim_root, "visual/images/embeddings.npy"), "ids": known.ids.tolist()}
    if clip_model:
        from .config import EmbedConfig
        from .embed_images import embed_images
        from .embeddings import read_embeddings

        cfg = EmbedConfig(name="sim_frames", images=join(sim_root, "visual/images"), model=clip_model,
                          id_prefix="sim_ns", strip_extension=True)  # fmt: skip
        report = embed_images(cfg, settings)
        console.print(f"embed-images: {report.card['counts']['embedded']} images, {report.images_per_s:.1f} images/s")
        table, source = read_embeddings(settings, "sim_frames"), {"name": "sim_frames"}
    card = resolve_dataset(settings, dataset).card
    regions = sorted((card.get("vocabularies") or {}).get("regions") or {})
    sets = {"all": None} | {r: [r] for r in regions if r != "unknown"}
    cfg = AlignConfig.model_validate({
        "name": "demo-align",
        "data": {"datasets": [dataset], "embeddings": source, "windows": windows,
                 "split": {"rule": "hash", "n_test": n_test, "n_val": max(1, n_test // 2)}},
        "region_sets": sets, "subset_candidates": [min(50, n_test)]})  # fmt: skip
    result = run_alignment(cfg, settings, embeddings=table)
    out = Table("regions", "top-1", "top-5", "chance top-1", "brain top-1", "recon 2-way", "tokens/s",
                title=f"retrieval among {n_test} test images")  # fmt: skip
    for name, s in result.summary().items():
        out.add_row(name, f"{s['image_top1']:.2f}", f"{s['image_top5']:.2f}", f"{s['image_chance1']:.3f}",
                    f"{s['brain_top1']:.2f}", f"{s['recon_two_way']:.2f}", f"{s['tokens_per_s']:,.0f}")  # fmt: skip
    console.print(out)
    console.print(f"MLflow run {result.run_id} (figures: plots/*_retrieval.png, plots/*_reconstruction.png)")
    return result

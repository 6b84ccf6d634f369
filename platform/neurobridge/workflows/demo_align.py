"""The alignment step of the demo: simulator images → (optionally) `embed-images` → projector per region set →
retrieval with chance beside it, tracked in MLflow; then, given the demo's pretrained model, the encoder
fine-tuned (last layers) beside the same architecture trained from scratch. Usable on its own."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from neurobridge.align.config import AlignConfig, EncoderSpec
from neurobridge.align.embeddings import simulation_embeddings
from neurobridge.align.experiment import AlignResult, run_alignment
from neurobridge.align.retrieval import wilson_interval
from neurobridge.config import Settings
from neurobridge.storage import join
from neurobridge.store.versions import resolve_dataset


def _table(result: AlignResult, title: str) -> Table:
    out = Table("regions", "top-1", "chance", "top-5", "chance", "brain top-1", "recon 2-way", "tokens/s", title=title)
    for name, s in result.summary().items():
        out.add_row(
            name,
            f"{s['image_top1']:.2f}",
            f"{s['image_chance1']:.3f}",
            f"{s['image_top5']:.2f}",
            f"{s['image_chance5']:.3f}",
            f"{s['brain_top1']:.2f}",
            f"{s['recon_two_way']:.2f}",
            f"{s['tokens_per_s']:,.0f}",
        )
    return out


def demo_config(
    settings: Settings,
    dataset: str,
    source: dict,
    n_test: int,
    windows: dict | None = None,
    backend: str = "local",
    epochs: int = 40,
) -> AlignConfig:
    """All regions and each region alone, split by stimulus hash (``n_test`` test, half as many val images)."""
    card = resolve_dataset(settings, dataset).card
    regions = sorted(card.vocabularies.regions)
    sets = {"all": None} | {r: [r] for r in regions if r != "unknown"}
    return AlignConfig.model_validate(
        {
            "name": "demo-align",
            "data": {
                "datasets": [dataset],
                "embeddings": source,
                "windows": windows,
                "split": {"rule": "hash", "n_test": n_test, "n_val": max(1, n_test // 2)},
            },
            "projector": {"epochs": epochs, "patience": 10},
            "scaling": {"backend": backend},
            "region_sets": sets,
            "subset_candidates": [min(50, n_test)],
        }
    )


@dataclass
class DemoAlignOptions:
    """What the demo's alignment step aligns, and how: the visual dataset, the CLIP model whose embeddings of the
    simulator's PNGs are the targets (None: the images' known embeddings), test images (default: a quarter of the
    stimuli, 2 to 100), response windows (default: the dataset's preset), where the projector trains and for how
    many epochs."""

    dataset: str = "sim_visual"
    clip_model: str | None = None
    n_test: int | None = None
    windows: dict | None = None
    backend: str = "local"
    epochs: int = 40


def run_align_demo(
    settings: Settings, sim_root: str, options: DemoAlignOptions | None = None, console: Console | None = None
) -> AlignResult:
    """Align ``options.dataset`` (the simulator's visual sessions) to the images' known embeddings, or to CLIP
    embeddings of the simulator's PNGs when ``options.clip_model`` names a model (then `embed-images` runs first)."""
    options = options or DemoAlignOptions()
    console = console or Console()
    known = simulation_embeddings(sim_root, settings)
    n_stimuli = len(known.ids)
    n_test = options.n_test or max(2, min(100, n_stimuli // 4))
    table = known
    source = {"npy": join(sim_root, "visual/images/embeddings.npy"), "ids": known.ids.tolist()}
    if options.clip_model:
        from neurobridge.align.config import EmbedConfig
        from neurobridge.align.embed_images import embed_images
        from neurobridge.align.embeddings import read_embeddings

        cfg = EmbedConfig(
            name="sim_frames",
            images=join(sim_root, "visual/images"),
            model=options.clip_model,
            id_prefix="sim_ns",
            strip_extension=True,
        )
        report = embed_images(cfg, settings)
        console.print(f"embed-images: {report.card['counts']['embedded']} images, {report.images_per_s:.1f} images/s")
        table, source = read_embeddings(settings, "sim_frames"), {"name": "sim_frames"}
    cfg = demo_config(settings, options.dataset, source, n_test, options.windows, options.backend, options.epochs)
    result = run_alignment(cfg, settings, embeddings=table)
    console.print(_table(result, f"binned responses → projector: retrieval among {n_test} test images"))
    console.print(f"MLflow run {result.run_id} (figures: plots/*_retrieval.png, plots/*_reconstruction.png)")
    return result


def compare_encoders(
    settings: Settings,
    model_file: str,
    base: AlignConfig,
    console: Console | None = None,
    epochs: int = 10,
    embeddings=None,
) -> dict[str, AlignResult]:
    """The pretrained encoder (last layer fine-tuned with the projector) beside the same architecture trained
    from scratch, on the same data, split and projector: what pretraining adds to alignment."""
    console = console or Console()
    out = {}
    for label, train in (("pretrained (last layer tuned)", "last_layers"), ("scratch (same architecture)", "scratch")):
        cfg = base.model_copy(deep=True, update={"name": f"demo-align-{train}"})
        cfg.data.encoder = EncoderSpec(checkpoint=model_file, train=train)
        cfg.projector = cfg.projector.model_copy(update={"epochs": epochs, "patience": None})
        cfg.region_sets = {"all": None}
        out[label] = run_alignment(cfg, settings, embeddings=embeddings)
    t = Table(
        "encoder",
        "top-1",
        "95 % interval",
        "chance",
        "top-5",
        "chance",
        "tokens/s",
        "MLflow run",
        title="encoder → projector (all regions): pretrained vs scratch",
    )
    intervals = {}
    for label, r in out.items():
        s = r.summary()["all"]
        intervals[label] = wilson_interval(s["image_top1"] * s["n_candidates"], s["n_candidates"])
        t.add_row(
            label,
            f"{s['image_top1']:.2f}",
            "{:.2f} – {:.2f}".format(*intervals[label]),
            f"{s['image_chance1']:.3f}",
            f"{s['image_top5']:.2f}",
            f"{s['image_chance5']:.3f}",
            f"{s['tokens_per_s']:,.0f}",
            r.run_id[:8],
        )
    console.print(t)
    console.print(difference_note(intervals, int(next(iter(out.values())).summary()["all"]["n_candidates"])))
    return out


def difference_note(intervals: dict[str, tuple[float, float]], n: int) -> str:
    """Whether two top-1s differ beyond their 95 % intervals (Wilson, over the ``n`` test images): with 100 images a
    top-1 of 0.8 is 0.71-0.87, so 0.83 vs 0.80 is no difference."""
    (a, (a_lo, a_hi)), (b, (b_lo, b_hi)) = intervals.items()
    if a_lo > b_hi or b_lo > a_hi:
        better = a if a_lo > b_hi else b
        return f"{better} is better: the 95 % intervals over {n} test images do not overlap"
    return (
        f"no difference at this test size: the 95 % intervals over {n} test images overlap "
        "(more test images, or repeated splits, would be needed to tell the two apart)"
    )

"""Retrieval evaluation of aligned embeddings: image retrieval (neural → image) and brain retrieval (image →
neural response) among all test stimuli and among random candidate subsets (MindEye-style, with a 95 % interval),
always with the chance level beside each number; and the first reconstruction baseline: the nearest training image.
"""

from __future__ import annotations

import io

import numpy as np

from neurobridge.align.embeddings import EmbeddingTable
from neurobridge.align.examples import AlignmentSplit
from neurobridge.align.projector import AlignProjector, project
from neurobridge.config import Settings, get_settings
from neurobridge.evaluate.metrics import retrieval_topk, retrieval_topk_subsets
from neurobridge.storage import filesystem


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def wilson_interval(hits: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``hits`` of ``n``): what a top-1 over ``n`` test images can be
    told apart from, e.g. another encoder's top-1 or chance."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def retrieval_scores(z: np.ndarray, e: np.ndarray, ks=(1, 5), subsets=(50,), draws: int = 200, seed: int = 0) -> dict:
    """Top-k with chance for both directions; row i of ``z`` and of ``e`` belong to the same stimulus."""
    sim = unit(z) @ unit(e).T
    n = len(sim)
    out: dict = {"n_candidates": n}
    for direction, s in (("image", sim), ("brain", sim.T)):
        for key, v in retrieval_topk(s, ks=ks).items():
            out[f"{direction}_{key}"] = v
        for size in subsets:
            if 2 <= size <= n:
                for key, v in retrieval_topk_subsets(s, size, ks=ks, n_draws=draws, seed=seed).items():
                    out[f"{direction}_{key}_n{size}"] = v
    return out


def evaluate_split(model: AlignProjector, split: AlignmentSplit, **kw) -> dict:
    """Scores per session (each session's own test stimuli are the candidates) and their mean."""
    per = {}
    for b, z in zip(split.blocks, project(model, split), strict=True):
        if len(b) >= 2:
            per[b.session] = retrieval_scores(z, b.y, **kw)
    keys = set.intersection(*(set(v) for v in per.values())) if per else set()
    mean = {k: float(np.mean([v[k] for v in per.values()])) for k in sorted(keys)}
    return {"mean": mean, "sessions": per}


def top_k(z: np.ndarray, candidates: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n, k] of the most similar candidates, best first; their cosine similarities)."""
    sim = unit(z) @ unit(candidates).T
    k = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def nearest_train_reconstruction(z: np.ndarray, e_true: np.ndarray, e_train: np.ndarray) -> tuple[dict, np.ndarray]:
    """Reconstruction by retrieval: each test response is 'reconstructed' as its nearest training image.

    Scores compare the retrieved image's embedding with the true image's: mean cosine against the chance level (a
    random training image) and the ceiling (the best training image for that stimulus), and two-way
    identification (is the reconstruction closer to its own image than to another test image; chance 0.5).
    """
    idx, _ = top_k(z, e_train, k=1)
    recon = unit(e_train[idx[:, 0]])
    true = unit(e_true)
    cos_true = np.sum(recon * true, axis=1)
    cross = recon @ true.T  # [recon i, true j]
    n = len(true)
    off = ~np.eye(n, dtype=bool)
    two_way = float((cos_true[:, None] > cross)[off].mean()) if n > 1 else float("nan")
    train_sims = true @ unit(e_train).T
    metrics = {
        "recon_cosine": float(cos_true.mean()),
        "recon_cosine_chance": float(train_sims.mean()),
        "recon_cosine_ceiling": float(train_sims.max(axis=1).mean()),
        "recon_two_way": two_way,
        "recon_two_way_chance": 0.5,
    }
    return metrics, idx[:, 0]


# ---------------------------------------------------------------------------------------------------- figures


def load_thumbnail(uri: str | None, settings: Settings | None = None, size: int = 96) -> np.ndarray | None:
    """An RGB thumbnail of an image at any fsspec URI, or None when there is none or it cannot be read."""
    if uri is None:
        return None
    from PIL import Image

    try:
        fs, path = filesystem(uri, settings or get_settings())
        with Image.open(io.BytesIO(fs.cat_file(path))) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except Exception:  # a figure shows the id instead of a missing or broken image
        return None


def retrieval_figure(
    queries: list[str],
    retrieved: list[list[str]],
    table: EmbeddingTable,
    title: str,
    settings: Settings | None = None,
    first_label: str = "true image",
):
    """Rows: the query's true image, then its retrieved images best first (green frame: the true one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max((len(r) for r in retrieved), default=0)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(queries)), squeeze=False)
    for i, (q, row) in enumerate(zip(queries, retrieved, strict=True)):
        for j, sid in enumerate([q, *row]):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = load_thumbnail(table.image_uri(sid), settings)
            if img is not None:
                ax.imshow(img)
            else:
                ax.text(0.5, 0.5, sid.rsplit("/", 1)[-1], ha="center", va="center", fontsize=6, wrap=True)
            colour = "black" if j == 0 else ("tab:green" if sid == q else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5 if j else 1.0)
            if i == 0:
                ax.set_title(first_label if j == 0 else f"#{j}", fontsize=8)
        axes[i, 0].set_ylabel(q.rsplit("/", 1)[-1], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig

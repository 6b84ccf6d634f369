"""The one figure of a decode run: per-property R² against the ratings' reliability, concept top-k curves against
chance, retrieval top-1 against chance, and the ViT's share of attention on each ROI."""

from __future__ import annotations

import numpy as np

from neurobridge.decode.run_set import DecoderResult


def _done(results: dict[str, list[DecoderResult]], task: str) -> list[tuple[str, DecoderResult]]:
    return [(s, r) for s, rs in results.items() for r in rs if r.task == task and r.skipped is None and r.mean]


def decode_figure(results: dict[str, list[DecoderResult]], title: str = "decode"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _properties(axes[0, 0], _done(results, "properties"))
    _topk(axes[0, 1], _done(results, "concept"))
    _retrieval(axes[1, 0], _done(results, "retrieval"))
    _attention(
        axes[1, 1],
        [
            (s, r)
            for s, r in _done(results, "concept") + _done(results, "properties") + _done(results, "retrieval")
            if r.attention
        ],
    )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _properties(ax, done: list[tuple[str, DecoderResult]]) -> None:
    if not done:
        return _empty(ax, "no property decoding")
    names = list(done[0][1].properties)
    width = 0.8 / len(done)
    x = np.arange(len(names))
    for i, (s, r) in enumerate(done):
        ax.bar(x + i * width, [r.properties[n]["r2"] for n in names], width, label=f"{s} · {r.decoder}")
    rel = [done[0][1].properties[n]["reliability"] for n in names]
    if all(v is not None for v in rel):
        ax.scatter(x + 0.4 - width / 2, rel, marker="_", s=300, color="k", zorder=3, label="ratings' reliability")
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(ylabel="test R²", title="property ratings: R² per property (bar) vs split-half reliability (—)")
    ax.legend(fontsize=7)


def _topk(ax, done: list[tuple[str, DecoderResult]]) -> None:
    if not done:
        return _empty(ax, "no concept decoding")
    n_classes = int(done[0][1].mean["n_classes"])
    for s, r in done:
        k = np.arange(1, len(r.curve) + 1)
        ax.plot(k, r.curve, label=f"{s} · {r.decoder} (top-5 {r.mean.get('top5', np.nan):.2f})")
    k = np.arange(1, max(len(r.curve) for _, r in done) + 1)
    ax.plot(k, k / n_classes, "k--", label=f"chance (k / {n_classes})")
    ax.set(xlabel="k", ylabel="top-k accuracy", title=f"concepts: top-k among {n_classes} classes", ylim=(0, 1))
    ax.legend(fontsize=7)


def _retrieval(ax, done: list[tuple[str, DecoderResult]]) -> None:
    if not done:
        return _empty(ax, "no retrieval")
    labels = [f"{s}\n{r.decoder}" for s, r in done]
    x = np.arange(len(done))
    ax.bar(x - 0.2, [r.mean["image_top1"] for _, r in done], 0.4, label="top-1")
    ax.bar(x + 0.2, [r.mean["image_top5"] for _, r in done], 0.4, label="top-5")
    ax.scatter(x - 0.2, [r.mean["image_chance1"] for _, r in done], marker="_", s=200, color="k", label="chance")
    ax.scatter(x + 0.2, [r.mean["image_chance5"] for _, r in done], marker="_", s=200, color="k")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel="retrieval accuracy", title="image retrieval among the test images", ylim=(0, 1))
    ax.legend(fontsize=7)


def _attention(ax, done: list[tuple[str, DecoderResult]]) -> None:
    if not done:
        return _empty(ax, "no ViT in this run")
    regions = sorted({k for _, r in done for k in r.attention})
    width = 0.8 / len(done)
    x = np.arange(len(regions))
    for i, (s, r) in enumerate(done):
        ax.bar(x + i * width, [r.attention.get(g, 0.0) for g in regions], width, label=f"{s} · {r.task}")
    ax.set_xticks(x + 0.4 - width / 2, regions)
    ax.set(ylabel="share of CLS attention", title="3-D ViT: attention per ROI (last block)")
    ax.legend(fontsize=7)

"""Scores of semantic decoding, each with its reference beside it: top-k accuracy with chance (k / classes),
R² and Pearson r per property with the rating's split-half reliability (and the r it allows, √reliability), and
retrieval among the test images with chance (``align.retrieval``)."""

from __future__ import annotations

import numpy as np

from neurobridge.align.retrieval import retrieval_scores


def topk_curve(logits: np.ndarray, target: np.ndarray, max_k: int) -> np.ndarray:
    """Accuracy at k = 1..max_k: the share of examples whose class is among the k highest scores."""
    if not len(target):
        return np.full(max_k, np.nan)
    true = logits[np.arange(len(target)), target]
    rank = (logits >= true[:, None]).sum(axis=1) - 1  # 0: the true class alone scored highest (ties count against)
    return np.array([(rank < k).mean() for k in range(1, max_k + 1)])


def concept_scores(logits: np.ndarray, target: np.ndarray, ks: list[int]) -> dict:
    n_classes = logits.shape[1]
    curve = topk_curve(logits, target, min(max(max(ks), 50), n_classes))
    out = {"n_classes": n_classes, "n_test": len(target)}
    for k in ks:
        kk = min(k, n_classes)
        out[f"top{k}"] = float(curve[kk - 1])
        out[f"chance{k}"] = kk / n_classes
    out["curve"] = curve.tolist()
    return out


def r2_per_column(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """1 − SSE/SST per column (the test set's own mean as the reference)."""
    sse = ((y - pred) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def pearson_per_column(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    yc, pc = y - y.mean(axis=0), pred - pred.mean(axis=0)
    den = np.sqrt((yc**2).sum(axis=0) * (pc**2).sum(axis=0))
    return np.where(den > 0, (yc * pc).sum(axis=0) / np.where(den > 0, den, 1.0), np.nan)


def property_scores(y: np.ndarray, pred: np.ndarray, names: list[str], reliability: dict[str, float]) -> dict:
    """Per property: R², r, and the ceilings (split-half reliability of the ratings, √ of it for r)."""
    r2, r = r2_per_column(y, pred), pearson_per_column(y, pred)
    per = {}
    for i, name in enumerate(names):
        rel = reliability.get(name)
        per[name] = {
            "r2": float(r2[i]),
            "r": float(r[i]),
            "reliability": None if rel is None else float(rel),
            "r_ceiling": None if rel is None else float(np.sqrt(max(rel, 0.0))),
        }
    best = names[int(np.nanargmax(r2))] if np.isfinite(r2).any() else None
    return {
        "n_test": len(y),
        "r2_mean": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
        "r_mean": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
        "r2_best": float(np.nanmax(r2)) if best else float("nan"),
        "best_property": best,
        "properties": per,
    }


def embedding_scores(z: np.ndarray, e: np.ndarray, subsets: list[int], draws: int, seed: int) -> dict:
    """Retrieval of each test image among all test images (and random subsets), with chance."""
    scores = retrieval_scores(z, e, ks=(1, 5), subsets=tuple(subsets), draws=draws, seed=seed)
    return {"n_test": len(z), **scores}


def mean_over_sessions(per: dict[str, dict]) -> dict:
    """Numeric scores averaged over sessions (each scored on its own test images)."""
    if not per:
        return {}
    keys = set.intersection(*(set(v) for v in per.values()))
    out = {}
    for k in sorted(keys):
        vals = [v[k] for v in per.values()]
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
            out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def mean_properties(per: dict[str, dict]) -> dict[str, dict]:
    """Per property, R² and r averaged over sessions (the ceilings are the ratings', the same everywhere)."""
    names = sorted(set.intersection(*(set(v.get("properties", {})) for v in per.values()))) if per else []
    out = {}
    for name in names:
        cells = [v["properties"][name] for v in per.values()]
        out[name] = {
            "r2": float(np.nanmean([c["r2"] for c in cells])),
            "r": float(np.nanmean([c["r"] for c in cells])),
            "reliability": cells[0]["reliability"],
            "r_ceiling": cells[0]["r_ceiling"],
        }
    return out

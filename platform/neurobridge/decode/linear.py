"""The linear baselines, one model per session (sessions record different units or voxels): ridge regression for
properties and embeddings (closed form through one SVD, every penalty at the cost of one), and multinomial
logistic regression for concepts (L-BFGS). Features are standardised with the training examples' statistics and
the penalty is the one that scores best on the session's validation examples (the middle one without any)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from neurobridge.decode.config import LinearConfig
from neurobridge.decode.data import TaskBlock, TaskData


@dataclass
class SessionLinear:
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # [features, outputs]
    bias: np.ndarray  # [outputs]
    penalty: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std) @ self.weight + self.bias


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 1e-6, std, 1.0)


def _by_session(blocks: list[TaskBlock]) -> dict[str, TaskBlock]:
    return {b.session: b for b in blocks}


def ridge_path(x: np.ndarray, y: np.ndarray, alphas: list[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) for each penalty, from one SVD of the standardised training features."""
    y_mean = y.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ (y - y_mean)
    return [(vt.T @ ((s / (s**2 + a))[:, None] * uty), y_mean) for a in alphas]


def _pick(candidates: list, val: TaskBlock | None, score: Callable, predict: Callable) -> int:
    if val is None or len(val) < 2:
        return len(candidates) // 2
    scores = [score(predict(c, val.x), val.target) for c in candidates]
    return int(np.nanargmax(scores)) if np.isfinite(scores).any() else len(candidates) // 2


def fit_ridge(task: TaskData, cfg: LinearConfig, score: Callable) -> dict[str, SessionLinear]:
    """One ridge per session; ``score(pred, target)`` (higher is better) picks the penalty on validation."""
    val = _by_session(task.splits["val"])
    out = {}
    for b in task.splits["train"]:
        mean, std = _standardiser(b.x)
        xs = ((b.x - mean) / std).astype(np.float64)
        path = ridge_path(xs, b.target.astype(np.float64), cfg.alphas)
        cands = [SessionLinear(mean, std, w, c, a) for (w, c), a in zip(path, cfg.alphas, strict=True)]
        i = _pick(cands, val.get(b.session), score, lambda m, x: m.predict(x))
        out[b.session] = cands[i]
    return out


def _logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, decay: float, steps: int) -> tuple:
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def fit_logistic(task: TaskData, cfg: LinearConfig, seed: int = 0) -> dict[str, SessionLinear]:
    """One multinomial logistic regression per session, over every class of the task (the weight decay that
    gives the lowest validation cross-entropy)."""
    torch.manual_seed(seed)
    val = _by_session(task.splits["val"])
    n = len(task.names)
    out = {}
    for b in task.splits["train"]:
        mean, std = _standardiser(b.x)
        x = torch.as_tensor((b.x - mean) / std, dtype=torch.float32)
        y = torch.as_tensor(b.target)
        cands = [SessionLinear(mean, std, *_logistic(x, y, n, d, cfg.logistic_steps), d) for d in cfg.logistic_decays]
        i = _pick(cands, val.get(b.session), neg_cross_entropy, lambda m, x_: m.predict(x_))
        out[b.session] = cands[i]
    return out


def neg_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(logp[np.arange(len(target)), target].mean())


def predict(models: dict[str, SessionLinear], blocks: list[TaskBlock]) -> list[np.ndarray]:
    return [models[b.session].predict(b.x).astype(np.float32) for b in blocks]

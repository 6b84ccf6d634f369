"""Few-trial transfer to a new session, judged by repeated K-fold cross-validation over all of its trials.

The question pretraining must answer on real data: given k trials of a new recording, does a pretrained model
fine-tuned on them predict held-out units better than (b) the same architecture trained on those k trials alone
(the same step budget, the same val-based selection) and (c) NLB's smoothing baseline fitted on the same trials?
Every arm of a fold sees exactly the same windows:

* test: one fold of all the session's windows (folds from a hash order, so every window is a test window once
  per repeat);
* val: ``val_fraction`` of the other windows, the same for every k (the models pick their step on it);
* train: the first k of the remaining windows in another hash order (nested: the 10 are among the 25);
* smoothing is fitted on train + val (everything the models saw; its kernel and penalty chosen by inner CV).

Scores are pooled over the folds of a repeat and averaged over repeats; every pair of arms gets a paired
bootstrap interval over the session's distinct trials (each trial's gain averaged over its repeats).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from neurobridge.config import Settings
from neurobridge.evaluate import baselines, metrics
from neurobridge.evaluate.crossval import fold_windows
from neurobridge.evaluate.readout import batches, heldout_mask
from neurobridge.models.config import ModelConfig
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.models.vocab import Vocabularies
from neurobridge.store.rows import stack_counts
from neurobridge.store.splits import HeldoutSplit, with_heldout
from neurobridge.train.finetune import FinetuneConfig, finetune, pick_windows

SMOOTHING = "smoothing"


@dataclass(frozen=True)
class Arm:
    """A model arm: fine-tune ``model_file`` (a pretrained model) or, with None, train ``scratch`` from scratch;
    ``recipe``: FinetuneConfig fields that differ from the shared recipe (a variant under study)."""

    name: str
    model_file: str | None
    scratch: ModelConfig | None = None
    recipe: dict = field(default_factory=dict)

    def recipe_of(self, shared: FinetuneConfig) -> FinetuneConfig:
        """The shared recipe with this arm's changes, validated (``model_copy(update=…)`` checks nothing: a
        misspelt field or a contradiction would train silently with the shared recipe)."""
        return FinetuneConfig.model_validate(shared.model_dump() | self.recipe) if self.recipe else shared


@dataclass
class KShotPlan:
    """What one cross-validation run compares: arms, trial counts (None: all), folds, repeats, selection."""

    arms: list[Arm]
    ks: list[int | None]
    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.1
    smoothing_ms: Sequence[float] = baselines.SMOOTHING_MS
    batch_size: int = 64


@dataclass
class _Scores:
    """(rates, spikes) of held-out cells per arm, in fold order, and the trial key of every test window."""

    pairs: dict[str, list] = field(default_factory=dict)
    trials: list[str] = field(default_factory=list)
    per_fold: list[dict] = field(default_factory=list)


@torch.no_grad()
def cosmoothing_rates(model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], batch_size: int = 64):
    """[windows, bins, units] predictions with the held-out units masked (rows carry ``heldout`` flags)."""
    model.eval()
    out = []
    for b in batches(rows, vocabs, model.cfg.neurons_per_token, batch_size):
        out.append(model.predict(b, heldout_mask(model, b)).double().numpy().transpose(0, 2, 1))
    T = min(x.shape[1] for x in out)
    return np.concatenate([x[:, :T] for x in out])


@dataclass(frozen=True)
class _TestFold:
    rows: list[dict]  # with held-out flags
    spikes: np.ndarray  # [windows, bins, units]
    held: np.ndarray  # [units] bool

    @classmethod
    def of(cls, test: list[dict], split: HeldoutSplit) -> _TestFold:
        flagged = with_heldout(test, split)
        return cls(flagged, stack_counts(flagged), np.asarray(flagged[0]["heldout"], dtype=bool))


def kshot_crossval(
    ft: FinetuneConfig,
    rows: list[dict],
    split: HeldoutSplit,
    plan: KShotPlan,
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Every arm and smoothing at every k on every fold of ``rows`` (all windows of ``ft.session``).

    ``ft`` is the recipe every model arm trains with (steps, lr, selection); its ``trials`` is replaced by k.
    Returns, per k: pooled co-bps per arm, paired differences of every pair, and per-fold numbers.
    """
    scores = {k: _Scores() for k in plan.ks}
    for rep in range(plan.repeats):
        recipe = ft.model_copy(update={"seed": ft.seed + rep, "trials": None})
        for f, (pool, val, test) in enumerate(fold_windows(rows, plan.folds, plan.val_fraction, ft.seed + rep)):
            ranked = pick_windows(pool, None, f"kshot\x1f{ft.seed + rep}")
            fold = _TestFold.of(test, split)
            for k in plan.ks:
                train = ranked if k is None else ranked[:k]
                if progress is not None:
                    progress(f"repeat {rep + 1}/{plan.repeats}, fold {f + 1}/{plan.folds}, k={k or 'all'}")
                fitted = {
                    a.name: finetune(a.recipe_of(recipe), a.model_file, settings, a.scratch, (train, val))
                    for a in plan.arms
                }
                got = _score(scores[k], fitted, train + val, fold, plan, split)
                got.update(repeat=rep, fold=f)
                if progress is not None:
                    names = [a.name for a in plan.arms] + [SMOOTHING]
                    progress("    co-bps " + ", ".join(f"{n} {got[n]:+.4f}" for n in names))
    return {str(k or "all"): _summary(scores[k], plan, ft.seed, k) for k in plan.ks}


def _score(s: _Scores, fitted: dict, seen: list[dict], fold: _TestFold, plan: KShotPlan, split) -> dict:
    """Each arm's and smoothing's held-out predictions on the test fold, appended to ``s``; the fold's numbers."""
    spikes, held = fold.spikes, fold.held
    T = spikes.shape[1]
    out = {"test_windows": len(fold.rows), "seen_windows": len(seen)}
    for name, res in fitted.items():
        pred = cosmoothing_rates(res.model, res.vocabs, fold.rows, plan.batch_size)[:, :T]
        s.pairs.setdefault(name, []).append((pred[..., held], spikes[..., held]))
        out[name] = metrics.bits_per_spike(pred[..., held], spikes[..., held])
        out[f"{name}_selected_step"] = res.last.get("selected_step", res.last.get("step"))
        if "selected_step" in res.last:  # picked on val: was the val loss still falling when the budget ran out?
            out[f"{name}_picked_last_step"] = res.last["selected_step"] == res.last.get("step")
        out["train_windows"] = len(res.windows)
    counts = stack_counts(with_heldout(seen, split))[:, :T]
    smooth, choice = baselines.smoothing_search(
        counts[..., ~held], counts[..., held], spikes[..., ~held], float(fold.rows[0]["bin_ms"]), plan.smoothing_ms
    )
    s.pairs.setdefault(SMOOTHING, []).append((smooth, spikes[..., held]))
    out[SMOOTHING] = metrics.bits_per_spike(smooth, spikes[..., held])
    out |= {"smoothing_sigma_ms": choice.sigma_ms, "smoothing_l2": choice.l2}
    s.trials += [str(w["sample_id"]) for w in fold.rows]
    s.per_fold.append(out)
    return out


def _summary(s: _Scores, plan: KShotPlan, seed: int, k: int | None) -> dict:
    folds = plan.folds

    def pooled(got: list) -> float:  # pooled over the folds of a repeat, then the mean over repeats
        return float(np.mean([metrics.pooled_bits_per_spike(got[i : i + folds]) for i in range(0, len(got), folds)]))

    names = [a.name for a in plan.arms] + [SMOOTHING]
    out: dict = {"k": k, "co_bps": {n: pooled(s.pairs[n]) for n in names}, "differences": {}}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = metrics.paired_bps_difference(s.pairs[a], s.pairs[b], seed=seed, trials=s.trials)
            out["differences"][f"{a} - {b}"] = asdict(d)
    ends = {n: [f[f"{n}_picked_last_step"] for f in s.per_fold if f"{n}_picked_last_step" in f] for n in names}
    out["picked_last_step"] = {n: float(np.mean(e)) for n, e in ends.items() if e}  # share of folds
    return out | {"per_fold": s.per_fold}


def difference(summary: dict, a: str, b: str) -> dict:
    """``a`` − ``b`` from one k's ``differences``, which hold every pair once, in arm order: a pair stored the other
    way round is flipped whole (difference, interval, and the bootstrap share; exact ties do not occur with
    continuous rates)."""
    pairs = summary["differences"]
    if f"{a} - {b}" in pairs:
        return pairs[f"{a} - {b}"]
    d = pairs[f"{b} - {a}"]
    return d | {
        "bps": -d["bps"],
        "ci_low": -d["ci_high"],
        "ci_high": -d["ci_low"],
        "prob_positive": 1 - d["prob_positive"],
    }

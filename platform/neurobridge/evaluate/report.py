"""`neurobridge evaluate`: a model and its baselines on the same sessions, split and held-out units.

Per session (count data): co-bps on held-out units predicted from held-in units (NLB's official split when the
data has one, else the deterministic per-session hash split training used), fp-bps on the last bins, per-region
leave-one-region-out bps, and behaviour R² decoded as NLB does (``behaviour.py``). Beside them, on the same cells:
the mean rate (0 by definition), NLB's spike smoothing + Poisson GLM (kernel in ms and penalty chosen by
cross-validation on the training windows, both reported, a warning when it scores about 0), and, on simulated
data, the oracle from true rates. fp-bps is reported as ``fp_bps`` only for models trained to forecast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from neurobridge.evaluate import baselines, metrics
from neurobridge.evaluate.behaviour import BehaviorConfig, decode_smoothed
from neurobridge.evaluate.readout import (
    ReadoutFit,
    all_unit_rates,
    batches,
    heldout_mask,
    latent_readout,
    untrained_like,
)
from neurobridge.evaluate.truth import Truth
from neurobridge.models.config import ALL_PROMPTS
from neurobridge.models.masking import MaskResult, mask_last_bins
from neurobridge.models.ndt import MaskedNeuralModel, bin_means
from neurobridge.models.patching import Batch
from neurobridge.models.vocab import Vocabularies
from neurobridge.store.rows import SessionRows, stack_behavior, stack_counts
from neurobridge.store.splits import HeldoutSplit, with_heldout


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = Field(64, ge=1)
    forward_fraction: float = Field(0.2, gt=0, lt=1, description="fp-bps scores the last fraction of each window")
    smoothing_ms: list[float] = Field(
        default_factory=lambda: list(baselines.SMOOTHING_MS),
        min_length=1,
        description="NLB smoothing baseline kernel s.d. grid (ms, converted with each dataset's bin width); "
        "the kernel and glm_l2 are chosen together by cross-validation on the training windows",
    )
    glm_l2: list[float] = Field(
        default_factory=lambda: list(baselines.GLM_L2),
        min_length=1,
        description="smoothing GLM penalties; several: chosen by cross-validation on the training windows",
    )
    behavior: BehaviorConfig = Field(default_factory=BehaviorConfig)
    forecast: bool | None = Field(
        None,
        description="whether the model trained to forecast (the forward mode): fp-bps is reported as fp_bps only "
        "then, else as fp_bps_not_trained; None: read from the checkpoint",
    )
    max_sessions: int | None = Field(None, ge=1, description="per dataset")
    max_train_windows: int = Field(1000, ge=1, description="training windows per session for baselines/decoders")
    allow_partial: bool = Field(
        False, description="evaluate on dataset versions with failed items (refused by default; the run records them)"
    )
    latent_readout: bool = Field(
        False,
        description="also score held-out units through a Poisson GLM on the encoder's latents, smoothed and "
        "fitted per session like the smoothing baseline (its chosen kernel, glm_l2), beside the same read-out of "
        "an untrained encoder of the same architecture (its control: random features read out the same way)",
    )


NEAR_ZERO_BPS = 0.005  # a smoothing baseline this close to 0 has collapsed to the mean rate: say so


@dataclass
class SessionResult:
    dataset: str
    session: str
    windows: int
    heldout_units: int
    metrics: dict[str, float] = field(default_factory=dict)
    regions: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # arrays kept for pooling (held-out cells only)
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)


def _predict(model: MaskedNeuralModel, batch: Batch, mask: MaskResult) -> np.ndarray:
    """[windows, bins, units] expected counts for ``mask``'s target cells (and reconstructions elsewhere)."""
    per_unit = model.predict(batch, mask)  # [B, U, T]
    return per_unit.double().numpy().transpose(0, 2, 1)


def _region_mask(batch: Batch, region_id: int) -> MaskResult:
    target = batch.token_valid & (batch.token_region == region_id)
    ids = torch.full((batch.tokens.shape[0],), ALL_PROMPTS.index("inter_region"), dtype=torch.long)
    return MaskResult(target, batch.token_valid & ~target, ids)


def _latents_per_bin(model: MaskedNeuralModel, batch: Batch) -> np.ndarray:
    """[windows, bins, d]: encoder outputs averaged over each bin's patches (what behaviour decoders read)."""
    lat = model.encode(batch)
    return bin_means(lat.tokens, batch.token_time, lat.token_valid, batch.bin_mask.shape[1]).double().numpy()


@dataclass
class _Session:
    """One session's evaluation data: test and training windows (with held-out flags) and the test spikes."""

    test: list[dict]
    train: list[dict]
    spikes: np.ndarray  # [test windows, bins, units]
    held: np.ndarray  # [units] bool
    regions: np.ndarray  # [units] str
    n_forward: int  # fp-bps scores this many last bins
    bin_ms: float

    @property
    def bins(self) -> int:
        return self.spikes.shape[1]


@dataclass
class _Predictions:
    co: np.ndarray  # co-smoothing (held-out units masked)
    fp: np.ndarray  # forward prediction (last bins masked)
    by_region: dict[str, np.ndarray]  # leave-one-region-out


def _predict_all(model: MaskedNeuralModel, vocabs: Vocabularies, s: _Session, batch_size: int) -> _Predictions:
    T = s.bins
    co, fp = [], []
    by_region: dict[str, list[np.ndarray]] = {}
    for batch in batches(s.test, vocabs, model.cfg.neurons_per_token, batch_size):
        co.append(_predict(model, batch, heldout_mask(model, batch))[:, :T])
        fp.append(_predict(model, batch, mask_last_bins(batch, s.n_forward))[:, :T])
        for name in np.unique(s.regions):
            rid = int(vocabs.region.lookup([name])[0])
            by_region.setdefault(name, []).append(_predict(model, batch, _region_mask(batch, rid))[:, :T])
    regions = {name: np.concatenate(parts) for name, parts in by_region.items()}
    return _Predictions(np.concatenate(co), np.concatenate(fp), regions)


def _session(sess: SessionRows, split: HeldoutSplit, cfg: EvalConfig) -> _Session | None:
    test = with_heldout(sess.split(cfg.split), split)
    train = with_heldout(sess.split("train")[: cfg.max_train_windows], split)
    if not test or test[0].get("counts") is None:
        return None
    spikes = stack_counts(test)
    return _Session(
        test,
        train,
        spikes,
        np.asarray(test[0]["heldout"], dtype=bool),
        np.asarray(test[0]["unit_regions"]).astype(str),
        max(1, int(round(cfg.forward_fraction * spikes.shape[1]))),
        float(test[0]["bin_ms"]),
    )


@torch.no_grad()
def session_behaviour(
    model: MaskedNeuralModel,
    vocabs: Vocabularies,
    sess: SessionRows,
    split: HeldoutSplit,
    decoders: dict[str, BehaviorConfig],
    cfg: EvalConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Behaviour R² of several feature sets (label → decoder settings) beside smoothed spikes, without the rest of
    the report: each feature kind and the baseline computed once for all of them."""
    cfg = cfg or EvalConfig()
    s = _session(sess, split, cfg)
    out: dict[str, dict[str, float]] = {label: {} for label in decoders}
    if s is not None:
        model.eval()
        done: dict = {}
        for label, b in decoders.items():
            _behaviour(model, vocabs, s, cfg.model_copy(update={"behavior": b}), out[label], done)
    return out


@torch.no_grad()
def evaluate_session(
    model: MaskedNeuralModel,
    vocabs: Vocabularies,
    sess: SessionRows,
    split: HeldoutSplit,
    cfg: EvalConfig,
    truth: Truth | None = None,
    raw_ids: dict[str, str] | None = None,
) -> SessionResult | None:
    s = _session(sess, split, cfg)
    if s is None:
        return None  # MUA sessions: no bits/spike
    model.eval()
    spikes = s.spikes
    res = SessionResult(sess.dataset, sess.session, len(s.test), int(s.held.sum()))
    pred = _predict_all(model, vocabs, s, cfg.batch_size)
    if s.held.any() and np.nansum(spikes[..., s.held]) > 0:
        _cosmoothing(model, vocabs, s, pred.co, cfg, res)
    elif any(split.official.get(sess.session, {}).values()):  # NLB's test files: held-in units only
        res.warnings.append(
            f"{sess.dataset}/{sess.session}: its {cfg.split} windows hold none of its held-out units (NLB's test "
            "files: held-out units only in NLB's target file), so no co-bps here: write them with --nlb-out "
            "(and --nlb-smoothing-out) and score with `neurobridge nlb-score … --target`"
        )
    fp = metrics.fp_bps(pred.fp, spikes, s.n_forward, time_axis=1)
    res.metrics["fp_bps" if cfg.forecast else "fp_bps_not_trained"] = fp  # a forecast only from a forecaster
    if len(pred.by_region) > 1:
        for name, p in pred.by_region.items():
            sel = s.regions == name
            res.regions[name] = metrics.bits_per_spike(p[..., sel], spikes[..., sel])
    if truth is not None and truth.has(sess.session):
        _oracle(truth.expected_counts(sess.session, s.test, raw_ids or {})[:, : s.bins], s, pred.co, res)
    _behaviour(model, vocabs, s, cfg, res.metrics)
    return res


def _cosmoothing(
    model: MaskedNeuralModel, vocabs: Vocabularies, s: _Session, co_pred: np.ndarray, cfg: EvalConfig, res
) -> None:
    """co-bps of the model beside the mean rate, the smoothing baseline and (opt-in) the latent read-outs."""
    m, held, spikes, T = res.metrics, s.held, s.spikes, s.bins
    m["co_bps"] = metrics.co_bps(co_pred, spikes, held)
    m["co_bps_mean_rate"] = metrics.co_bps(baselines.mean_rate_baseline(spikes), spikes, held)
    res.pooled["model"] = (co_pred[..., held], spikes[..., held])
    if not s.train:
        return
    tr = stack_counts(s.train)[:, :T]
    if tr.shape[1] != T:
        return
    smooth, choice = baselines.smoothing_search(
        tr[..., ~held], tr[..., held], spikes[..., ~held], s.bin_ms, cfg.smoothing_ms, cfg.glm_l2
    )
    m["co_bps_smoothing"] = metrics.bits_per_spike(smooth, spikes[..., held])
    m["smoothing_sigma_ms"], m["smoothing_l2"] = choice.sigma_ms, choice.l2
    res.pooled["smoothing"] = (smooth, spikes[..., held])
    if abs(m["co_bps_smoothing"]) < NEAR_ZERO_BPS:
        res.warnings.append(
            f"{res.dataset}/{res.session}: the smoothing baseline scores {m['co_bps_smoothing']:+.4f} co-bps, "
            f"about the mean rate (kernel {choice.sigma_ms:g} ms, L2 {choice.l2:g}, inner CV "
            f"{choice.cv_bps:+.4f}): a comparison against it says little; check the kernel and penalty grids"
        )
    if not cfg.latent_readout:
        return
    fit = ReadoutFit(cfg.glm_l2, choice.sigma_bins(s.bin_ms), cfg.batch_size)
    for key, net in (("readout", model), ("readout_untrained", untrained_like(model, vocabs))):
        rd = latent_readout(net, vocabs, s.train, tr[..., held], s.test, fit)[:, :T]
        m[f"co_bps_{key}"] = metrics.bits_per_spike(rd, spikes[..., held])
        res.pooled[key] = (rd, spikes[..., held])


def _oracle(oracle: np.ndarray, s: _Session, co_pred: np.ndarray, res: SessionResult) -> None:
    """The simulator's true rates scored like the model, on the windows the truth covers."""
    ok = ~np.isnan(oracle).any(axis=(1, 2))
    if not (ok.any() and s.held.any()):
        return
    m, spikes, held = res.metrics, s.spikes, s.held
    m["co_bps_oracle"] = metrics.co_bps(oracle[ok], spikes[ok], held)
    m["fp_bps_oracle"] = metrics.fp_bps(oracle[ok], spikes[ok], s.n_forward, time_axis=1)
    res.pooled["oracle"] = (oracle[ok][..., held], spikes[ok][..., held])
    if not ok.all():  # the model's score on exactly the oracle's windows, for an honest ratio
        m["co_bps_on_oracle_windows"] = metrics.co_bps(co_pred[ok], spikes[ok], held)


def _latents_per_patch(model: MaskedNeuralModel, batch: Batch) -> np.ndarray:
    """[windows, bins, patches × d]: every patch's encoder output side by side. The per-bin mean keeps d numbers of
    a bin's patches; a decoder may need which patch said what (Stevenson M1 velocity R²: 0.40 → 0.61)."""
    lat = model.encode(batch)
    B, _, d = lat.tokens.shape
    T = batch.bin_mask.shape[1]
    patch = batch.token_patch.clamp_min(0)
    P = int(patch[lat.token_valid].max()) + 1 if lat.token_valid.any() else 1
    slot = (batch.token_time * P + patch).masked_fill(~lat.token_valid, T * P)  # invisible tokens: a spare slot
    out = torch.zeros(B, T * P + 1, d, dtype=lat.tokens.dtype)
    out.scatter_(1, slot[..., None].expand(-1, -1, d), lat.tokens)
    return out[:, : T * P].reshape(B, T, P * d).double().numpy()


@torch.no_grad()
def features(model: MaskedNeuralModel, vocabs: Vocabularies, rows: list[dict], kind: str, batch_size: int):
    """[windows, bins, ·] what behaviour is decoded from: rates of every unit, per-bin or per-patch latents."""
    if kind == "rates":
        return all_unit_rates(model, vocabs, rows, batch_size)
    per = _latents_per_patch if kind == "patch_latents" else _latents_per_bin
    k = model.cfg.neurons_per_token
    return np.concatenate([per(model, b) for b in batches(rows, vocabs, k, batch_size)])


def _behaviour(
    model: MaskedNeuralModel, vocabs: Vocabularies, s: _Session, cfg: EvalConfig, m: dict, done: dict | None = None
) -> None:
    """Behaviour R² as NLB scores it, from the model's rates or latents and from smoothed spikes. ``done`` carries
    features and the smoothed-spikes decoder between calls on one session, so comparing feature sets computes
    each feature kind and the baseline once."""
    y_te, y_tr = stack_behavior(s.test), stack_behavior(s.train)
    if y_te is None or y_tr is None or len(s.train) < 5:
        return
    done = {} if done is None else done
    b = cfg.behavior
    T = s.bins
    if b.features not in done:
        done[b.features] = tuple(
            features(model, vocabs, rows, b.features, cfg.batch_size)[:, :T] for rows in (s.train, s.test)
        )
    x_tr, x_te = done[b.features]
    found = decode_smoothed((x_tr, y_tr[:, :T]), (x_te, y_te[:, :T]), b, s.bin_ms, b.feature_smoothing_ms)
    if found is None:
        return
    got, kernel = found
    m["behavior_r2"], m["behavior_alpha"], m["behavior_lag_ms"] = got.r2, got.alpha, b.lag_ms
    if got.alpha_at_edge:
        m["behavior_alpha_at_edge"] = 1.0
    if b.feature_smoothing_ms != [0.0]:
        m["behavior_feature_smoothing_ms"] = kernel
    baseline = "smoothed spikes " + b.model_dump_json(exclude={"features", "feature_smoothing_ms"})
    if baseline not in done:
        spikes_tr = stack_counts(s.train)[:, :T]
        done[baseline] = decode_smoothed((spikes_tr, y_tr[:, :T]), (s.spikes, y_te[:, :T]), b, s.bin_ms)
    smoothed = done[baseline]
    if smoothed is not None:
        m["behavior_r2_smoothing"], m["behavior_smoothing_ms"] = smoothed[0].r2, smoothed[1]


@dataclass
class Report:
    sessions: list[SessionResult]
    pooled: dict[str, dict[str, float]]  # dataset → {co_bps, co_bps_smoothing, co_bps_oracle}
    run_id: str | None = None

    def table(self) -> list[dict]:
        rows = []
        for r in self.sessions:
            rows.append(
                {
                    "dataset": r.dataset,
                    "session": r.session,
                    "windows": r.windows,
                    "heldout_units": r.heldout_units,
                    **r.metrics,
                    **{f"region_bps.{k}": v for k, v in r.regions.items()},
                }
            )
        return rows

    @property
    def warnings(self) -> list[str]:
        return [w for r in self.sessions for w in r.warnings]

    def to_dict(self) -> dict:
        return {"sessions": self.table(), "pooled": self.pooled, "warnings": self.warnings}


def pool(results: list[SessionResult]) -> dict[str, dict[str, float]]:
    """Per dataset: bits/spike with held-out cells of all sessions pooled (each session with its own null)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.dataset for r in results):
        mine = [r for r in results if r.dataset == name]
        d = {}
        labels = (
            ("model", "co_bps"),
            ("readout", "co_bps_readout"),
            ("readout_untrained", "co_bps_readout_untrained"),
            ("smoothing", "co_bps_smoothing"),
            ("oracle", "co_bps_oracle"),
        )
        for key, label in labels:
            pairs = [r.pooled[key] for r in mine if key in r.pooled]
            if pairs and len(pairs) == len([r for r in mine if "model" in r.pooled]):
                d[label] = metrics.pooled_bits_per_spike(pairs)
        if "co_bps" in d and "co_bps_oracle" in d and d["co_bps_oracle"] > 0:
            d["model_over_oracle"] = d["co_bps"] / d["co_bps_oracle"]
            if "co_bps_smoothing" in d:
                d["smoothing_over_oracle"] = d["co_bps_smoothing"] / d["co_bps_oracle"]
        for key in ("fp_bps", "fp_bps_not_trained", "behavior_r2", "behavior_r2_smoothing"):
            vals = [r.metrics[key] for r in mine if key in r.metrics and np.isfinite(r.metrics[key])]
            if vals:
                d[f"{key}_mean"] = float(np.mean(vals))
        d["sessions"] = len(mine)
        out[name] = d
    return out

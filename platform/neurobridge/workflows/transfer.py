"""The real-data transfer protocol as one job (``python jobs/transfer.py --config jobs/configs/transfer_*.yaml``).

Pretrain on real recordings (one model per corpus: real sessions only, and with the simulator's sessions added),
hold one session out entirely, and judge what pretraining buys on it with few trials: for every k, the pretrained
model fine-tuned on k trials vs the same architecture trained on those k trials alone (same step budget, same
val-based selection) vs NLB's smoothing baseline fitted on the same trials, by repeated K-fold cross-validation
over all its trials (``evaluate/kshot.py``). Every dataset is ingested at one bin width (a model has one), which
the entries' own widths must divide. Results go to MLflow (experiment ``neurobridge-transfer``) and a JSON.
Optionally, behaviour: velocity R² on a dataset's test chunks from the pretrained model's rates and latents vs
smoothed spikes (``evaluate/behaviour.py``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neurobridge.catalog import resolve
from neurobridge.config import ConfigError, Settings, describe_validation_error, get_settings, set_dotted
from neurobridge.evaluate.behaviour import WIDE_ALPHAS, BehaviorConfig
from neurobridge.evaluate.kshot import Arm, KShotPlan, difference, kshot_crossval
from neurobridge.evaluate.run import EvalData, evaluate_behaviour, resolve_model_file
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.sim import SimConfig, simulate
from neurobridge.storage import StoreError
from neurobridge.store.read import sources
from neurobridge.store.rows import session_rows
from neurobridge.store.splits import HeldoutSplit, heldout_flags
from neurobridge.tracking import mlflow_run
from neurobridge.train.config import load_config
from neurobridge.train.finetune import FinetuneConfig
from neurobridge.train.pretrain import pretrain
from neurobridge.workflows.protocols import missed_targets


class Corpus(BaseModel):
    """One pretraining corpus: catalog entries (and, with ``simulated``, the simulator's reaching sessions)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datasets: list[str] = Field(min_length=1, description="catalog entry names")
    simulated: bool = Field(False, description="add the simulator's reaching sessions (catalog demo: sim_nwb)")
    model: str | None = Field(
        None, description="an already pretrained model (runs:/<run id> or model.pt) instead of pretraining here"
    )


class Variant(BaseModel):
    """A fine-tuning recipe under study, as extra arms beside the shared recipe's (same folds, same windows)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    finetune: dict = Field(description="FinetuneConfig fields that differ from the shared recipe")
    corpora: list[str] | None = Field(None, description="corpora whose pretrained model it fine-tunes (None: all)")
    alone: bool = Field(False, description="also an arm trained alone with this recipe")

    def fine_tunes(self, corpus: str) -> bool:
        return self.corpora is None or corpus in self.corpora


def finetuned_arm(corpus: str, variant: Variant | None = None) -> str:
    """An arm's name: the corpus's pretrained model fine-tuned with the shared recipe or with ``variant``'s."""
    return f"finetuned:{corpus}" if variant is None else f"finetuned:{corpus}+{variant.name}"


class BehaviorCheck(BaseModel):
    """Behaviour decoded on a pretraining dataset's test windows, from the pretrained model and from smoothing."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    corpus: str
    lag_ms: float = 0.0
    alphas: list[float] = Field(
        default_factory=lambda: list(WIDE_ALPHAS),
        min_length=1,
        description="ridge penalties of every decoder, smoothed spikes' included (default 1e-4…1e4: NLB's grid "
        "stops at 1, which latents outgrow)",
    )
    feature_smoothing_ms: list[float] = Field(
        default_factory=list,
        description="also decode from the model's rates and patch latents smoothed by a kernel chosen from this grid "
        "(ms, 0 = none) by the decoder's cross-validation, as the smoothed-spikes decoder chooses its own "
        "('rates_smoothed', 'patch_latents_smoothed')",
    )


class Targets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: list[int] = Field(default_factory=lambda: [25], description="k at which fine-tuned must beat trained-alone")
    min_gain_bps: float = 0.02
    behavior_margin: float = 0.05
    variant: str | None = Field(
        None,
        description="the variant whose arm on the first corpus is judged (the recipe the docs recommend for the new "
        "session); None: the shared recipe's",
    )


class TransferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    experiment: str = "neurobridge-transfer"
    catalog: str = Field("excerpts", description="catalog ref holding every dataset named below")
    bin_ms: float = Field(50.0, gt=0, description="every dataset is ingested at this bin width")
    new_session: str = Field(description="catalog entry of the held-out recording (one session)")
    corpora: list[Corpus] = Field(min_length=1)
    sim: SimConfig | None = Field(None, description="simulator settings for corpora with simulated: true")
    pretrain: str = Field(description="pretraining config YAML (relative to this file); data is set here")
    pretrain_overrides: dict = Field(default_factory=dict, description="--set style overrides of it")
    finetune: dict = Field(default_factory=dict, description="FinetuneConfig fields for every model arm")
    variants: list[Variant] = Field(default_factory=list, description="extra arms: other recipes, same folds")
    ks: list[int | None] = Field(description="training trials of the new session per arm (null: all)")
    folds: int = Field(5, ge=2)
    repeats: int = Field(1, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    behavior: BehaviorCheck | None = None
    targets: Targets = Field(default_factory=Targets)

    @model_validator(mode="after")
    def _recipes_are_finetune_configs(self) -> TransferConfig:
        """Every arm's recipe checked now, not after an hour of pretraining: the shared one and each variant's."""
        where = {"dataset": "-", "session": "-"}  # the new session's, known only once it is ingested
        for name, recipe in [("finetune", self.finetune)] + [
            (f"variant {v.name!r}", v.finetune) for v in self.variants
        ]:
            try:
                FinetuneConfig.model_validate(where | self.finetune | recipe)
            except ValidationError as err:
                raise ValueError(describe_validation_error(err, FinetuneConfig, name).replace("\n", "; ")) from None
        first = self.corpora[0].name
        judged = self.targets.variant
        if judged is not None and not any(v.name == judged and v.fine_tunes(first) for v in self.variants):
            raise ValueError(
                f"targets.variant {judged!r} names no variant that fine-tunes corpus {first!r} (variants: "
                f"{', '.join(v.name for v in self.variants) or 'none'}); add it or set targets.variant: null"
            )
        return self

    def judged_arm(self) -> str:
        """The arm the targets judge: the first corpus's model fine-tuned with the shared recipe or the named
        variant's."""
        variant = next((v for v in self.variants if v.name == self.targets.variant), None)
        return finetuned_arm(self.corpora[0].name, variant)


def load_transfer(path: str | Path, overrides: dict | None = None) -> TransferConfig:
    """The protocol's config from YAML plus ``--set`` overrides; errors name the file and the key."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    try:
        return TransferConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, TransferConfig, str(path))) from None


def _ingest(cfg: TransferConfig, settings: Settings, names: list[str], simulated: bool) -> dict[str, str]:
    """Every named entry (and sim_nwb when asked) at the protocol's bin width → ``name@version`` refs."""
    entries = [e for e in resolve(cfg.catalog) if e.name in names]
    missing = sorted(set(names) - {e.name for e in entries})
    if missing:
        raise StoreError(f"catalog {cfg.catalog!r} has no entries {missing}")
    if simulated:
        simulate(f"{settings.raw_root}/sim", cfg.sim or SimConfig(), progress=False)
        entries += [e for e in resolve("demo") if e.name == "sim_nwb"]
    entries = [e.at_bin_ms(cfg.bin_ms) for e in entries]
    reports = ingest_many(entries, settings, progress=False)
    bad = [r for r in reports if isinstance(r, Exception) or not r.ok]
    if bad:
        raise StoreError(f"ingest failed: {bad}")
    return {r.dataset: f"{r.dataset}@{r.version}" for r in reports}


def _pretrain(cfg: TransferConfig, corpus: Corpus, refs: dict[str, str], settings: Settings, config_dir: Path):
    names = corpus.datasets + (["sim_nwb"] if corpus.simulated else [])
    over = cfg.pretrain_overrides | {
        "name": f"{cfg.name}-{corpus.name}",
        "data.mixture": None,
        "data.datasets": [refs[n] for n in names],
    }
    pcfg = load_config(config_dir / cfg.pretrain, over)
    result = pretrain(pcfg, settings)
    return pcfg, result.run_id


def run_transfer(
    cfg: TransferConfig, config_dir: str | Path = "jobs/configs", out: str | None = None, echo=print
) -> dict:
    """The whole protocol; returns (and writes to ``out``) the results, logged to MLflow as one run."""
    settings = get_settings()
    t0 = time.perf_counter()
    names = sorted({d for c in cfg.corpora for d in c.datasets} | {cfg.new_session})
    echo(f"ingest at {cfg.bin_ms:g} ms: {', '.join(names)}")
    refs = _ingest(cfg, settings, names, any(c.simulated for c in cfg.corpora))
    models, runs = {}, {}
    pcfg = load_config(Path(config_dir) / cfg.pretrain, cfg.pretrain_overrides)
    for corpus in cfg.corpora:
        if corpus.model is None:
            echo(f"pretrain on corpus {corpus.name!r}")
            pcfg, run_id = _pretrain(cfg, corpus, refs, settings, Path(config_dir))
            runs[corpus.name] = f"runs:/{run_id}"
        else:
            runs[corpus.name] = corpus.model
        models[corpus.name] = resolve_model_file(runs[corpus.name], settings)
    results: dict = {"config": cfg.model_dump(mode="json"), "datasets": refs, "pretrain_runs": runs}
    if cfg.behavior is not None:
        results["behavior"] = behaviour_check(cfg.behavior, refs, models, settings)
        got = ", ".join(f"{k} {r.get('behavior_r2', float('nan')):.3f}" for k, r in results["behavior"].items())
        smooth = next(iter(results["behavior"].values())).get("behavior_r2_smoothing", float("nan"))
        echo(f"behaviour R² on {cfg.behavior.dataset}: {got}; smoothed spikes {smooth:.3f}")
    src = sources(settings, [refs[cfg.new_session]])[0]
    found = session_rows(settings, src, ("train", "val", "test"))
    if len(found) != 1:
        raise StoreError(f"{cfg.new_session}: the held-out recording must hold one session, found {len(found)}")
    rows = [r for part in found[0].rows.values() for r in part]
    split = HeldoutSplit(heldout_flags(settings, [src]), pcfg.data.heldout_fraction)
    ft = FinetuneConfig(dataset=refs[cfg.new_session], session=found[0].session, **cfg.finetune)
    plan = KShotPlan(arms(cfg, models, pcfg.model), cfg.ks, cfg.folds, cfg.repeats, cfg.val_fraction)
    results["new_session"] = {"dataset": refs[cfg.new_session], "session": ft.session, "windows": len(rows)}
    results["kshot"] = kshot_crossval(ft, rows, split, plan, settings, progress=echo)
    for line in budget_warnings(results["kshot"]):
        echo(line)
    results["targets"] = targets(cfg, results)
    for line in summary(cfg, results):
        echo(line)
    results["seconds"] = time.perf_counter() - t0
    if out:  # first: results that took minutes must not depend on the tracking server being well
        Path(out).write_text(json.dumps(results, indent=1, default=float))
    results["run_id"] = _track(cfg, results, settings)
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=float))
    return results


def budget_warnings(kshot: dict) -> list[str]:
    """Arms whose best val step was their last in most folds: still improving when the budget ran out, so the
    comparison may understate them (more steps or a higher learning rate may score higher)."""
    return [
        f"k={k}: {arm} picked its last step in {share:.0%} of folds (val loss still falling): it may be under-trained"
        for k, res in kshot.items()
        for arm, share in res.get("picked_last_step", {}).items()
        if share >= 0.5
    ]


def summary(cfg: TransferConfig, results: dict) -> list[str]:
    """What a user reads after the folds: each k's pooled co-bps per arm with the judged model − alone, then which
    targets were missed (the job exits 1 when any is, so the reason is on screen, not only in the JSON)."""
    judged = cfg.judged_arm()
    lines = []
    for k, res in results["kshot"].items():
        d, s = difference(res, judged, "alone"), difference(res, judged, "smoothing")
        arms = ", ".join(f"{arm} {v:+.4f}" for arm, v in res["co_bps"].items())
        lines.append(
            f"k={k}: {arms}; {judged} - alone {d['bps']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], "
            f"- smoothing {s['bps']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
        )
    missed, not_run = missed_targets(results["targets"]), results["targets"].get("not_run", [])
    if missed:
        lines.append(f"targets missed: {', '.join(missed)}")
    if not_run:
        lines.append(f"targets not run (their k is not in ks): {', '.join(not_run)}")
    if not missed and not not_run:
        lines.append("targets: all met")
    return lines


def arms(cfg: TransferConfig, models: dict[str, str], architecture) -> list[Arm]:
    """Fine-tuned per corpus and trained alone with the shared recipe, then every variant's arms."""
    out = [Arm(finetuned_arm(c), f) for c, f in models.items()] + [Arm("alone", None, architecture)]
    for v in cfg.variants:
        out += [Arm(finetuned_arm(c, v), f, None, v.finetune) for c, f in models.items() if v.fine_tunes(c)]
        if v.alone:
            out.append(Arm(f"alone+{v.name}", None, architecture, v.finetune))
    return out


def behaviour_check(check: BehaviorCheck, refs: dict, models: dict, settings: Settings) -> dict:
    """Velocity R² on the dataset's test windows from the model's rates and latents, beside smoothed spikes."""
    kinds = {f: (f, [0.0]) for f in ("rates", "latents", "patch_latents")}
    if check.feature_smoothing_ms:
        kinds |= {f"{f}_smoothed": (f, check.feature_smoothing_ms) for f in ("rates", "patch_latents")}
    decoders = {
        label: BehaviorConfig(features=f, lag_ms=check.lag_ms, feature_smoothing_ms=kernels, alphas=check.alphas)
        for label, (f, kernels) in kinds.items()
    }
    per_session = evaluate_behaviour(models[check.corpus], EvalData([refs[check.dataset]]), decoders, settings)
    if len(per_session) != 1:
        raise StoreError(f"{check.dataset}: behaviour is checked on one session, found {len(per_session)}")
    return next(iter(per_session.values()))


def targets(cfg: TransferConfig, results: dict) -> dict:
    """The issue's targets, from the numbers above, for the judged arm (named in the result)."""
    t = cfg.targets
    judged = cfg.judged_arm()
    out: dict = {"judged_arm": judged}
    for k, res in results["kshot"].items():
        vs_alone, vs_smooth = difference(res, judged, "alone"), difference(res, judged, "smoothing")
        out[f"k{k}_minus_alone"] = vs_alone["bps"]
        out[f"k{k}_minus_alone_interval_95"] = [vs_alone["ci_low"], vs_alone["ci_high"]]
        out[f"k{k}_minus_smoothing"] = vs_smooth["bps"]
        out[f"k{k}_minus_smoothing_interval_95"] = [vs_smooth["ci_low"], vs_smooth["ci_high"]]
        out[f"k{k}_beats_smoothing"] = vs_smooth["bps"] > 0
        if k in {str(x) for x in t.k}:
            out[f"k{k}_beats_alone_by_{t.min_gain_bps:g}"] = (
                vs_alone["bps"] >= t.min_gain_bps and vs_alone["ci_low"] > 0
            )
    skipped = [f"k{k}" for k in t.k if str(k) not in results["kshot"]]
    if skipped:  # a target at a k this run did not train is neither met nor missed
        out["not_run"] = skipped
    if "behavior" in results:
        for features, r in results["behavior"].items():
            gain = r.get("behavior_r2", float("nan")) - r.get("behavior_r2_smoothing", float("nan"))
            out[f"behavior_{features}_minus_smoothing"] = gain
            out[f"behavior_{features}_beats_smoothing_by_{t.behavior_margin:g}"] = bool(gain >= t.behavior_margin)
    return out


def _track(cfg: TransferConfig, results: dict, settings: Settings) -> str:
    tags = {"kind": "transfer", **{f"dataset.{k}": v for k, v in results["datasets"].items()}}
    run_id = mlflow_run.start_run(settings.mlflow_uri, cfg.experiment, cfg.name, cfg.model_dump(mode="json"), tags)
    ok = False
    try:
        flat = {}
        for k, res in results["kshot"].items():
            flat |= {f"k{k}.co_bps.{arm}": v for arm, v in res["co_bps"].items()}
            flat |= {f"k{k}.{pair}": d["bps"] for pair, d in res["differences"].items()}
        for features, r in results.get("behavior", {}).items():
            flat |= {f"behavior.{features}.{k.removeprefix('behavior_')}": v for k, v in r.items()}
        clean = {k.replace(":", "_").replace(" ", ""): v for k, v in flat.items()}
        mlflow_run.log_metrics(settings.mlflow_uri, run_id, clean)  # variant arms' "+" becomes "_" there
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "transfer.json"
            path.write_text(json.dumps(results, indent=1, default=float))
            mlflow_run.log_artifact(settings.mlflow_uri, run_id, str(path))
        ok = True
    finally:
        mlflow_run.end_run(settings.mlflow_uri, run_id, ok)
    return run_id

"""`neurobridge bench train`: the same model and data through Ray Train vs a plain PyTorch loop, in one run.

Three measurements, all on the configured mixture: (1) the data path alone (Parquet → Ray Data → collated torch
batches, exactly what a worker iterates), (2) a plain single-process loop over the same batches with the same
thread count as a Ray worker, run before and after every (3) so that each Ray run has its own bracketing reference
(a shared VM's speed drifts by up to a quarter within a minute), (3) ``pretrain`` on Ray Train, ``rounds`` times;
the overhead quoted is the median over the rounds. Rates are steady-state (the first steps are warm-up),
so the reported Ray overhead is the per-step cost of Ray Train and Ray Data, not the worker start-up (reported
separately). Warm-up is the first fifth of the steps on both sides: a fresh Ray worker runs its first ~50 steps
10-20 % slower than later ones, so a short run measured mostly warm-up (60 steps: 9-20 % "overhead"; 240 steps on
the same machine: 7 %).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from statistics import median

import torch

from neurobridge.config import Settings, get_settings
from neurobridge.models.ndt import MaskedNeuralModel
from neurobridge.tracking import mlflow_run
from neurobridge.train.batches import CollateWindows
from neurobridge.train.config import PretrainConfig
from neurobridge.train.epochs import ShardBatches
from neurobridge.train.loop import run_steps
from neurobridge.train.pretrain import prepare, pretrain


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def data_path_rate(settings: Settings, cfg: PretrainConfig, batches: int, keep: list | None = None) -> dict:
    """Tokens/s the data path delivers with nothing consuming it: the worker's own batch source (``ShardBatches``:
    the epoch read once and permuted in memory when pretraining materialises it, else Ray Data's streamed batches
    with its shuffle buffer) over the same mixed rows; ``keep`` collects the batches so the plain loop trains on
    exactly the same mixed, padded batches."""
    data = prepare(cfg, settings)
    collate = CollateWindows.for_pretraining(data.cfg, data.vocabs, data.heldout)
    source = ShardBatches(data.train, collate, cfg.optim.batch_size, cfg.seed, data.cached)
    n = tokens = epoch = 0
    t0 = time.perf_counter()
    t_first = None
    while n < batches:
        for item in source(epoch):
            if t_first is None:
                t_first = time.perf_counter()
                continue  # the first batch pays the pipeline start (and, cached, the one read)
            n += 1
            tokens += item.n_tokens
            if keep is not None:
                keep.append(item)
            if n >= batches:
                break
        epoch += 1
    elapsed = time.perf_counter() - (t_first or t0)
    return {
        "tokens_per_s": tokens / elapsed,
        "batches": n,
        "startup_s": (t_first or t0) - t0,
        "data": data,
    }


def plain_loop_rate(cfg: PretrainConfig, vocabs, threads: int, prepared: list) -> dict:
    """Steady-state tokens/s of the training step in one process, no Ray, on batches prepared in memory (the
    same batches the Ray data path produced, so both loops see the same mix and padding)."""
    if not prepared:
        raise ValueError("not enough training rows for one batch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.seed)
        model = MaskedNeuralModel(cfg.model, vocabs)
        marks: list[tuple[int, float, int]] = []
        tokens = {"n": 0}

        def batches(epoch: int):
            for item in prepared:
                tokens["n"] += item.n_tokens
                yield item

        def report(m: dict, _state) -> None:
            marks.append((m["step"], time.perf_counter(), tokens["n"]))

        run_steps(cfg, model, batches, report=report)
    finally:
        torch.set_num_threads(before)
    return _steady(marks)


def _warm(reports: int) -> int:
    """Reports (one per ``log_every`` steps) that fall in the warm-up: the first fifth, at least the first one."""
    return max(1, reports // 5)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def _steady(marks: list[tuple[int, float, int]]) -> dict:
    """Rate from the end of the warm-up to the last report."""
    if len(marks) < 3:
        raise ValueError("too few steps to measure: raise --steps or lower log_every")
    (s0, t0, n0), (s1, t1, n1) = marks[min(_warm(len(marks)), len(marks) - 2)], marks[-1]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "steps": s1 - s0, "seconds": t1 - t0}


def ray_overhead(plain: list[float], ray: list[float]) -> tuple[list[float], float]:
    """Each round's Ray overhead against the mean of the plain loops run just before and just after it (rounds
    alternate plain, Ray, plain, Ray, …, plain), and the figure quoted: their median, so one round in a slow
    minute does not decide."""
    if len(plain) != len(ray) + 1:
        raise ValueError(f"{len(ray)} Ray runs need {len(ray) + 1} bracketing plain loops, got {len(plain)}")
    each = [1.0 - r / ((a + b) / 2) for r, a, b in zip(ray, plain[:-1], plain[1:], strict=True)]
    return each, median(each)


def _ray_round(cfg: PretrainConfig, settings: Settings) -> dict:
    """One Ray Train run: its steady-state tokens/s (from the worker's reports) and what the worker waited."""
    t0 = time.perf_counter()
    result = pretrain(cfg.model_copy(update={"name": "bench-train"}), settings)
    wall = time.perf_counter() - t0
    hist = mlflow_run.metric_history(settings.mlflow_uri, result.run_id, "tokens_per_s")
    waits = mlflow_run.metric_history(settings.mlflow_uri, result.run_id, "time_data_wait_s")
    if len(hist) < 2:
        raise ValueError("too few Ray Train steps to measure past the warm-up: raise --steps")
    peak = mlflow_run.metric_history(settings.mlflow_uri, result.run_id, "peak_rss_mb")
    return {
        "tokens_per_s": _mean([v for _, v in hist[_warm(len(hist)) :]]),  # each: the rate over the interval before it
        "wait_s": _mean([v for _, v in waits[_warm(len(waits)) :]]),
        "wall_s": wall,
        "peak_rss_mb": max((v for _, v in peak), default=None),
    }


def bench_train(
    cfg: PretrainConfig,
    settings: Settings | None = None,
    data_batches: int = 40,
    echo: Callable[[str], None] = print,
    rounds: int = 3,
) -> dict:
    """The data path once, then ``rounds`` Ray Train runs, each between two plain loops (plain, Ray, plain, Ray, …,
    plain): a shared VM's speed drifts by up to a quarter within a minute, so one bracketed run can land anywhere
    from −3 to 15 % overhead; the median of several rounds is the figure to quote."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: at least one Ray Train run is needed to measure its overhead")
    settings = settings or get_settings()
    s = cfg.scaling
    threads = max(1, int(s.cpus_per_worker))
    echo(
        f"model d={cfg.model.d_model} depth={cfg.model.depth}, batch {cfg.optim.batch_size}, "
        f"{cfg.optim.max_steps} steps, {s.num_workers} Ray worker(s) × {s.cpus_per_worker} CPU, "
        f"plain loop with {threads} thread(s), {rounds} round(s)"
    )
    prepared: list = []
    data = data_path_rate(settings, cfg, data_batches, keep=prepared)
    resolved = data["data"]  # the config with the data's bin width, its vocabularies: what the Ray run will build
    how = "epoch cached, permuted in memory" if resolved.cached else "streamed, Ray Data shuffle buffer"
    echo(f"data path  : {data['tokens_per_s']:>10,.0f} tokens/s ({data['batches']} batches, no consumer; {how})")

    def plain_run() -> float:
        rate = plain_loop_rate(resolved.cfg, resolved.vocabs, threads, prepared)
        echo(f"plain loop : {rate['tokens_per_s']:>10,.0f} tokens/s ({rate['steps']} steady steps)")
        return rate["tokens_per_s"]

    plains, rays = [plain_run()], []
    for r in range(rounds):
        rays.append(_ray_round(cfg, settings))
        echo(
            f"Ray Train  : {rays[-1]['tokens_per_s']:>10,.0f} tokens/s (round {r + 1}, steady state; "
            f"{cfg.optim.max_steps} steps took {rays[-1]['wall_s']:.0f} s with start-up)"
        )
        plains.append(plain_run())  # a VM drifts: every Ray run between two plain loops
    overheads, quoted = ray_overhead(plains, [x["tokens_per_s"] for x in rays])
    out = {
        "data_tokens_per_s": data["tokens_per_s"],
        "plain_tokens_per_s": median(plains),
        "plain_runs_tokens_per_s": plains,
        "ray_tokens_per_s": median(x["tokens_per_s"] for x in rays),
        "ray_runs_tokens_per_s": [x["tokens_per_s"] for x in rays],
        "ray_overheads": overheads,
        "ray_overhead": quoted,
        "data_over_consumption": data["tokens_per_s"] / max(x["tokens_per_s"] for x in rays),
        "ray_data_wait_s_per_step": _mean([x["wait_s"] for x in rays]),
        "ray_wall_s": _mean([x["wall_s"] for x in rays]),
        "driver_peak_rss_mb": _peak_rss_mb(),
    }
    worker_peaks = [x["peak_rss_mb"] for x in rays if x["peak_rss_mb"] is not None]
    if worker_peaks:
        out["worker_peak_rss_mb"] = max(worker_peaks)
    each = " / ".join(f"{100 * o:.1f}" for o in overheads)
    echo(
        f"Ray overhead vs plain loop: {100 * out['ray_overhead']:.1f} %"
        + (f" (median; rounds: {each} %)" if rounds > 1 else "")
        + "  (target ≤ 10 %)"
    )
    echo(
        f"data path / trainer consumption: {out['data_over_consumption']:.1f}×  (target ≥ 5×; against the fastest "
        f"Ray run); mean wait for a batch in the worker {1000 * out['ray_data_wait_s_per_step']:.1f} ms/step"
    )
    worker = f", training worker {out['worker_peak_rss_mb']:.0f} MB" if "worker_peak_rss_mb" in out else ""
    echo(f"peak RSS: driver {out['driver_peak_rss_mb']:.0f} MB{worker}")
    return out

"""Benchmarks: every figure is a ratio of two things measured side by side in this run.

    python driver/bench.py [--quick] [--out bench.json]

Micro (one process, one torch thread): the batched generalisation iteration against the
seed's one-by-one loop and against the bare MLP step (the compute floor), a collector's
retrain iteration against the bare MLP step at batch 1, and the float32-model option.
Service (real local Ray, 2 CPUs): collection scaling 2 vs 1 collectors, Ray overhead for one
collector against in-process, and end to end against one process running the orbits in turn.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from actors import Collector, Learner
from aits import (Config, Samples, Stepper, auto_norm_scales, band_loss, build_model, make_optimizer,
                  optimizer_step)
from aits.physics import leapfrog
from aits.systems import Systems

GOALS = {
    "generalize_speedup_vs_loop": (">=", 3.0),
    "learner_vs_mlp_floor": ("<=", 1.3),
    "collector_vs_mlp_floor": ("<=", 1.3),
    "collect_scaling_2_vs_1": (">=", 1.7),
    "ray_overhead_1_collector": ("<=", 1.10),
    "end_to_end_speedup_vs_sequential": (">=", 1.7),
    "pipeline_speedup": (">=", 1.0),
}

SEED_MODEL = {"hidden_dims": [200, 1000, 1000, 200], "activation": "tanh"}


def timeit(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, measured in alternation so drift hits all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_config(model: dict | None = None, **train) -> Config:
    return Config.from_dict({
        "features": {"history_len": 3, "feature_type": "delta_mag", "normalize_inputs": "auto"},
        "model": {**SEED_MODEL, "init_dt": 0.002, **(model or {})},
        "train": {"generalize_batch_size": 512, **train},
        "wandb": {"mode": "disabled"},
    })


def synthetic_samples(cfg: Config, n: int, dt: float = 0.002) -> Samples:
    """n states with full histories from fixed-dt leapfrog on the config's systems (``Systems``)."""
    K = cfg.features.history_len
    systems = Systems(cfg, np.arange(n), [np.random.default_rng([0, i]) for i in range(n)])
    out = Samples.empty(K, systems.N, systems.D, capacity=n)
    dts = np.full(n, dt)
    for _ in range(K):
        m, x, v = (torch.as_tensor(a) for a in systems.batch()[:3])
        x1, v1, _ = leapfrog(x, v, m, torch.as_tensor(dts))
        systems.advance(np.arange(n), x1.numpy(), v1.numpy(), dts)
    systems.write_samples(out, 0, np.arange(n), dts, np.zeros(n), np.zeros(n, dtype=np.int64))
    return out


# ---------------------------------------------------------------- micro benchmarks
def micro(quick: bool, device: str = "cpu") -> dict:
    torch.set_num_threads(1)
    cfg = bench_config()
    t = cfg.train
    stepper = Stepper(cfg, auto_norm_scales(cfg), device=device)
    model = build_model(cfg, device)
    opt = make_optimizer(model, cfg)
    samples = synthetic_samples(cfg, 512)
    prep = stepper.prepare_samples(samples)
    feats = prep.feats.clone()

    def generalize_iteration():  # what aits.generalize does per minibatch
        att = stepper.attempt(model, prep)
        failing = ~att.passed(t.energy_threshold)
        per = band_loss(att.rel_dE, t.E_lower, t.E_upper)
        optimizer_step(model, opt, per[failing].mean() if bool(failing.any()) else per.mean())

    def seed_loop():  # the seed: features, attempt and loss sample by sample, then one step
        losses = []
        for i in range(len(samples)):
            att = stepper.attempt(model, stepper.prepare_samples(samples.take([i])))
            losses.append(band_loss(att.rel_dE, t.E_lower, t.E_upper))
        optimizer_step(model, opt, torch.cat(losses).mean())

    def mlp_floor(x):
        def step():
            opt.zero_grad(set_to_none=True)
            model(x).mean().backward()
            opt.step()
        return step

    reps = 3 if quick else 10
    res = interleaved({"batched": generalize_iteration, "floor512": mlp_floor(feats)}, reps)
    loop_time = timeit(seed_loop, 1 if quick else 3, warmup=0)
    one = prep.take(torch.tensor([0]))

    def collector_retrain():  # one pass of aits.retrain_until_accepted's loop body
        att = stepper.attempt(model, one)
        att.passed(t.energy_threshold)
        optimizer_step(model, opt, band_loss(att.rel_dE, t.E_lower, t.E_upper).mean())

    res1 = interleaved({"retrain": collector_retrain, "floor1": mlp_floor(feats[:1])}, 20 if quick else 100)

    # Option: the model in float32 while the physics stays float64.
    cfg32 = bench_config(model={"dtype": "float32"})
    model32 = build_model(cfg32, device)
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    opt32 = make_optimizer(model32, cfg32)
    stepper32 = Stepper(cfg32, stepper.scales, device=device)
    prep32 = stepper32.prepare_samples(samples)

    def generalize_iteration32():
        att = stepper32.attempt(model32, prep32)
        optimizer_step(model32, opt32, band_loss(att.rel_dE, t.E_lower, t.E_upper).mean())

    res32 = interleaved({"f64": generalize_iteration, "f32": generalize_iteration32}, reps)
    with torch.no_grad():
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        r64 = stepper.attempt(model, prep).rel_dE
        r32 = stepper32.attempt(model32, prep32).rel_dE
    # Acceptance is decided against thresholds spread over the sample's errors.
    thresholds = np.quantile(r64.cpu().numpy(), [0.1, 0.25, 0.5, 0.75, 0.9])
    flips = float(np.mean([((r64 < thr) != (r32 < thr)).double().mean().item() for thr in thresholds]))
    return {
        "generalize_speedup_vs_loop": loop_time / res["batched"],
        "learner_vs_mlp_floor": res["batched"] / res["floor512"],
        "collector_vs_mlp_floor": res1["retrain"] / res1["floor1"],
        "model_float32_speedup": res32["f64"] / res32["f32"],
        "model_float32_acceptance_flips": flips,
        "_seconds": {"generalize_iteration_b512": res["batched"], "seed_loop_b512": loop_time,
                     "mlp_floor_b512": res["floor512"], "collector_retrain_b1": res1["retrain"],
                     "mlp_floor_b1": res1["floor1"], "generalize_iteration_f32": res32["f32"]},
    }


# ---------------------------------------------------------------- service benchmarks
def service(quick: bool) -> dict:
    import ray

    cfg = Config.from_dict({
        "features": {"history_len": 3, "feature_type": "delta_mag", "normalize_inputs": "auto"},
        "model": {"hidden_dims": [128, 128], "init_dt": 0.002},
        "train": {"steps_per_epoch": 100 if quick else 1000, "max_retrain_steps": 200, "generalize_steps": 20,
                  "lr": 1e-3},
        "wandb": {"mode": "disabled"},
    })
    cfg_dict, scales = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    weights = Learner(cfg_dict, scales).weights()
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        RemoteCollector = ray.remote(num_cpus=1)(Collector)
        RemoteLearner = ray.remote(num_cpus=0)(Learner)
        reps = 2 if quick else 3

        # Every mode makes one warm-up collect (first-call costs of a fresh process), then the
        # timed one: with the same seeds, each mode does exactly the same work.
        def ray_collect(n):
            cols = [RemoteCollector.remote(cfg_dict, scales, i) for i in range(n)]
            wref = ray.put(weights)
            ray.get([c.collect.options(num_returns=2).remote(wref)[1] for c in cols])
            t0 = time.perf_counter()
            outs = [c.collect.options(num_returns=2).remote(wref) for c in cols]
            metrics = ray.get([o[1] for o in outs])
            elapsed = time.perf_counter() - t0
            for c in cols:
                ray.kill(c)
            return sum(m["collect/accepted"] for m in metrics) / elapsed, elapsed

        def sequential(n):  # one process, the orbits one after another
            torch.set_num_threads(1)
            cols = [Collector(cfg_dict, scales, i) for i in range(n)]
            for c in cols:
                c.collect(weights)
            t0 = time.perf_counter()
            for c in cols:
                c.collect(weights)
            return time.perf_counter() - t0

        rate1, rate2, t2, tseq = [], [], [], []
        for _ in range(reps):
            rate1.append(ray_collect(1)[0])
            r, el = ray_collect(2)
            rate2.append(r)
            t2.append(el)
            tseq.append(sequential(2))

        # One epoch (collect + generalise) with one collector: Ray against in-process.
        def ray_epoch():
            col, lrn = RemoteCollector.remote(cfg_dict, scales, 0), RemoteLearner.remote(cfg_dict, scales)

            def epoch():
                wref = ray.put(ray.get(lrn.weights.remote()))
                samples, _ = col.collect.options(num_returns=2).remote(wref)
                ray.get(lrn.generalize.remote(samples))

            epoch()
            t0 = time.perf_counter()
            epoch()
            elapsed = time.perf_counter() - t0
            ray.kill(col)
            ray.kill(lrn)
            return elapsed

        def inprocess_epoch():
            torch.set_num_threads(1)
            col, lrn = Collector(cfg_dict, scales, 0), Learner(cfg_dict, scales)

            def epoch():
                samples, _ = col.collect(lrn.weights())
                lrn.generalize(samples)

            epoch()
            t0 = time.perf_counter()
            epoch()
            return time.perf_counter() - t0

        tray, tin = [], []
        for _ in range(reps):
            tray.append(ray_epoch())
            tin.append(inprocess_epoch())
        pipe = {False: [], True: []}
        for _ in range(1 if quick else 2):
            for flag in (False, True):
                pipe[flag].append(pipelined_epochs(flag, quick))
        pipe = {flag: min(times) for flag, times in pipe.items()}
    finally:
        if started:
            ray.shutdown()
    med = statistics.median
    return {
        "collect_scaling_2_vs_1": med(rate2) / med(rate1),
        "ray_overhead_1_collector": med(tray) / med(tin),
        "end_to_end_speedup_vs_sequential": med(tseq) / med(t2),
        "_seconds": {"collect_2_collectors": med(t2), "collect_sequential_2_orbits": med(tseq),
                     "epoch_ray_1_collector": med(tray), "epoch_inprocess": med(tin),
                     "samples_per_s_1": med(rate1), "samples_per_s_2": med(rate2),
                     "epochs_plain": pipe[False], "epochs_pipelined": pipe[True]},
        "pipeline_speedup": pipe[False] / pipe[True],
    }


def pipelined_epochs(pipeline: bool, quick: bool) -> float:
    """Wall time of the driver's epochs (1 collector, 1 learner CPU) with or without ray.pipeline."""
    import tempfile

    from driver.train import main as train_main

    epochs = 4 if quick else 8
    with tempfile.TemporaryDirectory() as out:
        args = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "ray.yaml")]
        for kv in (f"run.output_dir={out}", "wandb.mode=disabled", f"train.epochs={epochs}",
                   "run.checkpoint_interval=1000", "ray.num_collectors=1", "ray.learner_cpus=1",
                   "train.steps_per_epoch=400", "model.hidden_dims=256,256", "train.generalize_steps=40",
                   "train.E_lower=5e-5", f"ray.pipeline={'true' if pipeline else 'false'}"):
            args += ["--set", kv]
        assert train_main(args) == 0
        rows = [json.loads(line) for line in (Path(out) / "ray_run" / "metrics.jsonl").read_text().splitlines()]
    return sum(r["system/epoch_time"] for r in rows[1:])  # epoch 1 holds start-up costs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--only", choices=["micro", "service"], default=None)
    ap.add_argument("--device", default="cpu", help="device of the micro benchmarks (cpu, cuda)")
    args = ap.parse_args(argv)
    results, seconds = {}, {}
    for name, fn in (("micro", lambda q: micro(q, args.device)), ("service", service)):
        if args.only in (None, name):
            part = fn(args.quick)
            seconds.update(part.pop("_seconds"))
            results.update(part)
    print(f"{'figure':38s} {'value':>9s}  goal")
    for key, value in results.items():
        goal = GOALS.get(key)
        verdict = ""
        if goal:
            ok = value >= goal[1] if goal[0] == ">=" else value <= goal[1]
            verdict = f"{goal[0]} {goal[1]:<5g} {'met' if ok else 'MISSED'}"
        print(f"{key:38s} {value:9.3f}  {verdict}")
    print("seconds: " + ", ".join(f"{k}={v:.4g}" for k, v in seconds.items()))
    if args.out:
        args.out.write_text(json.dumps({**results, "seconds": seconds, "quick": args.quick}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks: every figure is a ratio of two things measured side by side in this run, timing the
library's own functions (aits.generalize_on_trajectory, aits.collect_trajectory, aits.collect.retrain_slot,
the actors).

    python driver/bench.py [--quick] [--out bench.json] [--only micro|collectors|service|steps|passage]

Micro (one process, one torch thread, the seed's model): generalize per iteration against the
seed's one-by-one loop and against the bare MLP step (the compute floor), a collector's retrain
step against the bare MLP step at batch 1, and the float32-model option.
Collectors (one thread, the laptop config): B = 256 systems at once against the same systems one
at a time, against the batched no-grad floor, accepted samples per second per core, and the
learner's pace against the collectors'.
Service (real local Ray, 2 CPUs, laptop config): collection scaling 2 vs 1 collectors, Ray overhead
for one collector against in-process, and end to end against one process running the collectors in
turn; every arm starts from the same saved states (equal work), repeated, median and range reported.
Steps (one thread, batch 1): one learned step (numpy factor rule) against one classical step in the
evaluation loop, explicit and time-symmetric, and the seed's mode (torch features of K + 1 states).
Passage (one thread): a collector's passage gradient (aits.passage_gradient) of
configs/generalist_blend.yaml, eager against train.compile_rollout, on the same start states, and the
first compiled call's cost (the compile).
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
from aits import (Config, Samples, Stepper, auto_norm_scales, band_loss, build_model, collect_trajectory, evaluate,
                  generalize_on_trajectory, make_optimizer, optimizer_step)
from aits.collect import retrain_slot
from aits.physics import leapfrog
from aits.systems import Systems

ROOT = Path(__file__).resolve().parents[1]

GOALS = {
    "generalize_speedup_vs_loop": (">=", 3.0),
    "learner_vs_mlp_floor": ("<=", 1.3),
    "collector_vs_mlp_floor": ("<=", 1.3),
    "vectorised_speedup_vs_per_system": (">=", 30.0),
    "collector_vs_batched_floor": ("<=", 2.0),
    "learner_keeps_pace": (">=", 1.0),
    "collect_scaling_2_vs_1": (">=", 1.7),
    "ray_overhead_1_collector": ("<=", 1.10),
    "end_to_end_speedup_vs_sequential": (">=", 1.7),
    "pipeline_speedup": (">=", 1.0),
    "learned_step_vs_adaptive_step": ("<=", 2.0),
    "generalist_step_vs_recursive_step": ("<=", 2.0),
    "radial_step_vs_recursive_step": ("<=", 2.0),  # issue 19's G5, N = 2: generalist_apsis_hinge.yaml's rule
    "point_lean_step_vs_recursive_step": ("<=", 2.0),  # the same for generalist_prs_point_lean.yaml's and generalist_tau_hinge.yaml's rule
    "compiled_passage_speedup": (">=", 3.0),
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
        states = systems.batch()
        m, x, v = (torch.as_tensor(a) for a in (states.m, states.x, states.v))
        x1, v1, _ = leapfrog(x, v, m, torch.as_tensor(dts))
        systems.advance(np.arange(n), x1.numpy(), v1.numpy(), dts)
    systems.write_samples(out, 0, np.arange(n), dts, np.zeros(n), np.zeros(n, dtype=np.int64))
    return out


# ---------------------------------------------------------------- helpers
def spread(values) -> dict:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def laptop_config(*overrides: str) -> Config:
    """configs/ray.yaml (the laptop run) with ``section.key=value`` overrides, W&B off."""
    return Config.load(ROOT / "configs" / "ray.yaml", ["wandb.mode=disabled", *overrides])


def generalist_config(*overrides: str) -> Config:
    """configs/generalist.yaml (the recommended one-checkpoint rule) with overrides, W&B off."""
    return Config.load(ROOT / "configs" / "generalist.yaml", ["wandb.mode=disabled", *overrides])


def timed(fn):
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------- micro benchmarks
def micro(quick: bool, device: str = "cpu") -> dict:
    """The learner's generalize iteration and the collector's retrain step with the seed's model."""
    torch.set_num_threads(1)
    cfg = bench_config()
    t = cfg.train
    stepper = Stepper(cfg, auto_norm_scales(cfg), device=device)
    model = build_model(cfg, device)
    opt = make_optimizer(model, cfg)
    samples = synthetic_samples(cfg, 512)
    feats = stepper.prepare(samples).feats.clone()
    iters = 2 if quick else 5
    # Never-passing settings, so the library's loops run a fixed number of iterations.
    never = bench_config(generalize_steps=iters, generalize_min_samples=1, max_retrain_steps=iters)
    never.train.energy_threshold = 1e-300

    def run_generalize(m, o, st):  # generalize_on_trajectory: prepare once, then `iters` minibatch steps
        return lambda: generalize_on_trajectory(m, o, samples, st, never, np.random.default_rng(0))

    def seed_loop():  # the seed: features, attempt and loss sample by sample, then one step
        losses = []
        for i in range(len(samples)):
            att = stepper.attempt(model, stepper.prepare(samples.take([i])))
            losses.append(band_loss(att.rel_dE, t.E_lower, t.E_upper))
        optimizer_step(model, opt, torch.cat(losses).mean())

    def mlp_floor(x):
        def step():
            opt.zero_grad(set_to_none=True)
            model(x).mean().backward()
            opt.step()
        return step

    reps = 3 if quick else 7
    res = interleaved({"generalize": run_generalize(model, opt, stepper), "floor512": mlp_floor(feats)}, reps)
    res["generalize"] /= iters
    loop_time = timeit(seed_loop, 1 if quick else 3, warmup=0)
    one = stepper.prepare(samples.take([0]))
    # aits.retrain_slot at B = 1: iters + 1 attempts and iters optimiser steps, then the slot is lost
    res1 = interleaved({"retrain": lambda: retrain_slot(model, opt, stepper, one, never),
                        "floor1": mlp_floor(feats[:1])}, 10 if quick else 40)
    res1["retrain"] /= iters

    # Option: the model in float32 while the physics stays float64.
    cfg32 = bench_config(model={"dtype": "float32"})
    model32 = build_model(cfg32, device)
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    stepper32 = Stepper(cfg32, stepper.scales, device=device)
    res32 = interleaved({"f64": run_generalize(model, opt, stepper),
                         "f32": run_generalize(model32, make_optimizer(model32, cfg32), stepper32)}, reps)
    with torch.no_grad():
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        r64 = evaluate(model, stepper, samples)
        r32 = evaluate(model32, stepper32, samples)
    # Acceptance is decided against thresholds spread over the sample's errors.
    thresholds = np.quantile(r64.cpu().numpy(), [0.1, 0.25, 0.5, 0.75, 0.9])
    flips = float(np.mean([((r64 < thr) != (r32 < thr)).double().mean().item() for thr in thresholds]))
    return {
        "generalize_speedup_vs_loop": loop_time / res["generalize"],
        "learner_vs_mlp_floor": res["generalize"] / res["floor512"],
        "collector_vs_mlp_floor": res1["retrain"] / res1["floor1"],
        "model_float32_speedup": res32["f64"] / res32["f32"],
        "model_float32_acceptance_flips": flips,
        "_seconds": {"generalize_iteration_b512": res["generalize"], "seed_loop_b512": loop_time,
                     "mlp_floor_b512": res["floor512"], "collector_retrain_b1": res1["retrain"],
                     "mlp_floor_b1": res1["floor1"], "generalize_iteration_f32": res32["f32"] / iters},
    }


# ---------------------------------------------------------------- collectors (laptop model, one core)
def collectors(quick: bool) -> dict:
    """aits.collect_trajectory at the laptop config: B systems at once against one at a time, against the batched
    no-grad floor, per core; and the learner's pace against the collectors'."""
    torch.set_num_threads(1)
    n, slots, reps = (64, 2, 2) if quick else (256, 4, 3)
    cfg = laptop_config(f"ray.systems_per_collector={n}", f"train.steps_per_epoch={slots}")
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = build_model(cfg)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    many = Systems.for_collector(cfg, 0, n)
    start = many.state_dict()
    ones = [Systems(cfg, [i], [np.random.default_rng(cfg.run.seed + i)]) for i in range(n)]  # the same systems
    one_starts = [s.state_dict() for s in ones]

    def run(systems, state):  # fresh weights and optimiser, the systems at their start: equal work every time
        model.load_state_dict(w0)
        systems.load_state_dict(state)
        opt = make_optimizer(model, cfg)
        return timed(lambda: collect_trajectory(model, opt, systems, stepper, cfg))

    def batched_floor():  # features + forward + leapfrog + energy for the n states, no grad
        with torch.no_grad():
            stepper.attempt(model, stepper.prepare(many.batch()))

    run(many, start)  # warm-up
    rate_many, rate_one, floor, per_acc = [], [], [], []
    for _ in range(reps):
        el, (_, m) = run(many, start)
        rate_many.append(m["part1/accepted"] / el)
        per_acc.append(el / m["part1/accepted"])
        el1 = acc1 = 0
        for s, st in zip(ones, one_starts):
            e, (_, m1) = run(s, st)
            el1, acc1 = el1 + e, acc1 + m1["part1/accepted"]
        rate_one.append(acc1 / el1)
        many.load_state_dict(start)
        floor.append(timeit(batched_floor, 5) / n)
    speed = [a / b for a, b in zip(rate_many, rate_one)]
    vs_floor = [a / b for a, b in zip(per_acc, floor)]

    # Per core at the laptop config's B, one epoch's slots.
    lap = laptop_config()
    B = lap.ray.systems_per_collector
    sys_lap = Systems.for_collector(lap, 0, B)
    lap_start = sys_lap.state_dict()
    lap_stepper = Stepper(lap, auto_norm_scales(lap))
    per_core = []
    for _ in range(reps):
        model.load_state_dict(w0)
        sys_lap.load_state_dict(lap_start)
        opt = make_optimizer(model, lap)
        el, (_, m) = timed(lambda: collect_trajectory(model, opt, sys_lap, lap_stepper, lap))
        per_core.append(m["part1/accepted"] / el)
    pace = learner_pace(lap, 2 if quick else 10)
    # The learner without the passage objective (generalize only), and the same B = n collect with
    # band_on_accept: a lower-edge optimiser step in almost every slot.
    pace_np = learner_pace(laptop_config("train.passage=false"), 2 if quick else 10)
    wb = laptop_config(f"ray.systems_per_collector={n}", f"train.steps_per_epoch={slots}", "train.band_on_accept=true")
    model.load_state_dict(w0)
    many.load_state_dict(start)
    opt = make_optimizer(model, wb)
    el, (_, m) = timed(lambda: collect_trajectory(model, opt, many, stepper, wb))
    with_band = el / m["part1/accepted"] / statistics.median(floor)
    return {
        "collector_samples_per_s_per_core": statistics.median(per_core),
        "vectorised_speedup_vs_per_system": statistics.median(speed),
        "collector_vs_batched_floor": statistics.median(vs_floor),
        "learner_keeps_pace": pace["ratio_of_totals"],
        "learner_keeps_pace_without_passage": pace_np["ratio_of_totals"],
        "collector_vs_batched_floor_with_band_on_accept": with_band,
        "_spread": {"collector_samples_per_s_per_core": spread(per_core),
                    "vectorised_speedup_vs_per_system": spread(speed), "collector_vs_batched_floor": spread(vs_floor),
                    "learner_keeps_pace": pace, "learner_keeps_pace_without_passage": pace_np},
        "_seconds": {f"collect_per_accepted_b{n}": statistics.median(per_acc),
                     f"batched_floor_per_system_b{n}": statistics.median(floor),
                     "collect_accepted_per_s_b1": statistics.median(rate_one),
                     f"collect_accepted_per_s_b{n}": statistics.median(rate_many),
                     "laptop_systems_per_collector": B},
    }


def learner_pace(cfg: Config, epochs: int) -> dict:
    """Epochs of the laptop config from a fresh model, the actors in this process: the slowest collector's
    collect time (they run in parallel under Ray) over the learner's generalize time, summed over the
    epochs (``ratio_of_totals``) and per epoch (median, min, max)."""
    conf, sc = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    cols = [Collector(conf, sc, i) for i in range(cfg.ray.num_collectors)]
    learner = Learner(conf, sc)
    ratios, collect_s, learner_s = [], [], []
    for _ in range(epochs):
        weights = learner.weights()
        outs = [c.collect(weights) for c in cols]
        lm = learner.step(False, *[s for s, _ in outs])["metrics"]
        tc = max(m["system/collect_time"] for _, m in outs)
        collect_s.append(tc)
        learner_s.append(lm["system/learner_time"])
        ratios.append(tc / lm["system/learner_time"])
    torch.set_num_threads(1)
    return {**spread(ratios), "ratio_of_totals": sum(collect_s) / sum(learner_s), "collect_s": sum(collect_s),
            "learner_s": sum(learner_s)}


# ---------------------------------------------------------------- service benchmarks
def service(quick: bool) -> dict:
    """Real local Ray, 2 CPUs, laptop config. Every arm starts from the same saved collector and learner
    states with the same weights, so all arms do identical work; each arm is repeated."""
    import ray

    cfg = laptop_config(f"train.steps_per_epoch={8 if quick else 500}")  # full: windows of seconds
    conf, sc = cfg.to_dict(), auto_norm_scales(cfg).to_dict()
    local_learner = Learner(conf, sc)
    weights, learner_state = local_learner.weights(), local_learner.state()
    local = [Collector(conf, sc, i) for i in range(2)]
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a `ray start` cluster
    try:
        cols = [ray.remote(num_cpus=1)(Collector).remote(conf, sc, i) for i in range(2)]
        remote_learner = ray.remote(num_cpus=0)(Learner).remote(conf, sc)
        wref = ray.put(weights)
        ray.get([c.collect.options(num_returns=2).remote(wref)[1] for c in cols])  # warm-up, systems under way
        states = ray.get([c.state.remote() for c in cols])

        def restore():
            ray.get([c.restore.remote(s) for c, s in zip(cols, states)] +
                    [remote_learner.restore.remote(learner_state)])
            for c, s in zip(local, states):
                c.restore(s)
            local_learner.restore(learner_state)
            torch.set_num_threads(1)

        def collect_ref(c):
            return c.collect.options(num_returns=2).remote(wref)

        def parallel():  # 2 Ray collectors at once
            return ray.get([collect_ref(c)[1] for c in cols])

        def serial():  # the same 2 collectors' work, one at a time: one collector's throughput
            return [ray.get(collect_ref(c)[1]) for c in cols]

        def inprocess_sequential():  # both collectors' work in this process, in turn
            return [c.collect(weights)[1] for c in local]

        def ray_epoch():  # one collector + learner through Ray
            samples, _ = collect_ref(cols[0])
            ray.get(remote_learner.step.remote(False, samples))

        def inprocess_epoch():
            local_learner.step(False, local[0].collect(weights)[0])

        arms = {"parallel": parallel, "serial": serial, "sequential": inprocess_sequential,
                "ray_epoch": ray_epoch, "inprocess_epoch": inprocess_epoch}
        times = {k: [] for k in arms}
        accepted = None
        for _ in range(1 if quick else 5):
            for k, fn in arms.items():
                restore()
                el, out = timed(fn)
                times[k].append(el)
                if k == "parallel":
                    accepted = sum(m["part1/accepted"] for m in out)
        for a in [*cols, remote_learner]:  # free their CPUs for the driver's own actors
            ray.kill(a)
        pipe = {False: [], True: []}
        for _ in range(1 if quick else 2):
            for flag in (False, True):
                pipe[flag].append(pipelined_epochs(flag, quick))
        pipe = {flag: min(v) for flag, v in pipe.items()}
    finally:
        if started:
            ray.shutdown()
    pair = lambda a, b: [x / y for x, y in zip(times[a], times[b])]  # noqa: E731 - ratios within one repeat
    scaling, overhead, e2e = pair("serial", "parallel"), pair("ray_epoch", "inprocess_epoch"), \
        pair("sequential", "parallel")
    med = statistics.median
    return {
        "collect_scaling_2_vs_1": med(scaling),
        "ray_overhead_1_collector": med(overhead),
        "end_to_end_speedup_vs_sequential": med(e2e),
        "pipeline_speedup": pipe[False] / pipe[True],
        "_spread": {"collect_scaling_2_vs_1": spread(scaling), "ray_overhead_1_collector": spread(overhead),
                    "end_to_end_speedup_vs_sequential": spread(e2e)},
        "_seconds": {"collect_2_collectors": med(times["parallel"]), "collect_2_serial": med(times["serial"]),
                     "collect_sequential_inprocess": med(times["sequential"]),
                     "epoch_ray_1_collector": med(times["ray_epoch"]), "epoch_inprocess": med(times["inprocess_epoch"]),
                     "samples_per_s_1": accepted / med(times["serial"]),
                     "samples_per_s_2": accepted / med(times["parallel"]),
                     "epochs_plain": pipe[False], "epochs_pipelined": pipe[True]},
    }


def pipelined_epochs(pipeline: bool, quick: bool) -> float:
    """Wall time of the driver's epochs (1 collector, 1 learner CPU) with or without ray.pipeline."""
    import tempfile

    from driver.train import main as train_main

    epochs = 3 if quick else 6
    with tempfile.TemporaryDirectory() as out:
        args = ["--config", str(ROOT / "configs" / "ray.yaml")]
        for kv in (f"run.output_dir={out}", "wandb.mode=disabled", f"train.epochs={epochs}",
                   "run.checkpoint_interval=1000", "ray.num_collectors=1", "ray.learner_cpus=1",
                   "train.steps_per_epoch=20", "model.hidden_dims=256,256", "train.generalize_steps=40",
                   f"ray.pipeline={'true' if pipeline else 'false'}"):
            args += ["--set", kv]
        assert train_main(args) == 0
        rows = [json.loads(line) for line in (Path(out) / "ray_run" / "metrics.jsonl").read_text().splitlines()]
    return sum(r["system/epoch_time"] for r in rows[1:])  # epoch 1 holds start-up costs


def step_profile(h, system, calls: int, repeats: int) -> dict:
    """Microseconds per call of the parts of a step at the start of ``system`` (batch 1): the force
    evaluation (KDK's accelerations), the classical timescale tau (all the adaptive rule adds), and
    the learned step function ``h``'s scale-free features (tau included) and MLP: where the learned
    step's extra cost goes. ``*_given_pairs``: tau and the features from the separations the force evaluation
    computed (``aits.integrators.accel_pairs``: what the evaluation loop pays)."""
    from aits import integrators as I
    from aits.features import scale_free_numpy

    m, x, v, eps = system.m, system.x, system.v, system.eps
    a, q = I.accel_pairs(x, m, eps)
    feats, _ = scale_free_numpy(x, v, a, m, eps)
    parts = {"force_eval": lambda: I.accel(x, m, eps), "timescale": lambda: I.timescale(x, a),
             "timescale_given_pairs": lambda: I.timescale(x, a, q),
             "features": lambda: scale_free_numpy(x, v, a, m, eps),
             "features_given_pairs": lambda: scale_free_numpy(x, v, a, m, eps, "nn", q), "mlp": lambda: h.mlp(feats)}

    def per_call(fn):
        def run():
            for _ in range(calls):
                fn()
        return timeit(run, repeats) / calls * 1e6
    return {f"step_profile_{k}_us": per_call(fn) for k, fn in parts.items()}


def boxed_checkpoint(cfg: Config, quick: bool) -> dict:
    """An untrained checkpoint of ``cfg`` with the range box ``driver/validate.py`` would store: the features its rule
    visits on fresh draws of its training mixture (the cost of a step depends on the box, not on the weights: a
    state far outside it, e.g. a softened one for a rule trained unsoftened, skips the network)."""
    from aits import build_payload
    from aits.ranges import measure_ranges
    from driver.validate import validation_states

    ckpt = build_payload(0, build_model(cfg).state_dict(), None, cfg, auto_norm_scales(cfg).to_dict())
    ckpt["feature_ranges"] = measure_ranges(ckpt, validation_states(cfg, 8 if quick else 32), 100 if quick else 300).to_dict()
    return ckpt


def many_body_steps(methods, quick: bool, repeats: int) -> tuple[dict, dict]:
    """G5 at N >= 16: the recommended rules' steps against the classical recursion's on the
    practitioner suite's softened Plummer spheres (N = 16 and 64, eps = 0.05), timed side by side,
    with the step profile of each (where the difference goes). Returns (figures, spreads).

    ``generalist``: configs/generalist.yaml, untrained, no range box (every step evaluates the network);
    ``soft``: configs/generalist_soft.yaml (the README's recommendation) with the box its validation would store
    (:func:`boxed_checkpoint`); the spheres' softening lies far outside it, as for the trained checkpoints, so the
    range check holds every step and the network is skipped; ``recursive_soft_blend_clip``: the classical rule it
    is held at."""
    from aits.policy import learned_methods
    from aits.scoreboard import make_baseline, practitioner_systems, step_cost_ratios

    out, spreads = {}, {}
    spheres = {s.params["N"]: s for s in practitioner_systems() if s.name.startswith("plummer_N")}
    soft = boxed_checkpoint(Config.load(ROOT / "configs" / "generalist_soft.yaml", ["wandb.mode=disabled"]), quick)
    for n in (16, 64):
        system = spheres[n]
        gen = methods(generalist_config(), system.eps)["learned"]
        rules = {"recursive_adaptive": make_baseline("recursive_adaptive", 0.01, system.eps), "generalist": gen,
                 "soft": learned_methods(soft, eps=system.eps)["learned"],
                 "recursive_soft_blend_clip": make_baseline("recursive_soft_blend_clip", 0.01, system.eps)}
        r = step_cost_ratios(rules, "recursive_adaptive", system, seconds=0.3 if quick else 1.0, repeats=repeats)
        for key, name in ((f"generalist_step_vs_recursive_step_N{n}", "generalist"),
                          (f"soft_step_vs_recursive_step_N{n}", "soft"),
                          (f"recursive_soft_blend_step_vs_recursive_step_N{n}", "recursive_soft_blend_clip")):
            out[key] = r[name]["ratio"]
            spreads[key] = {"min": r[name]["ratio_min"], "max": r[name]["ratio_max"], "n": repeats}
        prof = step_profile(gen.h, system, 200 if quick else 2000, repeats)
        out.update({k.replace("step_profile_", f"step_profile_N{n}_"): val for k, val in prof.items()})
    return out, spreads


def steps(quick: bool) -> dict:
    """Cost of one step in the evaluation loop (batch 1, one thread, Kepler e = 0.9): the learned
    factor rule (numpy features + MLP, laptop model) with one force evaluation per step (the laptop
    configuration's step recursion) against the classical rule it generalises, the time-symmetric
    pair, and the seed's mode (torch features from K + 1 states, K = 3)."""
    from aits import build_payload, integrators as I
    from aits.policy import learned_methods
    from aits.scoreboard import kepler_system, make_baseline, step_cost_ratios

    torch.set_num_threads(1)
    laptop = laptop_config()
    seed_mode = Config.from_dict({"features": {"history_len": 3, "normalize_inputs": "auto"},
                                  "model": {"hidden_dims": [64, 64], "init_dt": 0.01}})

    def methods(cfg, eps=None):
        ckpt = build_payload(0, build_model(cfg).state_dict(), None, cfg, auto_norm_scales(cfg).to_dict())
        return learned_methods(ckpt, eps=eps)

    lm = methods(laptop)
    one_eval = lm.get("learned_explicit") or lm["learned"]  # the step recursion or the explicit step
    symmetric = lm.get("learned_symmetric") or lm["learned"]
    rules = {"adaptive": I.Adaptive(0.02), "learned": one_eval, "symmetric_adaptive": I.SymmetricAdaptive(0.03, 1),
             "learned_symmetric": symmetric}
    system = kepler_system(0.9, 1.0, 100, "kepler_long")
    start = time.perf_counter()
    repeats = 3 if quick else 5
    r = step_cost_ratios(rules, "adaptive", system, seconds=0.3 if quick else 1.0, repeats=repeats)
    # The seed's mode is ~20x dearer per step: its own pair, on a shorter stretch of the same orbit.
    # The recommended rule (configs/generalist.yaml, untrained weights: the cost does not depend on them) against
    # the classical recursion it is compared with, and against the PRS recursion (jerk and snap per step).
    gen = {"recursive_adaptive": make_baseline("recursive_adaptive", 0.01),
           "generalist": methods(generalist_config())["learned"],
           "recursive_prs": make_baseline("recursive_prs", 0.01),
           "blend": methods(generalist_config("features.timescale=blend"))["learned"],
           "recursive_blend_clip": make_baseline("recursive_blend_clip", 0.01),
           # configs/generalist_radial.yaml, with the range box its validation would store: on this orbit the
           # features lie inside it, so every step evaluates the network. generalist_apsis_hinge.yaml is the same rule
           # (features, model) trained otherwise, as is soft radial's
           # (tests/test_passage.py holds the configs' differences)
           "radial": learned_methods(boxed_checkpoint(Config.load(ROOT / "configs" / "generalist_radial.yaml",
                                                                  ["wandb.mode=disabled"]), quick))["learned"],
           # configs/generalist_prs_point_lean.yaml: the same rule on the prs_point_lean timescale (one exp more); the
           # README's recommendation, generalist_tau_hinge.yaml, steps with the same function (it trains otherwise)
           "point_lean": learned_methods(boxed_checkpoint(Config.load(
               ROOT / "configs" / "generalist_prs_point_lean.yaml", ["wandb.mode=disabled"]), quick))["learned"],
           "recursive_soft_blend_clip": make_baseline("recursive_soft_blend_clip", 0.01)}
    g = step_cost_ratios(gen, "recursive_adaptive", system, seconds=0.3 if quick else 1.0, repeats=repeats)
    r["seed_mode"] = step_cost_ratios({"adaptive": rules["adaptive"], "seed_mode": methods(seed_mode)["learned"]},
                                      "adaptive", system, seconds=0.05 if quick else 0.2, repeats=repeats)["seed_mode"]
    sym = r["learned_symmetric"]["seconds_per_step"] / r["symmetric_adaptive"]["seconds_per_step"]
    profile = step_profile(symmetric.h, system, 2000 if quick else 20000, repeats)
    many, many_spread = many_body_steps(methods, quick, repeats)
    out = {"learned_step_vs_adaptive_step": r["learned"]["ratio"],
           "learned_symmetric_step_vs_symmetric_adaptive_step": sym,
           "seed_mode_step_vs_adaptive_step": r["seed_mode"]["ratio"],
           "generalist_step_vs_recursive_step": g["generalist"]["ratio"],
           "recursive_prs_step_vs_recursive_step": g["recursive_prs"]["ratio"],
           "blend_step_vs_recursive_step": g["blend"]["ratio"],
           "recursive_blend_step_vs_recursive_step": g["recursive_blend_clip"]["ratio"],
           "radial_step_vs_recursive_step": g["radial"]["ratio"],
           "point_lean_step_vs_recursive_step": g["point_lean"]["ratio"],
           "recursive_soft_blend_step_vs_recursive_step_N2": g["recursive_soft_blend_clip"]["ratio"],
           "adaptive_step_us": 1e6 * r["adaptive"]["seconds_per_step"],
           **profile, **many,
           "_seconds": {"steps": time.perf_counter() - start},
           "_spread": {k: {"min": r[n]["ratio_min"], "max": r[n]["ratio_max"], "n": repeats}
                       for k, n in (("learned_step_vs_adaptive_step", "learned"),
                                    ("seed_mode_step_vs_adaptive_step", "seed_mode"))}}
    out["_spread"].update({k: {"min": g[n]["ratio_min"], "max": g[n]["ratio_max"], "n": repeats}
                           for k, n in (("generalist_step_vs_recursive_step", "generalist"),
                                        ("recursive_prs_step_vs_recursive_step", "recursive_prs"),
                                        ("blend_step_vs_recursive_step", "blend"),
                                        ("recursive_blend_step_vs_recursive_step", "recursive_blend_clip"),
                                        ("radial_step_vs_recursive_step", "radial"),
                                        ("point_lean_step_vs_recursive_step", "point_lean"),
                                        ("recursive_soft_blend_step_vs_recursive_step_N2", "recursive_soft_blend_clip"))})
    out["_spread"].update(many_spread)
    return out


def passage(quick: bool) -> dict:
    """The passage gradient a collector computes each epoch (configs/generalist_blend.yaml: 16 start states of
    the mixture, the blend rule, untrained weights), eager against ``train.compile_rollout``: seconds per
    gradient in alternation, the first compiled call (its compile: ~40 s cold, less from inductor's disk
    cache) and the largest relative difference of the two gradients."""
    from aits import passage_gradient

    torch.set_num_threads(1)
    steps = 200 if quick else 1800
    cfgs = {c: Config.load(ROOT / "configs" / "generalist_blend.yaml",
                           ["wandb.mode=disabled", f"train.passage_steps={steps}", f"train.compile_rollout={c}"])
            for c in ("false", "true")}
    eager = cfgs["false"]
    model = build_model(eager)
    systems = Systems.for_collector(eager, 0, eager.train.passage_batch)
    samples = Samples.empty(0, systems.N, systems.D, capacity=len(systems.m))
    samples.m[:], samples.x[:], samples.v[:] = systems.m, systems.x, systems.v
    steppers = {c: Stepper(cfg, auto_norm_scales(cfg)) for c, cfg in cfgs.items()}

    def grad(c):
        return lambda: passage_gradient(model, samples, steppers[c], cfgs[c], np.random.default_rng(0))[0]

    start = time.perf_counter()
    first, g_compiled = timed(grad("true"))
    g_eager = grad("false")()
    diff = max(float(((g_compiled[k] - g_eager[k]).abs().max() / g_eager[k].abs().max())) for k in g_eager)
    repeats = 3 if quick else 5
    runs = [interleaved({"eager": grad("false"), "compiled": grad("true")}, 1) for _ in range(repeats)]
    ratios = [r["eager"] / r["compiled"] for r in runs]
    return {"compiled_passage_speedup": statistics.median(ratios),
            "eager_passage_gradient_s": statistics.median(r["eager"] for r in runs),
            "compiled_passage_gradient_s": statistics.median(r["compiled"] for r in runs),
            "compile_first_call_s": first, "compiled_passage_gradient_max_rel_diff": diff,
            "_seconds": {"passage": time.perf_counter() - start},
            "_spread": {"compiled_passage_speedup": {"min": min(ratios), "max": max(ratios), "n": repeats}}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, systems and steps (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--only", choices=["micro", "collectors", "service", "steps", "passage"], default=None)
    ap.add_argument("--device", default="cpu", help="device of the micro benchmarks (cpu, cuda)")
    args = ap.parse_args(argv)
    results, seconds, spreads = {}, {}, {}
    parts = (("micro", lambda q: micro(q, args.device)), ("collectors", collectors), ("service", service),
             ("steps", steps), ("passage", passage))
    for name, fn in parts:
        if args.only in (None, name):
            part = fn(args.quick)
            seconds.update(part.pop("_seconds"))
            spreads.update(part.pop("_spread", {}))
            results.update(part)
    print(f"{'figure':38s} {'value':>9s}  {'goal':14s} spread (min-max over repeats)")
    for key, value in results.items():
        goal = GOALS.get(key)
        verdict = ""
        if goal:
            ok = value >= goal[1] if goal[0] == ">=" else value <= goal[1]
            verdict = f"{goal[0]} {goal[1]:<5g} {'met' if ok else 'MISSED'}"
        sp = spreads.get(key)
        rng = f"{sp['min']:.3g}-{sp['max']:.3g} (n={sp['n']})" if sp else ""
        print(f"{key:38s} {value:9.3f}  {verdict:14s} {rng}")
    print("seconds: " + ", ".join(f"{k}={v:.4g}" for k, v in seconds.items()))
    if args.out:
        args.out.write_text(json.dumps({**results, "spread": spreads, "seconds": seconds, "quick": args.quick},
                                       indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

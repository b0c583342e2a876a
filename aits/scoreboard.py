"""The scoreboard: a checkpoint's learned step rule against the classical rules at equal cost.

Library code (no files, no Ray, no printing); ``driver/evaluate.py`` runs it in parallel and
writes the report. For one system, :func:`score_system` runs

- the learned method(s) of the checkpoint,
- ``ias15`` (REBOUND at its default accuracy): the reference trajectory and a cost anchor,
- each classical family (``fixed``, ``adaptive``, ``symmetric_adaptive``, ``recursive_adaptive``,
  ``logh`` for two bodies)
  at **equal force evaluations**: its step parameter searched until its count lies within
  ``EVAL_TOL`` of the learned run's, and at **equal wall time**: the parameter rescaled until its
  loop time matches the learned run's (within ``WALL_TOL``, a few tries),

and reports per method ``force_evals, steps, wall_time_s, max_rel_dE, final_rel_dE,
drift_slope, final_position_error, status`` and the ratios learned / baseline of max |dE/E|.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import integrators as I
from .physics import crossing_time, kepler_ic, random_ic

BASELINES = ("fixed", "adaptive", "symmetric_adaptive", "recursive_adaptive", "logh")
METHOD_NAMES = ("learned", *BASELINES, "ias15")
EVAL_TOL = 0.02  # equal force evaluations: within 2 %
WALL_TOL = 0.10  # equal wall time: within 10 % (wall clocks on shared cores wander more than that)
SYMMETRIC_ITERATIONS = 1  # fixed-point iterations of symmetric_adaptive: 1 is the strongest at equal evaluations (k = 2, 3 measured 2-4x worse)
PLOT_POINTS = 1500  # trajectory points kept per method for plots


# ---------------------------------------------------------------- systems
@dataclass
class System:
    """One test system: initial state, duration, softening, and what family it belongs to."""

    name: str
    kind: str  # kepler | random | triple
    family: str  # kepler_long | kepler_scale | nbody_random | triple
    params: dict
    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    duration: float
    eps: float = 0.0
    long: bool = False  # plotted against time

    def to_dict(self) -> dict:
        return {"kind": self.kind, "family": self.family, "params": self.params, "duration": self.duration,
                "N": int(self.x.shape[0]), "D": int(self.x.shape[1]), "softening": self.eps}


def kepler_system(e: float, a: float, periods: float, family: str, dim: int = 2, mass=1.0) -> System:
    m, x, v, period = kepler_ic(e, a, mass, dim)
    name = f"kepler_e{e:g}_a{a:g}_{periods:g}P"
    return System(name, "kepler", family, {"e": e, "a": a, "periods": periods, "period": period},
                  m, x, v, periods * period, long=periods >= 50)


def random_system(n: int, dim: int, seed: int, crossings: float, eps: float, mass=1.0,
                  pos_scale: float = 1.0, vel_scale: float = 0.5) -> System:
    m, x, v = random_ic(n, dim, mass, pos_scale, vel_scale, np.random.default_rng([seed, 7919]))
    tc = crossing_time(m, x)
    return System(f"random_N{n}_s{seed}", "random", "nbody_random",
                  {"N": n, "seed": seed, "crossings": crossings, "crossing_time": tc},
                  m, x, v, crossings * tc, eps=eps)


def hierarchical_triple(outer_periods: float, eps: float = 0.0, dim: int = 2) -> System:
    """Inner binary (m = 0.5 + 0.5, a = 0.1, e = 0.3) at pericentre and a third body (m = 0.5) on an
    outer orbit (a = 1, e = 0.2) about the binary's centre of mass, started at its pericentre."""
    mi, xi, vi, _ = kepler_ic(0.3, 0.1, [0.5, 0.5], dim)
    # The outer pair is the binary's centre of mass (mass 1) and the third body (mass 0.5).
    _, xo, vo, p_out = kepler_ic(0.2, 1.0, [1.0, 0.5], dim)
    m = np.array([0.5, 0.5, 0.5])
    x = np.concatenate([xi + xo[0], xo[1:]])
    v = np.concatenate([vi + vo[0], vo[1:]])
    com_x = (m[:, None] * x).sum(0) / m.sum()
    com_v = (m[:, None] * v).sum(0) / m.sum()
    return System("hierarchical_triple", "triple", "triple",
                  {"inner": {"a": 0.1, "e": 0.3}, "outer": {"a": 1.0, "e": 0.2}, "outer_periods": outer_periods,
                   "outer_period": p_out}, m, x - com_x, v - com_v, outer_periods * p_out, eps=eps)


def suite_systems(suite: str, n_bodies: int, dim: int, eps: float, mass=1.0) -> list[System]:
    """The fixed, seeded systems of a suite for a checkpoint with ``n_bodies`` bodies in ``dim``."""
    if suite not in ("quick", "standard"):
        raise ValueError(f"suite must be quick or standard, got {suite!r}")
    quick = suite == "quick"
    out: list[System] = []
    if n_bodies == 2:
        eccs = (0.9,) if quick else (0.3, 0.7, 0.9, 0.95, 0.98)
        periods = 10 if quick else 100
        out += [kepler_system(e, 1.0, periods, "kepler_long", dim, mass) for e in eccs]
        scale_periods = 3 if quick else 10
        scales = (3.0,) if quick else (0.3, 1.0, 3.0)
        out += [kepler_system(0.9, a, scale_periods, "kepler_scale", dim, mass) for a in scales]
    else:
        n_sys = 2 if quick else 10
        crossings = 2 if quick else 10
        out += [random_system(n_bodies, dim, s, crossings, eps, mass) for s in range(n_sys)]
        if n_bodies == 3:
            out.append(hierarchical_triple(1 if quick else 5, eps, dim))
    return out


# ---------------------------------------------------------------- baselines
def make_baseline(family: str, param: float) -> I.Method:
    if family == "fixed":
        return I.FixedStep(param)
    if family == "adaptive":
        return I.Adaptive(param)
    if family == "symmetric_adaptive":
        return I.SymmetricAdaptive(param, SYMMETRIC_ITERATIONS)
    if family == "recursive_adaptive":
        return I.RecursiveAdaptive(param)
    if family == "logh":
        return I.LogH(param)
    raise ValueError(f"unknown baseline {family!r}")


def initial_param(family: str, sys: System, target_evals: int, n_steps: int) -> float:
    """A first guess of the step parameter (``eta`` or ``h``) that spends ``target_evals`` evaluations,
    as if the start's timescale held throughout (``fixed`` needs no guess: see :func:`match_evals`)."""
    steps = max(target_evals, 2)
    if family == "logh":  # dt ~ h / (-U)
        return sys.duration * (-I.accel_pot(sys.x, sys.m, sys.eps)[1]) / steps
    tau0 = I.timescale(sys.x, I.accel(sys.x, sys.m, sys.eps))
    if family == "adaptive":
        return sys.duration / (steps * tau0 * n_steps)
    if family == "recursive_adaptive":  # one substep per step
        return sys.duration / (steps * tau0)
    return sys.duration * (SYMMETRIC_ITERATIONS + 1) / (steps * tau0)  # symmetric_adaptive


def run_method(method: I.Method, sys: System, n_steps: int, max_steps: int, record: bool = True) -> I.Run:
    # n_steps leapfrog substeps per step apply to the explicit KDK rules; symmetric and recursive steps
    # and logh take one
    ns = 1 if isinstance(method, (I.SymmetricPolicy, I.RecursivePolicy, I.LogH)) else n_steps
    return I.integrate(method, sys.m, sys.x, sys.v, sys.duration, eps=sys.eps, n_steps=ns,
                       max_steps=max_steps, record=record)


def _search(family: str, sys: System, target: int, n_steps: int, tol: float, max_tries: int, p: float,
            trials: list) -> tuple[I.Run, float]:
    """Secant search in log(parameter) against log(evaluations) (evaluations ~ 1 / parameter),
    bracketed; returns the closest run and its parameter."""
    cap = int(3 * target + 50)

    def count(q):
        run = run_method(make_baseline(family, q), sys, n_steps, cap)
        trials.append(run)
        status = run.metrics["status"]
        # a failed run says only "too few" (blown up early) or "too many" (the cap) evaluations
        return (run.metrics["force_evals"] if status == "ok" else 4 * cap if status == "max_steps" else 1), run

    (run, p, _), _ = I.tune(count, target, p, tol, max_tries)
    return run, p


PILOT_FRACTION = 0.1  # long runs tune their parameter on the first tenth of the duration first


def match_evals(family: str, sys: System, target: int, n_steps: int, tol: float = EVAL_TOL,
                max_tries: int = 14, p0: float | None = None) -> tuple[I.Run, list[I.Run]]:
    """The baseline run whose force evaluations lie within ``tol`` of ``target`` (the closest
    one if none does), and every trial (the accuracy-against-cost curve).

    Runs of more than 20 000 evaluations first tune on a pilot: the first ``PILOT_FRACTION`` of the
    duration at the same fraction of the target (whole Kepler periods: the count scales exactly).
    """
    target = max(int(target), 2)
    if family == "fixed":
        steps = max(round((target - 1) / n_steps), 1)
        run = run_method(make_baseline("fixed", sys.duration / (steps * n_steps)), sys, n_steps, steps + 2)
        return run, [run]
    p = p0 if p0 is not None else initial_param(family, sys, target, n_steps)
    trials: list[I.Run] = []
    if p0 is None and target > 20_000:
        pilot = replace(sys, duration=sys.duration * PILOT_FRACTION)
        _, p = _search(family, pilot, int(target * PILOT_FRACTION), n_steps, 0.05, max_tries, p, [])
    best, _ = _search(family, sys, target, n_steps, tol, max_tries, p, trials)
    return best, trials


def _evals(run: I.Run) -> int:
    return run.metrics["force_evals"]


def match_wall(family: str, sys: System, eq_run: I.Run, target_wall: float, n_steps: int,
               tries: int = 2) -> I.Run:
    """The baseline run whose loop wall time matches ``target_wall``: the parameter rescaled by the
    wall-time ratio (wall time ~ evaluations ~ 1 / parameter), at most ``tries`` runs."""
    run = eq_run
    for _ in range(tries):
        wall = run.metrics["wall_time_s"]
        if abs(wall - target_wall) <= WALL_TOL * target_wall:
            break
        scale = target_wall / max(wall, 1e-9)
        if family == "fixed":
            steps = max(round(run.metrics["steps"] * scale), 1)
            run = run_method(make_baseline("fixed", sys.duration / (steps * n_steps)), sys, n_steps, steps + 2)
        else:
            cap = int(3 * _evals(run) * scale + 50)
            run = run_method(make_baseline(family, run.metrics["param"] / scale), sys, n_steps, cap)
    return run


# ---------------------------------------------------------------- reference
def ias15(sys: System, n_out: int = 200) -> dict | None:
    """REBOUND IAS15 at its default accuracy: final positions, max |dE/E| on ``n_out`` samples,
    loop wall time, and its force evaluations (counted with a no-op additional-forces callback
    in a second, untimed run). None without REBOUND or for D > 3."""
    try:
        import rebound
    except ImportError:
        return None
    d = sys.x.shape[1]
    if d > 3:
        return None

    def build():
        sim = rebound.Simulation()
        sim.G = 1.0
        sim.integrator = "ias15"
        sim.softening = float(sys.eps)
        for i in range(len(sys.m)):
            pos = list(sys.x[i]) + [0.0] * (3 - d)
            vel = list(sys.v[i]) + [0.0] * (3 - d)
            sim.add(m=float(sys.m[i]), x=pos[0], y=pos[1], z=pos[2], vx=vel[0], vy=vel[1], vz=vel[2])
        return sim

    sim = build()
    ts = np.linspace(0.0, sys.duration, n_out + 1)[1:]
    xs, vs = [sys.x], [sys.v]
    start = time.perf_counter()
    for tk in ts:
        sim.integrate(float(tk), exact_finish_time=1)
        xs.append(np.array([[p.x, p.y, p.z][:d] for p in sim.particles]))
        vs.append(np.array([[p.vx, p.vy, p.vz][:d] for p in sim.particles]))
    wall = time.perf_counter() - start
    # energies with the project's formula (softened potential included), as for every other method
    e = I.energies(np.stack(xs), np.stack(vs), sys.m, sys.eps)
    errs = np.abs((e[1:] - e[0]) / (e[0] + 1e-12 * abs(e[0]) + 1e-12))
    x_final = xs[-1]
    steps = int(sim.steps_done)

    count = [0]
    sim2 = build()

    def tally(_simp):  # adds no force: only counts how often IAS15 evaluates the forces
        count[0] += 1

    sim2.additional_forces = tally
    sim2.force_is_velocity_dependent = 0
    sim2.integrate(float(sys.duration), exact_finish_time=1)
    return {"x_final": x_final, "metrics": {
        "method": "ias15", "force_evals": count[0], "steps": steps, "wall_time_s": wall,
        "max_rel_dE": float(max(errs)), "final_rel_dE": float(errs[-1]), "drift_slope": None,
        "final_position_error": 0.0, "status": "ok", "energy_samples": n_out}}


# ---------------------------------------------------------------- one system
def score_system(sys: System, learned: dict[str, I.Method], n_steps: int = 1, max_steps: int = 2_000_000,
                 baselines=BASELINES, reference: bool = True) -> dict:
    """Every method on one system; the first entry of ``learned`` is the primary ``learned`` run
    that the baselines are matched to. Returns the system's scoreboard entry plus ``_plot``
    (downsampled trajectories and the accuracy-against-cost points) for the driver."""
    entry = {**sys.to_dict(), "methods": {}, "ratios": {"equal_force_evals": {}, "equal_wall_time": {}}}
    plot = {"series": {}, "cost": {}, "m": sys.m.tolist()}  # masses: the movies' momenta
    ref = ias15(sys) if reference else None
    x_ref = ref["x_final"] if ref else None

    def finish(run: I.Run) -> dict:
        met = {k: run.metrics[k] for k in ("force_evals", "steps", "wall_time_s", "status", "param",
                                           "param_name")}
        met.update({k: run.metrics.get(k) for k in ("max_rel_dE", "final_rel_dE", "drift_slope")})
        done = x_ref is not None and run.trajectory and run.metrics["status"] == "ok"
        met["final_position_error"] = (float(np.linalg.norm(run.trajectory["x"][-1] - x_ref, axis=-1).max())
                                       if done else None)
        return met

    primary = None
    for name, method in learned.items():
        run = run_method(method, sys, n_steps, max_steps)
        entry["methods"][name] = finish(run)
        plot["series"][name] = downsample(run, m=sys.m)
        plot["cost"][name] = [(run.metrics["force_evals"], run.metrics["max_rel_dE"])]
        if primary is None:
            primary = run
    target_evals = primary.metrics["force_evals"]
    target_wall = primary.metrics["wall_time_s"]
    families = [b for b in baselines if not (b == "logh" and sys.x.shape[0] != 2)]
    for fam in families:
        eq, trials = match_evals(fam, sys, target_evals, n_steps)
        met = finish(eq)
        met["evals_matched"] = abs(_evals(eq) - target_evals) <= EVAL_TOL * target_evals
        wall_run = match_wall(fam, sys, eq, target_wall, n_steps)
        met["equal_wall_time"] = finish(wall_run)
        entry["methods"][fam] = met
        plot["series"][fam] = downsample(eq, m=sys.m)
        plot["cost"][fam] = sorted((t.metrics["force_evals"], t.metrics.get("max_rel_dE", math.inf))
                                   for t in [*trials, wall_run] if t.metrics["status"] == "ok")
    if ref is not None:
        entry["methods"]["ias15"] = ref["metrics"]
    lm = entry["methods"][next(iter(learned))]
    for fam in families:
        b = entry["methods"][fam]
        entry["ratios"]["equal_force_evals"][fam] = ratio(lm["max_rel_dE"], b["max_rel_dE"])
        entry["ratios"]["equal_wall_time"][fam] = ratio(lm["max_rel_dE"], b["equal_wall_time"]["max_rel_dE"])
    entry["_plot"] = plot
    return entry


def ratio(a, b) -> float | None:
    """a / b, or None when either is missing or non-finite or b is zero (written as null)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def downsample(run: I.Run, points: int = PLOT_POINTS, m=None) -> dict:
    """A recorded run on at most ``points`` time bins, for plots and movies.

    Parameters
    ----------
    run : Run
        A run with its trajectory (t (S,), x (S, N, D), v (S, N, D), dt (S,), E (S,)).
    points : int
        Largest number of bins.
    m : array (N,), optional
        The masses; with them the series also hold positions and momentum drifts.

    Returns
    -------
    dict
        ``t`` (bin mean), ``rel_dE`` = |dE/E| (bin maximum), ``dt`` (bin mean), each (bins,); with
        ``m``: ``x`` (bins, N, D), the positions at each bin's last sample, ``P_drift`` = |P(t) - P0|
        (total momentum, absolute, bin maximum) and, for D = 2 or 3, ``L_drift`` = |L(t) - L0| / |L0|
        (angular momentum: the z component in 2-D, the vector in 3-D; bin maximum). Empty without
        a trajectory.
    """
    if not run.trajectory:
        return {}
    t, e, dt = run.trajectory["t"], run.trajectory["E"], run.trajectory["dt"]
    rel = np.abs((e - e[0]) / (e[0] + 1e-12 * abs(e[0]) + 1e-12))
    n = len(t)
    # bins of sample indices [a, b); a run of <= 2 samples keeps every sample
    edges = (np.arange(n + 1) if n <= 2 else np.linspace(1, n, min(points, n - 1) + 1).astype(int))
    bins = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    out = {"t": [float(t[a:b].mean()) for a, b in bins], "rel_dE": [float(rel[a:b].max()) for a, b in bins],
           "dt": [float(dt[a:b].mean()) for a, b in bins]}
    if m is None:
        return out
    m = np.asarray(m, dtype=float)
    x, v = run.trajectory["x"], run.trajectory["v"]
    last = [b - 1 for _, b in bins]
    out["x"] = x[last].tolist()
    p = np.einsum("n,snd->sd", m, v)
    p_drift = np.linalg.norm(p - p[0], axis=-1)
    out["P_drift"] = [float(p_drift[a:b].max()) for a, b in bins]
    d = x.shape[-1]
    if d in (2, 3):
        ang = (np.einsum("n,sn->s", m, x[..., 0] * v[..., 1] - x[..., 1] * v[..., 0])[:, None] if d == 2
               else np.einsum("n,snd->sd", m, np.cross(x, v)))
        scale = float(np.linalg.norm(ang[0]))
        natural = float((m * np.linalg.norm(x[0], axis=-1) * np.linalg.norm(v[0], axis=-1)).sum())
        if scale <= 1e-12 * natural:  # L0 ~ 0 (a radial start): relative to sum m |x||v|, the size L could have
            scale = max(natural, 1e-300)
        l_drift = np.linalg.norm(ang - ang[0], axis=-1) / scale
        out["L_drift"] = [float(l_drift[a:b].max()) for a, b in bins]
    return out


# ---------------------------------------------------------------- summary
def summarize(systems_by_ckpt: dict[str, dict[str, dict]]) -> dict:
    """Per family of systems and baseline: median and worst ratio (per checkpoint), and over
    checkpoints the median and spread (min, max) of those per-checkpoint medians; per system the
    median and spread over checkpoints; and the learned runs' drift slopes and statuses."""
    per_ckpt: dict[str, dict] = {}
    for label, systems in systems_by_ckpt.items():
        fams: dict = {}
        for entry in systems.values():
            for comp, rs in entry["ratios"].items():
                for base, r in rs.items():
                    if r is not None:
                        fams.setdefault(entry["family"], {}).setdefault(comp, {}).setdefault(base, []).append(r)
        per_ckpt[label] = {fam: {comp: {b: {"median": float(np.median(v)), "worst": float(np.max(v))}
                                        for b, v in bs.items()} for comp, bs in comps.items()}
                           for fam, comps in fams.items()}
    out = {"per_checkpoint": per_ckpt}
    if len(systems_by_ckpt) > 1:
        across: dict = {}
        for label, fams in per_ckpt.items():
            for fam, comps in fams.items():
                for comp, bs in comps.items():
                    for b, st in bs.items():
                        across.setdefault(fam, {}).setdefault(comp, {}).setdefault(b, []).append(st["median"])
        out["across_checkpoints"] = {fam: {comp: {b: spread(v) for b, v in bs.items()} for comp, bs in comps.items()}
                                     for fam, comps in across.items()}
        per_system: dict = {}
        for label, systems in systems_by_ckpt.items():
            for name, entry in systems.items():
                slot = per_system.setdefault(name, {})
                for comp, rs in entry["ratios"].items():
                    for b, r in rs.items():
                        if r is not None:
                            slot.setdefault(comp, {}).setdefault(b, []).append(r)
                slope = entry["methods"]["learned"].get("drift_slope")
                if slope is not None:
                    slot.setdefault("learned_drift_slope", []).append(slope)
        out["per_system"] = {name: {k: (spread(v) if isinstance(v, list) else
                                        {b: spread(r) for b, r in v.items()}) for k, v in slot.items()}
                             for name, slot in per_system.items()}
    return out


def spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


# ---------------------------------------------------------------- cost per step
def seconds_per_step(method: I.Method, sys: System, steps: int, repeats: int = 3) -> list[float]:
    """Loop seconds per step of ``method`` over the same ``steps`` steps of ``sys`` (equal work),
    ``repeats`` times: batch 1, the thread count the caller set."""
    out = []
    for _ in range(repeats):
        run = I.integrate(method, sys.m, sys.x, sys.v, 1e30, max_steps=steps, record=False)
        out.append(run.metrics["wall_time_s"] / max(run.metrics["steps"], 1))
    return out


def step_cost_ratios(methods: dict[str, I.Method], reference: str, sys: System, seconds: float = 2.0,
                     repeats: int = 3) -> dict:
    """Each method's cost per step over ``reference``'s, timed side by side: the step count is set
    so one window of the reference lasts about ``seconds``; each window is repeated ``repeats``
    times, interleaved across methods. Returns {name: {"seconds_per_step": median, "ratio": median,
    "ratio_min", "ratio_max"}}."""
    probe = seconds_per_step(methods[reference], sys, 200, 1)[0]
    steps = max(int(seconds / max(probe, 1e-9)), 100)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            times[name] += seconds_per_step(method, sys, steps, 1)
    ref = np.asarray(times[reference])
    out = {}
    for name, ts in times.items():
        r = np.asarray(ts) / ref
        out[name] = {"seconds_per_step": float(np.median(ts)), "ratio": float(np.median(r)),
                     "ratio_min": float(r.min()), "ratio_max": float(r.max()), "steps": steps}
    return out

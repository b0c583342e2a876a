"""Drive REBOUND with a learned step: ``sim.dt`` set from the rule before every step (docs/RULE.md).

    python examples/rebound_learned_step.py --checkpoint runs/ray_run/model/model_epoch_0100.pt \\
        --out rebound_demo --periods 10 --e 0.9

A Kepler pair (masses 1 and 1, a = 1, from pericentre; G = 1, the checkpoint's softening) runs in
REBOUND 5's ``leapfrog`` integrator (``sim.integrator = "leapfrog"``, order 2). That leapfrog is
**drift-kick-drift**: a step of dt drifts dt/2, evaluates the forces at the midpoint, kicks dt and
drifts dt/2 (checked against the formula to round-off; the project trains and evaluates with
kick-drift-kick). The learned rule is a function of the synchronized state (x, v, a(x)); in DKD the
accelerations at the synchronized point are never computed, so the example computes them for
the rule (``rule.accelerations``): **two force evaluations per step** where the project's KDK
needs one (it reuses the last kick's). The step forms carry over: the recursion
dt_n = h(z_n)^2 / dt_(n-1) and the symmetric fixed point need only a symmetric one-step map, which
DKD is as much as KDK (the symmetric form's trial steps are REBOUND steps on a copy of the
simulation). The accuracy differs from the trained KDK, so the run is also repeated:

- ``learned_rebound``: the rule setting ``sim.dt`` of REBOUND's DKD leapfrog (2 evaluations / step);
- ``learned_kdk``: the rule inside the project's KDK loop (numpy, 1 evaluation / step), as trained;
- ``fixed_same_steps``: REBOUND's leapfrog with a constant dt and as many steps as ``learned_rebound``;
- ``fixed_same_evals``: the same with as many force evaluations as ``learned_rebound``;

and REBOUND's IAS15 gives the reference end positions. Writes ``DIR/energy.png`` (|dE/E| against
time, with its running maximum) and ``DIR/summary.json``; prints max |dE/E|, steps, force evaluations and the position
error at the end for each run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import rebound

import aits
from aits.integrators import energies
from aits.physics import kepler_ic
from aits.rule import kdk_trial

RUNS = ("learned_rebound", "learned_kdk", "fixed_same_steps", "fixed_same_evals")


def new_sim(m, x, v, eps: float, integrator: str = "leapfrog") -> rebound.Simulation:
    """A REBOUND simulation of bodies m (N,), x, v (N,3), G = 1, softening eps."""
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.softening = eps
    for mi, xi, vi in zip(m, x, v):
        sim.add(m=float(mi), x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
    sim.integrator = integrator
    return sim


def state(sim: rebound.Simulation) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities (N, 3), copied on the C side."""
    x, v = np.zeros((sim.N, 3)), np.zeros((sim.N, 3))
    sim.serialize_particle_data(xyz=x, vxvyvz=v)
    return x, v


def run_learned_rebound(rule, m, x0, v0, t_end: float) -> dict:
    """The rule choosing ``sim.dt`` before each step of REBOUND's DKD leapfrog."""
    sim = new_sim(m, x0, v0, rule.eps)
    x, v = state(sim)
    rule.start(x, v, m)
    ts, es, evals = [0.0], [sim.energy()], 0
    while t_end - sim.t > 1e-12 * t_end:
        x, v = state(sim)
        a = rule.accelerations(x, m)  # DKD never evaluates forces at the synchronized state
        evals += 1
        trial = None
        if rule.mode == "symmetric":  # the fixed point's trial steps: REBOUND steps on a copy
            def trial(dt, sim=sim):
                nonlocal evals
                s = sim.copy()
                s.dt = dt
                s.steps(1)
                x1, v1 = state(s)
                evals += 2
                return x1, v1, rule.accelerations(x1, m)
        dt = rule.next_dt(x, v, a, m, trial=trial)
        sim.dt = min(dt, t_end - sim.t)  # the last step lands on the end time
        sim.steps(1)
        evals += 1
        ts.append(sim.t)
        es.append(sim.energy())
    x, _ = state(sim)
    return {"t": ts, "E": es, "steps": len(ts) - 1, "force_evals": evals, "x_end": x}


def run_learned_kdk(rule, m, x0, v0, t_end: float) -> dict:
    """The rule in the project's kick-drift-kick loop (one force evaluation per step), as trained."""
    x, v = np.array(x0, dtype=np.float64), np.array(v0, dtype=np.float64)
    a = rule.accelerations(x, m)
    rule.start(x, v, m)
    t, ts, xs, vs, evals = 0.0, [0.0], [x], [v], 1
    while t_end - t > 1e-12 * t_end:
        dt = rule.next_dt(x, v, a, m, trial=kdk_trial(x, v, a, m, rule.eps))
        evals += rule.k
        dt = min(dt, (t_end - t) / rule.substeps)
        for _ in range(rule.substeps):
            x, v, a = kdk_trial(x, v, a, m, rule.eps)(dt)
        t += dt * rule.substeps
        evals += rule.substeps
        ts.append(t)
        xs.append(x)
        vs.append(v)
    e = energies(np.stack(xs), np.stack(vs), m, rule.eps)  # the formula of REBOUND's sim.energy()
    return {"t": ts, "E": list(e), "steps": len(ts) - 1, "force_evals": evals, "x_end": x}


def run_fixed(m, x0, v0, eps: float, t_end: float, steps: int) -> dict:
    """REBOUND's leapfrog with the constant dt = t_end / steps."""
    sim = new_sim(m, x0, v0, eps)
    sim.dt = t_end / steps
    ts, es = [0.0], [sim.energy()]
    for _ in range(steps):
        sim.steps(1)
        ts.append(sim.t)
        es.append(sim.energy())
    x, _ = state(sim)
    return {"t": ts, "E": es, "steps": steps, "force_evals": steps, "x_end": x}


def reference_end(m, x0, v0, eps: float, t_end: float) -> np.ndarray:
    """IAS15's positions at t_end (REBOUND's default accuracy)."""
    sim = new_sim(m, x0, v0, eps, "ias15")
    sim.integrate(t_end, exact_finish_time=1)
    return state(sim)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rebound_learned_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training checkpoint (model_epoch_XXXX.pt)")
    p.add_argument("--out", default="rebound_learned_step", help="output folder")
    p.add_argument("--periods", type=float, default=10.0, help="orbital periods to integrate")
    p.add_argument("--e", type=float, default=0.9, help="eccentricity of the Kepler orbit")
    args = p.parse_args(argv)
    if not (0 <= args.e < 1 and args.periods > 0):
        p.error("--e must lie in [0, 1) and --periods be > 0")
    rule = aits.load_rule(args.checkpoint)
    m, x0, v0, period = kepler_ic(args.e, 1.0, dim=3)  # the rule's features are the same in 2-D and 3-D
    t_end = args.periods * period
    runs = {"learned_rebound": run_learned_rebound(rule, m, x0, v0, t_end),
            "learned_kdk": run_learned_kdk(rule, m, x0, v0, t_end)}
    n = runs["learned_rebound"]
    runs["fixed_same_steps"] = run_fixed(m, x0, v0, rule.eps, t_end, n["steps"])
    runs["fixed_same_evals"] = run_fixed(m, x0, v0, rule.eps, t_end, n["force_evals"])
    x_ref = reference_end(m, x0, v0, rule.eps, t_end)
    summary = {"checkpoint": str(Path(args.checkpoint).resolve()), "mode": rule.mode, "e": args.e,
               "periods": args.periods, "t_end": t_end, "runs": {}}
    for name, r in runs.items():
        e = np.asarray(r["E"])
        rel = np.abs(e / e[0] - 1.0)
        summary["runs"][name] = {"steps": r["steps"], "force_evals": r["force_evals"], "t_final": r["t"][-1],
                                 "max_rel_dE": float(rel.max()), "final_rel_dE": float(rel[-1]),
                                 "position_error_vs_ias15": float(np.abs(r["x_end"] - x_ref).max())}
        r["rel"] = rel
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in runs.items():
        t, rel = np.asarray(r["t"][1:]) / period, np.maximum(r["rel"][1:], 1e-17)
        line, = ax.semilogy(t, np.maximum.accumulate(rel), lw=1.4,
                            label=f"{name} ({r['steps']} steps, {r['force_evals']} evals)")
        ax.semilogy(t, rel, lw=0.5, alpha=0.3, color=line.get_color())  # the instantaneous error, faint
    ax.set_ylabel("|dE/E| (faint) and its running max")
    ax.set_xlabel("t / period")
    ax.set_title(f"Kepler e = {args.e}: the {rule.mode} learned rule, REBOUND leapfrog (DKD) and KDK", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=120)
    plt.close(fig)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{rule.describe()}\nKepler e = {args.e}, {args.periods:g} periods (t_end = {t_end:.6g}):")
    for name, s in summary["runs"].items():
        print(f"  {name:17s} max |dE/E| {s['max_rel_dE']:.3e}  steps {s['steps']:7d}  evals {s['force_evals']:7d}  "
              f"|x - x_IAS15| {s['position_error_vs_ias15']:.2e}")
    ratio = summary["runs"]["learned_rebound"]["max_rel_dE"] / summary["runs"]["fixed_same_steps"]["max_rel_dE"]
    print(f"learned / fixed at the same steps in REBOUND: {ratio:.3g}; figure {out / 'energy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

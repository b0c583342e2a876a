"""Integrate a system with the learned dt policy and with classical baselines (docs/DESIGN.md §6.1).

Library code: no files, no printing. ``driver/simulate.py`` does the I/O.

All methods share one loop (:func:`integrate`): the same kick-drift-kick leapfrog
(``aits.physics.leapfrog``, ``n_steps`` substeps of ``dt``) in the run's physics dtype,
the same end-time rule and the same diagnostics; they differ only in how ``dt`` is
chosen. A *step* is one dt decision; with ``n_steps > 1`` it advances ``n_steps * dt``.

End-time rule: the step that would cross the end time is clipped to land on it
exactly, so every method ends at the same time and final positions can be compared
with a reference. The clipped step is recorded with the dt actually taken, and that
dt is what the history carries on.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .features import HistoryBuffer, build_features, scale_free_torch
from .physics import acceleration, angular_momentum, energy, leapfrog, momentum, rel_energy_error
from .integrators import tune
from .stepper import Stepper, classical_timescale

METHODS = ("learned", "fixed", "adaptive")
# A step's left-over time below this fraction of the duration counts as arrived (float rounding).
END_TOL = 1e-12


@dataclass
class IntegrationState:
    """The current state of one system during a run; tensors are (1,N,D) / (1,N) in physics dtype."""

    m: torch.Tensor
    x: torch.Tensor
    v: torch.Tensor
    acc: torch.Tensor  # a(x), reused by the next leapfrog
    dt: float  # the last accepted dt (0 at start): the step that led to this state
    t: float
    history: HistoryBuffer


@dataclass
class Run:
    """One method's run on one system.

    ``trajectory``: t (S+1,), x, v (S+1,N,D), dt (S+1,) the step that led to each state
    (0 for the initial one), E (S+1,), P (S+1,D), L (S+1,) in 2-D or (S+1,3) in 3-D.
    Empty dict when the run was not recorded.
    """

    method: str
    metrics: dict
    trajectory: dict = field(default_factory=dict)


DtPolicy = Callable[[IntegrationState], float]


# ---------------------------------------------------------------- the shared loop
def integrate(m, x, v, duration: float, choose_dt: DtPolicy, *, eps: float = 0.0, n_steps: int = 1,
              dtype: torch.dtype = torch.float64, history_len: int = 0, max_steps: int = 1_000_000,
              record: bool = True, method: str = "custom") -> Run:
    """Leapfrog from t = 0 to ``duration`` with ``choose_dt(state)`` picking each step.

    m (N,), x, v (N,D) numpy or tensors, in G = 1 units. The history buffer is carried as in
    training: after each step the pre-step state is pushed with the dt that led to it.
    Stops at the end time, at ``max_steps``, or at a non-finite/non-positive dt or state
    (``metrics['status']`` says which: ok | max_steps | bad_dt | nonfinite).
    """
    def as_t(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)[None]

    m_t, x_t, v_t = as_t(m), as_t(x), as_t(v)
    n, d = x_t.shape[-2:]
    with torch.no_grad():
        state = IntegrationState(m_t, x_t, v_t, acceleration(x_t, m_t, eps), 0.0, 0.0,
                                 HistoryBuffer(history_len, n, d))
        xs, vs, ts, dts = [x_t[0]], [v_t[0]], [0.0], [0.0]
        status = "ok"
        steps = 0
        start = time.perf_counter()
        while duration - state.t > END_TOL * duration:
            if steps >= max_steps:
                status = "max_steps"
                break
            dt = float(choose_dt(state))
            if not (math.isfinite(dt) and dt > 0):
                status = "bad_dt"
                break
            dt = min(dt, (duration - state.t) / n_steps)  # clip the last step onto the end time
            x1, v1, a1 = leapfrog(state.x, state.v, state.m, torch.full((1,), dt, dtype=dtype), eps, n_steps,
                                  acc0=state.acc)
            if not bool(torch.isfinite(x1).all() and torch.isfinite(v1).all()):
                status = "nonfinite"
                break
            state.history.push(state.x[0].to(torch.float64).numpy(), state.v[0].to(torch.float64).numpy(),
                               state.dt)
            state.x, state.v, state.acc, state.dt = x1, v1, a1, dt
            state.t += n_steps * dt
            steps += 1
            if record:
                xs.append(x1[0])
                vs.append(v1[0])
                ts.append(state.t)
                dts.append(dt)
        wall = time.perf_counter() - start
    metrics = {"steps": steps, "end_time": state.t, "duration": float(duration), "status": status,
               "completed": status == "ok", "wall_time_s": wall}
    if not record:
        return Run(method, metrics)
    traj = trajectory_arrays(m, torch.stack(xs), torch.stack(vs), ts, dts, eps)
    metrics.update(conservation_metrics(traj))
    metrics.update(dt_stats(traj["dt"][1:]))
    return Run(method, metrics, traj)


def trajectory_arrays(m, xs: torch.Tensor, vs: torch.Tensor, ts, dts, eps: float) -> dict:
    """Recorded states (S+1,N,D) -> numpy trajectory with E, P, L evaluated in one batch."""
    with torch.no_grad():
        mm = torch.as_tensor(np.asarray(m, dtype=np.float64), dtype=xs.dtype).expand(xs.shape[0], -1)
        e = energy(xs, vs, mm, eps)
        p = momentum(vs, mm)
        ang = angular_momentum(xs, vs, mm)
    f64 = lambda y: y.to(torch.float64).numpy()  # noqa: E731
    return {"t": np.asarray(ts, dtype=np.float64), "x": f64(xs), "v": f64(vs), "dt": np.asarray(dts, np.float64),
            "E": f64(e), "P": f64(p), "L": f64(ang)}


def conservation_metrics(traj: dict) -> dict:
    """|ΔE/E| (rel_dE of docs/DESIGN.md §1.4 against E(t=0)), momentum residual |P - P0| (absolute: total momentum
    is usually zero) and angular-momentum residual |L - L0| / |L0| (absolute when L0 = 0)."""
    e = torch.as_tensor(traj["E"])
    rel_e = rel_energy_error(e[:1], e).numpy()
    dp = np.linalg.norm(traj["P"] - traj["P"][:1], axis=-1)
    ang = traj["L"].reshape(len(traj["L"]), -1)
    l0 = float(np.linalg.norm(ang[0]))
    dl = np.linalg.norm(ang - ang[:1], axis=-1) / (l0 if l0 > 0 else 1.0)
    return {"E0": float(e[0]), "final_rel_dE": float(rel_e[-1]), "max_rel_dE": float(np.max(rel_e)),
            "final_momentum_residual": float(dp[-1]), "max_momentum_residual": float(np.max(dp)),
            "final_ang_mom_residual": float(dl[-1]), "max_ang_mom_residual": float(np.max(dl)),
            "ang_mom_residual_relative": l0 > 0}


def dt_stats(dt: np.ndarray) -> dict:
    if dt.size == 0:
        return {"dt_min": None, "dt_max": None, "dt_mean": None}
    return {"dt_min": float(dt.min()), "dt_max": float(dt.max()), "dt_mean": float(dt.mean())}


# ---------------------------------------------------------------- the three methods
def learned_policy(model: torch.nn.Module, stepper: Stepper) -> DtPolicy:
    """dt from the model, with features built exactly as in training (current state + its history);
    factor models multiply by the classical timescale, and the time-symmetric mode iterates
    dt = (h(start) + h(end)) / 2 as in training."""
    model.eval()

    def h(x, v, acc, m, state=None) -> torch.Tensor:
        if stepper.feature_type == "scale_free":
            feats, tau = scale_free_torch(x, v, acc, m, stepper.eps)
        else:
            hx, hv, hdt = state.history.arrays()
            t = stepper.tensor
            feats = build_features(x, v, m, torch.full((1,), state.dt, dtype=stepper.dtype), t(hx[None]),
                                   t(hv[None]), t(hdt[None]), stepper.eps, stepper.scales, stepper.feature_type)
            tau = classical_timescale(x, acc)
        return stepper.step_size(model, feats.to(stepper.model_dtype), tau)

    def choose(state: IntegrationState) -> float:
        x, v, m, acc = (y.to(stepper.dtype) for y in (state.x, state.v, state.m, state.acc))
        with torch.no_grad():
            h0 = dt = h(x, v, acc, m, state)
            for _ in range(stepper.symmetric):
                x1, v1, a1 = leapfrog(x, v, m, dt, stepper.eps, 1, acc0=acc)
                dt = 0.5 * (h0 + h(x1, v1, a1, m))
            return float(dt[0])

    return choose


def simulate_learned(model, stepper: Stepper, m, x, v, duration: float, max_steps: int = 1_000_000,
                     record: bool = True) -> Run:
    """The model chooses every dt (eval mode, no gradients)."""
    was_training = model.training
    try:
        return integrate(m, x, v, duration, learned_policy(model, stepper), eps=stepper.eps,
                         n_steps=stepper.n_steps, dtype=stepper.dtype, history_len=stepper.K,
                         max_steps=max_steps, record=record, method="learned")
    finally:
        model.train(was_training)


def simulate_fixed(m, x, v, duration: float, steps: int, *, eps: float = 0.0, n_steps: int = 1,
                   dtype: torch.dtype = torch.float64, record: bool = True) -> Run:
    """Leapfrog with constant dt = duration / (steps * n_steps): ``steps`` steps in all."""
    if steps < 1:
        raise ValueError(f"fixed-dt run needs steps >= 1, got {steps}")
    dt = duration / (steps * n_steps)
    run = integrate(m, x, v, duration, lambda _s: dt, eps=eps, n_steps=n_steps, dtype=dtype,
                    max_steps=steps + 1, record=record, method="fixed")
    run.metrics["dt"] = dt
    return run


def adaptive_timescale(state: IntegrationState) -> float:
    """min_i sqrt(r_i,nn / |a_i|): nearest-neighbour distance over acceleration (time units)."""
    return _timescale(state.x[0], state.acc[0])


def _timescale(x: torch.Tensor, acc: torch.Tensor) -> float:
    """min_i sqrt(r_i,nn / |a_i|) of one system, x and acc (N,D)."""
    return float(classical_timescale(x[None], acc[None])[0])


def simulate_adaptive(m, x, v, duration: float, target_steps: int, *, eps: float = 0.0, n_steps: int = 1,
                      dtype: torch.dtype = torch.float64, rel_tol: float = 0.02, max_iter: int = 60,
                      record: bool = True) -> Run:
    """dt = eta * min_i sqrt(r_i,nn / |a_i|), eta chosen so the run takes ``target_steps`` within ``rel_tol``.

    The search brackets eta in log space; each trial proposes eta * steps / target (steps ~ 1/eta)
    and falls back to bisection of the bracket when that proposal leaves it. If no eta matches
    (tiny targets are discrete), the closest trial is used; ``metrics['steps_matched']`` says which.
    """
    if target_steps < 1:
        raise ValueError(f"adaptive run needs target_steps >= 1, got {target_steps}")
    kw = {"eps": eps, "n_steps": n_steps, "dtype": dtype}

    def steps_for(eta: float) -> int:
        cap = 4 * target_steps + 10  # more steps than this only says "eta too small"
        run = integrate(m, x, v, duration, lambda s: eta * adaptive_timescale(s), max_steps=cap, record=False, **kw)
        return run.metrics["steps"] if run.metrics["status"] == "ok" else cap

    m0, x0 = (torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)[None] for a in (m, x))
    # Right if the timescale were constant along the orbit.
    eta = duration / (n_steps * target_steps * _timescale(x0[0], acceleration(x0, m0, eps)[0]))
    (_, eta, _), tries = tune(lambda e: (steps_for(e), None), target_steps, eta, rel_tol, max_iter)
    tol = rel_tol * target_steps
    run = integrate(m, x, v, duration, lambda s: eta * adaptive_timescale(s), max_steps=4 * target_steps + 10,
                    record=record, method="adaptive", **kw)
    run.metrics.update({"eta": eta, "eta_search_runs": tries,
                        "steps_matched": abs(run.metrics["steps"] - target_steps) <= tol})
    return run


# ---------------------------------------------------------------- reference
def rebound_reference(m, x, v, duration: float, eps: float = 0.0, n_out: int = 0):
    """IAS15 reference from REBOUND, or None when REBOUND is not importable.

    Returns dict with ``x_final`` (N,D) and, if ``n_out`` > 0, ``t`` (n_out,) and ``x`` (n_out,N,D)
    sampled uniformly in time for plotting.
    """
    try:
        import rebound
    except ImportError:
        return None
    m, x, v = (np.asarray(a, dtype=np.float64) for a in (m, x, v))
    n, d = x.shape
    if d > 3:
        return None
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.integrator = "ias15"
    sim.softening = float(eps)  # REBOUND softens as 1/sqrt(r^2 + eps^2), as docs/DESIGN.md §1.2
    for i in range(n):
        pos = list(x[i]) + [0.0] * (3 - d)
        vel = list(v[i]) + [0.0] * (3 - d)
        sim.add(m=float(m[i]), x=pos[0], y=pos[1], z=pos[2], vx=vel[0], vy=vel[1], vz=vel[2])
    start = time.perf_counter()
    ts = np.linspace(0.0, duration, n_out) if n_out > 0 else np.array([duration])
    xs = np.zeros((len(ts), n, d))
    for k, tk in enumerate(ts):
        if tk > 0:
            sim.integrate(float(tk), exact_finish_time=1)
        xs[k] = np.array([[p.x, p.y, p.z][:d] for p in sim.particles])
    out = {"x_final": xs[-1].copy(), "wall_time_s": time.perf_counter() - start}
    if n_out > 0:
        out.update(t=ts, x=xs)
    return out


def position_error(run: Run, x_ref: np.ndarray) -> float | None:
    """max_i |x_i(T) - x_ref_i(T)| when the run reached the end time, else None."""
    if not run.metrics["completed"] or not run.trajectory:
        return None
    return float(np.linalg.norm(run.trajectory["x"][-1] - x_ref, axis=-1).max())


# ---------------------------------------------------------------- all methods on one system
def compare(model, stepper: Stepper, m, x, v, duration: float, max_steps: int = 1_000_000,
            reference: bool = True, ref_samples: int = 0) -> tuple[dict[str, Run], dict | None]:
    """Learned run, then fixed-dt and adaptive baselines at the learned run's step count.

    The baselines integrate the whole duration even when the learned run stopped early
    (its status says so). Returns ({method: Run}, reference or None); each Run's metrics
    get ``final_position_error`` when a reference exists.
    """
    runs = {"learned": simulate_learned(model, stepper, m, x, v, duration, max_steps)}
    steps = max(runs["learned"].metrics["steps"], 1)
    kw = {"eps": stepper.eps, "n_steps": stepper.n_steps, "dtype": stepper.dtype}
    runs["fixed"] = simulate_fixed(m, x, v, duration, steps, **kw)
    runs["adaptive"] = simulate_adaptive(m, x, v, duration, steps, **kw)
    ref = rebound_reference(m, x, v, duration, stepper.eps, ref_samples) if reference else None
    for run in runs.values():
        run.metrics["final_position_error"] = position_error(run, ref["x_final"]) if ref else None
    return runs, ref

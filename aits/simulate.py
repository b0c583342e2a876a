"""Integrate systems with the learned dt policy and with classical baselines (docs/DESIGN.md §6.1).

Library code: no files, no printing. ``driver/simulate.py`` does the I/O.

All methods share one loop (:func:`integrate_systems`): the same kick-drift-kick leapfrog
(``aits.physics.leapfrog``, ``n_steps`` substeps of ``dt``) in the run's physics dtype,
the same end-time rule and the same diagnostics; they differ only in how ``dt`` is
chosen. A *step* is one dt decision; with ``n_steps > 1`` it advances ``n_steps * dt``.
The loop steps a batch of B systems (``aits.systems.Systems``) at once, each with its own dt,
history, clock, end time and status; a system's numbers do not depend on its batch.

End-time rule: the step that would cross the end time is clipped to land on it
exactly, so every method ends at the same time and final positions can be compared
with a reference. The clipped step is recorded with the dt actually taken, and that
dt is what the history carries on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .features import build_features, scale_free_torch
from .physics import acceleration, angular_momentum, energy, leapfrog, momentum, rel_energy_error
from .integrators import tune
from .stepper import Stepper, classical_timescale, recursive_dt_torch
from .systems import Systems

METHODS = ("learned", "fixed", "adaptive")
# A step's left-over time below this fraction of the duration counts as arrived (float rounding).
END_TOL = 1e-12


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


# choose_dt(systems, idx) -> dt (len(idx),) (or a scalar for all) of the active systems idx.
DtPolicy = Callable[[Systems, np.ndarray], "np.ndarray | float"]


# ---------------------------------------------------------------- the shared loop
def integrate_systems(systems: Systems, duration, choose_dt: DtPolicy, *, eps: float = 0.0, n_steps: int = 1,
                      dtype: torch.dtype = torch.float64, max_steps=1_000_000, record: bool = True,
                      method: str = "custom") -> list[Run]:
    """Leapfrog every system of ``systems`` from its clock t for ``duration`` (scalar or (B,)), all at once.

    Each loop iteration asks ``choose_dt(systems, idx)`` for the dt of the still-active systems ``idx``
    and takes one batched leapfrog step; ``systems`` holds the state (x, v, the history carried as in
    training: after each step the pre-step state is pushed with the dt that led to it) and ``systems.acc``
    a(x), all float64 holding values of the run's ``dtype``. A system stops at its end time, at its
    ``max_steps`` (scalar or (B,)), or at a non-finite/non-positive dt or state (``metrics['status']``:
    ok | max_steps | bad_dt | nonfinite); the others go on. ``wall_time_s`` is the shared loop's time
    until the system stopped (a batch's systems share its cost). Returns one Run per system.
    """
    B = len(systems)
    dur = np.broadcast_to(np.asarray(duration, dtype=np.float64), (B,)).copy()
    cap = np.broadcast_to(np.asarray(max_steps, dtype=np.int64), (B,))

    def as_t(a):
        return torch.as_tensor(a, dtype=dtype)

    def f64(y: torch.Tensor) -> np.ndarray:
        return y.to(torch.float64).numpy()

    with torch.no_grad():
        if dtype != torch.float64:  # the states as the run's dtype holds them
            for k in ("m", "x", "v"):
                setattr(systems, k, f64(as_t(getattr(systems, k))))
        systems.acc = f64(acceleration(as_t(systems.x), as_t(systems.m), eps))
        t_end, steps0 = systems.t + dur, systems.steps.copy()
        status = np.full(B, "ok", dtype=object)
        active, wall = np.ones(B, dtype=bool), np.zeros(B)
        # Recorded rows (system index, x, v, t, dt), the initial states first.
        recs = [(np.arange(B), systems.x.copy(), systems.v.copy(), systems.t.copy(), systems.dt.copy())]
        start = time.perf_counter()

        def stop(sel, why=None):
            """Systems ``sel`` (a mask over all B, or indices) stop with status ``why`` (ok if None)."""
            if why is not None:
                status[sel] = why
            active[sel] = False
            wall[sel] = time.perf_counter() - start

        m_all, tol, last = as_t(systems.m), END_TOL * dur, steps0 + cap
        while True:
            left = t_end - systems.t
            arrived = left <= tol
            done = active & (arrived | (systems.steps >= last))
            if done.any():
                stop(done & arrived)
                stop(done & ~arrived, "max_steps")
            idx = np.flatnonzero(active)
            if not len(idx):
                break
            dt = np.asarray(choose_dt(systems, idx), dtype=np.float64)
            if dt.shape != idx.shape:
                dt = np.broadcast_to(dt, idx.shape)
            if not ((dt > 0).all() and np.isfinite(dt).all()):
                bad = ~(np.isfinite(dt) & (dt > 0))
                stop(idx[bad], "bad_dt")
                idx, dt = idx[~bad], dt[~bad]
                if not len(idx):
                    continue
            dt = np.minimum(dt, _rows(left, idx) / n_steps)  # clip the last step onto the end time
            x1, v1, a1 = leapfrog(as_t(_rows(systems.x, idx)), as_t(_rows(systems.v, idx)), _rows(m_all, idx),
                                  as_t(dt), eps, n_steps, acc0=as_t(_rows(systems.acc, idx)))
            if not bool(torch.isfinite(x1).all() & torch.isfinite(v1).all()):
                finite = (torch.isfinite(x1).all(-1).all(-1) & torch.isfinite(v1).all(-1).all(-1)).numpy()
                stop(idx[~finite], "nonfinite")
                idx, dt, x1, v1, a1 = idx[finite], dt[finite], x1[finite], v1[finite], a1[finite]
            x1, v1 = f64(x1), f64(v1)
            systems.push(idx, x1, v1, dt, n_steps)
            systems.acc[idx] = f64(a1)
            if record:
                recs.append((idx, x1, v1, systems.t[idx], dt))

    runs = []
    if record:  # per system, its rows in step order
        rows = np.concatenate([r[0] for r in recs])
        order = np.argsort(rows, kind="stable")
        cuts = np.cumsum(np.bincount(rows, minlength=B))[:-1]
        xs, vs, ts, dts = (np.split(np.concatenate([r[k] for r in recs])[order], cuts) for k in range(1, 5))
    for i in range(B):
        metrics = {"steps": int(systems.steps[i] - steps0[i]), "end_time": float(systems.t[i]),
                   "duration": float(dur[i]), "status": str(status[i]), "completed": status[i] == "ok",
                   "wall_time_s": float(wall[i])}
        if not record:
            runs.append(Run(method, metrics))
            continue
        traj = trajectory_arrays(systems.m[i], as_t(xs[i]), as_t(vs[i]), ts[i], dts[i], eps)
        metrics.update(conservation_metrics(traj))
        metrics.update(dt_stats(traj["dt"][1:]))
        runs.append(Run(method, metrics, traj))
    return runs


def _rows(a, idx: np.ndarray):
    """a[idx] of the active systems ``idx`` (sorted, unique): ``a`` itself, no copy, when all are active."""
    return a if len(idx) == len(a) else a[idx]


def _batch(m, x, v) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(m (B,N), x, v (B,N,D), one): inputs with or without the leading batch dim, as float64."""
    m, x, v = (np.asarray(a, dtype=np.float64) for a in (m, x, v))
    one = x.ndim == 2
    return (m[None], x[None], v[None], True) if one else (m, x, v, False)


def integrate(m, x, v, duration, choose_dt: DtPolicy, *, eps: float = 0.0, n_steps: int = 1,
              dtype: torch.dtype = torch.float64, history_len: int = 0, max_steps=1_000_000,
              record: bool = True, method: str = "custom"):
    """:func:`integrate_systems` on fresh systems (t = 0, empty histories of ``history_len`` states).

    m (N,), x, v (N,D), numpy or tensors, in G = 1 units: one system, returns its Run. With a leading
    batch dim, m (B,N), x, v (B,N,D): B systems stepped together, returns a list of B Runs.
    """
    m, x, v, one = _batch(m, x, v)
    runs = integrate_systems(Systems.from_arrays(m, x, v, history_len), duration, choose_dt, eps=eps,
                             n_steps=n_steps, dtype=dtype, max_steps=max_steps, record=record, method=method)
    return runs[0] if one else runs


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
    factor models multiply by the classical timescale, the time-symmetric mode iterates
    dt = (h(start) + h(end)) / 2 and the recursive mode takes dt = h^2 / (previous dt), as in
    training. One model call per evaluation for all active systems."""
    model.eval()
    t = stepper.tensor

    def h(x, v, acc, m, hist=None) -> torch.Tensor:
        """h of states x, v (B,N,D); ``hist`` (dt, hist_x, hist_v, hist_dt) for history features."""
        if stepper.feature_type == "scale_free":
            feats, tau = scale_free_torch(x, v, acc, m, stepper.eps)
        else:
            feats = build_features(x, v, m, *hist, stepper.eps, stepper.scales, stepper.feature_type)
            tau = classical_timescale(x, acc)
        return stepper.step_size(model, feats.to(stepper.model_dtype), tau)

    def choose(systems: Systems, idx: np.ndarray) -> np.ndarray:
        x, v, m, acc = (t(_rows(getattr(systems, k), idx)) for k in ("x", "v", "m", "acc"))
        with torch.no_grad():
            hist = None if stepper.feature_type == "scale_free" else \
                tuple(t(_rows(getattr(systems, k), idx)) for k in ("dt", "hist_x", "hist_v", "hist_dt"))
            h0 = dt = h(x, v, acc, m, hist)
            for _ in range(stepper.symmetric):  # the config allows it for scale_free features only
                x1, v1, a1 = leapfrog(x, v, m, dt, stepper.eps, 1, acc0=acc)
                dt = 0.5 * (h0 + h(x1, v1, a1, m))
            if stepper.recursive:
                dt = recursive_dt_torch(dt, t(_rows(systems.dt, idx)))
            return dt.to(torch.float64).cpu().numpy()

    return choose


def simulate_learned(model, stepper: Stepper, m, x, v, duration, max_steps=1_000_000, record: bool = True):
    """The model chooses every dt (eval mode, no gradients). One system, or a batch (see :func:`integrate`)."""
    was_training = model.training
    try:
        return integrate(m, x, v, duration, learned_policy(model, stepper), eps=stepper.eps,
                         n_steps=stepper.substeps, dtype=stepper.dtype, history_len=stepper.K,
                         max_steps=max_steps, record=record, method="learned")
    finally:
        model.train(was_training)


def simulate_fixed(m, x, v, duration, steps, *, eps: float = 0.0, n_steps: int = 1,
                   dtype: torch.dtype = torch.float64, record: bool = True):
    """Leapfrog with constant dt = duration / (steps * n_steps): ``steps`` steps in all.

    One system, or a batch with ``duration`` and ``steps`` scalars or (B,)."""
    m, x, v, one = _batch(m, x, v)
    steps = np.broadcast_to(np.asarray(steps, dtype=np.int64), (len(x),))
    if (steps < 1).any():
        raise ValueError(f"fixed-dt run needs steps >= 1, got {steps.min() if one else steps}")
    dt = np.asarray(duration, dtype=np.float64) / (steps * n_steps)
    runs = integrate(m, x, v, duration, lambda _s, idx: dt[idx], eps=eps, n_steps=n_steps, dtype=dtype,
                     max_steps=steps + 1, record=record, method="fixed")
    for run, dt_i in zip(runs, dt):
        run.metrics["dt"] = float(dt_i)
    return runs[0] if one else runs


def adaptive_timescale(systems: Systems, idx, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """min_i sqrt(r_i,nn / |a_i|) of systems ``idx`` (len(idx),): nearest-neighbour distance over
    acceleration (time units), evaluated in ``dtype``."""
    x, acc = (torch.as_tensor(_rows(getattr(systems, k), idx), dtype=dtype) for k in ("x", "acc"))
    return classical_timescale(x, acc).to(torch.float64).numpy()


def _timescale(x: torch.Tensor, acc: torch.Tensor) -> float:
    """min_i sqrt(r_i,nn / |a_i|) of one system, x and acc (N,D)."""
    return float(classical_timescale(x[None], acc[None])[0])


def _search_eta(m, x, v, duration: float, target_steps: int, rel_tol: float, max_iter: int, kw: dict):
    """(eta, trials) whose adaptive run of one system takes ``target_steps`` within ``rel_tol``, else the closest."""
    def steps_for(eta: float) -> int:
        cap = 4 * target_steps + 10  # more steps than this only says "eta too small"
        run = integrate(m, x, v, duration, lambda s, idx: eta * adaptive_timescale(s, idx, kw["dtype"]),
                        max_steps=cap, record=False, **kw)
        return run.metrics["steps"] if run.metrics["status"] == "ok" else cap

    dtype, n_steps = kw["dtype"], kw["n_steps"]
    m0, x0 = (torch.as_tensor(a, dtype=dtype)[None] for a in (m, x))
    # Right if the timescale were constant along the orbit.
    eta = duration / (n_steps * target_steps * _timescale(x0[0], acceleration(x0, m0, kw["eps"])[0]))
    (_, eta, _), tries = tune(lambda e: (steps_for(e), None), target_steps, eta, rel_tol, max_iter)
    return eta, tries


def simulate_adaptive(m, x, v, duration, target_steps, *, eps: float = 0.0, n_steps: int = 1,
                      dtype: torch.dtype = torch.float64, rel_tol: float = 0.02, max_iter: int = 60,
                      record: bool = True):
    """dt = eta * min_i sqrt(r_i,nn / |a_i|), eta chosen so the run takes ``target_steps`` within ``rel_tol``.

    The search brackets eta in log space; each trial proposes eta * steps / target (steps ~ 1/eta)
    and falls back to bisection of the bracket when that proposal leaves it. If no eta matches
    (tiny targets are discrete), the closest trial is used; ``metrics['steps_matched']`` says which.
    One system, or a batch with ``duration`` and ``target_steps`` scalars or (B,): eta is searched
    per system, then all run together.
    """
    m, x, v, one = _batch(m, x, v)
    B = len(x)
    target = np.broadcast_to(np.asarray(target_steps, dtype=np.int64), (B,))
    if (target < 1).any():
        raise ValueError(f"adaptive run needs target_steps >= 1, got {target.min() if one else target}")
    dur = np.broadcast_to(np.asarray(duration, dtype=np.float64), (B,))
    kw = {"eps": eps, "n_steps": n_steps, "dtype": dtype}
    found = [_search_eta(m[i], x[i], v[i], float(dur[i]), int(target[i]), rel_tol, max_iter, kw) for i in range(B)]
    eta = np.array([e for e, _ in found], dtype=np.float64)
    runs = integrate(m, x, v, dur, lambda s, idx: eta[idx] * adaptive_timescale(s, idx, dtype),
                     max_steps=4 * target + 10, record=record, method="adaptive", **kw)
    for i, run in enumerate(runs):
        run.metrics.update({"eta": float(eta[i]), "eta_search_runs": found[i][1],
                            "steps_matched": abs(run.metrics["steps"] - int(target[i])) <= rel_tol * int(target[i])})
    return runs[0] if one else runs


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


# ---------------------------------------------------------------- all methods
def compare(model, stepper: Stepper, m, x, v, duration: float, max_steps: int = 1_000_000,
            reference: bool = True, ref_samples: int = 0) -> tuple[dict[str, Run], dict | None]:
    """Learned run, then fixed-dt and adaptive baselines at the learned run's step count.

    The baselines integrate the whole duration even when the learned run stopped early
    (its status says so). Returns ({method: Run}, reference or None); each Run's metrics
    get ``final_position_error`` when a reference exists.
    """
    m, x, v, _ = _batch(m, x, v)
    return compare_many(model, stepper, m, x, v, duration, max_steps, reference, ref_samples)[0]


def compare_many(model, stepper: Stepper, m, x, v, duration, max_steps: int = 1_000_000,
                 reference: bool = True, ref_samples: int = 0) -> list[tuple[dict[str, Run], dict | None]]:
    """:func:`compare` of B systems m (B,N), x, v (B,N,D) with ``duration`` scalar or (B,): each method
    runs them as one batch (the adaptive eta search per system). Each system's numbers are those of
    :func:`compare` alone; wall times are the batch's (see :func:`integrate_systems`)."""
    m, x, v, _ = _batch(m, x, v)
    dur = np.broadcast_to(np.asarray(duration, dtype=np.float64), (len(x),))
    kw = {"eps": stepper.eps, "n_steps": stepper.n_steps, "dtype": stepper.dtype}
    learned = simulate_learned(model, stepper, m, x, v, dur, max_steps)
    steps = [max(r.metrics["steps"], 1) for r in learned]
    fixed = simulate_fixed(m, x, v, dur, steps, **kw)
    adaptive = simulate_adaptive(m, x, v, dur, steps, **kw)
    out = []
    for i, runs in enumerate(zip(learned, fixed, adaptive)):
        runs = dict(zip(METHODS, runs))
        ref = rebound_reference(m[i], x[i], v[i], float(dur[i]), stepper.eps, ref_samples) if reference else None
        for run in runs.values():
            run.metrics["final_position_error"] = position_error(run, ref["x_final"]) if ref else None
        out.append((runs, ref))
    return out

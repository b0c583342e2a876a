"""The scoreboard: a checkpoint's learned step rule against the classical rules at equal cost.

Library code (no files, no Ray, no printing); ``driver/evaluate.py`` runs it in parallel and
writes the report. For one system, :func:`score_system` runs

- the learned method(s) of the checkpoint,
- ``ias15`` (REBOUND at its default accuracy): the reference trajectory and a cost anchor,
- each classical family: ``fixed`` and the explicit, time-symmetric and recursive forms with the
  nearest-neighbour timescale (``adaptive``, ``symmetric_adaptive``, ``recursive_adaptive``) and with
  IAS15's 2024 timescale (``adaptive_prs``, ``symmetric_prs``, ``recursive_prs``); ``logh`` for two
  bodies as a reference row)
  at **equal force evaluations**: its step parameter searched until its count lies within
  ``EVAL_TOL`` of the learned run's, and at **equal wall time**: the parameter rescaled until its
  loop time matches the learned run's (within ``WALL_TOL``, a few tries),

and reports per method ``force_evals, steps, wall_time_s, max_rel_dE, final_rel_dE,
drift_slope, final_position_error, position_error_rel, status``, the ``strongest`` classical family
and the ratios learned / baseline of max |dE/E| and of the position error.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from . import integrators as I
from .physics import crossing_time, kepler_ic, kepler_pair, random_ic, rel_energy_error, to_com
from .ranges import range_report, range_tally
from .steprules import RECURSION_CLIP

# Classical step rules on the same KDK loop: every form (explicit, time-symmetric, reversible recursion)
# with both timescales (``nn``: min sqrt(r/|a|); ``prs``: IAS15's 2024 criterion), and fixed dt.
# The recursion also comes clipped (``*_clip``: dt within [h/c, h*c], c = RECURSION_CLIP): on smooth orbits the
# clip never acts and the run is the plain recursion's; at close encounters it keeps the alternating mode down.
# ``recursive_blend_clip``: the clipped recursion on sqrt(tau_nn tau_prs) (aits.steprules.blend_timescale), the
# classical rule that a ``features.timescale: blend`` model contains; ``recursive_soft_blend_clip``: the same on
# tau * (tau_prs / tau)^((1 - f) / 2), f = eps / (r + eps) of the pair that sets tau (aits.steprules.soft_blend), the
# rule a ``soft_blend`` model contains (the blend's own numbers on an unsoftened system); ``recursive_prs_lean_clip``:
# the same with tau^(1/4) tau_prs^(3/4) in place of the mean, the rule a ``prs_lean`` model contains.
CLASSICAL = ("fixed", "adaptive", "symmetric_adaptive", "recursive_adaptive", "adaptive_prs", "symmetric_prs",
             "recursive_prs", "recursive_clip", "recursive_prs_clip", "recursive_blend_clip", "recursive_soft_blend_clip",
             "recursive_prs_lean_clip")
# logh (two bodies) is another integrator: a reference row, never a candidate for ``strongest``.
BASELINES = (*CLASSICAL, "logh")
METHOD_NAMES = ("learned", *BASELINES, "ias15")
# family -> (form, timescale)
FAMILY_FORMS = {"adaptive": ("explicit", "nn"), "symmetric_adaptive": ("symmetric", "nn"),
                "recursive_adaptive": ("recursive", "nn"), "adaptive_prs": ("explicit", "prs"),
                "symmetric_prs": ("symmetric", "prs"), "recursive_prs": ("recursive", "prs"),
                "recursive_clip": ("recursive", "nn"), "recursive_prs_clip": ("recursive", "prs"),
                "recursive_blend_clip": ("recursive", "blend"), "recursive_soft_blend_clip": ("recursive", "soft_blend"),
                "recursive_prs_lean_clip": ("recursive", "prs_lean")}
# family -> the recursion's clip
FAMILY_CLIP = {"recursive_clip": RECURSION_CLIP, "recursive_prs_clip": RECURSION_CLIP,
               "recursive_blend_clip": RECURSION_CLIP, "recursive_soft_blend_clip": RECURSION_CLIP,
               "recursive_prs_lean_clip": RECURSION_CLIP}
EVAL_TOL = 0.02  # equal force evaluations: within 2 %
WALL_TOL = 0.10  # equal wall time: within 10 % (wall clocks on shared cores wander more than that)
SYMMETRIC_ITERATIONS = 1  # fixed-point iterations of symmetric_adaptive: 1 is the strongest at equal evaluations (k = 2, 3 measured 2-4x worse)
PLOT_POINTS = 1500  # trajectory points kept per method for plots
POSITION_FLOATS = 150_000  # numbers of positions kept per method for movies (N = 64, D = 3: 781 bins)
# A run whose max |dE/E| exceeds this is not ok (status ``energy_error``): the orbit is not to be trusted.
ENERGY_FAIL = 1e-1
# A run whose bodies end farther than this many system sizes from the reference is ``destroyed``.
DESTROYED = 1.0
# Chaos horizon: a twin reference with positions moved by TWIN_KICK sizes. A regular orbit's split grows
# linearly (a phase drift; its running maximum is bounded by the first sample's split times t / t_1 and a
# pericentre speed-up); trajectory errors are taken at the last reference sample where the split's running
# maximum stays within TWIN_GROWTH of that linear envelope. Beyond it the motion is chaotic and errors of
# any size are amplified without bound.
TWIN_KICK = 1e-9
TWIN_GROWTH = 1e2
# Where the twins' split has grown more than this by the horizon (shear at a near-radial pericentre, chaos),
# any error is amplified as much: position errors are compared, but ``destroyed`` is not judged from them.
AMPLIFY_MAX = 1e3
# A horizon shorter than this fraction of the duration leaves the trajectory error unranked.
MIN_HORIZON = 0.05
REFERENCE_SAMPLES = 200


# ---------------------------------------------------------------- systems
@dataclass
class System:
    """One test system: initial state, duration, softening, what family it belongs to, its size
    (the length trajectory errors are relative to) and, for public problems, its source."""

    name: str
    kind: str  # kepler | random | triple | problem | file
    family: str  # kepler_long | kepler_scale | nbody_random | triple | practitioner | user
    params: dict
    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    duration: float
    eps: float = 0.0
    long: bool = False  # plotted against time
    size: float = 0.0  # 0: the mean pair distance at t = 0 (set in __post_init__)
    size_name: str = "mean pair distance at t = 0"
    source: str = ""
    bounded: bool = True  # a bound system, whose drift slope means something (written to the scoreboard)

    def __post_init__(self):
        if self.size <= 0:
            n = len(self.m)
            d = np.sqrt(((self.x[None] - self.x[:, None]) ** 2).sum(-1))
            self.size = float(d.sum() / (n * (n - 1)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "family": self.family, "params": self.params, "duration": self.duration,
                "N": int(self.x.shape[0]), "D": int(self.x.shape[1]), "softening": self.eps,
                "size": self.size, "size_name": self.size_name, "source": self.source, "bounded": self.bounded}


def kepler_system(e: float, a: float, periods: float, family: str, dim: int = 2, mass=1.0,
                  name: str | None = None, source: str = "") -> System:
    m, x, v, period = kepler_pair(e, a, mass, dim)  # at rest: E is the orbit's own energy, also for a planet
    name = name or f"kepler_e{e:g}_a{a:g}_{periods:g}P"
    return System(name, "kepler", family, {"e": e, "a": a, "periods": periods, "period": period},
                  m, x, v, periods * period, long=periods >= 50, size=a, size_name="semi-major axis",
                  source=source or "two-body problem, analytic initial conditions at pericentre (aits.physics.kepler_pair)")


def random_system(n: int, dim: int, seed: int, crossings: float, eps: float, mass=1.0,
                  pos_scale: float = 1.0, vel_scale: float = 0.5) -> System:
    m, x, v = random_ic(n, dim, mass, pos_scale, vel_scale, np.random.default_rng([seed, 7919]))
    if (m != m[0]).any():  # random_ic removes the plain means: the centre of mass only for equal masses
        m, x, v = to_com(m, x, v)
    tc = crossing_time(m, x)
    return System(f"random_N{n}_s{seed}", "random", "nbody_random",
                  {"N": n, "seed": seed, "crossings": crossings, "crossing_time": tc},
                  m, x, v, crossings * tc, eps=eps, bounded=False)


def hierarchical_triple(outer_periods: float, eps: float = 0.0, dim: int = 2, family: str = "triple") -> System:
    """Inner binary (m = 0.5 + 0.5, a = 0.1, e = 0.3) at pericentre and a third body (m = 0.5) on an
    outer orbit (a = 1, e = 0.2) about the binary's centre of mass, started at its pericentre."""
    mi, xi, vi, _ = kepler_ic(0.3, 0.1, [0.5, 0.5], dim)
    # The outer pair is the binary's centre of mass (mass 1) and the third body (mass 0.5).
    _, xo, vo, p_out = kepler_ic(0.2, 1.0, [1.0, 0.5], dim)
    m = np.array([0.5, 0.5, 0.5])
    x = np.concatenate([xi + xo[0], xo[1:]])
    v = np.concatenate([vi + vo[0], vo[1:]])
    m, x, v = to_com(m, x, v)
    return System("hierarchical_triple", "triple", family,
                  {"inner": {"a": 0.1, "e": 0.3}, "outer": {"a": 1.0, "e": 0.2}, "outer_periods": outer_periods,
                   "outer_period": p_out}, m, x, v, outer_periods * p_out, eps=eps,
                  size=1.0, size_name="outer semi-major axis",
                  source="elements chosen here (inner a = 0.1, e = 0.3; outer a = 1, e = 0.2; masses 0.5)")


def practitioner_systems(quick: bool = False) -> list[System]:
    """The public problems practitioners run (aits/problems.py has their initial conditions and
    sources): periodic and close-encounter three-body problems, the outer solar system, a Kozai-Lidov
    triple, near-radial orbits, planets of small mass ratio, a hierarchical triple, softened Plummer
    spheres and an unsoftened small cluster. ``quick``: a short form of a few of them (tests)."""
    from . import problems as P

    out: list[System] = []
    m, x, v, period = P.figure_eight()
    out.append(System("figure_eight", "problem", "practitioner", {"period": period, "periods": 1 if quick else 10},
                      m, x, v, (1 if quick else 10) * period, size=float(np.linalg.norm(x[0])),
                      size_name="distance of body 1 from the centre at t = 0",
                      source="Chenciner & Montgomery 2000 (Ann. Math. 152, 881), initial conditions of Simo"))
    m, x, v = P.pythagorean()
    out.append(System("pythagorean", "problem", "practitioner", {"t_end": 2.0 if quick else 20.0},
                      m, x, v, 2.0 if quick else 20.0, bounded=False,
                      source="Burrau 1913; Szebehely & Peters 1967 (AJ 72, 876)"))
    if quick:
        out.append(kepler_system(0.99, 1.0, 1, "practitioner", name="kepler_e0.99"))
        m, x, v = P.plummer(16, 0)
        out.append(System("plummer_N16_eps0.05", "problem", "practitioner", {"N": 16, "crossings": 0.5},
                          m, x, v, 0.5 * 2 * math.sqrt(2), eps=0.05, bounded=False,
                          source="Plummer 1911; sampled as Aarseth, Henon & Wielen 1974 (A&A 37, 183), seed 0"))
        return out
    m, x, v = P.outer_solar_system()
    out.append(System("outer_solar_system", "problem", "practitioner", {"days": 50_000.0},
                      m, x, v, 50_000.0, size=5.2026, size_name="Jupiter's semi-major axis (AU)",
                      source="Hairer, Lubich & Wanner 2006, Sect. I.2.4 (5 Sept 1994; AU, days)"))
    m, x, v, p_in = P.kozai_lidov(75.0)
    out.append(System("kozai_lidov_i75", "problem", "practitioner", {"inner_period": p_in, "inner_periods": 300},
                      m, x, v, 300 * p_in, size=1.0, size_name="inner semi-major axis",
                      source="elements chosen here; e_max = 0.94 from Kozai 1962 (AJ 67, 591), Lidov 1962"))
    out.append(kepler_system(0.99, 1.0, 20, "practitioner", name="kepler_e0.99"))
    out.append(kepler_system(0.999, 1.0, 5, "practitioner", dim=3, name="kepler_e0.999_3d"))
    out.append(kepler_system(P.EARTH["e"], 1.0, 20, "practitioner", mass=[1.0, P.EARTH["q"]], name="planet_earth",
                             source="Earth: e = 0.0167 (Simon et al. 1994), M_sun/M_earth = 332946.05 (IAU 2009)"))
    out.append(kepler_system(P.HD80606B["e"], 1.0, 20, "practitioner", mass=[1.0, P.HD80606B["q"]],
                             name="planet_hd80606b", source="HD 80606 b: e = 0.927, m sin i = 3.9 M_J (Naef et al. 2001)"))
    out.append(hierarchical_triple(5, family="practitioner"))
    for n, eps, crossings in ((16, 0.05, 5.0), (64, 0.05, 2.0)):
        m, x, v = P.plummer(n, 0)
        out.append(System(f"plummer_N{n}_eps{eps:g}", "problem", "practitioner", {"N": n, "crossings": crossings},
                          m, x, v, crossings * 2 * math.sqrt(2), eps=eps, bounded=False,
                          source="Plummer 1911; sampled as Aarseth, Henon & Wielen 1974 (A&A 37, 183), seed 0"))
    m, x, v = P.plummer(8, 1)
    out.append(System("cluster_N8_unsoftened", "problem", "practitioner", {"N": 8, "crossings": 2.0},
                      m, x, v, 2.0 * 2 * math.sqrt(2), bounded=False,
                      source="a Plummer sample (Aarseth, Henon & Wielen 1974), seed 1, no softening: close encounters"))
    return out


def suite_systems(suite: str, n_bodies: int, dim: int, eps: float, mass=1.0) -> list[System]:
    """The fixed, seeded systems of a suite for a checkpoint with ``n_bodies`` bodies in ``dim``.
    ``practitioner`` (and ``practitioner_quick``) do not depend on the checkpoint: scale-free rules
    take any N."""
    if suite in ("practitioner", "practitioner_quick"):
        return practitioner_systems(quick=suite == "practitioner_quick")
    if suite not in ("quick", "standard"):
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
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


SUITES = ("quick", "standard", "practitioner", "practitioner_quick")


def parse_duration(text: str, m: np.ndarray, x: np.ndarray, v: np.ndarray) -> tuple[float, str]:
    """A duration ``T`` (time units), ``<k>P`` (two-body periods from the initial orbit's energy) or
    ``<k>tc`` (crossing times sqrt(L^3/M)). Returns (time units, description); ValueError if bad."""
    t = text.strip().lower()
    try:
        if t.endswith("tc"):
            k, unit = float(t[:-2]), "tc"
        elif t.endswith("p"):
            k, unit = float(t[:-1]), "P"
        else:
            k, unit = float(t), ""
    except ValueError:
        raise ValueError(f"--duration {text!r}: expected a number, <k>P (periods) or <k>tc (crossing times)") from None
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"--duration {text!r}: must be positive and finite")
    if unit == "tc":
        return k * crossing_time(m, x), f"{k:g} crossing times"
    if unit == "P":
        if len(m) != 2:
            raise ValueError(f"--duration {text!r}: periods need a two-body system (got N = {len(m)}); use tc")
        mu = float(m.sum())
        r = float(np.linalg.norm(x[1] - x[0]))
        energy = 0.5 * float(np.sum((v[1] - v[0]) ** 2)) - mu / r
        if energy >= 0:
            raise ValueError(f"--duration {text!r}: the two bodies are unbound: no period")
        return k * 2 * math.pi * math.sqrt((-mu / (2 * energy)) ** 3 / mu), f"{k:g} periods"
    return k, f"{k:g} time units"


def file_system(path, duration: str, eps: float = 0.0) -> System:
    """A user's system from an IC file (rows [m, x..., v...], :func:`aits.physics.load_ic_file`) for a
    ``duration`` as :func:`parse_duration` reads it, moved to its centre-of-mass frame: the board judges energy
    errors relative to E, and in a frame where the centre of mass moves (a binary given with one star at rest,
    heliocentric planets) E holds its kinetic energy too, which shrinks every |dE/E| and can make a bound system
    look unbound. ``params['centre_of_mass_speed']``: how fast it moved in the file's frame. ValueError with one
    line for bad input."""
    from pathlib import Path

    from .physics import load_ic_file

    m, x, v_file = load_ic_file(path)
    m, x, v = to_com(m, x, v_file)
    v_cm = v_file[0] - v[0]
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"--softening {eps}: must be finite and >= 0")
    if eps == 0:
        d = np.sqrt(((x[None] - x[:, None]) ** 2).sum(-1))
        if (d[~np.eye(len(m), dtype=bool)] == 0).any():
            raise ValueError(f"IC file {path}: two bodies at the same position without softening")
    t_end, desc = parse_duration(duration, m, x, v)
    return System(Path(path).stem, "file", "user", {"file": str(path), "duration": desc,
                                                   "centre_of_mass_speed": float(np.sqrt(v_cm @ v_cm))}, m, x, v, t_end,
                  eps=eps, long=True, source=f"user file {path} (in its centre-of-mass frame)",
                  bounded=bool(I.energies(x[None], v[None], m, eps)[0] < 0))


# ---------------------------------------------------------------- baselines
def make_baseline(family: str, param: float, eps: float = 0.0) -> I.Method:
    if family == "fixed":
        return I.FixedStep(param)
    if family == "logh":
        return I.LogH(param)
    if family not in FAMILY_FORMS:
        raise ValueError(f"unknown baseline {family!r}")
    form, ts = FAMILY_FORMS[family]
    if form == "explicit":
        return I.Adaptive(param, ts, eps, family)
    if form == "symmetric":
        return I.SymmetricAdaptive(param, SYMMETRIC_ITERATIONS, ts, eps, family)
    return I.RecursiveAdaptive(param, ts, eps, family, clip=FAMILY_CLIP.get(family))


def initial_param(family: str, sys: System, target_evals: int, n_steps: int) -> float:
    """A first guess of the step parameter (``eta`` or ``h``) that spends ``target_evals`` evaluations,
    as if the start's timescale held throughout (``fixed`` needs no guess: see :func:`match_evals`)."""
    steps = max(target_evals, 2)
    if family == "logh":  # dt ~ h / (-U)
        return sys.duration * (-I.accel_pot(sys.x, sys.m, sys.eps)[1]) / steps
    form, ts = FAMILY_FORMS[family]
    a0 = I.accel(sys.x, sys.m, sys.eps)
    tau0 = I.TIMESCALES[ts](sys.x, sys.v, a0, sys.m, sys.eps)
    if not (math.isfinite(tau0) and tau0 > 0):
        tau0 = I.timescale(sys.x, a0)
    if form == "explicit":
        return sys.duration / (steps * tau0 * n_steps)
    if form == "recursive":  # one substep per step
        return sys.duration / (steps * tau0)
    return sys.duration * (SYMMETRIC_ITERATIONS + 1) / (steps * tau0)  # symmetric


def run_method(method: I.Method, sys: System, n_steps: int, max_steps: int, record: bool = True) -> I.Run:
    # n_steps leapfrog substeps per step apply to the explicit KDK rules; symmetric and recursive steps
    # and logh take one
    ns = 1 if isinstance(method, (I.SymmetricPolicy, I.RecursivePolicy, I.LogH)) else n_steps
    return I.integrate(method, sys.m, sys.x, sys.v, sys.duration, eps=sys.eps, n_steps=ns,
                       max_steps=max_steps, record=record)


def tuning_count(run: I.Run, cap: int) -> int:
    """The evaluations a parameter search (:func:`aits.integrators.tune`) sees for a run capped at ``cap``
    steps: a failed run says only "too few" (blown up early: 1) or "too many" (the cap: 4 * cap)."""
    status = run.metrics["status"]
    return run.metrics["force_evals"] if status == "ok" else 4 * cap if status == "max_steps" else 1


def _search(family: str, sys: System, target: int, n_steps: int, tol: float, max_tries: int, p: float,
            trials: list) -> tuple[I.Run, float]:
    """Secant search in log(parameter) against log(evaluations) (evaluations ~ 1 / parameter),
    bracketed; returns the closest run and its parameter."""
    cap = int(3 * target + 50)

    def count(q):
        run = run_method(make_baseline(family, q, sys.eps), sys, n_steps, cap)
        trials.append(run)
        return tuning_count(run, cap), run

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
            run = run_method(make_baseline(family, run.metrics["param"] / scale, sys.eps), sys, n_steps, cap)
    return run


# ---------------------------------------------------------------- reference
def _rebound_sim(sys: System, x: np.ndarray):
    import rebound

    d = sys.x.shape[1]
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.integrator = "ias15"
    sim.softening = float(sys.eps)
    for i in range(len(sys.m)):
        pos = list(x[i]) + [0.0] * (3 - d)
        vel = list(sys.v[i]) + [0.0] * (3 - d)
        sim.add(m=float(sys.m[i]), x=pos[0], y=pos[1], z=pos[2], vx=vel[0], vy=vel[1], vz=vel[2])
    return sim


def _sample(sim, ts, d: int):
    xs, vs = [], []
    for tk in ts:
        sim.integrate(float(tk), exact_finish_time=1)
        xs.append(np.array([[p.x, p.y, p.z][:d] for p in sim.particles]))
        vs.append(np.array([[p.vx, p.vy, p.vz][:d] for p in sim.particles]))
    return xs, vs


def ias15(sys: System, n_out: int = REFERENCE_SAMPLES) -> dict | None:
    """REBOUND IAS15 at its default accuracy: positions at ``n_out`` sample times, max |dE/E| on them,
    loop wall time, its force evaluations (counted with a no-op additional-forces callback in a
    second, untimed run) and the chaos horizon (a third run from positions moved by ``TWIN_KICK``
    sizes: the last sample where their split stays within ``TWIN_GROWTH`` of linear growth). None without REBOUND or
    for D > 3."""
    try:
        import rebound  # noqa: F401
    except ImportError:
        return None
    d = sys.x.shape[1]
    if d > 3:
        return None
    ts = np.linspace(0.0, sys.duration, n_out + 1)[1:]
    sim = _rebound_sim(sys, sys.x)
    start = time.perf_counter()
    xs, vs = _sample(sim, ts, d)
    wall = time.perf_counter() - start
    xs, vs = [sys.x, *xs], [sys.v, *vs]
    # energies with the project's formula (softened potential included), as for every other method
    e = I.energies(np.stack(xs), np.stack(vs), sys.m, sys.eps)
    errs = rel_energy_error(e[0], e[1:])
    steps = int(sim.steps_done)

    count = [0]
    sim2 = _rebound_sim(sys, sys.x)

    def tally(_simp):  # adds no force: only counts how often IAS15 evaluates the forces
        count[0] += 1

    sim2.additional_forces = tally
    sim2.force_is_velocity_dependent = 0
    sim2.integrate(float(sys.duration), exact_finish_time=1)

    kicked = sys.x.copy()
    kicked[0, 0] += TWIN_KICK * sys.size
    twin_x, _ = _sample(_rebound_sim(sys, kicked), ts, d)
    split = np.array([np.linalg.norm(a - b, axis=-1).max() for a, b in zip(xs[1:], twin_x)]) / sys.size
    envelope = max(split[0], TWIN_KICK) * np.arange(1, n_out + 1)
    beyond = np.nonzero(np.maximum.accumulate(split) > TWIN_GROWTH * envelope)[0]
    k = n_out - 1 if beyond.size == 0 else int(beyond[0]) - 1
    horizon = float(ts[k]) if k >= 0 else 0.0
    amplification = float(split[max(k, 0)] / TWIN_KICK)
    return {"t": ts, "x": np.stack(xs[1:]), "horizon_index": k, "amplification": amplification, "metrics": {
        "method": "ias15", "force_evals": count[0], "steps": steps, "wall_time_s": wall,
        "max_rel_dE": float(max(errs)), "final_rel_dE": float(errs[-1]), "drift_slope": None,
        "final_position_error": 0.0, "position_error_rel": 0.0, "status": "ok", "energy_samples": n_out},
        "horizon": horizon, "chaotic": beyond.size > 0}


def position_at(traj: dict, t: float) -> np.ndarray:
    """Positions (N,D) of a recorded run at time ``t`` by cubic Hermite interpolation between the
    recorded steps either side (positions and velocities at both): O(dt^4), far below a
    second-order integrator's own O(dt^2) position error."""
    ts = traj["t"]
    k = int(np.searchsorted(ts, t, side="right")) - 1
    k = min(max(k, 0), len(ts) - 1)
    if k == len(ts) - 1 or ts[k] == t:
        return traj["x"][k]
    h = ts[k + 1] - ts[k]
    s = (t - ts[k]) / h
    x0, x1, v0, v1 = traj["x"][k], traj["x"][k + 1], traj["v"][k], traj["v"][k + 1]
    return ((2 * s ** 3 - 3 * s ** 2 + 1) * x0 + (s ** 3 - 2 * s ** 2 + s) * h * v0
            + (-2 * s ** 3 + 3 * s ** 2) * x1 + (s ** 3 - s ** 2) * h * v1)


def is_ranked(ref: dict | None, sys: System) -> bool:
    """Whether an IAS15 reference (:func:`ias15`) holds long enough (``MIN_HORIZON`` of the run) to rank runs by
    their position error at its horizon."""
    return ref is not None and ref["horizon"] >= MIN_HORIZON * sys.duration


def position_error(run: I.Run, ref: dict) -> float | None:
    """The largest body's distance |x - x_IAS15| at the reference's horizon (absolute; None for a run that did
    not end ok or kept no trajectory)."""
    if not run.trajectory or run.metrics["status"] != "ok":
        return None
    x_ref = ref["x"][max(ref["horizon_index"], 0)]
    return float(np.linalg.norm(position_at(run.trajectory, ref["horizon"]) - x_ref, axis=-1).max())


def judged_status(status: str, max_rel_dE, pos_err_rel) -> str:
    """The integrator's status, then the physics: ``energy_error`` when max |dE/E| exceeds
    ``ENERGY_FAIL``, ``destroyed`` when the bodies end more than ``DESTROYED`` sizes from the
    reference (``pos_err_rel`` None: not judged, as where the reference amplifies any error).
    Never ``ok`` for a run that lost its orbit."""
    if status != "ok":
        return status
    if pos_err_rel is not None and pos_err_rel > DESTROYED:
        return "destroyed"
    if max_rel_dE is None or not math.isfinite(max_rel_dE) or max_rel_dE > ENERGY_FAIL:
        return "energy_error"
    return "ok"


# ---------------------------------------------------------------- one system
def families_for(sys: System, baselines=BASELINES) -> list[str]:
    """The baselines a system is judged against: ``logh`` on two bodies only, ``recursive_soft_blend_clip`` on
    softened systems only (on an unsoftened one it is ``recursive_blend_clip``: f = 0)."""
    return [b for b in baselines if not (b == "logh" and sys.x.shape[0] != 2)
            and not (b == "recursive_soft_blend_clip" and sys.eps == 0)]


def score_system(sys: System, learned: dict[str, I.Method], n_steps: int = 1, max_steps: int = 2_000_000,
                 baselines=BASELINES, reference: bool = True, wall: bool = True) -> dict:
    """Every method on one system; the first entry of ``learned`` is the primary ``learned`` run
    that the baselines are matched to. Returns the system's scoreboard entry plus ``_plot``
    (downsampled trajectories and the accuracy-against-cost points) for the driver.

    Per method: ``force_evals, steps, wall_time_s, max_rel_dE, final_rel_dE, drift_slope,
    position_error_rel`` (max over bodies of |x - x_IAS15| / size at the horizon),
    ``final_position_error`` (absolute, at the horizon) and ``status``. Per system: ``strongest``
    (the classical family with the smallest max |dE/E| at equal evaluations), ``strongest_wall``
    (the same at equal wall time), ratios learned / family of max |dE/E| (``ratios``) and of the
    position error (``ratios_trajectory``), each with a ``strongest`` entry. ``wall=False`` skips the
    equal-wall-time runs (no ``equal_wall_time`` entries, ``strongest_wall`` None): what a sweep's
    objective, which compares at equal evaluations only, needs."""
    entry = {**sys.to_dict(), "methods": {}, "ratios": {"equal_force_evals": {}, "equal_wall_time": {}},
             "ratios_trajectory": {"equal_force_evals": {}, "equal_wall_time": {}},
             "ratios_band": {"equal_force_evals": {}}}
    plot = {"series": {}, "cost": {}, "m": sys.m.tolist()}  # masses: the movies' momenta
    ref = ias15(sys) if reference else None
    ranked = is_ranked(ref, sys)
    if ref is not None:
        entry["trajectory"] = {"horizon": ref["horizon"], "chaotic": ref["chaotic"], "ranked": ranked,
                               "amplification": ref["amplification"], "size": sys.size, "size_name": sys.size_name}
    judge_position = ranked and ref["amplification"] <= AMPLIFY_MAX

    def finish(run: I.Run) -> dict:
        met = {k: run.metrics[k] for k in ("force_evals", "steps", "wall_time_s", "param", "param_name")}
        met.update({k: run.metrics.get(k) for k in ("max_rel_dE", "final_rel_dE", "drift_slope", "band_rel_dE")})
        if run.metrics.get("clip_share") is not None:  # a clipped recursion: where it was not reversible
            met["clip_share"] = run.metrics["clip_share"]
        err = position_error(run, ref) if ranked else None
        met["final_position_error"] = err
        met["position_error_rel"] = None if err is None else err / sys.size
        met["status"] = judged_status(run.metrics["status"], met["max_rel_dE"],
                                      met["position_error_rel"] if judge_position else None)
        return met

    primary = None
    for name, method in learned.items():
        tally = range_tally(method)
        if tally is not None:
            tally.reset()
        run = run_method(method, sys, n_steps, max_steps)
        entry["methods"][name] = finish(run)
        if tally is not None:  # what the range check did on this run (outside / held shares, the features)
            entry["methods"][name]["range_check"] = range_report(tally)
        plot["series"][name] = downsample(run, m=sys.m)
        plot["cost"][name] = [(run.metrics["force_evals"], run.metrics.get("max_rel_dE", math.inf))]
        if primary is None:
            primary = run
    target_evals = primary.metrics["force_evals"]
    target_wall = primary.metrics["wall_time_s"]
    families = families_for(sys, baselines)
    for fam in families:
        eq, trials = match_evals(fam, sys, target_evals, n_steps)
        met = finish(eq)
        met["evals_matched"] = abs(_evals(eq) - target_evals) <= EVAL_TOL * target_evals
        wall_runs = []
        if wall:
            wall_runs.append(match_wall(fam, sys, eq, target_wall, n_steps))
            met["equal_wall_time"] = finish(wall_runs[0])
        entry["methods"][fam] = met
        plot["series"][fam] = downsample(eq, m=sys.m)
        plot["cost"][fam] = sorted((t.metrics["force_evals"], t.metrics.get("max_rel_dE", math.inf))
                                   for t in [*trials, *wall_runs] if t.metrics["status"] == "ok")
    if ref is not None:
        entry["methods"]["ias15"] = ref["metrics"]
    judge(entry, families, next(iter(learned)), wall)
    entry["_plot"] = plot
    return entry


def judge(entry: dict, families: list[str], primary: str = "learned", wall: bool = True) -> None:
    """Fill a system entry's verdicts from its runs (``entry["methods"]``), in place: ``strongest`` (the classical
    family among ``families`` with the smallest max |dE/E| at equal evaluations), ``strongest_wall`` (the same at
    equal wall time, None without ``wall``), ``strongest_band`` (the smallest energy band among the runs that ended
    ok) and the ratios of the ``primary`` learned run to every family of ``families`` and to the strongest:
    ``ratios`` (max |dE/E|), ``ratios_trajectory`` (position error) and ``ratios_band``. :func:`score_system`
    calls it; ``driver/results.py --without`` calls it again with fewer families."""
    methods = entry["methods"]
    lm = methods[primary]
    classical = [f for f in families if f in CLASSICAL]
    entry["ratios"] = {"equal_force_evals": {}, "equal_wall_time": {}}
    entry["ratios_trajectory"] = {"equal_force_evals": {}, "equal_wall_time": {}}
    entry["ratios_band"] = {"equal_force_evals": {}}
    # (comparison, the entry's strongest key, the sub-run of a family's entry it compares with)
    comparisons = [("equal_force_evals", "strongest", None)]
    if wall:
        comparisons.append(("equal_wall_time", "strongest_wall", "equal_wall_time"))
    entry["strongest"] = entry["strongest_wall"] = None
    for comp, key, sub in comparisons:
        runs = {fam: methods[fam] if sub is None else methods[fam][sub] for fam in families}
        entry[key] = strongest(methods, classical, sub)
        if entry[key] is not None:
            runs["strongest"] = runs[entry[key]]
        for fam, bm in runs.items():
            entry["ratios"][comp][fam] = ratio(lm["max_rel_dE"], bm["max_rel_dE"])
            entry["ratios_trajectory"][comp][fam] = ratio(lm["position_error_rel"], bm["position_error_rel"])
    # the energy band (max E - min E) / |E0|, which does not depend on the start's place in the oscillation:
    # learned / each family's, and / the smallest classical band (``strongest_band``), at equal evaluations
    band = entry["ratios_band"]["equal_force_evals"]
    entry["strongest_band"] = _smallest(methods, classical, "band_rel_dE", ok_only=True)
    for fam in families:
        band[fam] = ratio(lm.get("band_rel_dE"), methods[fam].get("band_rel_dE"))
    if entry["strongest_band"] is not None:
        band["strongest"] = band[entry["strongest_band"]]


def strongest(methods: dict, families: list[str], comp: str | None) -> str | None:
    """The family with the smallest finite max |dE/E| (at equal evaluations, or in the ``comp`` sub-run);
    None when no family has one."""
    return _smallest({f: methods[f] if comp is None else methods[f][comp] for f in families}, families,
                     "max_rel_dE", ok_only=False)


def _smallest(methods: dict, families: list[str], key: str, ok_only: bool) -> str | None:
    """The family whose ``key`` is the smallest finite value, among the runs that ended ok if ``ok_only``;
    None when none has one."""
    best, name = math.inf, None
    for fam in families:
        met = methods[fam]
        if ok_only and met.get("status") != "ok":
            continue
        err = met.get(key)
        if err is not None and math.isfinite(err) and err < best:
            best, name = err, fam
    return name


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
        The masses; with them the series also hold positions and momentum drifts (and the bins are
        at most ``POSITION_FLOATS / (N D)``, at least 100).

    Returns
    -------
    dict
        ``t`` (bin mean), ``rel_dE`` = |dE/E| (bin maximum), ``dt`` (bin mean), each (bins,); with
        ``m``: ``x`` (bins, N, D), the positions at each bin's last sample, ``P_drift`` = |P(t) - P0|
        (total momentum, absolute, bin maximum) and, for D = 2 or 3, ``L_drift`` = |L(t) - L0| / |L0|
        (angular momentum: the z component in 2-D, the vector in 3-D; bin maximum; for L0 ~ 0 over
        the largest sum m |x| |v| of the run instead). Empty without a trajectory.
    """
    if not run.trajectory:
        return {}
    t, e, dt = run.trajectory["t"], run.trajectory["E"], run.trajectory["dt"]
    rel = rel_energy_error(e[0], e)
    n = len(t)
    if m is not None:  # positions of many bodies: fewer bins, so a series stays ~POSITION_FLOATS numbers
        points = min(points, max(100, POSITION_FLOATS // run.trajectory["x"][0].size))
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
        # L0 ~ 0 (a start at rest, a symmetric start): relative to the largest sum m |x||v| along the run
        natural = float((m * np.linalg.norm(x, axis=-1) * np.linalg.norm(v, axis=-1)).sum(-1).max())
        if scale <= 1e-12 * natural:
            scale = max(natural, 1e-300)
        l_drift = np.linalg.norm(ang - ang[0], axis=-1) / scale
        out["L_drift"] = [float(l_drift[a:b].max()) for a, b in bins]
    return out


# ---------------------------------------------------------------- summary
# the ratios a board's entry carries, with the prefix their comparisons get in a summary: max |dE/E|
# ("equal_force_evals", ...), the position error ("trajectory_equal_force_evals", ...) and the energy band
RATIO_KINDS = (("", "ratios"), ("trajectory_", "ratios_trajectory"), ("band_", "ratios_band"))


def summarize(systems_by_ckpt: dict[str, dict[str, dict]]) -> dict:
    """Per family of systems and baseline: median and worst ratio per checkpoint (energy, position and energy
    band, see ``RATIO_KINDS``), and over checkpoints the median and spread (min, max) of those per-checkpoint
    medians; per system the median and spread over checkpoints; and the learned runs' drift slopes and
    statuses."""
    per_ckpt: dict[str, dict] = {}
    for label, systems in systems_by_ckpt.items():
        fams: dict = {}
        for entry in systems.values():
            for prefix, key in RATIO_KINDS:
                for comp, rs in entry.get(key, {}).items():
                    for base, r in rs.items():
                        if r is not None:
                            fams.setdefault(entry["family"], {}).setdefault(prefix + comp, {}).setdefault(base, []).append(r)
        per_ckpt[label] = {fam: {comp: {b: {"median": float(np.median(v)), "worst": float(np.max(v))}
                                        for b, v in bs.items()} for comp, bs in comps.items()}
                           for fam, comps in fams.items()}
    out = {"per_checkpoint": per_ckpt, "headline": {label: headline(systems) for label, systems in systems_by_ckpt.items()}}
    if len(systems_by_ckpt) > 1:
        out["headline_across_checkpoints"] = {
            key: spread([h[key] for h in out["headline"].values() if h.get(key) is not None])
            for key in HEADLINE_KEYS if any(h.get(key) is not None for h in out["headline"].values())}
        across: dict = {}
        for label, fams in per_ckpt.items():
            for fam, comps in fams.items():
                for comp, bs in comps.items():
                    for b, st in bs.items():
                        across.setdefault(fam, {}).setdefault(comp, {}).setdefault(b, []).append(st["median"])
        out["across_checkpoints"] = {fam: {comp: {b: spread(v) for b, v in bs.items()} for comp, bs in comps.items()}
                                     for fam, comps in across.items()}
        out["per_system"] = per_system_summary(systems_by_ckpt)
    return out


def per_system_summary(systems_by_ckpt: dict[str, dict[str, dict]]) -> dict:
    """Per system over checkpoints: median and spread of every ratio (energy: ``equal_force_evals``,
    ``equal_wall_time``; position: ``trajectory_equal_force_evals``, ...) and of the learned run's drift
    slope; the learned runs' statuses, force evaluations and the ``strongest`` family, one per
    checkpoint, as lists."""
    per_system: dict = {}
    for label, systems in systems_by_ckpt.items():
        for name, entry in systems.items():
            slot = per_system.setdefault(name, {})
            for prefix, key in RATIO_KINDS:
                for comp, rs in entry.get(key, {}).items():
                    for b, r in rs.items():
                        if r is not None:
                            slot.setdefault(prefix + comp, {}).setdefault(b, []).append(r)
            lm = entry["methods"]["learned"]
            if lm.get("drift_slope") is not None:
                slot.setdefault("learned_drift_slope", []).append(lm["drift_slope"])
            slot.setdefault("learned_status", []).append(lm["status"])
            slot.setdefault("learned_evals", []).append(lm["force_evals"])
            slot.setdefault("strongest", []).append(entry.get("strongest"))
    kept = ("learned_status", "learned_evals", "strongest")  # one per checkpoint: kept as lists
    return {name: {k: (v if k in kept else spread(v) if isinstance(v, list) else {b: spread(r) for b, r in v.items()})
                   for k, v in slot.items()}
            for name, slot in per_system.items()}


def rule_profile(systems_by_ckpt: dict[str, dict[str, dict]], within: float = 1.25) -> dict:
    """Every rule against each system's strongest classical rule at equal force evaluations: for the learned
    rule and each classical family, per checkpoint the median and worst over systems of its max |dE/E| over
    the strongest's, and the share of systems within ``within`` of it; over checkpoints median [min, max].
    A classical run is matched to each checkpoint's learned force evaluations, so the classical rows, too,
    differ a little between checkpoints. A run with no finite error counts as infinitely worse. It asks
    whether any one rule, classical ones included, is within ``within`` of the per-system best everywhere."""
    rows: dict[str, dict[str, list[float]]] = {}
    for label, systems in systems_by_ckpt.items():
        for entry in systems.values():
            best_name = entry.get("strongest")
            if best_name is None:
                continue
            best = entry["methods"][best_name]["max_rel_dE"]
            for rule in ("learned", *CLASSICAL):
                if rule in entry["methods"]:
                    r = ratio(entry["methods"][rule].get("max_rel_dE"), best)
                    rows.setdefault(rule, {}).setdefault(label, []).append(math.inf if r is None else r)
    out = {}
    for rule, by_label in rows.items():
        per = [(float(np.median(v)), float(np.max(v)), float(np.mean(np.asarray(v) <= within)), len(v))
               for v in by_label.values()]
        out[rule] = {"median": spread([p[0] for p in per]), "worst": spread([p[1] for p in per]),
                     "within": spread([p[2] for p in per]), "systems": per[0][3]}
    return out


HEADLINE_KEYS = ("energy_equal_evals", "energy_equal_wall", "trajectory_equal_evals", "trajectory_equal_wall",
                 "energy_worst_equal_evals", "energy_band_equal_evals")


def range_checks(systems: dict[str, dict]) -> dict[str, dict]:
    """{system: its learned run's ``range_check`` report} of one checkpoint's board entries that have one."""
    return {n: e["methods"]["learned"]["range_check"] for n, e in systems.items()
            if e["methods"]["learned"].get("range_check")}


def headline(systems: dict[str, dict]) -> dict:
    """One checkpoint's summary over its systems: the median (and worst) learned / strongest max |dE/E|
    at equal evaluations and at equal wall time, the median learned / strongest position error (ranked
    systems only), the learned runs' statuses counted, which classical family was strongest how often, and
    (range-checked checkpoints) the systems the range check held at the classical rule on most steps."""
    def med(key, comp):
        vals = [e[key][comp].get("strongest") for e in systems.values()]
        vals = [v for v in vals if v is not None]
        return (float(np.median(vals)) if vals else None), (float(np.max(vals)) if vals else None)

    out = {}
    out["energy_equal_evals"], out["energy_worst_equal_evals"] = med("ratios", "equal_force_evals")
    out["energy_equal_wall"], _ = med("ratios", "equal_wall_time")
    out["trajectory_equal_evals"], _ = med("ratios_trajectory", "equal_force_evals")
    out["trajectory_equal_wall"], _ = med("ratios_trajectory", "equal_wall_time")
    out["energy_band_equal_evals"], _ = med("ratios_band", "equal_force_evals") if all(
        "ratios_band" in e for e in systems.values()) else (None, None)  # boards from before the band: none
    statuses: dict[str, int] = {}
    strongest_counts: dict[str, int] = {}
    for e in systems.values():
        st = e["methods"]["learned"]["status"]
        statuses[st] = statuses.get(st, 0) + 1
        if e.get("strongest"):
            strongest_counts[e["strongest"]] = strongest_counts.get(e["strongest"], 0) + 1
    out["systems"] = len(systems)
    out["learned_status"] = statuses
    out["not_ok"] = sum(n for st, n in statuses.items() if st != "ok")
    out["strongest_family_counts"] = strongest_counts
    # systems whose learned run the range check held at the classical rule on most steps (boards of checkpoints
    # with a training box only): there the learned rule was not what ran
    checked = range_checks(systems)
    if checked:
        out["held_systems"] = sorted(n for n, rc in checked.items() if rc["held_share"] > 0.5)
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
        run = I.integrate(method, sys.m, sys.x, sys.v, 1e30, eps=sys.eps, max_steps=steps, record=False)
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

"""System families of the training mixture (``system.ic: mixture``) and the padding that lets them share
one batch.

Each family is a small function ``family(rng, s) -> Drawn``: one system's massive bodies, centre of mass
at rest at the origin, in ``s.dim`` dimensions (built in 3-D; a 2-D system keeps its orbits in the
x-y plane, z dropped), units G = 1. :func:`pad` adds massless bodies far away so that every system of a
run has ``system.num_particles`` bodies: they exert no force, carry no energy, and the scale-free
features and timescale ignore them (``aits.features.scale_free_torch``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .physics import _as_masses, crossing_time, kepler_period, random_ic, to_com

# the family code of a system is its index here (new families go at the end: codes are stored in states)
FAMILIES = ("binary", "triple", "planets", "few_body", "soft_few_body", "cold_few_body")
FAMILY_BODIES = {"binary": 2, "triple": 3, "planets": 4, "few_body": 3, "soft_few_body": 3,
                 "cold_few_body": 3}  # the most a draw needs
# restart after system.restart_after crossing times
CROSSING_TIME_FAMILIES = ("few_body", "soft_few_body", "cold_few_body")
SOFT_EPS_RANGE = (0.02, 0.5)  # soft_few_body: eps / (mean pair distance), loguniform in this range
COLD_MASS_RANGE = (0.2, 1.0)  # cold_few_body: each mass loguniform in this range (ratios up to 5)
PAD_DISTANCE = 1e4  # massless bodies sit this many system sizes from the centre of mass
NO_FAMILY = -1  # the family code of systems not drawn from a mixture (kepler, random, file ICs)


@dataclass
class Drawn:
    """One drawn system: masses m (n,), positions x and velocities v (n, dim), the restart horizon's unit
    ``period`` (time), the (inner) binary's eccentricity ``e`` and semi-major axis ``a`` (nan for
    few_body) and ``size``, the largest distance from the centre of mass its orbits reach (length);
    ``eps`` its own Plummer softening (length; None: the run's ``system.softening``)."""

    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    period: float
    e: float
    a: float
    size: float
    eps: float | None = None


# ---------------------------------------------------------------- orbits
def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw with log x uniform in [log lo, log hi] (0 < lo <= hi).

    Returns
    -------
    float
    """
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def eccentric_anomaly(mean_anomaly: float, e: float) -> float:
    """E solving Kepler's equation E - e sin E = M by Newton's method, to 1e-14.

    Parameters
    ----------
    mean_anomaly : float
        M, radians (any value; reduced to [-pi, pi]).
    e : float
        Eccentricity in [0, 1).

    Returns
    -------
    float
        E in radians, in [-pi, pi].
    """
    m = math.remainder(mean_anomaly, 2 * math.pi)  # in [-pi, pi]
    big_e = m + 0.85 * e * math.copysign(1.0, m) if e > 0.8 else m  # Danby's start converges for every e < 1
    for _ in range(100):
        step = (big_e - e * math.sin(big_e) - m) / (1.0 - e * math.cos(big_e))
        big_e -= step
        if abs(step) < 1e-14:
            break
    return big_e


def true_anomaly(rng: np.random.Generator, e: float) -> float:
    """The true anomaly (radians) at a uniform mean anomaly: a uniformly random time along an orbit of
    eccentricity ``e`` in [0, 1)."""
    big_e = eccentric_anomaly(rng.uniform(0.0, 2 * math.pi), e)
    return 2.0 * math.atan2(math.sqrt(1 + e) * math.sin(big_e / 2), math.sqrt(1 - e) * math.cos(big_e / 2))


def start_anomaly(rng: np.random.Generator, e: float, s) -> float:
    """Where a drawn orbit starts: with probability ``s.apsis_starts`` at an apsis (pericentre or apocentre,
    equally likely; published initial conditions mostly start there, and a uniform time almost never does
    on a near-radial orbit), else :func:`true_anomaly`. With the share 0 the stream is that of
    :func:`true_anomaly` alone."""
    share = s.apsis_starts
    if share > 0.0 and rng.random() < share:
        return 0.0 if rng.random() < 0.5 else math.pi
    return true_anomaly(rng, e)


def relative_orbit(total_mass: float, a: float, e: float, f: float, rot: np.ndarray):
    """Relative position and velocity on a Kepler orbit (G = 1).

    Parameters
    ----------
    total_mass : float
        m1 + m2.
    a, e : float
        Semi-major axis (length) and eccentricity in [0, 1).
    f : float
        True anomaly, radians.
    rot : numpy.ndarray
        (3, 3) orientation: the pericentre lies along ``rot`` x, the orbit normal along ``rot`` z.

    Returns
    -------
    dx, dv : numpy.ndarray
        (3,) each: body 2 minus body 1.
    """
    p = a * (1.0 - e * e)
    r = p / (1.0 + e * math.cos(f))
    w = math.sqrt(total_mass / p)
    dx = np.array([r * math.cos(f), r * math.sin(f), 0.0])
    dv = np.array([-w * math.sin(f), w * (e + math.cos(f)), 0.0])
    return rot @ dx, rot @ dv


def _rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rx(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def orientation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A random orientation: uniform over rotations in 3-D (an isotropic orbit normal); in 2-D a rotation
    about z, mirrored half the time (an orbit turning either way, still in the x-y plane).

    Returns
    -------
    numpy.ndarray
        (3, 3) orthogonal matrix.
    """
    if dim == 2:
        flip = np.diag([1.0, -1.0 if rng.random() < 0.5 else 1.0, 1.0])
        return _rz(rng.uniform(0.0, 2 * math.pi)) @ flip
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)  # a uniform unit quaternion is a uniform rotation
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def binary_eccentricity(rng: np.random.Generator, e_max: float = 0.995) -> float:
    """An eccentricity: half U[0, 0.9], half 1 - loguniform(1 - e_max, 0.1) (near-radial orbits as often
    as the rest). ``e_max`` in (0.9, 1)."""
    if rng.random() < 0.5:
        return float(rng.uniform(0.0, 0.9))
    return 1.0 - loguniform(rng, 1.0 - e_max, 0.1)


def _finish(m, x, v, dim: int, period: float, e: float, a: float, size: float) -> Drawn:
    """Move to the centre-of-mass frame (at rest at the origin) and keep the first ``dim`` axes."""
    m = np.asarray(m, dtype=np.float64)
    m, x, v = to_com(m, np.asarray(x, dtype=np.float64), np.asarray(v, dtype=np.float64))
    return Drawn(m, x[:, :dim].copy(), v[:, :dim].copy(), float(period), float(e), float(a), float(size))


# ---------------------------------------------------------------- families
def binary(rng: np.random.Generator, s, e_max: float = 0.995) -> Drawn:
    """A Kepler pair: primary mass 1, mass ratio q loguniform [1e-4, 1], a loguniform [0.5, 2], e from
    :func:`binary_eccentricity`, random orientation, at a uniformly random time along the orbit (true
    anomaly from a uniform mean anomaly), or at an apsis in a share ``s.apsis_starts`` (:func:`start_anomaly`).
    ``period``: the Kepler period; ``e_max`` caps e (0.95 for a triple's inner pair).

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own stream.
    s : SystemConfig
        ``dim`` (2 or 3).

    Returns
    -------
    Drawn
        The massive bodies, centre of mass at rest at the origin.
    """
    e = binary_eccentricity(rng, e_max)
    q = loguniform(rng, 1e-4, 1.0)
    a = loguniform(rng, 0.5, 2.0)
    dx, dv = relative_orbit(1.0 + q, a, e, start_anomaly(rng, e, s), orientation(rng, s.dim))
    return _finish([1.0, q], [np.zeros(3), dx], [np.zeros(3), dv], s.dim,
                   kepler_period(a, 1.0 + q), e, a, a * (1 + e))


def triple(rng: np.random.Generator, s) -> Drawn:
    """A hierarchical triple: the inner pair as :func:`binary` with e <= 0.95; a third body of mass
    q_out (m1 + m2), q_out loguniform [1e-3, 1], on an orbit about the pair's centre of mass with e_out
    U[0, 0.5] and a_out / a_in = U[4, 20] (1 + e_out) / (1 - e_out), so its pericentre is at least 4 a_in
    (Mardling-Aarseth stable over these ranges), at an isotropic mutual inclination (3-D; coplanar either
    way round in 2-D). ``period``, ``e``, ``a``: the inner pair's.

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own stream.
    s : SystemConfig
        ``dim`` (2 or 3).

    Returns
    -------
    Drawn
        The massive bodies, centre of mass at rest at the origin.
    """
    inner = binary(rng, s, e_max=0.95)
    m_in = float(inner.m.sum())
    m3 = m_in * loguniform(rng, 1e-3, 1.0)
    e_out = float(rng.uniform(0.0, 0.5))
    a_out = inner.a * rng.uniform(4.0, 20.0) * (1 + e_out) / (1 - e_out)
    dx, dv = relative_orbit(m_in + m3, a_out, e_out, start_anomaly(rng, e_out, s), orientation(rng, s.dim))
    x_in, v_in = np.zeros((2, 3)), np.zeros((2, 3))
    x_in[:, :s.dim], v_in[:, :s.dim] = inner.x, inner.v  # the pair, its centre of mass at rest at the origin
    return _finish([*inner.m, m3], [*x_in, dx], [*v_in, dv], s.dim, inner.period, inner.e, inner.a,
                   a_out * (1 + e_out))


def planets(rng: np.random.Generator, s) -> Drawn:
    """A star of mass 1 with 2 or 3 planets: mass ratios loguniform [1e-6, 1e-3], a_1 = 1 and each next
    a a factor U[1.5, 3] out, e U[0, 0.3], inclinations U[0, 5 deg] to the system's plane (0 in 2-D),
    random nodes, pericentres and times; the whole system randomly oriented. Heliocentric orbits (each
    planet's two-body orbit about the star). ``period``, ``e``, ``a``: the innermost planet's.

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own stream.
    s : SystemConfig
        ``dim`` (2 or 3).

    Returns
    -------
    Drawn
        The massive bodies, centre of mass at rest at the origin.
    """
    k = int(rng.integers(2, 4))
    frame = orientation(rng, s.dim)
    m, x, v = [1.0], [np.zeros(3)], [np.zeros(3)]
    a = 1.0
    for j in range(k):
        if j:
            a *= rng.uniform(1.5, 3.0)
        q, e = loguniform(rng, 1e-6, 1e-3), float(rng.uniform(0.0, 0.3))
        inc = rng.uniform(0.0, math.radians(5.0)) if s.dim == 3 else 0.0
        rot = frame @ _rz(rng.uniform(0, 2 * math.pi)) @ _rx(inc) @ _rz(rng.uniform(0, 2 * math.pi))
        dx, dv = relative_orbit(1.0 + q, a, e, start_anomaly(rng, e, s), rot)
        m.append(q)
        x.append(dx)
        v.append(dv)
        if j == 0:
            first = (kepler_period(a, 1.0 + q), e, a)
    return _finish(m, x, v, s.dim, *first, a * 1.3)


def few_body(rng: np.random.Generator, s) -> Drawn:
    """The Gaussian random system of ``system.ic: random`` (``pos_scale``, ``vel_scale``, ``mass``: the first
    n values of a list) with n uniform in 3 .. num_particles bodies. ``period``: its crossing time;
    ``e``, ``a``: nan.

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own stream.
    s : SystemConfig
        ``dim`` (2 or 3), ``num_particles``, ``mass``, ``pos_scale``, ``vel_scale``.

    Returns
    -------
    Drawn
        The massive bodies, centre of mass at rest at the origin.
    """
    n = int(rng.integers(3, s.num_particles + 1))
    m, x, v = random_ic(n, s.dim, _as_masses(s.mass, s.num_particles)[:n], s.pos_scale, s.vel_scale, rng)
    return _unbound(m, x, v, s.dim)


def _unbound(m, x, v, dim: int) -> Drawn:
    """A few-body draw: centre of mass at rest at the origin, ``period`` its crossing time, ``e`` and ``a`` nan,
    ``size`` the largest distance of a body from the centre."""
    d = _finish(m, x, v, dim, crossing_time(m, x), math.nan, math.nan, 0.0)
    d.size = float(np.linalg.norm(d.x, axis=1).max())
    return d


def soft_few_body(rng: np.random.Generator, s) -> Drawn:
    """:func:`few_body` with its own Plummer softening: eps / (mean distance between its bodies) loguniform
    in ``SOFT_EPS_RANGE`` (the practitioner suite's Plummer spheres of 16 and 64 bodies have eps 0.05 at
    mean distances of ~1: 0.05 at their scale, ~0.15-0.6 of a nearest neighbour's distance). Teaches the
    scale-free rule the softening feature eps / (r + eps), which a run of unsoftened families never moves.

    Returns
    -------
    Drawn
        As :func:`few_body`, with ``eps``.
    """
    d = few_body(rng, s)
    n = len(d.m)
    pairs = np.linalg.norm(d.x[:, None] - d.x[None], axis=-1)[np.triu_indices(n, 1)]
    d.eps = float(pairs.mean() * loguniform(rng, *SOFT_EPS_RANGE))
    return d


def cold_few_body(rng: np.random.Generator, s) -> Drawn:
    """A random few-body system of unequal masses started cold: its bodies fall together into close,
    near-radial encounters, deeper than a :func:`few_body` system's, where the pair that sets the step forms
    and breaks in one passage (the Pythagorean problem, masses 3, 4, 5 released at rest, is one such system).
    n uniform in 3 .. num_particles; each mass loguniform in ``COLD_MASS_RANGE``; positions Gaussian
    (``pos_scale``); velocities :func:`few_body`'s (``vel_scale``) times q uniform in [0, 1] (q = 0: at rest).
    ``period``: its crossing time.

    Parameters
    ----------
    rng : numpy.random.Generator
        The system's own stream.
    s : SystemConfig
        ``dim`` (2 or 3), ``num_particles``, ``pos_scale``, ``vel_scale``.

    Returns
    -------
    Drawn
        The massive bodies, centre of mass at rest at the origin.
    """
    n = int(rng.integers(3, s.num_particles + 1))
    m = np.array([loguniform(rng, *COLD_MASS_RANGE) for _ in range(n)])
    _, x, v = random_ic(n, s.dim, m, s.pos_scale, s.vel_scale, rng)
    return _unbound(m, x, v * rng.uniform(0.0, 1.0), s.dim)


FAMILY_FUNCTIONS = {"binary": binary, "triple": triple, "planets": planets, "few_body": few_body,
                    "soft_few_body": soft_few_body, "cold_few_body": cold_few_body}


# ---------------------------------------------------------------- the mixture
def draw(rng: np.random.Generator, s) -> tuple[int, Drawn]:
    """The family drawn with the weights ``s.mixture``, then its initial conditions, from ``rng``.

    Returns
    -------
    code : int
        Index of the family in ``FAMILIES``.
    drawn : Drawn
        Its massive bodies, unpadded.
    """
    names = [f for f in FAMILIES if s.mixture.get(f, 0) > 0]
    w = np.array([s.mixture[f] for f in names], dtype=np.float64)
    name = names[int(rng.choice(len(names), p=w / w.sum()))]
    return FAMILIES.index(name), FAMILY_FUNCTIONS[name](rng, s)


def softening(d: Drawn, s) -> float:
    """The Plummer softening a drawn system runs with: its family's own, else the run's ``s.softening``."""
    return s.softening if d.eps is None else d.eps


def pad(d: Drawn, n: int):
    """The system with n - len(d.m) massless bodies at rest, the k-th (from 0) at (k + 1) PAD_DISTANCE
    sizes from the centre of mass along x: distinct, and far from every orbit (size: ``d.size`` or the
    farthest body now, whichever is larger).

    Returns
    -------
    m : numpy.ndarray
        (n,), the massive bodies first.
    x, v : numpy.ndarray
        (n, dim).
    """
    extra = n - len(d.m)
    if extra < 0:
        raise ValueError(f"a drawn system has {len(d.m)} bodies, more than the {n} of the batch")
    dim = d.x.shape[1]
    reach = max(d.size, float(np.linalg.norm(d.x, axis=1).max()))
    far = np.zeros((extra, dim))
    far[:, 0] = PAD_DISTANCE * reach * (1.0 + np.arange(extra))
    return (np.concatenate([d.m, np.zeros(extra)]), np.concatenate([d.x, far]),
            np.concatenate([d.v, np.zeros((extra, dim))]))


def first_system(s, seed: int) -> tuple[str, Drawn]:
    """(family name, unpadded system) of the first system collector 0 draws (RNG ``run.seed``): the
    mixture's stand-in where one system must represent the run (auto normalisation, the training movie)."""
    code, d = draw(np.random.default_rng(seed), s)
    return FAMILIES[code], d

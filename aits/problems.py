"""Public test problems of the ``practitioner`` suite: the systems astrophysicists run.

Each builder returns numpy ``(m (N,), x (N,D), v (N,D))`` in units with G = 1, centred on the
centre of mass, and carries its source next to its numbers. Where a problem has no published set
of initial conditions (the Kozai-Lidov triple, the clusters), the docstring says what was chosen
and which published result the choice is checked against.
"""
from __future__ import annotations

import math

import numpy as np

from .physics import kepler_pair, to_com

# Gaussian gravitational constant squared in AU^3 / (solar mass day^2): the outer solar system's G.
G_AU_DAY = 2.95912208286e-4


def figure_eight():
    """The figure-eight choreography of three equal masses (Chenciner & Montgomery 2000,
    Ann. Math. 152, 881; initial conditions of Simo as quoted there and in Moore 1993's search):
    x1 = -x2 = (0.97000436, -0.24308753), x3 = 0, v3 = (-0.93240737, -0.86473146),
    v1 = v2 = -v3 / 2, m = 1, period T = 6.32591398. Returns (m, x, v, T)."""
    x1 = np.array([0.97000436, -0.24308753])
    v3 = np.array([-0.93240737, -0.86473146])
    m = np.ones(3)
    x = np.stack([x1, -x1, np.zeros(2)])
    v = np.stack([-v3 / 2, -v3 / 2, v3])
    return (*to_com(m, x, v), 6.32591398)


def pythagorean():
    """Burrau's Pythagorean three-body problem (Burrau 1913; Szebehely & Peters 1967, AJ 72, 876):
    masses 3, 4, 5 at rest at the vertices of a 3-4-5 right triangle, (1, 3), (-2, -1), (1, -1);
    close encounters until a binary ejects the third body near t = 60. Returns (m, x, v)."""
    m = np.array([3.0, 4.0, 5.0])
    x = np.array([[1.0, 3.0], [-2.0, -1.0], [1.0, -1.0]])
    return to_com(m, x, np.zeros((3, 2)))


def outer_solar_system():
    """Sun (with the inner planets' mass) and Jupiter, Saturn, Uranus, Neptune, Pluto on
    5 September 1994, heliocentric, AU and days (Hairer, Lubich & Wanner, Geometric Numerical
    Integration, 2nd ed. 2006, Sect. I.2.4, Table 2.2). G = 2.95912208286e-4 is folded into the
    masses (m' = G m gives the same orbits with G = 1; time stays in days). Returns (m, x, v)."""
    masses = np.array([1.00000597682, 0.000954786104043, 0.000285583733151, 0.0000437273164546,
                       0.0000517759138449, 1.0 / 1.3e8])
    x = np.array([[0.0, 0.0, 0.0],
                  [-3.5023653, -3.8169847, -1.5507963],
                  [9.0755314, -3.0458353, -1.6483708],
                  [8.3101420, -16.2901086, -7.2521278],
                  [11.4707666, -25.7294829, -10.8169456],
                  [-15.5387357, -25.2225594, -3.1902382]])
    v = np.array([[0.0, 0.0, 0.0],
                  [0.00565429, -0.00412490, -0.00190589],
                  [0.00168318, 0.00483525, 0.00192462],
                  [0.00354178, 0.00137102, 0.00055029],
                  [0.00288930, 0.00114527, 0.00039677],
                  [0.00276725, -0.00170702, -0.00136504]])
    return to_com(G_AU_DAY * masses, x, v)


def rotate_x(vec: np.ndarray, angle: float) -> np.ndarray:
    """Rotate 3-vectors (..., 3) about the x axis by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return vec @ rot.T


def kozai_lidov(inclination_deg: float = 75.0):
    """A Kozai-Lidov triple: a planet (1e-3) on a = 1, e = 0.05 about a star (1), and a companion star
    (1) on a circular orbit a = 8 about them, inclined by ``inclination_deg`` to the planet's orbit.

    The elements are chosen here (no published set). The test-particle quadrupole theory (Kozai 1962,
    AJ 67, 591; Lidov 1962, Planet. Space Sci. 9, 719) predicts that the planet's eccentricity
    oscillates up to e_max = sqrt(1 - 5/3 cos^2 i) = 0.94 at i = 75 deg, on the timescale
    P_out^2 / P_in ~ 1600 (time units; REBOUND's IAS15 puts the first maximum, 0.95, near 200 inner periods).
    The near-radial phase is what tests a step rule. Each pair starts in its own centre-of-mass frame
    (:func:`aits.physics.kepler_pair`). Returns (m, x, v, P_in)."""
    mi, xi, vi, p_in = kepler_pair(0.05, 1.0, [1.0, 1e-3], 3)  # the planet's pair at rest: the triple is bound
    _, xo, vo, _ = kepler_pair(0.0, 8.0, [float(mi.sum()), 1.0], 3)
    # the inner binary's plane is tilted: the outer orbit stays in the x-y plane
    tilt = math.radians(inclination_deg)
    xi, vi = rotate_x(xi, tilt), rotate_x(vi, tilt)
    m = np.array([mi[0], mi[1], 1.0])
    x = np.concatenate([xi + xo[0], xo[1:]])
    v = np.concatenate([vi + vo[0], vo[1:]])
    return (*to_com(m, x, v), p_in)


def plummer(n: int, seed: int, dim: int = 3):
    """A Plummer sphere (Plummer 1911, MNRAS 71, 460) of ``n`` equal masses in Henon units
    (G = M = 1, E = -1/4, virial radius 1), sampled as Aarseth, Henon & Wielen 1974 (A&A 37, 183):
    radii from the inverse cumulative mass, speeds by rejection from q^2 (1 - q^2)^(7/2), isotropic
    directions; seeded. Crossing time 2 sqrt(2). Returns (m, x, v)."""
    if dim != 3:
        raise ValueError("plummer spheres are 3-D")
    rng = np.random.default_rng([seed, 1911])
    m = np.full(n, 1.0 / n)
    # radii: M(r) = r^3 / (1 + r^2)^(3/2), cut at the 99.9th percentile of mass as usual
    xm = rng.uniform(0.0, 0.999, n)
    r = 1.0 / np.sqrt(xm ** (-2.0 / 3.0) - 1.0)
    q = np.empty(n)
    for i in range(n):
        while True:
            qi, gi = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.1)
            if gi < qi * qi * (1.0 - qi * qi) ** 3.5:
                q[i] = qi
                break
    speed = q * math.sqrt(2.0) * (1.0 + r * r) ** -0.25
    x = r[:, None] * _isotropic(rng, n)
    v = speed[:, None] * _isotropic(rng, n)
    # structural units -> Henon units (virial radius 1)
    scale = 3.0 * math.pi / 16.0
    return to_com(m, x * scale, v / math.sqrt(scale))


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
    """n unit vectors uniform on the sphere."""
    z = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    s = np.sqrt(1.0 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


# Earth about the Sun: e = 0.0167 (J2000 mean elements, Simon et al. 1994, A&A 282, 663) and
# M_sun / M_earth = 332946.05 (IAU 2009 system, Luzum et al. 2011, Celest. Mech. 110, 293).
EARTH = {"e": 0.0167, "q": 1.0 / 332946.05}
# HD 80606 b: e = 0.927, m sin i = 3.90 M_J about a 1.1 M_sun star (Naef et al. 2001, A&A 375, L27);
# M_J / M_sun = 9.5479e-4.
HD80606B = {"e": 0.927, "q": 3.90 * 9.5479e-4 / 1.1}

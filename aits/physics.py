"""Batched, differentiable N-body physics in units G = 1.

Shapes throughout: positions/velocities ``(B, N, D)``, masses ``(B, N)``,
time steps ``(B,)``. A single system is ``B = 1``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def soft2(eps, like: torch.Tensor):
    """eps^2 to add to squared distances ``like`` (B, ...): a float as it is, a per-system tensor (B,) shaped
    (B, 1, ...) to broadcast over ``like``'s trailing axes."""
    if isinstance(eps, torch.Tensor):
        return (eps * eps).reshape(-1, *([1] * (like.dim() - 1)))
    return eps * eps


def _pair_terms(x: torch.Tensor, eps):
    """diff[b,i,j] = x_j - x_i (B,N,N,D), r2 = |diff|^2 + eps^2 (B,N,N), valid mask. ``eps``: one float, or
    each system's own (B,) tensor (the same below)."""
    diff = x.unsqueeze(-3) - x.unsqueeze(-2)
    # soft2 inlined: this is on every accepted sample's path (tests/test_sample_path.py)
    e2 = (eps * eps).reshape(-1, 1, 1) if isinstance(eps, torch.Tensor) else eps * eps
    r2 = (diff * diff).sum(-1) + e2
    n = x.shape[-2]
    off_diag = ~torch.eye(n, dtype=torch.bool, device=x.device)
    # Zero separation (only in zero-padded history) contributes nothing, never NaN.
    valid = off_diag & (r2 > 0)
    return diff, r2, valid


def acceleration(x: torch.Tensor, m: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """a_i = sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^{3/2}; x (B,N,D), m (B,N) -> (B,N,D)."""
    diff, r2, valid = _pair_terms(x, eps)
    safe = torch.where(valid, r2, torch.ones_like(r2))
    w = torch.where(valid, safe.rsqrt() / safe, torch.zeros_like(r2)) * m.unsqueeze(-2)
    return (w.unsqueeze(-1) * diff).sum(-2)


def energy(x: torch.Tensor, v: torch.Tensor, m: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Total energy (B,): kinetic 1/2 sum_i m_i |v_i|^2 plus the softened pair potential
    -sum_{i<j} m_i m_j / (|x_j - x_i|^2 + eps^2)^{1/2}; x, v (B,N,D), m (B,N)."""
    _, r2, valid = _pair_terms(x, eps)
    safe = torch.where(valid, r2, torch.ones_like(r2))
    mm = m.unsqueeze(-1) * m.unsqueeze(-2)
    kinetic = 0.5 * (m * (v * v).sum(-1)).sum(-1)
    # Ordered pairs count every pair twice.
    return kinetic + -0.5 * torch.where(valid, mm * safe.rsqrt(), torch.zeros_like(r2)).sum((-1, -2))


def momentum(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Total linear momentum (B, D)."""
    return (m.unsqueeze(-1) * v).sum(-2)


def angular_momentum(x: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Total angular momentum: (B,) in 2-D (the z component), (B,3) in 3-D."""
    p = m.unsqueeze(-1) * v
    if x.shape[-1] == 2:
        return (x[..., 0] * p[..., 1] - x[..., 1] * p[..., 0]).sum(-1)
    if x.shape[-1] == 3:
        return torch.linalg.cross(x, p, dim=-1).sum(-2)
    raise ValueError(f"angular momentum needs dim 2 or 3, got {x.shape[-1]}")


def leapfrog(x, v, m, dt, eps: float = 0.0, n_steps: int = 1, acc0=None):
    """Kick-drift-kick leapfrog, ``n_steps`` substeps of ``dt`` (B,) each.

    Differentiable in ``dt``. ``acc0`` (B,N,D) reuses the acceleration at ``x``.
    Returns (x', v', a(x')).
    """
    dt = dt.reshape(-1, 1, 1)
    a = acceleration(x, m, eps) if acc0 is None else acc0
    for _ in range(n_steps):
        v = v + a * (0.5 * dt)
        x = x + v * dt
        a = acceleration(x, m, eps)
        v = v + a * (0.5 * dt)
    return x, v, a


def rel_energy_error(e0, e1):
    """|(E1 - E0) / (E0 + 1e-12 |E0| + 1e-12)| elementwise: the one definition of the relative energy
    error, for torch tensors (training, graph kept) and numpy arrays or floats (evaluation) alike.

    Parameters
    ----------
    e0, e1 : torch.Tensor, numpy.ndarray or float
        Energies before and after (broadcast against each other).

    Returns
    -------
    The same kind as the inputs, dimensionless.
    """
    # The seed's formula. The absolute 1e-12 keeps E0 = 0 (a system exactly at the bound/unbound edge)
    # from dividing by zero; the 1e-12|E0| term moves the result by one part in 1e12, far below any
    # threshold, and is kept so numbers match the seed. Both are negligible only while |E0| >> 1e-12
    # (Kepler: |E0| = m1 m2 / 2a, about 0.5 for the training orbits).
    # Python's abs: Tensor.abs or numpy.absolute, whichever the inputs are (same operations as before).
    return abs((e1 - e0) / (e0 + 1e-12 * abs(e0) + 1e-12))


# ---------------------------------------------------------------- initial conditions
def _as_masses(mass, n: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(mass, dtype=np.float64))
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ValueError(f"mass has {arr.size} values, expected 1 or {n}")
    return arr


def kepler_ic(e: float, a: float, mass=1.0, dim: int = 2):
    """Two bodies at pericentre. Returns (m (2,), x (2,D), v (2,D), period) as numpy."""
    if dim < 2:
        raise ValueError("kepler needs dim >= 2")
    m = _as_masses(mass, 2)
    big_m = float(m.sum())
    r_p = a * (1.0 - e)
    v_p = math.sqrt(big_m * (1.0 + e) / (a * (1.0 - e)))
    x = np.zeros((2, dim))
    v = np.zeros((2, dim))
    x[0, 0], x[1, 0] = -r_p / 2, r_p / 2
    v[0, 1], v[1, 1] = v_p / 2, -v_p / 2
    return m, x, v, kepler_period(a, big_m)


def kepler_pair(e: float, a: float, mass=1.0, dim: int = 2):
    """:func:`kepler_ic` moved to the pair's centre-of-mass frame (at rest at the origin): the same relative
    orbit, with each body's share of the separation and of the relative velocity its partner's mass fraction.

    The evaluation problems are built from it. :func:`kepler_ic` keeps the specification's placement of
    the ``kepler`` training systems (each body at half the separation and half the relative speed), which
    is the centre-of-mass frame only for an equal pair; an unequal pair there drifts at
    (m1 - m2) / (2 M) of the relative speed, and its kinetic energy then enters E. For an equal pair the two
    are the same floats. Returns (m (2,), x (2,D), v (2,D), period)."""
    m, x, v, period = kepler_ic(e, a, mass, dim)
    return (*to_com(m, x, v), period)


def to_com(m: np.ndarray, x: np.ndarray, v: np.ndarray):
    """(m, x, v) with positions and velocities relative to the centre of mass (the same masses)."""
    w = m[:, None] / m.sum()
    return m, x - (w * x).sum(0), v - (w * v).sum(0)


def kepler_period(a: float, total_mass: float) -> float:
    return 2.0 * math.pi * math.sqrt(a ** 3 / total_mass)


def crossing_time(m: np.ndarray, x: np.ndarray) -> float:
    """sqrt(L^3 / M), L the mean pair distance and M the total mass (G = 1): the dynamical time
    of a system; random and file systems restart after ``system.restart_after`` of them."""
    m, x = np.asarray(m, dtype=np.float64), np.asarray(x, dtype=np.float64)
    n = len(m)
    d = np.sqrt(((x[None] - x[:, None]) ** 2).sum(-1))
    return math.sqrt((d.sum() / (n * (n - 1))) ** 3 / m.sum())


def random_ic(n: int, dim: int, mass, pos_scale: float, vel_scale: float, rng: np.random.Generator):
    """Gaussian positions/velocities with their plain means removed. Returns (m, x, v)."""
    x = rng.normal(0.0, pos_scale, size=(n, dim))
    v = rng.normal(0.0, vel_scale, size=(n, dim))
    return _as_masses(mass, n), x - x.mean(0), v - v.mean(0)


def load_ic_file(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``[m, x..., v...]`` from ``.npy`` or whitespace/comma text. Returns (m, x, v)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IC file {path}: not found")
    try:
        if path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().replace(",", " ")
            rows = np.loadtxt(text.splitlines(), ndmin=2)
        rows = np.asarray(rows, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ValueError(f"IC file {path}: cannot parse ({type(exc).__name__}: {exc})") from None
    if rows.ndim != 2 or rows.shape[1] < 3 or (rows.shape[1] - 1) % 2:
        raise ValueError(f"IC file {path}: expected rows [m, x..., v...] with 1+2D columns, got shape {rows.shape}")
    if rows.shape[0] < 2:
        raise ValueError(f"IC file {path}: needs at least 2 bodies, got {rows.shape[0]}")
    if not np.isfinite(rows).all() or (rows[:, 0] <= 0).any():
        raise ValueError(f"IC file {path}: masses must be positive and all values finite")
    d = (rows.shape[1] - 1) // 2
    return rows[:, 0].copy(), rows[:, 1:1 + d].copy(), rows[:, 1 + d:].copy()

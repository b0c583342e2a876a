"""The step rules' shared pieces, each written once, with its torch twin beside its numpy one.

Training steps batches of states in torch (:class:`aits.stepper.Stepper`, gradients through the
step); evaluation and :func:`aits.load_rule` step one state in numpy (:mod:`aits.integrators`, a few
microseconds per call). The two needs differ, so a piece both use has two forms; they sit side by
side here and ``tests/test_steprules.py`` holds each pair equal on random states.

- the classical timescale tau = min_i sqrt(r_i,nn / |a_i|): :func:`timescale` (numpy, one state),
  :func:`classical_timescale` (torch, a batch); and IAS15's 2024 timescale :func:`prs_timescale`
  (numpy: the scoreboard's ``prs`` rules; :func:`prs_timescale_at_torch` at one body, for the
  ``blend`` features) and their geometric mean :func:`blend_timescale` (``soft_blend``: leaning to tau where
  softening smooths the pair);
- the step recursion dt_n = h(z_n)^2 / dt_{n-1}: :func:`recursive_dt` (floats),
  :func:`recursive_dt_torch` (a batch);
- the time-symmetric fixed point dt = (h(start) + h(end)) / 2: :func:`symmetric_dt`, one function
  for floats and tensors (the caller supplies the trial step).
"""
from __future__ import annotations

import math
from fractions import Fraction
from operator import mul, sub
from typing import Callable

import numpy as np
import torch

from .physics import soft2

try:  # numpy's C einsum: np.einsum without its Python dispatch, a fifth of a call on a few bodies
    from numpy._core.multiarray import c_einsum as einsum
except ImportError:  # pragma: no cover - numpy < 2
    einsum = np.einsum


def set_diagonal(a: np.ndarray, value: float) -> None:
    """a[i, i] = value of a square array: np.fill_diagonal's result, without its checks for the
    C-contiguous arrays of the step kernels (a view of them, written in place)."""
    if a.flags.c_contiguous:
        a.reshape(-1)[::a.shape[0] + 1] = value
    else:
        np.fill_diagonal(a, value)


# ---------------------------------------------------------------- the classical timescale
def nn_timescales(x: np.ndarray, a: np.ndarray, r2: np.ndarray | None = None) -> np.ndarray:
    """tau_i = sqrt(r_i,nn / |a_i|) of every body (N,), x and a (N,D)."""
    if len(x) <= SMALL_N:
        return np.array(nn_pairs_small(x.tolist(), a.tolist())[1])
    return nn_distances_timescales(x, a, r2)[1]


def pair_r2(x: np.ndarray, r2: np.ndarray | None = None) -> np.ndarray:
    """|x_j - x_i|^2 (N,N) of one state, a fresh array the caller may write: a copy of ``r2`` where given (the
    separations the force evaluation computed, ``aits.integrators.accel_pairs``: the same numbers), else
    computed."""
    if r2 is not None:
        return r2.copy()
    d = x[None, :, :] - x[:, None, :]
    return einsum("ijk,ijk->ij", d, d)


def nn_distances_timescales(x: np.ndarray, a: np.ndarray, r2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(r_i,nn, tau_i) of every body (N,) each, vectorised: the nearest-neighbour distances and the timescales
    :func:`nn_timescales` returns. ``r2``: the state's squared separations if known (:func:`pair_r2`)."""
    r2 = pair_r2(x, r2)
    set_diagonal(r2, np.inf)
    return nn_of_pairs(r2, a)


def nn_of_pairs(r2: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r_i,nn, tau_i) from squared separations ``r2`` whose diagonal is already inf (the caller's array, not
    written): :func:`nn_distances_timescales` and the scale-free features share it."""
    r_nn = np.sqrt(r2.min(1))
    a_mag = np.sqrt(einsum("ij,ij->i", a, a))
    return r_nn, np.sqrt(r_nn / np.maximum(a_mag, 1e-300))


def timescale(x: np.ndarray, a: np.ndarray, r2: np.ndarray | None = None) -> float:
    """tau = min_i sqrt(r_i,nn / |a_i|) of one state, x and a (N,D): the classical step timescale
    (time units). Torch twin: :func:`classical_timescale`. ``r2``: the squared separations if known."""
    if len(x) <= SMALL_N:
        return min(nn_pairs_small(x.tolist(), a.tolist())[1])
    return float(nn_timescales(x, a, r2).min())


# ---------------------------------------------------------------- few bodies, in Python floats
# A numpy call costs about a microsecond whatever its size, so on a few bodies a loop over the pairs in
# Python floats is 2-4x faster than the vectorised form (a binary: tau in 4.4 us against 8.4, the PRS
# timescale of one body in 7 us against 26); from about 6 bodies on numpy wins. Every numpy function
# here takes the loop at N <= SMALL_N, for the classical rules and the learned features alike
# (aits.features.scale_free_numpy), so the scoreboard's equal-wall-time columns compare like with like.
# tests/test_steprules.py holds the two forms equal.
SMALL_N = 5


def nn_pairs_small(X: list, A: list) -> tuple[list, list, list]:
    """(r2, tau_i, jnn) of one state as lists, X and A the positions and accelerations as lists of
    N lists: r2[p][q] = |x_q - x_p|^2 (inf on the diagonal), tau_i = sqrt(r_i,nn / |a_i|) and jnn[i]
    the nearest neighbour of body i (the lowest index among equals, as numpy's argmin)."""
    n = len(X)
    r2 = [[math.inf] * n for _ in range(n)]
    for p in range(n):
        xp, row = X[p], r2[p]
        for q in range(p + 1, n):
            s = 0.0
            for b, c in zip(X[q], xp):
                s += (b - c) * (b - c)
            row[q] = r2[q][p] = s
    jnn = [min(range(n), key=row.__getitem__) for row in r2]
    tau = [math.sqrt(math.sqrt(r2[k][jnn[k]]) / max(math.sqrt(sum(c * c for c in A[k])), 1e-300)) for k in range(n)]
    return r2, tau, jnn


def prs_at_small(X: list, V: list, A: list, M: list, i: int, eps: float = 0.0) -> float:
    """:func:`prs_timescale_at` on lists (X, V, A: N lists of D floats; M: N floats): body i's pair sums
    of jerk and snap (:func:`jerk_snap`) accumulated in Python floats (``map`` over the components: the
    sums in the order of a plain loop, to the bit, with less interpreter work per component)."""
    xi, vi, ai = X[i], V[i], A[i]
    dim = len(xi)
    jerk, snap = [0.0] * dim, [0.0] * dim
    e2 = eps * eps
    for j, mj in enumerate(M):
        if j == i or mj == 0.0:
            continue
        d = list(map(sub, X[j], xi))
        u = list(map(sub, V[j], vi))
        b = list(map(sub, A[j], ai))
        r2 = sum(map(mul, d, d)) + e2
        c = mj / (r2 * math.sqrt(r2))
        alpha = sum(map(mul, d, u)) / r2
        beta = (sum(map(mul, u, u)) + sum(map(mul, d, b))) / r2 + alpha * alpha
        cj, cs, cd = -3.0 * alpha * c, -6.0 * alpha * c, (18.0 * alpha * alpha - 3.0 * beta) * c
        jerk = [jk + (c * uk + cj * dk) for jk, uk, dk in zip(jerk, u, d)]
        snap = [sk + (c * bk + cs * uk + cd * dk) for sk, bk, uk, dk in zip(snap, b, u, d)]
    a2s = [sum(map(mul, ak, ak)) for ak in A]
    a2 = a2s[i]
    den = sum(map(mul, jerk, jerk)) + math.sqrt(a2 * sum(map(mul, snap, snap)))
    if not (a2 > (PRS_A_FLOOR ** 2) * max(a2s) and den > 0):
        return math.inf
    return math.sqrt(2.0 * a2 / den)


def classical_timescale(x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """tau = min_i sqrt(r_i,nn / |a_i|) per system, x and acc (B,N,D) -> (B,) (time units).
    Numpy twin: :func:`timescale`."""
    n = x.shape[-2]
    d = x.unsqueeze(-3) - x.unsqueeze(-2)
    r2 = (d * d).sum(-1) + torch.where(torch.eye(n, dtype=torch.bool, device=x.device), math.inf, 0.0)
    return torch.sqrt(r2.min(-1).values.sqrt() / acc.norm(dim=-1).clamp_min(1e-300)).min(-1).values


def nn_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                 r2: np.ndarray | None = None) -> float:
    """:func:`timescale` with the signature every timescale shares (v, m, eps unused; ``r2`` the state's squared
    pair separations where known, :func:`pair_r2`)."""
    return timescale(x, a, r2)


def jerk_snap(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0):
    """(jerk, snap) (N,D) of every body: the first and second time derivatives of a(x) along the motion,
    from the pair sums (a = accelerations at x, already computed: no extra force evaluation).

    With r = x_j - x_i, u = v_j - v_i, A = a_j - a_i, R2 = |r|^2 + eps^2, alpha = r.u / R2 and
    beta = (|u|^2 + r.A) / R2 + alpha^2, the pair terms are a_ij = m_j r / R2^1.5,
    j_ij = m_j u / R2^1.5 - 3 alpha a_ij and s_ij = m_j A / R2^1.5 - 6 alpha j_ij - 3 beta a_ij
    (the Hermite-scheme derivatives; exact with Plummer softening)."""
    d = x[None, :, :] - x[:, None, :]
    u = v[None, :, :] - v[:, None, :]
    big_a = a[None, :, :] - a[:, None, :]
    r2 = einsum("ijk,ijk->ij", d, d) + eps * eps
    set_diagonal(r2, 1.0)
    w = m[None, :] / (r2 * np.sqrt(r2))
    set_diagonal(w, 0.0)
    alpha = einsum("ijk,ijk->ij", d, u) / r2
    beta = (einsum("ijk,ijk->ij", u, u) + einsum("ijk,ijk->ij", d, big_a)) / r2 + alpha * alpha
    a_ij = w[..., None] * d
    j_ij = w[..., None] * u - 3.0 * alpha[..., None] * a_ij
    s_ij = w[..., None] * big_a - 6.0 * alpha[..., None] * j_ij - 3.0 * beta[..., None] * a_ij
    return j_ij.sum(1), s_ij.sum(1)


# Bodies whose |a| is below this fraction of the largest carry no PRS timescale: an acceleration that
# vanishes by symmetry (the middle body of the figure-eight at t = 0) would set tau = 0.
PRS_A_FLOOR = 1e-8


def prs_timescales(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Per-body IAS15 2024 timescales tau_i (N,), inf for bodies that carry none (below ``PRS_A_FLOOR``).
    Torch twin at one body: :func:`prs_timescale_at_torch`."""
    if len(x) <= SMALL_N:
        lists = (x.tolist(), v.tolist(), a.tolist(), m.tolist())
        return np.array([prs_at_small(*lists, i, eps) for i in range(len(x))])
    j, s = jerk_snap(x, v, a, m, eps)
    a2 = einsum("ij,ij->i", a, a)
    den = einsum("ij,ij->i", j, j) + np.sqrt(a2 * einsum("ij,ij->i", s, s))
    ok = (a2 > (PRS_A_FLOOR ** 2) * a2.max()) & (den > 0)
    out = np.full(len(a2), math.inf)
    out[ok] = np.sqrt(2.0 * a2[ok] / den[ok])
    return out


def prs_timescale_at(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, i: int, eps: float = 0.0) -> float:
    """``prs_timescales(...)[i]`` from body i's pair terms alone (O(N), a few microseconds): the ``blend``
    features' PRS timescale at inference. Torch twin: :func:`prs_timescale_at_torch`.

    The pair sums of :func:`jerk_snap` regrouped by vector: with c = w_j (per other body j),
    jerk = sum c u - 3 alpha c r and snap = sum c A - 6 alpha c u + (18 alpha^2 - 3 beta) c r."""
    if len(x) <= SMALL_N:
        return prs_at_small(x.tolist(), v.tolist(), a.tolist(), m.tolist(), i, eps)
    d, u, big_a = x - x[i], v - v[i], a - a[i]
    q = np.stack((d, u, big_a))  # (3, N, D)
    g = (q[:, None] * q[None, :2]).sum(-1)  # g[k, l, j] = q_k,j . q_l,j for l in (d, u): (3, 2, N)
    r2 = g[0, 0] + eps * eps
    r2[i] = 1.0
    c = m / (r2 * np.sqrt(r2))
    c[i] = 0.0
    alpha = g[1, 0] / r2
    beta = (g[1, 1] + g[2, 0]) / r2 + alpha * alpha
    ac = alpha * c
    jerk = c @ u - 3.0 * (ac @ d)
    snap = c @ big_a - 6.0 * (ac @ u) + ((18.0 * alpha * alpha - 3.0 * beta) * c) @ d
    a2s = (a * a).sum(1)
    a2 = float(a2s[i])
    den = float(jerk @ jerk) + math.sqrt(a2 * float(snap @ snap))
    if not (a2 > (PRS_A_FLOOR ** 2) * float(a2s.max()) and den > 0):
        return math.inf
    return math.sqrt(2.0 * a2 / den)


def prs_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                  r2: np.ndarray | None = None) -> float:
    """IAS15's 2024 timescale (Pham, Rein & Spiegel 2024, arXiv:2401.02849, eq. 16):
    tau_i^2 = 2 |a_i|^2 / (|j_i|^2 + |a_i| |s_i|), minimum over bodies (time units).

    Even in the velocities (j is odd, s even), so it can drive time-reversible step forms. A circular
    orbit gives exactly P / 2 pi. (``r2`` unused: the signature every timescale shares.)"""
    return float(prs_timescales(x, v, a, m, eps).min())


def prs_timescale_at_torch(x: torch.Tensor, v: torch.Tensor, a: torch.Tensor, m: torch.Tensor, i: torch.Tensor,
                           eps=0.0) -> torch.Tensor:
    """IAS15 2024 timescale of body ``i`` (B,) of each state x, v, a (B,N,D), m (B,N): the torch twin of
    :func:`prs_timescales` at one body, differentiable in x, v and a (B,). Only body i's pair terms are
    summed (O(N) per state, not O(N^2)): this is what the ``blend`` features' rollouts pay per step.

    inf where the body carries none (its |a| below ``PRS_A_FLOOR`` of the largest, or a zero
    denominator). Massless bodies (the padding of a mixture batch) source no force."""
    ar = torch.arange(x.shape[0], device=x.device)
    d = x - x[ar, i].unsqueeze(-2)  # d[b,j] = x_j - x_i
    u = v - v[ar, i].unsqueeze(-2)
    big_a = a - a[ar, i].unsqueeze(-2)
    skip = ~(m > 0)
    skip[ar, i] = True
    r2 = (d * d).sum(-1)
    r2 = torch.where(skip, torch.ones_like(d[..., 0]), r2 + soft2(eps, r2))
    w = torch.where(skip, torch.zeros_like(r2), m / (r2 * r2.sqrt()))
    alpha = (d * u).sum(-1) / r2
    beta = ((u * u).sum(-1) + (d * big_a).sum(-1)) / r2 + alpha * alpha
    a_j = w.unsqueeze(-1) * d
    j_j = w.unsqueeze(-1) * u - 3.0 * alpha.unsqueeze(-1) * a_j
    s_j = w.unsqueeze(-1) * big_a - 6.0 * alpha.unsqueeze(-1) * j_j - 3.0 * beta.unsqueeze(-1) * a_j
    jerk, snap = j_j.sum(-2), s_j.sum(-2)
    a_all = (a * a).sum(-1)
    a2 = a_all[ar, i]
    den = (jerk * jerk).sum(-1) + torch.sqrt(a2 * (snap * snap).sum(-1) + 1e-300)
    a2max = torch.where(m > 0, a_all, torch.zeros_like(a_all)).amax(-1)
    ok = (a2 > (PRS_A_FLOOR ** 2) * a2max) & (den > 0)
    tau2 = 2.0 * a2 / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, torch.sqrt(torch.where(ok, tau2, torch.ones_like(tau2))), torch.full_like(a2, math.inf))


def soft_weight(eps: float, r: float) -> float:
    """eps / (r + eps): how much of the pair at separation ``r`` the Plummer softening ``eps`` smooths away (0 for
    an unsoftened pair, towards 1 inside the softening), the ``soft_blend`` timescale's weight on tau_nn (the
    scale-free feature ``eps/(r+eps)``)."""
    return eps / (r + eps) if eps > 0 else 0.0


# The weight on tau_prs of each blended timescale on an unsoftened pair: ``soft_blend`` the geometric mean,
# ``prs_lean`` tau^(1/4) tau_prs^(3/4). The clipped classical recursion at the blend's force evaluations at h = 0.01
# (examples/timescale_weights.py; docs/RESULTS.md, "Leaning to the PRS timescale"), over the best rule run: on thirty
# random four-body systems (seeds 10-39) median 1.33 for the mean, 1.15 for 3/4 (largest 5.0 and 2.4); on eight
# practitioner systems 1.12 and 1.07 (the near-radial orbits 1.10-1.13 -> 1.29-1.32, Kozai-Lidov 1.44 -> 1.00).
PRS_WEIGHT = {"blend": 0.5, "soft_blend": 0.5, "prs_lean": 0.75, "prs_point_lean": 0.75}
# ``prs_point_lean`` leans as ``prs_lean`` on a point-mass pair and hands the weight above 1/2 back to the blend as
# the pair's softening appears: w(f) = 1/2 + (3/4 - 1/2) exp(-f / F), F = 0.01, so the lean holds while eps is below
# about 1 % of the pair's separation and is gone (below 1e-4 of it) from f = 0.1 on. Reason: on the Plummer sphere
# N = 16 (eps = 0.05, f of the pair that sets tau 0.11-0.64) prs_lean's classical rule is 1.4x the soft blend's, while
# on unsoftened few-body systems it is the better one (docs/RESULTS.md, "The lean on point-mass pairs only").
PRS_HANDBACK = {"prs_point_lean": 0.01}


def lean_of(timescale: str) -> tuple[float, float | None]:
    """(w, handback) of a blended timescale, the arguments :func:`soft_blend` takes after f."""
    return PRS_WEIGHT[timescale], PRS_HANDBACK.get(timescale)


def soft_blend_exponent(timescale: str, f: str = "f") -> str:
    """The exponent of ``timescale``'s :func:`soft_blend` as text, from its :data:`PRS_WEIGHT` (and
    :data:`PRS_HANDBACK`): "(1 - f) / 2" for soft_blend, "3 (1 - f) / 4" for prs_lean, "(1 - f) (1/2 + 1/4 exp(-f /
    0.01))" for prs_point_lean (``f`` the softening feature's name), for the rule's descriptions."""
    w, handback = lean_of(timescale)
    w = Fraction(w).limit_denominator(100)
    if handback is not None:
        return f"(1 - {f}) (1/2 + {w - Fraction(1, 2)} exp(-{f} / {handback:g}))"
    return f"{'' if w.numerator == 1 else f'{w.numerator} '}(1 - {f}) / {w.denominator}"


def lean_exponent(f, w: float = 0.5, handback: float | None = None):
    """The power of t_prs / tau in :func:`soft_blend`: w (1 - f); with ``handback`` F, (1 - f) (1/2 + (w - 1/2)
    exp(-f / F)), which is w (1 - f) to the bit at f = 0. Floats or tensors alike."""
    if handback is None:
        return w * (1.0 - f)
    fade = torch.exp(-f / handback) if isinstance(f, torch.Tensor) else math.exp(-f / handback)
    return (1.0 - f) * (0.5 + (w - 0.5) * fade)


def soft_blend(tau, t_prs, f, w: float = 0.5, handback: float | None = None):
    """tau * (t_prs / tau)^(w (1 - f)): tau^(1 - w) t_prs^w at f = 0 (an unsoftened pair; w = 1/2 the geometric mean
    sqrt(tau t_prs)), tau itself at f = 1. Floats or tensors alike (``f`` the pair's :func:`soft_weight`, ``w`` the
    timescale's :data:`PRS_WEIGHT`; ``handback``: :func:`lean_exponent`)."""
    return tau * (t_prs / tau) ** lean_exponent(f, w, handback)


def blend_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                    soft: bool = False, r2: np.ndarray | None = None, w: float = 0.5,
                    handback: float | None = None) -> float:
    """sqrt(tau * tau_prs,i*): the geometric mean of the nearest-neighbour timescale tau = tau_i* and the
    PRS timescale of the same body i* (tau where that is undefined), the classical rule that
    ``features.timescale: blend`` models contain (:func:`aits.features.scale_free_numpy`).

    Body i*, not the PRS minimum over bodies: a body whose acceleration passes through zero (the
    figure-eight's middle body, a body between two others) has a PRS timescale that dips towards 0,
    a jump of h that the recursion's alternating mode turns into an irreversible clipped step.

    ``soft`` (the ``soft_blend`` timescale): :func:`soft_blend` with f the softening over the separation r of
    body i* and its nearest neighbour, eps / (r + eps): the blend on an unsoftened pair, leaning to tau where the
    softening smooths the pair's force (docs/DESIGN.md §2.3b); ``w`` its weight on tau_prs (:data:`PRS_WEIGHT`),
    ``handback`` :data:`PRS_HANDBACK`'s (:func:`lean_exponent`)."""
    if len(x) <= SMALL_N:
        xl, al = x.tolist(), a.tolist()
        r2, tau_i, jnn = nn_pairs_small(xl, al)
        i = min(range(len(tau_i)), key=tau_i.__getitem__)
        r_nn = math.sqrt(r2[i][jnn[i]])
        t_prs = prs_at_small(xl, v.tolist(), al, m.tolist(), i, eps)
    else:
        r_all, tau_i = nn_distances_timescales(x, a, r2)
        i = int(tau_i.argmin())
        r_nn = float(r_all[i])
        t_prs = prs_timescale_at(x, v, a, m, i, eps)
    tau = float(tau_i[i])
    if not math.isfinite(t_prs):
        return tau
    return soft_blend(tau, t_prs, soft_weight(eps, r_nn), w, handback) if soft else math.sqrt(tau * t_prs)


def soft_blend_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                         r2: np.ndarray | None = None) -> float:
    """:func:`blend_timescale` with ``soft``: the classical rule of ``features.timescale: soft_blend`` models."""
    return blend_timescale(x, v, a, m, eps, soft=True, r2=r2)


def prs_lean_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                       r2: np.ndarray | None = None) -> float:
    """:func:`blend_timescale` with ``soft`` and weight 3/4 on tau_prs: tau^(1/4) tau_prs^(3/4) on an unsoftened pair,
    the classical rule of ``features.timescale: prs_lean`` models."""
    return blend_timescale(x, v, a, m, eps, soft=True, r2=r2, w=PRS_WEIGHT["prs_lean"])


def prs_point_lean_timescale(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float = 0.0,
                             r2: np.ndarray | None = None) -> float:
    """:func:`prs_lean_timescale` on an unsoftened pair (to the bit), the soft blend's once softening matters
    (:data:`PRS_HANDBACK`): the classical rule of ``features.timescale: prs_point_lean`` models."""
    w, handback = lean_of("prs_point_lean")
    return blend_timescale(x, v, a, m, eps, soft=True, r2=r2, w=w, handback=handback)


# Classical timescales by name, all called as f(x, v, a, m, eps, r2=None) -> tau (time units); r2: the squared
# pair separations of x where the caller has them (aits.integrators.accel_pairs), the same numbers either way.
TIMESCALES = {"nn": nn_timescale, "prs": prs_timescale, "blend": blend_timescale, "soft_blend": soft_blend_timescale,
              "prs_lean": prs_lean_timescale, "prs_point_lean": prs_point_lean_timescale}
# the timescales of scale-free features with the 9th feature log(tau_prs / tau) (aits.features.scale_free_torch)
# and of them those whose weight on tau_prs leans with the softening feature (aits.steprules.soft_blend)
SOFT_BLENDS = ("soft_blend", "prs_lean", "prs_point_lean")
BLENDS = ("blend", *SOFT_BLENDS)


# ---------------------------------------------------------------- the step recursion
# The clip of the classical ``*_clip`` recursions and of configs/generalist.yaml (model.recursion_clip). Measured
# at equal force evaluations (the classical recursion, sqrt(r/|a|) / PRS timescale): on the Pythagorean problem
# max |dE/E| 345 / 2400 unclipped, 6.8 at c = 3, 0.46 / 0.33 at c = 1.2; on the unsoftened 8-body cluster 1.3e-3 /
# 27 unclipped, 3.2e-4 / 2.3e-4 at c = 1.2; on Kepler e = 0.99 and 0.999, the outer solar system and the
# hierarchical triple the clip at 1.2 does not act (the same errors to 3 digits).
RECURSION_CLIP = 1.2


def recursive_dt(h: float, dt_prev: float, clip: float | None = None) -> float:
    """The next step of the reversible recursion dt_n = h(z_n)^2 / dt_{n-1}; h itself at the start
    (dt_prev <= 0). Torch twin: :func:`recursive_dt_torch`.

    With ``clip`` the step is held within [h / clip, h * clip]: the recursion's neutral alternating mode
    (dt_n / h = c, 1/c, c, ...) cannot grow past it. Where the clip does not act (|log(dt/h)| < log clip,
    the whole of a smooth orbit) the map is exactly reversible; where it acts it is not."""
    dt = h * h / dt_prev if dt_prev > 0 else h
    if clip is not None:
        dt = min(max(dt, h / clip), h * clip)
    return dt


def recursive_dt_torch(h: torch.Tensor, dt_prev: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """:func:`recursive_dt` for a batch, h and dt_prev (B,) -> (B,), differentiable in both."""
    started = dt_prev > 0
    dt = torch.where(started, h * h / torch.where(started, dt_prev, torch.ones_like(dt_prev)), h)
    if clip is not None:
        dt = torch.minimum(torch.maximum(dt, h / clip), h * clip)
    return dt


# ---------------------------------------------------------------- the time-symmetric fixed point
def symmetric_dt(h0, h_after: Callable, k: int, check: Callable | None = None):
    """dt = (h(start) + h(end)) / 2 by ``k`` fixed-point iterations from dt = h0 = h(start).

    Parameters
    ----------
    h0 : float or torch.Tensor (B,)
        The step function at the start state (time units).
    h_after : callable
        ``h_after(dt)``: the step function at the end of a trial step of ``dt`` from the start.
    k : int
        Iterations (each one trial step: one force evaluation).
    check : callable, optional
        ``check(dt)`` before each trial step (the numpy rules raise ``BadStep`` on a bad dt).

    Returns
    -------
    The step, of the kind of ``h0``.
    """
    dt = h0
    for _ in range(k):
        if check is not None:
            check(dt)
        dt = 0.5 * (h0 + h_after(dt))
    return dt

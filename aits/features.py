"""History buffer, per-state features and normalisation scales (docs/DESIGN.md §2).

A state sequence is ``[past_1 .. past_K, current]``, oldest first; missing
past states are zero states (zero x, v, dt; real masses).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from operator import mul, sub

import numpy as np
import torch

from .physics import acceleration
from . import steprules
from .steprules import (BLENDS, nn_pairs_small, prs_at_small, prs_timescale_at, prs_timescale_at_torch,
                        lean_of, set_diagonal, soft_blend)

STATE_DIMS = {"basic": 11, "rich": 23}
DELTA_DIM = 10
SCALE_FREE_DIM = 8
# short names of the scale-free features (the list below :func:`scale_free_torch`'s header), the blend's 9th last
SCALE_FREE_NAMES = ("u2 r/mu", "cos2(r, u)", "a_i r2/m_j", "log tau_others/tau", "mu/M", "m_min/m_max",
                    "eps/(r+eps)", "log r/L", "log tau_prs/tau")
FEATURE_TYPES = ("basic", "rich", "delta_mag", "scale_free")


@dataclass
class NormScales:
    """Length, speed, acceleration and time scales used to make features O(1)."""

    L0: float = 1.0
    V0: float = 1.0
    A0: float = 1.0
    T0: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, m: np.ndarray, x: np.ndarray, v: np.ndarray, eps: float = 0.0) -> "NormScales":
        """``auto`` scales from one system (m (N,), x (N,D), v (N,D))."""
        m_t = torch.as_tensor(m, dtype=torch.float64)[None]
        x_t = torch.as_tensor(x, dtype=torch.float64)[None]
        v_t = torch.as_tensor(v, dtype=torch.float64)[None]
        n = x.shape[0]
        d = torch.cdist(x_t[0], x_t[0])
        l0 = float(d.sum() / (n * (n - 1)))
        v_com = (m_t[..., None] * v_t).sum(1) / m_t.sum()
        v0 = float(((v_t - v_com) ** 2).sum(-1).mean().sqrt())
        a0 = float((acceleration(x_t, m_t, eps) ** 2).sum(-1).mean().sqrt())
        return cls(L0=l0, V0=v0, A0=a0, T0=l0 / v0)


def feature_dim(feature_type: str, history_len: int, timescale: str = "nn") -> int:
    """Length of the feature vector for one state with its history (``timescale``: see
    :func:`scale_free_torch`)."""
    if feature_type == "delta_mag":
        return DELTA_DIM * history_len
    if feature_type == "scale_free":
        return SCALE_FREE_DIM + (timescale in BLENDS)
    return STATE_DIMS[feature_type] * (history_len + 1)


def _rms(y: torch.Tensor, dim=-1) -> torch.Tensor:
    return torch.sqrt((y * y).mean(dim) + 1e-12)


def _stats(y: torch.Tensor, which: str) -> list[torch.Tensor]:
    out = {"mean": y.mean(-1), "min": y.amin(-1), "max": y.amax(-1), "rms": _rms(y)}
    return [out[w] for w in which.split()]


def state_features(x, v, m, eps: float, scales: NormScales, kind: str) -> torch.Tensor:
    """Per-state features, x/v (S,N,D), m (S,N) -> (S, 11 | 23). Permutation invariant."""
    s, n, d = x.shape
    mtot = m.sum(-1, keepdim=True)
    com = (m.unsqueeze(-1) * x).sum(-2, keepdim=True) / mtot.unsqueeze(-1)
    vcom = (m.unsqueeze(-1) * v).sum(-2, keepdim=True) / mtot.unsqueeze(-1)
    r = (x - com).norm(dim=-1) / scales.L0
    sp = (v - vcom).norm(dim=-1) / scales.V0
    acc = acceleration(x, m, eps).norm(dim=-1) / scales.A0
    diff = x.unsqueeze(-3) - x.unsqueeze(-2)
    pair = torch.sqrt((diff * diff).sum(-1) + eps * eps + 1e-12) / scales.L0
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    pair = pair[:, off]  # (S, N(N-1)) ordered pairs
    const = lambda val: torch.full((s,), float(val), dtype=x.dtype, device=x.device)  # noqa: E731
    if kind == "basic":
        cols = [const(n), const(d), mtot[:, 0], *_stats(r, "mean max"), *_stats(sp, "mean max"),
                *_stats(acc, "mean max"), *_stats(pair, "min mean")]
    else:
        cols = [const(n), const(d), mtot[:, 0], *_stats(m, "mean min max rms"),
                *_stats(r, "mean min max rms"), *_stats(sp, "mean min max rms"),
                *_stats(acc, "mean min max rms"), *_stats(pair, "min mean max"),
                const(eps / scales.L0)]
    return torch.stack(cols, dim=-1)


def delta_features(x, v, m, dt, eps: float, scales: NormScales) -> torch.Tensor:
    """delta_mag features of sequences x/v (B,S,N,D), m (B,N), dt (B,S) -> (B, 10 (S-1))."""
    b, s, n, d = x.shape
    # 1e-6 when eps = 0: the seed's guard against 1/0 at the coincident bodies of zero-padded history
    # states. acceleration() already drops zero separations, so here it only keeps the features equal to
    # the seed's: a real pair's term is scaled by (1 + 1e-12/r^2)^-1.5, off 1 by < 2e-6 for r >= 1e-3.
    acc = acceleration(x.reshape(b * s, n, d), m.repeat_interleave(s, 0), eps if eps > 0 else 1e-6)
    acc = acc.reshape(b, s, n, d)
    cols = []
    for y, scale in ((x, scales.L0), (v, scales.V0), (acc, scales.A0)):
        mag = (y[:, 1:] - y[:, :-1]).norm(dim=-1) / scale  # (B, S-1, N)
        cols += [mag.mean(-1), mag.amax(-1), _rms(mag)]
    cols.append(dt[:, 1:] / scales.T0)
    return torch.stack(cols, dim=-1).reshape(b, -1)  # pair-major, oldest first


def build_features(x, v, m, dt, hist_x, hist_v, hist_dt, eps: float, scales: NormScales,
                   feature_type: str) -> torch.Tensor:
    """Features for B states, each with its own history.

    x, v (B,N,D); m (B,N); dt (B,) the step that led to each state;
    hist_x, hist_v (B,K,N,D) and hist_dt (B,K), oldest first (zero-padded).
    Returns (B, feature_dim(feature_type, K)). No gradients flow into features.
    """
    with torch.no_grad():
        b, n, d = x.shape
        if feature_type == "scale_free":  # the current state only; see scale_free_torch
            return scale_free_torch(x, v, acceleration(x, m, eps), m, eps)[0]
        seq_x = torch.cat([hist_x, x.unsqueeze(1)], 1)
        seq_v = torch.cat([hist_v, v.unsqueeze(1)], 1)
        if feature_type == "delta_mag":
            seq_dt = torch.cat([hist_dt, dt.reshape(b, 1)], 1)
            return delta_features(seq_x, seq_v, m, seq_dt, eps, scales)
        s = seq_x.shape[1]
        feats = state_features(seq_x.reshape(b * s, n, d), seq_v.reshape(b * s, n, d),
                               m.repeat_interleave(s, 0), eps, scales, feature_type)
        return feats.reshape(b, -1)


# ---------------------------------------------------------------- scale-free features
# The classical timescale tau = min_i sqrt(r_i,nn / |a_i|) and 8 dimensionless numbers of the
# pair that sets it (body i* with the smallest tau_i and its nearest neighbour j*), each even
# under time reversal (v -> -v), so a step function h = g(features) * tau is unchanged when the
# motion is reversed, and scaling lengths by L and masses by M scales h by sqrt(L^3 / M):
#   0  u^2 r / mu                 pair's kinetic over potential (2 - r/a on a Kepler orbit)
#   1  (r.u)^2 / (r^2 u^2)        squared cosine between separation and relative velocity (features.radial_feature
#                                 fraction); with ``energy`` (r.u)^2 / (r mu), that cosine times feature 0
#   2  |a_i*| r^2 / m_j*          acceleration of i* over its pair's own (1 for an isolated pair)
#   3  log(tau_others / tau)      next-smallest tau among the other bodies (capped at 5; 5 for N = 2)
#   4  mu / M                     the pair's share of the total mass
#   5  min(m_i*, m_j*) / max      mass ratio of the pair
#   6  eps / (r + eps)            softening against the pair's separation
#   7  log(r / L)                 pair separation over the mean pair distance (0 for N = 2)
# r, u: the pair's separation and relative speed; mu = m_i* + m_j*; M the total mass.
TAU_RATIO_CAP = 5.0


def scale_free_torch(x, v, a, m, eps, timescale: str = "nn", radial: str = "fraction"):
    """(features (B, 8), tau (B,)) of states x, v, a (B,N,D), m (B,N); differentiable in x, v, a. ``eps``: the
    softening, one float or each state's own (B,) tensor.

    ``timescale: blend``: a 9th feature log(tau_prs / tau) (clamped to +-TAU_RATIO_CAP), with tau_prs IAS15's
    2024 timescale of body i* (:func:`aits.steprules.blend_timescale`), and the returned timescale is the geometric mean
    sqrt(tau * tau_prs) (tau where the PRS one is undefined): the bounded factor then reaches either
    timescale where they differ by less than M^2, and the rule at zero modulation is the classical
    ``blend`` rule. ``timescale: soft_blend``: the same 9 features, and the returned timescale leans from that
    mean to tau as the pair's softening feature eps / (r + eps) goes from 0 to 1
    (:func:`aits.steprules.soft_blend`; equal to ``blend`` on unsoftened systems). ``timescale: prs_lean``: as
    ``soft_blend`` with tau^(1/4) tau_prs^(3/4) in place of the mean (:data:`aits.steprules.PRS_WEIGHT`);
    ``prs_point_lean``: prs_lean's on an unsoftened pair, the soft blend's once softening matters
    (:data:`aits.steprules.PRS_HANDBACK`).

    ``radial`` (``features.radial_feature``): feature 1 is the cosine squared between the pair's separation and
    relative velocity (``fraction``), or ``energy``, (r . u)^2 / (r mu): that fraction times feature 0, the
    radial part of u^2 r / mu. Near the apocentre of a near-radial orbit the fraction swings from 1 to 0 and back
    within a few steps (the slow relative velocity turns over), the radial energy stays near 0 there.

    Massless bodies (m = 0: the padding that lets systems of different N share a batch) are left out:
    they are no one's neighbour, set no timescale and count in no mean, so a padded system has the
    features of the unpadded one. Every system needs at least two massive bodies."""
    b, n, _ = x.shape
    ar = torch.arange(b, device=x.device)
    d = x.unsqueeze(-3) - x.unsqueeze(-2)  # d[b,i,j] = x_j - x_i
    r2 = (d * d).sum(-1)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    massive = m > 0
    skip = eye | ~massive.unsqueeze(-2) | ~massive.unsqueeze(-1)  # (B,N,N): self pairs and massless ones
    r2nn, jnn = torch.where(skip, torch.full_like(r2, math.inf), r2).min(-1)
    # a massless body has no neighbour (r2nn = inf): keep inf out of the graph, or its gradient is 0 * inf
    r2nn = torch.where(massive, r2nn, torch.ones_like(r2nn))
    tau_i = torch.sqrt(torch.sqrt(r2nn) / a.norm(dim=-1).clamp_min(1e-300))
    tau_i = torch.where(massive, tau_i, torch.full_like(tau_i, math.inf))
    tau, i = tau_i.min(-1)
    j = jnn[ar, i]
    rvec = x[ar, j] - x[ar, i]
    uvec = v[ar, j] - v[ar, i]
    r = rvec.norm(dim=-1)
    u2 = (uvec * uvec).sum(-1)
    mi, mj = m[ar, i], m[ar, j]
    mu = mi + mj
    if n > 2:
        others = massive.clone()
        others[ar, i] = False
        others[ar, j] = False
        tau2 = torch.where(others, tau_i, torch.full_like(tau_i, math.inf)).min(-1).values
        alone = torch.isinf(tau2)  # two massive bodies (a padded binary): the N = 2 value, no inf in the graph
        f3 = torch.where(alone, torch.full_like(tau, TAU_RATIO_CAP),
                         torch.log(torch.where(alone, tau, tau2) / tau).clamp(0.0, TAU_RATIO_CAP))
        pair = torch.sqrt(torch.where(skip, torch.ones_like(r2), r2))
        k = massive.sum(-1).to(x.dtype)
        mean = torch.where(skip, torch.zeros_like(pair), pair).sum((-1, -2)) / (k * (k - 1))
        f7 = torch.log(r / mean)
    else:
        f3 = torch.full_like(tau, TAU_RATIO_CAP)
        f7 = torch.zeros_like(tau)
    ru2 = (rvec * uvec).sum(-1) ** 2
    cols = [u2 * r / mu, ru2 / (r * mu) if radial == "energy" else ru2 / (r * r * u2 + 1e-300),
            a[ar, i].norm(dim=-1) * r * r / mj,
            f3, mu / m.sum(-1), torch.minimum(mi, mj) / torch.maximum(mi, mj), eps / (r + eps), f7]
    if timescale in BLENDS:
        t_prs = prs_timescale_at_torch(x, v, a, m, i, eps)  # body i*'s (aits.steprules.blend_timescale)
        t_prs = torch.where(torch.isinf(t_prs), tau, t_prs)
        cols.append(torch.log(t_prs / tau).clamp(-TAU_RATIO_CAP, TAU_RATIO_CAP))
        tau = torch.sqrt(tau * t_prs) if timescale == "blend" else soft_blend(tau, t_prs, cols[6], *lean_of(timescale))
    return torch.stack(cols, -1), tau


def with_radial(feats: np.ndarray, radial: str) -> np.ndarray:
    """Scale-free features computed with ``radial`` 'fraction' (the default) as ``radial`` gives them: for
    'energy' feature 1 times feature 0, the same numbers :func:`scale_free_numpy` gives with ``radial='energy'``."""
    if radial == "fraction":
        return feats
    out = np.array(feats, dtype=float, copy=True)
    out[..., 1] = out[..., 1] * out[..., 0]
    return out


def scale_free_numpy(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float,
                     timescale: str = "nn", r2: np.ndarray | None = None, radial: str = "fraction"):
    """(features (8,) or (9,), tau) of one state x, v, a (N,D), m (N,): the same numbers as
    :func:`scale_free_torch`, for fast inference at batch 1 (massless bodies left out, as there).
    Up to ``aits.steprules.SMALL_N`` bodies in Python floats (:func:`scale_free_small`), above in numpy.
    ``r2``: the state's squared pair separations where the caller has them (``aits.steprules.pair_r2``)."""
    if len(m) <= steprules.SMALL_N:
        return scale_free_small(x, v, a, m, eps, timescale, radial)
    if (m <= 0).any():
        keep = m > 0
        x, v, a, m = x[keep], v[keep], a[keep], m[keep]
        r2 = None if r2 is None else r2[np.ix_(keep, keep)]
    n = len(m)
    r2 = steprules.pair_r2(x, r2)
    set_diagonal(r2, np.inf)
    tau_i = steprules.nn_of_pairs(r2, a)[1]
    i = int(tau_i.argmin())
    tau = float(tau_i[i])
    j = int(r2[i].argmin())
    rvec, uvec = x[j] - x[i], v[j] - v[i]
    r = math.sqrt(float(rvec @ rvec))
    u2 = float(uvec @ uvec)
    mi, mj = float(m[i]), float(m[j])
    mu = mi + mj
    if n > 2:
        others = tau_i.copy()  # the smallest timescale of a body outside the pair
        others[i] = others[j] = math.inf
        f3 = min(max(math.log(float(others.min()) / tau), 0.0), TAU_RATIO_CAP)
        set_diagonal(r2, 0.0)
        f7 = math.log(r / (float(np.sqrt(r2).sum()) / (n * (n - 1))))
    else:
        f3, f7 = TAU_RATIO_CAP, 0.0
    f6 = eps / (r + eps)
    ru2 = float(rvec @ uvec) ** 2
    feats = [u2 * r / mu, ru2 / (r * mu) if radial == "energy" else ru2 / (r * r * u2 + 1e-300),
             math.sqrt(float(a[i] @ a[i])) * r * r / mj,
             f3, mu / float(m.sum()), min(mi, mj) / max(mi, mj), f6, f7]
    if timescale in BLENDS:
        t_prs = prs_timescale_at(x, v, a, m, i, eps)
        t_prs = t_prs if math.isfinite(t_prs) else tau
        feats.append(min(max(math.log(t_prs / tau), -TAU_RATIO_CAP), TAU_RATIO_CAP))
        tau = math.sqrt(tau * t_prs) if timescale == "blend" else soft_blend(tau, t_prs, f6, *lean_of(timescale))
    feats = np.array(feats)
    return feats, tau


def scale_free_small(x: np.ndarray, v: np.ndarray, a: np.ndarray, m: np.ndarray, eps: float,
                     timescale: str = "nn", radial: str = "fraction"):
    """:func:`scale_free_numpy` with a loop over the pairs in Python floats: the same numbers, 2-3x
    faster on a few bodies (aits.steprules, SMALL_N)."""
    mass = m.tolist()
    xl, vl, al = x.tolist(), v.tolist(), a.tolist()
    if min(mass) <= 0:
        keep = [k for k, mk in enumerate(mass) if mk > 0]
        xl, vl, al, mass = [xl[k] for k in keep], [vl[k] for k in keep], [al[k] for k in keep], [mass[k] for k in keep]
    n = len(mass)
    r2, tau_i, jnn = nn_pairs_small(xl, al)
    i = min(range(n), key=tau_i.__getitem__)
    tau, j = tau_i[i], jnn[i]
    rvec = list(map(sub, xl[j], xl[i]))
    uvec = list(map(sub, vl[j], vl[i]))
    rr = r2[i][j]
    r = math.sqrt(rr)
    u2 = sum(map(mul, uvec, uvec))
    ru = sum(map(mul, rvec, uvec))
    mi, mj = mass[i], mass[j]
    mu = mi + mj
    if n > 2:
        f3 = min(max(math.log(min(t for k, t in enumerate(tau_i) if k != i and k != j) / tau), 0.0), TAU_RATIO_CAP)
        pairs = sum(math.sqrt(r2[p][q]) for p in range(n) for q in range(p + 1, n))
        f7 = math.log(r / (2.0 * pairs / (n * (n - 1))))
    else:
        f3, f7 = TAU_RATIO_CAP, 0.0
    ai = al[i]
    feats = [u2 * r / mu, ru * ru / (r * mu) if radial == "energy" else ru * ru / (rr * u2 + 1e-300),
             math.sqrt(sum(map(mul, ai, ai))) * rr / mj, f3,
             mu / sum(mass), min(mi, mj) / max(mi, mj), eps / (r + eps), f7]
    if timescale in BLENDS:
        t_prs = prs_at_small(xl, vl, al, mass, i, eps)
        t_prs = t_prs if math.isfinite(t_prs) else tau
        feats.append(min(max(math.log(t_prs / tau), -TAU_RATIO_CAP), TAU_RATIO_CAP))
        tau = math.sqrt(tau * t_prs) if timescale == "blend" else soft_blend(tau, t_prs, feats[6], *lean_of(timescale))
    return np.array(feats), tau


class HistoryBuffer:
    """The last ``K`` accepted states of one system, detached, oldest first.

    States are kept as float64 numpy arrays: x, v (N,D) and the dt that led to them.
    """

    def __init__(self, history_len: int, num_particles: int, dim: int):
        self.K, self.N, self.D = history_len, num_particles, dim
        self.clear()

    def clear(self) -> None:
        self.x = np.zeros((self.K, self.N, self.D))
        self.v = np.zeros((self.K, self.N, self.D))
        self.dt = np.zeros(self.K)
        self.count = 0  # real states held (<= K)

    def push(self, x, v, dt: float) -> None:
        if self.K == 0:
            return
        self.x = np.roll(self.x, -1, axis=0)
        self.v = np.roll(self.v, -1, axis=0)
        self.dt = np.roll(self.dt, -1)
        self.x[-1], self.v[-1], self.dt[-1] = np.asarray(x), np.asarray(v), float(dt)
        self.count = min(self.count + 1, self.K)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x (K,N,D), v (K,N,D), dt (K,)), zero-padded at the old end."""
        return self.x.copy(), self.v.copy(), self.dt.copy()

    def snapshot(self) -> dict:
        return {"x": self.x.copy(), "v": self.v.copy(), "dt": self.dt.copy(), "count": self.count}

    def restore(self, snap: dict) -> None:
        x = np.asarray(snap["x"], dtype=np.float64)
        if x.shape != (self.K, self.N, self.D):
            raise ValueError(f"history snapshot has shape {x.shape}, expected {(self.K, self.N, self.D)}")
        self.x, self.v = x.copy(), np.asarray(snap["v"], dtype=np.float64).copy()
        self.dt, self.count = np.asarray(snap["dt"], dtype=np.float64).copy(), int(snap["count"])

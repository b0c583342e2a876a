"""History buffer, per-state features and normalisation scales (docs/DESIGN.md §2).

A state sequence is ``[past_1 .. past_K, current]``, oldest first; missing
past states are zero states (zero x, v, dt; real masses).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .physics import acceleration

STATE_DIMS = {"basic": 11, "rich": 23}
DELTA_DIM = 10


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


def feature_dim(feature_type: str, history_len: int) -> int:
    """Length of the feature vector for one state with its history."""
    if feature_type == "delta_mag":
        return DELTA_DIM * history_len
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
        seq_x = torch.cat([hist_x, x.unsqueeze(1)], 1)
        seq_v = torch.cat([hist_v, v.unsqueeze(1)], 1)
        if feature_type == "delta_mag":
            seq_dt = torch.cat([hist_dt, dt.reshape(b, 1)], 1)
            return delta_features(seq_x, seq_v, m, seq_dt, eps, scales)
        s = seq_x.shape[1]
        feats = state_features(seq_x.reshape(b * s, n, d), seq_v.reshape(b * s, n, d),
                               m.repeat_interleave(s, 0), eps, scales, feature_type)
        return feats.reshape(b, -1)


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

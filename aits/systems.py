"""The systems a collector integrates, as one batched state: B systems, each with its own initial
conditions, RNG stream, clock, history and restarts (REBOUND-style: one object owns the state)."""
from __future__ import annotations

import math

import numpy as np

from . import families
from .config import Config
from .physics import crossing_time, kepler_ic, load_ic_file, random_ic
from .samples import STATE_FIELDS, Samples, StateBatch

# Per-system arrays, leading dim B: (name, trailing shape from (K, N, D), dtype).
FIELDS = (
    ("ids", lambda K, N, D: (), np.int64),            # system id (Samples.orbit_id)
    ("m", lambda K, N, D: (N,), np.float64),
    ("x", lambda K, N, D: (N, D), np.float64),
    ("v", lambda K, N, D: (N, D), np.float64),
    ("dt", lambda K, N, D: (), np.float64),           # the step that led to the current state (0 at start)
    ("hist_x", lambda K, N, D: (K, N, D), np.float64),  # last K accepted pre-step states, oldest first,
    ("hist_v", lambda K, N, D: (K, N, D), np.float64),  # zero-padded at the old end
    ("hist_dt", lambda K, N, D: (K,), np.float64),
    ("hist_count", lambda K, N, D: (), np.int64),     # real states in the history (<= K)
    ("t", lambda K, N, D: (), np.float64),            # clock: n_steps substeps of dt per step
    ("steps", lambda K, N, D: (), np.int64),          # accepted steps since the last restart
    ("period", lambda K, N, D: (), np.float64),       # Kepler (inner, innermost) period, or a crossing time
    ("restarts", lambda K, N, D: (), np.int64),
    ("e", lambda K, N, D: (), np.float64),            # (inner) binary's eccentricity and semi-major axis
    ("a", lambda K, N, D: (), np.float64),            # (nan for random, file and few_body ICs)
    ("family", lambda K, N, D: (), np.int64),         # index in families.FAMILIES; NO_FAMILY outside a mixture
    ("eps", lambda K, N, D: (), np.float64),          # Plummer softening: system.softening, or its family's own
)
# fields states from before them lack, and their value there (eps: read only where a mixture draws softened
# systems, which such states cannot hold)
OPTIONAL = {"family": families.NO_FAMILY, "eps": 0.0}


class Systems:
    """B systems stepped together. ``ids[i]`` names system i, ``rngs[i]`` is its own stream.

    A collector with index c owns ids ``c·B .. c·B+B-1``, seeded ``run.seed + id`` (for B = 1:
    ``run.seed + c``, the seed's one orbit per collector). :meth:`from_arrays` builds systems from
    given states instead (no config, no RNGs: they step with :meth:`push` and cannot restart).
    ``acc`` is a(x) of the current states where a caller keeps it, else None;
    it is no part of the state dict.
    """

    def __init__(self, cfg: Config, ids, rngs):
        s = cfg.system
        self.cfg, self.K, self.N, self.D = cfg, cfg.features.history_len, s.num_particles, s.dim
        self.rngs = list(rngs)
        B = len(self.rngs)
        self._allocate(B)
        self.ids[:] = np.asarray(ids, dtype=np.int64)
        self.restarts[:] = -1
        self.acc = None
        self._file_ic = load_ic_file(s.ic_path) if s.ic == "file" else None
        self.restart(np.arange(B))

    @classmethod
    def from_arrays(cls, m, x, v, history_len: int = 0, ids=None) -> "Systems":
        """B given systems, m (B,N), x, v (B,N,D), at t = 0 with empty histories; ids default 0..B-1.

        No config or RNGs: ``period``, ``e``, ``a`` are nan, :meth:`restart` and :meth:`advance` raise."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3:
            raise ValueError(f"x must be (B,N,D), got shape {x.shape}")
        B, N, D = x.shape
        self = cls.__new__(cls)
        self.cfg, self.K, self.N, self.D = None, int(history_len), N, D
        self.rngs, self.acc, self._file_ic = [None] * B, None, None
        self._allocate(B)
        self.ids[:] = np.arange(B) if ids is None else np.asarray(ids, dtype=np.int64)
        self.m[:], self.x[:], self.v[:] = np.broadcast_to(np.asarray(m, dtype=np.float64), (B, N)), x, v
        self.period[:] = self.e[:] = self.a[:] = math.nan
        self.family[:] = families.NO_FAMILY
        return self

    def _allocate(self, B: int) -> None:
        """Zeroed per-system arrays of ``FIELDS`` for B systems (K, N, D set)."""
        for name, shape, dtype in FIELDS:
            setattr(self, name, np.zeros((B, *shape(self.K, self.N, self.D)), dtype=dtype))

    @classmethod
    def for_collector(cls, cfg: Config, index: int, count: int) -> "Systems":
        ids = index * count + np.arange(count)
        return cls(cfg, ids, [np.random.default_rng(cfg.run.seed + int(i)) for i in ids])

    def __len__(self) -> int:
        return len(self.rngs)

    # ------------------------------------------------------------ dynamics
    def restart(self, idx) -> None:
        """Fresh initial conditions (from each system's own RNG), clock and history for systems ``idx``."""
        self._need_config("restart")
        s = self.cfg.system
        for i in np.asarray(idx, dtype=np.int64):
            rng, period, e, a, family = self.rngs[i], math.inf, math.nan, math.nan, families.NO_FAMILY
            eps = s.softening
            if s.ic == "mixture":
                family, drawn = families.draw(rng, s)
                m, x, v = families.pad(drawn, self.N)
                period, e, a = drawn.period, drawn.e, drawn.a
                eps = families.softening(drawn, s)
            elif s.ic == "kepler":
                e = rng.uniform(s.e_min, s.e_max)
                a = rng.uniform(s.a_min, s.a_max)
                m, x, v, period = kepler_ic(e, a, s.mass, s.dim)
            elif s.ic == "random":
                m, x, v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale, rng)
            else:
                m, x, v = self._file_ic
            if s.ic in ("random", "file"):  # the restart horizon's unit: its crossing time
                period = crossing_time(m, x)
            self.m[i], self.x[i], self.v[i] = m, x, v
            self.period[i], self.e[i], self.a[i], self.family[i], self.eps[i] = period, e, a, family, eps
            self.t[i] = self.dt[i] = 0.0
            self.steps[i] = self.hist_count[i] = 0
            self.hist_x[i] = self.hist_v[i] = 0.0
            self.hist_dt[i] = 0.0
            self.restarts[i] += 1

    def batch(self, idx=None) -> StateBatch:
        """The states with their histories of systems ``idx`` (all by default), copies, for
        ``Stepper.prepare``."""
        sel = slice(None) if idx is None else idx
        return StateBatch(**{k: getattr(self, k)[sel].copy() for k in STATE_FIELDS})

    def advance(self, idx, x1: np.ndarray, v1: np.ndarray, dt1: np.ndarray) -> np.ndarray:
        """Accept a step of systems ``idx`` to (x1, v1) with dt1: the pre-step state enters the history.

        Systems whose new state is non-finite or whose clock passed ``periods_per_orbit`` periods
        (Kepler; a mixture's binary, triple and planets: their period) or ``restart_after`` crossing times
        (random and file ICs, a mixture's few_body and soft_few_body) restart. Returns the restarted subset
        of ``idx``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        self._need_config("advance")
        s = self.cfg.system
        self.push(idx, x1, v1, dt1, s.n_steps)
        finite = np.isfinite(x1).all(axis=(1, 2)) & np.isfinite(v1).all(axis=(1, 2))
        horizon = self.horizon(idx)
        done = ~finite | (self.t[idx] >= horizon * self.period[idx])
        self.restart(idx[done])
        return idx[done]

    def horizon(self, idx) -> np.ndarray:
        """Restart horizons of systems ``idx`` in units of their ``period`` (``system.periods_per_orbit``
        or ``restart_after``, see :meth:`advance`)."""
        s = self.cfg.system
        if s.ic == "mixture":
            few = np.isin(self.family[idx], [families.FAMILIES.index(f) for f in families.CROSSING_TIME_FAMILIES])
            return np.where(few, s.restart_after, s.periods_per_orbit)
        return np.full(len(np.atleast_1d(idx)), s.periods_per_orbit if s.ic == "kepler" else s.restart_after)

    def push(self, idx, x1: np.ndarray, v1: np.ndarray, dt1: np.ndarray, n_steps: int = 1) -> None:
        """Accept a step of systems ``idx`` to (x1, v1) with dt1 (``n_steps`` substeps of it): the pre-step
        state enters the history, the clock and step count move on. No restarts (see :meth:`advance`)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == len(self) and (idx == np.arange(len(self))).all():
            idx = slice(None)  # every system in order: slices, no index copies
        if self.K:
            for h, cur in ((self.hist_x, self.x), (self.hist_v, self.v), (self.hist_dt, self.dt)):
                h[idx] = np.concatenate([h[idx, 1:], cur[idx, None]], axis=1)
            self.hist_count[idx] = np.minimum(self.hist_count[idx] + 1, self.K)
        self.x[idx], self.v[idx], self.dt[idx] = x1, v1, dt1
        self.t[idx] += dt1 * n_steps  # one step is n_steps leapfrog substeps of dt
        self.steps[idx] += 1

    def _need_config(self, what: str) -> None:
        if self.cfg is None:
            raise ValueError(f"cannot {what}: these systems were built from arrays, without the config and "
                             "RNGs that draw new initial conditions")

    def write_samples(self, out: Samples, start: int, idx, accepted_dt, rel_dE, retrains) -> int:
        """Write the pre-step states of systems ``idx`` with their histories and step metadata into rows
        ``start..`` of the preallocated ``out``. Returns the next free row."""
        end = start + len(idx)
        rows = slice(start, end)
        for name in (*STATE_FIELDS, "steps", "ids", "family"):
            getattr(out, {"steps": "step", "ids": "orbit_id"}.get(name, name))[rows] = getattr(self, name)[idx]
        out.accepted_dt[rows], out.rel_dE[rows], out.retrains[rows] = accepted_dt, rel_dE, retrains
        return end

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        st = {name: getattr(self, name).copy() for name, _, _ in FIELDS}
        st["rng"] = [None if r is None else r.bit_generator.state for r in self.rngs]
        return st

    def load_state_dict(self, st: dict) -> None:
        """Restore every system; also reads the single-orbit state of checkpoints before B existed."""
        if "orbit_id" in st:
            st = _from_orbit_state(st)
        if len(st["rng"]) != len(self):
            raise ValueError(f"state holds {len(st['rng'])} systems, this collector steps {len(self)}")
        for name, shape, dtype in FIELDS:
            arr = np.asarray(st[name] if name in st or name not in OPTIONAL
                             else np.full(len(self), OPTIONAL[name]), dtype=dtype)
            want = (len(self), *shape(self.K, self.N, self.D))
            if arr.shape != want:
                raise ValueError(f"systems state '{name}' has shape {arr.shape}, expected {want}")
            setattr(self, name, arr.copy())
        self.acc = None  # belonged to the states replaced
        for r, s in zip(self.rngs, st["rng"]):
            if r is not None:
                r.bit_generator.state = s


def _from_orbit_state(o: dict) -> dict:
    """An ``Orbit.state_dict()`` of checkpoints before ``ray.systems_per_collector`` -> a B = 1 state."""
    h, p = o["history"], o.get("params") or {}
    return {"ids": [o["orbit_id"]], "m": [o["m"]], "x": [o["x"]], "v": [o["v"]], "dt": [o["dt"]],
            "hist_x": [h["x"]], "hist_v": [h["v"]], "hist_dt": [h["dt"]], "hist_count": [h["count"]],
            "t": [o["t"]], "steps": [o["steps"]], "period": [o["period"]], "restarts": [o["restarts"]],
            "e": [p.get("e", math.nan)], "a": [p.get("a", math.nan)], "rng": [o["rng"]]}


def Orbit(cfg: Config, orbit_id: int, rng: np.random.Generator) -> Systems:  # noqa: N802 - old class name
    """One system with the given id and RNG: ``Systems`` with B = 1 (the name of the earlier one-orbit type)."""
    return Systems(cfg, [orbit_id], [rng])

"""Batches of states: ``StateBatch`` (B states with their histories: what ``Systems`` hands out and
``Stepper.prepare`` takes) and ``Samples`` (accepted states with their step's metadata, a StateBatch)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .families import NO_FAMILY

INT_FIELDS = ("orbit_id", "step", "retrains", "family")


class Rows:
    """A dataclass whose fields hold one row per state along their first dimension (None: absent);
    a field declared ``compare=False`` belongs to the batch, not to its rows."""

    def take(self, idx):
        """The rows ``idx`` (index, slice, mask or index tensor) of every per-row field, as the same type."""
        return type(self)(**{f.name: None if (a := getattr(self, f.name)) is None else a[idx]
                             for f in fields(self) if f.compare})


@dataclass
class StateBatch(Rows):
    """B states with their histories (numpy, float64).

    m (B,N); x, v (B,N,D); dt (B,) the step that led to each state (0 at a start);
    hist_x, hist_v (B,K,N,D), hist_dt (B,K): the last K accepted pre-step states with the steps that
    led to them, oldest first, zero where a state has fewer than K.
    """

    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    dt: np.ndarray
    hist_x: np.ndarray
    hist_v: np.ndarray
    hist_dt: np.ndarray
    # (B,) each state's own Plummer softening (a mixture with a softened family); None: the run's
    # ``system.softening`` for all. The stepper reads it only where the config draws softened systems.
    eps: np.ndarray | None = field(default=None, kw_only=True)

    @classmethod
    def start(cls, m, x, v, history_len: int = 0, eps=None) -> "StateBatch":
        """States m (B,N), x, v (B,N,D) at a start: dt 0 and empty (zero) histories of ``history_len``;
        ``eps`` (B,) their own softenings, or None."""
        x = np.asarray(x, dtype=np.float64)
        B, N, D = x.shape
        return cls(np.asarray(m, dtype=np.float64), x, np.asarray(v, dtype=np.float64), np.zeros(B),
                   np.zeros((B, history_len, N, D)), np.zeros((B, history_len, N, D)), np.zeros((B, history_len)),
                   eps=None if eps is None else np.asarray(eps, dtype=np.float64))


STATE_FIELDS = tuple(f.name for f in fields(StateBatch))


@dataclass
class Samples(StateBatch):
    """Accepted pre-step states with their own histories (a :class:`StateBatch` of n states) and their
    step's metadata, as compact numpy arrays: orbit_id, step (n,) int; accepted_dt, rel_dE (n,);
    retrains, family (n,) int."""

    orbit_id: np.ndarray
    step: np.ndarray
    accepted_dt: np.ndarray
    rel_dE: np.ndarray
    retrains: np.ndarray
    # (n,) each state's family (index in aits.families.FAMILIES; NO_FAMILY outside a mixture); None in
    # samples kept in a checkpoint from before it
    family: np.ndarray | None = field(default=None, kw_only=True)
    # The collector's passage-objective gradient for the learner (aits/passage.py), riding with the
    # samples it was computed from; not a per-sample array: take/concat/to_dict leave it out.
    passage: dict | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.dt)

    @classmethod
    def empty(cls, K: int, N: int, D: int, capacity: int = 0) -> "Samples":
        """``capacity`` zero rows (float64, ints for the metadata); ``take`` trims a filled prefix."""
        shapes = {"m": (N,), "x": (N, D), "v": (N, D), "hist_x": (K, N, D), "hist_v": (K, N, D), "hist_dt": (K,)}
        out = cls(**{f.name: np.zeros((capacity, *shapes.get(f.name, ())),
                                      dtype=np.int64 if f.name in INT_FIELDS else np.float64)
                     for f in fields(cls) if f.compare})
        out.family[:] = NO_FAMILY  # 0 would be a family's code
        return out

    @classmethod
    def concat(cls, parts: list["Samples"]) -> "Samples":
        """The rows of ``parts`` in order; a field absent (None) from any part is absent from the result
        (``eps`` of samples kept in a checkpoint from before it)."""
        cols = {f.name: [getattr(p, f.name) for p in parts] for f in fields(cls) if f.compare}
        return cls(**{k: None if any(a is None for a in v) else np.concatenate(v) for k, v in cols.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}

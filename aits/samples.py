"""Samples: accepted pre-step states with their own histories, one compact object of numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

INT_FIELDS = ("orbit_id", "step", "retrains")


@dataclass
class Samples:
    """Accepted pre-step states with their own histories, as compact numpy arrays.

    m (n,N); x, v (n,N,D); dt (n,) the step that led to the state;
    hist_x, hist_v (n,K,N,D), hist_dt (n,K) oldest first; metadata per sample.
    """

    m: np.ndarray
    x: np.ndarray
    v: np.ndarray
    dt: np.ndarray
    hist_x: np.ndarray
    hist_v: np.ndarray
    hist_dt: np.ndarray
    orbit_id: np.ndarray
    step: np.ndarray
    accepted_dt: np.ndarray
    rel_dE: np.ndarray
    retrains: np.ndarray
    # The collector's passage-objective gradient for the learner (aits/passage.py), riding with the
    # samples it was computed from; not a per-sample array: take/concat/to_dict leave it out.
    passage: dict | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.dt)

    @classmethod
    def empty(cls, K: int, N: int, D: int, capacity: int = 0) -> "Samples":
        """``capacity`` zero rows (float64, ints for the metadata); ``take`` trims a filled prefix."""
        shapes = {"m": (N,), "x": (N, D), "v": (N, D), "hist_x": (K, N, D), "hist_v": (K, N, D), "hist_dt": (K,)}
        return cls(**{f.name: np.zeros((capacity, *shapes.get(f.name, ())),
                                       dtype=np.int64 if f.name in INT_FIELDS else np.float64)
                      for f in _arrays(cls)})

    @classmethod
    def concat(cls, parts: list["Samples"]) -> "Samples":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in _arrays(cls)})

    def take(self, idx) -> "Samples":
        return Samples(**{f.name: getattr(self, f.name)[idx] for f in _arrays(self)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in _arrays(self)}


def _arrays(cls_or_obj):
    return [f for f in fields(cls_or_obj) if f.name != "passage"]

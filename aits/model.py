"""The dt network (docs/DESIGN.md §3): an MLP with optional Fourier features and a Softplus (or bounded)
output; :class:`NumpyMLP` is its forward pass in numpy, for the evaluation."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .ranges import RangeTally

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid}
# Softplus returns z itself above this (torch's default): the numpy forward and the export use it too.
SOFTPLUS_THRESHOLD = 20.0


class DtModel(nn.Module):
    """features (B, input_dim) -> dt (B,) or factor g (B,), strictly positive: softplus of the last layer,
    or with ``max_modulation`` M the bounded factor init_dt * M^tanh(z) (z the last layer's output)."""

    def __init__(self, input_dim: int, hidden_dims=(200, 1000, 1000, 200), activation: str = "tanh",
                 dropout: float = 0.0, fourier_scale: float = 0.0, fourier_dim: int = 16,
                 init_dt: float | None = None, seed: int | None = None, max_modulation: float | None = None):
        super().__init__()
        # bounded factor: g = init_dt * M^tanh(z), within [init_dt / M, init_dt * M] whatever the input
        self.max_modulation = max_modulation
        self.eta0 = init_dt
        with torch.random.fork_rng(devices=[]):
            if seed is not None:  # same weights in every process for the same seed
                torch.manual_seed(seed)
            self._build(input_dim, hidden_dims, activation, dropout, fourier_scale, fourier_dim)
        if max_modulation is not None:
            if init_dt is None:
                raise ValueError("a bounded factor needs the classical factor it modulates (init_dt)")
            with torch.no_grad():  # untrained: z ~ 0, g ~ init_dt, the classical rule
                self.net[-1].weight.mul_(0.01)
                self.net[-1].bias.zero_()
        elif init_dt is not None:
            with torch.no_grad():
                last = self.net[-1]
                # A last layer 100x smaller makes the untrained output nearly the bias, so every state
                # starts at ~init_dt instead of a random dt; not zero, so hidden layers get gradients at once.
                last.weight.mul_(0.01)
                last.bias.fill_(math.log(math.expm1(init_dt)))  # softplus^{-1}(init_dt)

    def _build(self, input_dim, hidden_dims, activation, dropout, fourier_scale, fourier_dim):
        self.input_dim = input_dim
        if fourier_scale > 0:
            # Fixed random projection: a buffer, not a parameter.
            proj = torch.randn(input_dim, fourier_dim) * fourier_scale
            self.register_buffer("fourier_proj", proj)
            width = 2 * fourier_dim
        else:
            self.fourier_proj = None
            width = input_dim
        layers: list[nn.Module] = []
        for h in hidden_dims:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.out = nn.Softplus(threshold=SOFTPLUS_THRESHOLD)

    @classmethod
    def from_config(cls, cfg, input_dim: int) -> "DtModel":
        m = cfg.model
        init = m.init_factor if getattr(m, "output", "dt") == "factor" else m.init_dt
        return cls(input_dim, m.hidden_dims, m.activation, m.dropout, m.fourier_scale, m.fourier_dim,
                   init, seed=cfg.run.seed, max_modulation=getattr(m, "max_modulation", None))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = feats
        if self.fourier_proj is not None:
            z = 2 * math.pi * h @ self.fourier_proj
            h = torch.cat([torch.sin(z), torch.cos(z)], -1)
        if self.max_modulation is not None:
            return self.eta0 * torch.exp(math.log(self.max_modulation) * torch.tanh(self.net(h)[..., 0]))
        # Softplus underflows to exactly 0 for very negative inputs; dt must stay > 0 (the seed's formula).
        return self.out(self.net(h))[..., 0] + 1e-12


class NumpyMLP:
    """:meth:`DtModel.forward` in eval mode, in float64 numpy, for one input vector (the evaluation's and
    ``aits.load_rule``'s step function): no autograd graph and no torch dispatch per layer (a few
    microseconds at batch 1, where torch spends tens). Tested equal to the torch forward
    (``tests/test_model.py``), the bounded factor included.

    Parameters
    ----------
    model : DtModel
        The network whose weights are copied (float64).
    activation : str
        Its hidden activation (``model.activation`` of the config).
    ranges : aits.ranges.FeatureRanges, optional
        The range check of a bounded factor: g = eta0 * M^(w(f) tanh(z)), w = 1 inside the training box.

    Calling it: features (input_dim,) -> dt or factor g (float), as ``DtModel.forward`` of one row
    (with ``ranges``: the range-checked factor).
    """

    # Each takes the fresh pre-activation array of one layer and may write it (tanh does, in place: at batch 1 a
    # numpy call costs about a microsecond whatever its size, so the step saves the allocations).
    ACT = {"tanh": lambda z: np.tanh(z, out=z), "relu": lambda z: np.maximum(z, 0.0),
           "silu": lambda z: z / (1.0 + np.exp(-z)), "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z))}

    def __init__(self, model: torch.nn.Module, activation: str, ranges=None):
        self.max_modulation, self.eta0 = getattr(model, "max_modulation", None), getattr(model, "eta0", None)
        if ranges is not None and self.max_modulation is None:
            raise ValueError("a range check needs a bounded factor model (model.max_modulation)")
        self.ranges = ranges  # aits.ranges.FeatureRanges: the modulation is pulled back outside it
        self.tally = None if ranges is None else RangeTally(len(ranges.lo))  # what the range check did (reset per run)
        self.layers = [(mod.weight.detach().double().numpy().T.copy(), mod.bias.detach().double().numpy().copy())
                       for mod in model.net if isinstance(mod, torch.nn.Linear)]
        proj = getattr(model, "fourier_proj", None)
        self.proj = None if proj is None else proj.detach().double().numpy()
        self.act = self.ACT[activation]

    def __call__(self, f: np.ndarray) -> float:
        weight = None  # the range check's w where it is below 1
        if self.ranges is not None:  # the check first: inside the box w = 1; fully held (w = 0) needs no network
            if self.ranges.inside(f):
                self.tally.add_inside()
            else:
                d = self.ranges.excess(f)
                weight = self.ranges.weight_of(d)
                self.tally.add(d, weight)
                if weight == 0.0:  # M^(0 * tanh z) = 1 for any z: the same float as the forward below
                    return self.eta0 * self.max_modulation ** 0.0
        h = f
        if self.proj is not None:
            z = 2 * np.pi * (h @ self.proj)
            h = np.concatenate([np.sin(z), np.cos(z)])
        for w, b in self.layers[:-1]:
            z = np.dot(h, w)
            z += b
            h = self.act(z)
        w, b = self.layers[-1]
        z = float(h @ w[:, 0] + b[0])
        if self.max_modulation is not None:  # the bounded factor, as DtModel
            s = math.tanh(z)
            if weight is not None:  # pulled back outside the training box
                s *= weight
            return self.eta0 * self.max_modulation ** s
        return (z if z > SOFTPLUS_THRESHOLD else math.log1p(math.exp(z))) + 1e-12  # softplus, as DtModel



def build_model(cfg, device: torch.device | str = "cpu") -> DtModel:
    """The run's dt model: seeded initial weights, model precision (``model.dtype`` or ``run.dtype``), on ``device``."""
    from .features import feature_dim
    from .physics import resolve_dtype

    f = cfg.features
    model = DtModel.from_config(cfg, feature_dim(f.feature_type, f.history_len, f.timescale))
    return model.to(device=device, dtype=resolve_dtype(cfg.model.dtype or cfg.run.dtype))
